package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
)

// A region that already ran is re-seeded (it fell past a peer's outbox cap,
// or was restored from a backup) by emptying its replicated state and then
// loading a peer's snapshot as a joining region does (run --join). Its own
// transactions must all have reached every peer first: the snapshot then
// holds them, and the region goes on numbering its transactions after them.

// ReseedCheck is what stands in the way of re-seeding a region.
type ReseedCheck struct {
	// Shipped is how many transactions of its own the region shipped.
	Shipped int64
	// NotApplied is, per peer, how many of them it has not confirmed.
	NotApplied map[string]int64
	// Unversioned counts local transactions still in the WAL that the
	// reader has not versioned (so not shipped); -1 when the region's slot
	// is gone and nobody can tell.
	Unversioned int64
}

// Drained reports whether every transaction the region wrote reached
// every peer.
func (c ReseedCheck) Drained() bool {
	for _, n := range c.NotApplied {
		if n > 0 {
			return false
		}
	}
	return c.Unversioned == 0
}

// ReseedOrigin is the replication origin of the transaction that empties a
// region for re-seeding: the reader never ships what it deletes.
const ReseedOrigin = "polyregion_reseed"

// CheckReseed reads what stands in the way of re-seeding the region. Its
// replicator must be stopped (its slot not in use).
func CheckReseed(ctx context.Context, conn *pgx.Conn, region string, peers []string) (ReseedCheck, error) {
	c := ReseedCheck{NotApplied: map[string]int64{}}
	var lsn string
	err := conn.QueryRow(ctx, `SELECT next_seq - 1, lsn::text FROM polyregion.reader_state WHERE slot = $1`, SlotName(region)).Scan(&c.Shipped, &lsn)
	if errors.Is(err, pgx.ErrNoRows) {
		lsn = "0/0"
	} else if err != nil {
		return c, fmt.Errorf("reseed: %w", err)
	}
	for _, p := range peers {
		var acked int64
		if err := conn.QueryRow(ctx, `SELECT coalesce((SELECT seq FROM polyregion.peer_ack WHERE peer = $1), 0)`, p).Scan(&acked); err != nil {
			return c, fmt.Errorf("reseed: %w", err)
		}
		c.NotApplied[p] = max(c.Shipped-acked, 0)
	}
	var active bool
	err = conn.QueryRow(ctx, `SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, SlotName(region)).Scan(&active)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		c.Unversioned = -1
		return c, nil
	case err != nil:
		return c, fmt.Errorf("reseed: slot: %w", err)
	case active:
		return c, fmt.Errorf("reseed: slot %s is in use: stop region %s's replicator first", SlotName(region), region)
	}
	// Local transactions (no origin) with a replicated change, committed
	// at or after the reader's position. Peeking decodes without consuming.
	err = conn.QueryRow(ctx, `SELECT count(*) FROM (
			SELECT xid, max(lsn) AS commit_lsn,
				bool_or(pg_catalog.get_byte(data, 0) = 79) AS remote,
				bool_or(pg_catalog.get_byte(data, 0) IN (73, 85, 68, 84)) AS changes
			FROM pg_catalog.pg_logical_slot_peek_binary_changes($1, NULL, NULL,
				'proto_version', '1', 'publication_names', $2)
			GROUP BY xid) t
		WHERE changes AND NOT remote AND commit_lsn >= $3::pg_lsn`, SlotName(region), PublicationName(region), lsn).Scan(&c.Unversioned)
	if err != nil {
		return c, fmt.Errorf("reseed: read what the reader has not versioned yet: %w", err)
	}
	return c, nil
}

// PrepareReseed empties the region of its replicated state, in one
// transaction: the replicated tables' rows (deleted as each table's owner,
// under an origin the reader never ships), their versions, the applied
// positions, open parked changes and how it joined; its own transactions'
// numbering, its outbox and the conflict log stay. It records that the
// region was emptied after shipping shipped transactions (a load then
// requires a snapshot holding exactly those) and recreates the region's
// slot. It returns the rows deleted per table.
func PrepareReseed(ctx context.Context, connString, region string, tables []string, shipped int64) (map[string]int64, error) {
	// A session of its own: it carries the origin to its end.
	conn, err := Connect(ctx, connString)
	if err != nil {
		return nil, fmt.Errorf("reseed: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_create($1)
		WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = $1)`, ReseedOrigin); err != nil {
		return nil, fmt.Errorf("reseed: replication origin: %w", err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_session_setup($1)`, ReseedOrigin); err != nil {
		return nil, fmt.Errorf("reseed: replication origin: %w", err)
	}
	order, err := referenceOrder(ctx, conn, tables)
	if err != nil {
		return nil, err
	}
	slices.Reverse(order) // tables that reference others first
	deleted := map[string]int64{}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("reseed: %w", err)
	}
	defer tx.Rollback(context.Background())
	list := make([]string, len(order))
	for i, t := range order {
		list[i] = qualified(t)
	}
	sorted := append([]string(nil), list...)
	sort.Strings(sorted)
	for _, q := range []string{
		`SET CONSTRAINTS ALL DEFERRED`,
		`LOCK TABLE polyregion.applied, polyregion.joined, polyregion.reseeding, polyregion.reader_state IN EXCLUSIVE MODE`,
		"LOCK TABLE " + strings.Join(sorted, ", ") + " IN EXCLUSIVE MODE",
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			return nil, fmt.Errorf("reseed: %w", err)
		}
	}
	var now int64
	if err := tx.QueryRow(ctx, `SELECT coalesce((SELECT next_seq - 1 FROM polyregion.reader_state WHERE slot = $1), 0)`, SlotName(region)).Scan(&now); err != nil {
		return nil, fmt.Errorf("reseed: %w", err)
	}
	if now != shipped {
		return nil, fmt.Errorf("reseed: region %s shipped %d transactions since it was checked: check again", region, now-shipped)
	}
	var ranAs string
	for _, t := range order {
		fn, err := execAs(ctx, tx, t)
		if err != nil {
			return nil, fmt.Errorf("reseed: %w", err)
		}
		var n int64
		if fn == "" {
			tag, err := tx.Exec(ctx, "DELETE FROM ONLY "+qualified(t))
			if err != nil {
				return nil, fmt.Errorf("reseed: empty %s: %w", t, err)
			}
			n = tag.RowsAffected()
		} else {
			if ranAs == "" {
				ranAs = fn
			}
			if err := tx.QueryRow(ctx, "SELECT "+fn+"($1, '{}'::text[])", "DELETE FROM ONLY "+qualified(t)).Scan(&n); err != nil {
				return nil, fmt.Errorf("reseed: empty %s as its owner: %w", t, err)
			}
		}
		deleted[t] = n
	}
	if ranAs != "" {
		if _, err := tx.Exec(ctx, "SELECT "+ranAs+"('SET CONSTRAINTS ALL IMMEDIATE', NULL)"); err != nil {
			return nil, fmt.Errorf("reseed: check deferred constraints: %w", err)
		}
	}
	for _, q := range []string{
		`DELETE FROM polyregion.row_version WHERE tbl = ANY ($1::text[])`,
		`DELETE FROM polyregion.parked WHERE resolved_at IS NULL AND tbl = ANY ($1::text[])`,
	} {
		if _, err := tx.Exec(ctx, q, tables); err != nil {
			return nil, fmt.Errorf("reseed: %w", err)
		}
	}
	for _, q := range []string{`DELETE FROM polyregion.applied`, `DELETE FROM polyregion.joined`} {
		if _, err := tx.Exec(ctx, q); err != nil {
			return nil, fmt.Errorf("reseed: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO polyregion.reseeding (region, shipped) VALUES ($1, $2)
		ON CONFLICT (region) DO UPDATE SET shipped = excluded.shipped, prepared_at = pg_catalog.now()`, region, shipped); err != nil {
		return nil, fmt.Errorf("reseed: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("reseed: commit: %w", err)
	}
	return deleted, resetSlot(ctx, conn, region)
}
