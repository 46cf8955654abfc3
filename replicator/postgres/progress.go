package postgres

import (
	"context"
	"encoding/json"
	"errors"
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

// SettledPositions is AppliedPositions capped below each source's oldest
// change still parked here: what this region has really taken in, for
// tombstone collection.
func SettledPositions(ctx context.Context, conn *pgx.Conn) (map[conflict.RegionID]int64, error) {
	out, err := AppliedPositions(ctx, conn)
	if err != nil {
		return nil, err
	}
	rows, err := conn.Query(ctx, `SELECT source, min(seq) FROM polyregion.parked WHERE resolved_at IS NULL GROUP BY source`)
	if err != nil {
		return nil, fmt.Errorf("read parked positions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		var seq int64
		if err := rows.Scan(&s, &seq); err != nil {
			return nil, fmt.Errorf("read parked positions: %w", err)
		}
		if r := conflict.RegionID(s); out[r] >= seq {
			out[r] = seq - 1
		}
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
// A tombstone with siblings (writes that lost to the delete and may still
// win once a later write supersedes it) goes only once every sibling is as
// settled: its origin's sequence number up to safe[origin], so that no
// write still to come can be concurrent with it.
func CollectTombstones(ctx context.Context, conn *pgx.Conn, tables []string, origin string, seq int64, safe map[string]int64) (int64, error) {
	settled, err := json.Marshal(safe)
	if err != nil {
		return 0, fmt.Errorf("collect tombstones: %w", err)
	}
	tag, err := conn.Exec(ctx, `DELETE FROM polyregion.row_version v
		WHERE v.deleted AND v.origin = $1 AND v.src_seq <= $2 AND v.tbl = ANY($3::text[])
		  AND NOT EXISTS (SELECT FROM pg_catalog.jsonb_array_elements(coalesce(v.siblings, '[]')) s
		      WHERE coalesce((s->>'seq')::bigint, 0) > coalesce(($4::jsonb->>(s->>'origin'))::bigint, 0))`, origin, seq, tables, string(settled))
	if err != nil {
		return 0, fmt.Errorf("collect tombstones: %w", err)
	}
	return tag.RowsAffected(), nil
}

// Status is a region's replication state as its database records it.
type Status struct {
	Region string `json:"region"`
	// Applied is, per source region, the last transaction applied here and
	// when.
	Applied map[string]AppliedStatus `json:"applied"`
	// Shipped is the last transaction this region's reader versioned.
	Shipped int64 `json:"shipped"`
	// Acked is, per peer, the last of this region's transactions the peer
	// confirmed applied; Backlog how many it still lacks.
	Acked   map[string]int64 `json:"acked"`
	Backlog map[string]int64 `json:"backlog"`
	// OutboxRows and OutboxBytes is what the outbox holds for peers.
	OutboxRows  int64 `json:"outbox_rows"`
	OutboxBytes int64 `json:"outbox_bytes"`
	// SlotRetainedBytes is the WAL the region's slot holds back.
	SlotRetainedBytes int64  `json:"slot_retained_bytes"`
	SlotActive        bool   `json:"slot_active"`
	SlotWALStatus     string `json:"slot_wal_status"`
	Conflicts         int64  `json:"conflicts"`
	ParkedOpen        int64  `json:"parked_open"`
	Tombstones        int64  `json:"tombstones"`
	// RowsWithSiblings counts rows whose version keeps concurrent writes
	// that lost and may still win (a tombstone among them is not
	// collected).
	RowsWithSiblings int64 `json:"rows_with_siblings"`
	// Joined says how the region joined, when it loaded another region's
	// snapshot (nil otherwise).
	Joined *JoinedStatus `json:"joined,omitempty"`
}

// JoinedStatus is how a region joined: from which region's snapshot, as of
// which of that region's transactions, how many rows it loaded, how long
// the source's writers paused for it, and when.
type JoinedStatus struct {
	Source      string `json:"source"`
	SourceSeq   int64  `json:"source_seq"`
	Rows        int64  `json:"rows"`
	PauseMillis int64  `json:"source_writers_paused_ms"`
	At          string `json:"at"`
}

// AppliedStatus is one source's apply position.
type AppliedStatus struct {
	Seq       int64  `json:"seq"`
	AppliedAt string `json:"applied_at"`
}

// ReadStatus gathers a region's replication state.
func ReadStatus(ctx context.Context, conn *pgx.Conn, region string, peers []string) (Status, error) {
	st := Status{Region: region, Applied: map[string]AppliedStatus{}, Acked: map[string]int64{}, Backlog: map[string]int64{}}
	rows, err := conn.Query(ctx, `SELECT source, seq, applied_at::text FROM polyregion.applied ORDER BY source`)
	if err != nil {
		return st, fmt.Errorf("status: %w", err)
	}
	for rows.Next() {
		var s string
		var a AppliedStatus
		if err := rows.Scan(&s, &a.Seq, &a.AppliedAt); err != nil {
			rows.Close()
			return st, fmt.Errorf("status: %w", err)
		}
		st.Applied[s] = a
	}
	rows.Close()
	var err2 error
	if st.Shipped, err2 = VersionedSeq(ctx, conn, region); err2 != nil {
		return st, err2
	}
	for _, p := range peers {
		var acked int64
		if err := conn.QueryRow(ctx, `SELECT coalesce((SELECT seq FROM polyregion.peer_ack WHERE peer = $1), 0)`, p).Scan(&acked); err != nil {
			return st, fmt.Errorf("status: %w", err)
		}
		st.Acked[p] = acked
		st.Backlog[p] = max(0, st.Shipped-acked)
	}
	err = conn.QueryRow(ctx, `SELECT count(*), coalesce(sum(pg_catalog.length(payload)), 0) FROM polyregion.outbox`).Scan(&st.OutboxRows, &st.OutboxBytes)
	if err != nil {
		return st, fmt.Errorf("status: %w", err)
	}
	err = conn.QueryRow(ctx, `SELECT coalesce(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn), 0)::bigint, active, coalesce(wal_status, '')
		FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, SlotName(region)).Scan(&st.SlotRetainedBytes, &st.SlotActive, &st.SlotWALStatus)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return st, fmt.Errorf("status: slot: %w", err)
	}
	// Absent until a replicator of this release has run here.
	var hasJoined bool
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.to_regclass('polyregion.joined') IS NOT NULL`).Scan(&hasJoined); err != nil {
		return st, fmt.Errorf("status: %w", err)
	}
	if hasJoined {
		var j JoinedStatus
		err = conn.QueryRow(ctx, `SELECT source, source_seq, rows, pause_ms, joined_at::text FROM polyregion.joined`).Scan(&j.Source, &j.SourceSeq, &j.Rows, &j.PauseMillis, &j.At)
		switch {
		case err == nil:
			st.Joined = &j
		case !errors.Is(err, pgx.ErrNoRows):
			return st, fmt.Errorf("status: joined: %w", err)
		}
	}
	err = conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM polyregion.conflict_log),
		(SELECT count(*) FROM polyregion.parked WHERE resolved_at IS NULL),
		(SELECT count(*) FROM polyregion.row_version WHERE deleted),
		(SELECT count(*) FROM polyregion.row_version WHERE siblings IS NOT NULL)`).Scan(&st.Conflicts, &st.ParkedOpen, &st.Tombstones, &st.RowsWithSiblings)
	if err != nil {
		return st, fmt.Errorf("status: %w", err)
	}
	return st, nil
}
