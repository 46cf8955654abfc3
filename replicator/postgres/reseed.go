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

// A region that already ran is re-seeded (it fell past a peer's outbox cap)
// by emptying its replicated state and then loading a peer's snapshot as a
// joining region does (run --join). Its own transactions must all have
// reached every peer first: the snapshot then holds them, and the region
// goes on numbering its transactions after them.

// ReseedCheck is what stands in the way of re-seeding a region.
type ReseedCheck struct {
	// Shipped is how many transactions of its own the region shipped.
	Shipped int64
	// NotApplied is, per peer, how many of them it has not confirmed.
	NotApplied map[string]int64
	// Unversioned counts local transactions still in the WAL that the
	// reader has not versioned (so not shipped).
	Unversioned int64
	// Problems names everything else in the way.
	Problems []string
}

// ReseedOrigin is the replication origin of the transaction that empties a
// region for re-seeding: the reader never ships what it deletes.
const ReseedOrigin = "polyregion_reseed"

type reseedQuerier interface {
	QueryRow(context.Context, string, ...any) pgx.Row
	Query(context.Context, string, ...any) (pgx.Rows, error)
}

// CheckReseed reads what stands in the way of re-seeding the region: its
// own transactions that have not reached every peer, local writes not
// versioned yet, a replicator still connected, local tables whose rows the
// deletes would change. PrepareReseed checks it all again, under its locks.
// Other replicator sessions stand in the way unless ownSessions: the
// replicator re-seeds its own region (its data plane stopped; its other
// sessions, such as the health prober's, do not write).
func CheckReseed(ctx context.Context, q reseedQuerier, region string, tables, peers []string, ownSessions bool) (ReseedCheck, error) {
	c, lsn, err := unconfirmed(ctx, q, region, peers)
	if err != nil {
		return c, err
	}
	var others []string
	rows, err := q.Query(ctx, `SELECT pid::text || ' (' || application_name || ')' FROM pg_catalog.pg_stat_activity
		WHERE datname = pg_catalog.current_database() AND application_name LIKE 'polyregion%' AND pid <> pg_catalog.pg_backend_pid() ORDER BY pid`)
	if err == nil {
		others, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		return c, fmt.Errorf("reseed: sessions: %w", err)
	}
	if len(others) > 0 && !ownSessions {
		c.Problems = append(c.Problems, fmt.Sprintf("replicator sessions are connected (%s): stop region %s's replicator first", strings.Join(others, ", "), region))
	}
	var active bool
	err = q.QueryRow(ctx, `SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, SlotName(region)).Scan(&active)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		c.Problems = append(c.Problems, fmt.Sprintf("the slot %s is gone, so local writes not yet versioned cannot be counted (re-seeding a region that lost its slot is not supported)", SlotName(region)))
		return c, nil
	case err != nil:
		return c, fmt.Errorf("reseed: slot: %w", err)
	case active:
		c.Problems = append(c.Problems, fmt.Sprintf("the slot %s is in use: stop region %s's replicator first", SlotName(region), region))
		return c, nil
	}
	// Local transactions (no origin) with a replicated change, committed
	// after the reader's position (a peeked commit carries its end, as the
	// reader's position does). Peeking decodes without consuming.
	err = q.QueryRow(ctx, `SELECT count(*) FROM (
			SELECT xid, max(lsn) AS commit_lsn,
				bool_or(pg_catalog.get_byte(data, 0) = 79) AS remote,
				bool_or(pg_catalog.get_byte(data, 0) IN (73, 85, 68, 84)) AS changes
			FROM pg_catalog.pg_logical_slot_peek_binary_changes($1, pg_catalog.pg_current_wal_lsn(), NULL,
				'proto_version', '1', 'publication_names', $2)
			GROUP BY xid) t
		WHERE changes AND NOT remote AND commit_lsn > $3::pg_lsn`, SlotName(region), PublicationName(region), lsn).Scan(&c.Unversioned)
	if err != nil {
		return c, fmt.Errorf("reseed: read what the reader has not versioned yet: %w", err)
	}
	refs, err := localReferences(ctx, q, tables)
	if err != nil {
		return c, err
	}
	if len(refs) > 0 {
		c.Problems = append(c.Problems, "tables that are not replicated reference replicated ones, so deleting the replicated rows would change or refuse them: "+strings.Join(refs, ", "))
	}
	return c, nil
}

// Unconfirmed reads how many transactions the region shipped and, per peer,
// how many of them the peer has not confirmed (the part of CheckReseed
// that reads no slot: it may run while the replicator runs).
func Unconfirmed(ctx context.Context, q reseedQuerier, region string, peers []string) (ReseedCheck, error) {
	c, _, err := unconfirmed(ctx, q, region, peers)
	return c, err
}

func unconfirmed(ctx context.Context, q reseedQuerier, region string, peers []string) (ReseedCheck, string, error) {
	c := ReseedCheck{NotApplied: map[string]int64{}}
	var lsn string
	err := q.QueryRow(ctx, `SELECT next_seq - 1, lsn::text FROM polyregion.reader_state WHERE slot = $1`, SlotName(region)).Scan(&c.Shipped, &lsn)
	if errors.Is(err, pgx.ErrNoRows) {
		lsn = "0/0"
	} else if err != nil {
		return c, "", fmt.Errorf("reseed: %w", err)
	}
	for _, p := range peers {
		var acked int64
		if err := q.QueryRow(ctx, `SELECT coalesce((SELECT seq FROM polyregion.peer_ack WHERE peer = $1), 0)`, p).Scan(&acked); err != nil {
			return c, "", fmt.Errorf("reseed: %w", err)
		}
		if n := c.Shipped - acked; n > 0 {
			c.NotApplied[p] = n
		}
	}
	return c, lsn, nil
}

// Ready reports whether nothing stands in the way.
func (c ReseedCheck) Ready() bool {
	for _, n := range c.NotApplied {
		if n > 0 {
			return false
		}
	}
	return c.Unversioned == 0 && len(c.Problems) == 0
}

// Refusal names what stands in the way ("" when nothing does).
func (c ReseedCheck) Refusal(region string) string {
	var out []string
	var behind []string
	peers := make([]string, 0, len(c.NotApplied))
	for p := range c.NotApplied {
		peers = append(peers, p)
	}
	sort.Strings(peers)
	for _, p := range peers {
		behind = append(behind, fmt.Sprintf("%s has not confirmed %d", p, c.NotApplied[p]))
	}
	if len(behind) > 0 {
		out = append(out, fmt.Sprintf("of the %d transactions region %s shipped, %s: they would be lost (start its replicator with writes to it stopped until status shows no backlog, stop it, try again)", c.Shipped, region, strings.Join(behind, ", ")))
	}
	if c.Unversioned > 0 {
		out = append(out, fmt.Sprintf("%d local transactions in the WAL are not versioned (not shipped) yet: they would be lost (start its replicator with writes to it stopped until status shows no backlog, stop it, try again)", c.Unversioned))
	}
	return strings.Join(append(out, c.Problems...), "; ")
}

// localReferences lists foreign keys from tables that are not replicated to
// replicated ones.
func localReferences(ctx context.Context, q reseedQuerier, tables []string) ([]string, error) {
	list := qualifiedNames(tables)
	rows, err := q.Query(ctx, `SELECT k.conrelid::pg_catalog.regclass::text || ' (' || k.conname || ') -> ' || k.confrelid::pg_catalog.regclass::text
		FROM pg_catalog.pg_constraint k
		WHERE k.contype = 'f'
		AND k.confrelid = ANY (SELECT pg_catalog.to_regclass(t)::pg_catalog.oid FROM pg_catalog.unnest($1::text[]) t)
		AND NOT k.conrelid = ANY (SELECT pg_catalog.to_regclass(t)::pg_catalog.oid FROM pg_catalog.unnest($1::text[]) t)
		ORDER BY 1`, list)
	if err != nil {
		return nil, fmt.Errorf("reseed: foreign keys: %w", err)
	}
	refs, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("reseed: foreign keys: %w", err)
	}
	return refs, nil
}

// ReseedPlan is what PrepareReseed empties and records.
type ReseedPlan struct {
	ConnString    string
	Region        string
	Tables, Peers []string
	// Shipped is how many transactions of its own the region shipped, as
	// CheckReseed read it.
	Shipped int64
	// ControlIndex is the control plane's log index of the reseed this
	// carries out (0 for one asked locally): the region records it, so it
	// is emptied once for each.
	ControlIndex uint64
	// OwnSessions: the region's own replicator prepares it (see
	// CheckReseed).
	OwnSessions bool
}

// PrepareReseed empties the region of its replicated state, in one
// transaction: the replicated tables' rows (deleted as each table's owner,
// under an origin the reader never ships), their versions, the applied
// positions, open parked changes and how it joined; its own transactions'
// numbering, its outbox and the conflict log stay. Under its locks it checks
// again all CheckReseed checks, and that the region shipped exactly
// p.Shipped transactions. It records that the region was emptied after
// shipping them and how far it had applied each source (a load then
// requires a snapshot holding exactly those of its own and at least as much
// of each source), and recreates the region's slot. It returns the rows
// deleted per table.
func PrepareReseed(ctx context.Context, p ReseedPlan) (map[string]int64, error) {
	connString, region, tables, peers, shipped := p.ConnString, p.Region, p.Tables, p.Peers, p.Shipped
	// A session of its own: it carries the origin to its end.
	conn, err := connectOwnerRun(ctx, connString)
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
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("reseed: %w", err)
	}
	defer tx.Rollback(context.Background())
	sorted := make([]string, len(order))
	for i, t := range order {
		sorted[i] = qualified(t)
	}
	sort.Strings(sorted)
	for _, q := range []string{
		`SET LOCAL lock_timeout = '10s'`,
		`SET CONSTRAINTS ALL DEFERRED`,
		`LOCK TABLE polyregion.applied, polyregion.joined, polyregion.reseeding, polyregion.reader_state IN EXCLUSIVE MODE`,
		"LOCK TABLE " + strings.Join(sorted, ", ") + " IN EXCLUSIVE MODE",
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			return nil, fmt.Errorf("reseed: %w", err)
		}
	}
	// Writes are paused: nothing the checks pass can change before commit.
	chk, err := CheckReseed(ctx, tx, region, tables, peers, p.OwnSessions)
	if err != nil {
		return nil, err
	}
	if !chk.Ready() {
		return nil, fmt.Errorf("reseed refused, nothing changed: %s", chk.Refusal(region))
	}
	if chk.Shipped != shipped {
		return nil, fmt.Errorf("reseed: region %s shipped %d transactions since it was checked: check again", region, chk.Shipped-shipped)
	}
	deleted := map[string]int64{}
	owners := ownerRun{tx: tx}
	for _, t := range order {
		n, err := owners.exec(ctx, t, "DELETE FROM ONLY "+qualified(t))
		if err != nil {
			return nil, fmt.Errorf("reseed: empty %s as its owner: %w", t, err)
		}
		deleted[t] = n
	}
	if err := owners.deferred(ctx); err != nil {
		return nil, fmt.Errorf("reseed: check deferred constraints: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO polyregion.reseeding (region, shipped, applied, control_index)
		SELECT $1, $2, coalesce(pg_catalog.jsonb_object_agg(source, seq), '{}'), $3 FROM polyregion.applied
		ON CONFLICT (region) DO UPDATE SET shipped = excluded.shipped, control_index = GREATEST(polyregion.reseeding.control_index, excluded.control_index),
			applied = (SELECT coalesce(pg_catalog.jsonb_object_agg(k, GREATEST(coalesce((polyregion.reseeding.applied ->> k)::int8, 0), coalesce((excluded.applied ->> k)::int8, 0))), '{}')
				FROM (SELECT pg_catalog.jsonb_object_keys(polyregion.reseeding.applied) UNION SELECT pg_catalog.jsonb_object_keys(excluded.applied)) AS ks(k)),
			prepared_at = pg_catalog.now()`, region, shipped, int64(p.ControlIndex)); err != nil {
		return nil, fmt.Errorf("reseed: %w", err)
	}
	for _, q := range []string{
		`DELETE FROM polyregion.row_version WHERE tbl = ANY ($1::text[])`,
		forgetDeleteMarksSQL,
		`DELETE FROM polyregion.parked WHERE resolved_at IS NULL AND tbl = ANY ($1::text[])`,
	} {
		if _, err := tx.Exec(ctx, q, tables); err != nil {
			return nil, fmt.Errorf("reseed: %w", err)
		}
	}
	for _, q := range []string{`DELETE FROM polyregion.applied`, `DELETE FROM polyregion.joined`, `DELETE FROM polyregion.slot_lost`, `DELETE FROM polyregion.join_units`, `DELETE FROM polyregion.join_replay`, `DELETE FROM polyregion.tombstone_floor`} {
		if _, err := tx.Exec(ctx, q); err != nil {
			return nil, fmt.Errorf("reseed: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("reseed: commit: %w", err)
	}
	if err := resetSlot(ctx, conn, region); err != nil {
		return deleted, fmt.Errorf("reseed: the region was emptied, but its slot could not be recreated (the load recreates it): %w", err)
	}
	return deleted, nil
}
