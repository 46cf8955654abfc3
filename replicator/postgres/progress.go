package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/conflict"
)

// AppliedPositions returns, per source region, the last transaction applied
// here.
func AppliedPositions(ctx context.Context, conn *pgx.Conn) (map[conflict.RegionID]int64, error) {
	rows, err := conn.Query(ctx, `SELECT source, seq FROM polyregion.applied`)
	if err != nil {
		return nil, fmt.Errorf("read applied positions: %w", err)
	}
	defer rows.Close()
	out := map[conflict.RegionID]int64{}
	for rows.Next() {
		var s string
		var seq int64
		if err := rows.Scan(&s, &seq); err != nil {
			return nil, fmt.Errorf("read applied positions: %w", err)
		}
		out[conflict.RegionID(s)] = seq
	}
	return out, rows.Err()
}

// VersionedSeq returns the last outbox sequence number the region's reader
// has assigned (0 when none).
func VersionedSeq(ctx context.Context, conn *pgx.Conn, region string) (int64, error) {
	var next int64
	err := conn.QueryRow(ctx, `SELECT coalesce((SELECT next_seq FROM polyregion.reader_state WHERE slot = $1), 1)`, SlotName(region)).Scan(&next)
	if err != nil {
		return 0, fmt.Errorf("read versioned position: %w", err)
	}
	return next - 1, nil
}

// CollectTombstones deletes the recorded versions of deleted rows of tables
// whose deleting write came from origin with a sequence number up to seq.
func CollectTombstones(ctx context.Context, conn *pgx.Conn, tables []string, origin string, seq int64) (int64, error) {
	tag, err := conn.Exec(ctx, `DELETE FROM polyregion.row_version
		WHERE deleted AND origin = $1 AND src_seq <= $2 AND tbl = ANY($3::text[])`, origin, seq, tables)
	if err != nil {
		return 0, fmt.Errorf("collect tombstones: %w", err)
	}
	return tag.RowsAffected(), nil
}
