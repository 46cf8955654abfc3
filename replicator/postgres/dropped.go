package postgres

// Tables dropped at an epoch (see regions/tables.go): once the change is in
// effect no region ships their changes any more, and what was kept to
// replicate them goes.

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// purgeBatch is how many recorded versions of a dropped table one
// statement deletes.
const purgeBatch = 10000

// PurgeVersions deletes the recorded versions (tombstones included) of
// tables the cluster dropped for good (regions.Cluster.DroppedSettled), a
// batch per statement, and returns how many it deleted. Added again, such
// a table is seeded again, with versions of its own.
func PurgeVersions(ctx context.Context, conn *pgx.Conn, tables []string) (int64, error) {
	var total int64
	for len(tables) > 0 {
		tag, err := conn.Exec(ctx, `DELETE FROM polyregion.row_version WHERE (tbl, key) IN (
			SELECT tbl, key FROM polyregion.row_version WHERE tbl = ANY ($1::text[]) LIMIT $2)`, tables, purgeBatch)
		if err != nil {
			return total, fmt.Errorf("purge the versions of dropped tables: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < purgeBatch {
			return total, nil
		}
	}
	return total, nil
}
