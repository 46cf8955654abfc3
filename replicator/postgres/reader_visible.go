package postgres

// Waiting for a decoded transaction to be visible to the reader's queries.
//
// A logical walsender may send a transaction as soon as its commit record
// is flushed, a moment before the committing session lets other sessions
// see it (PostgreSQL writes the record, then leaves the proc array; under
// synchronous replication it waits for the standby in between). What the
// reader looks up in the catalog or its own tables about the transaction
// it is decoding (a table's key and column types, a seed's window) can
// therefore be missing or old: a type created in the same transaction as
// the rows that use it reads as "???". So the reader waits until the
// transaction is visible, for at most visibleWithin; past that it fails
// and starts again from its confirmed position (nothing is lost).

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// visibleWithin bounds the wait for a decoded transaction to be visible.
const visibleWithin = 10 * time.Second

// untilTrue calls check until it reports true, 1 ms apart at first and
// doubling to 100 ms, for at most within. It returns whether check did
// report true; an error of check or the end of ctx ends the wait.
func untilTrue(ctx context.Context, within time.Duration, check func() (bool, error)) (bool, error) {
	deadline := time.Now().Add(within)
	pause := time.Millisecond
	for {
		ok, err := check()
		if err != nil || ok {
			return ok, err
		}
		if time.Now().After(deadline) {
			return false, nil
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(pause):
		}
		pause = min(2*pause, 100*time.Millisecond)
	}
}

// txnVisibleSQL reports whether the transaction with 32-bit id $1, which
// committed, is visible to a snapshot taken now. Its full id is the one
// with that low half nearest the snapshot's xmax: ids in use lie within
// 2^31 of each other, and a transaction still finishing can lie at or past
// xmax (xmax follows the latest completed one).
const txnVisibleSQL = `SELECT f.full < 0 OR pg_catalog.pg_visible_in_snapshot(f.full::text::pg_catalog.xid8, f.snap)
	FROM (SELECT q.snap, CASE WHEN q.cand > q.xmax + 2147483648 THEN q.cand - 4294967296
	                          WHEN q.cand < q.xmax - 2147483648 THEN q.cand + 4294967296
	                          ELSE q.cand END AS full
	      FROM (SELECT p.snap, p.xmax, ((p.xmax >> 32) << 32) | $1::bigint AS cand
	            FROM (SELECT s.snap, pg_catalog.pg_snapshot_xmax(s.snap)::text::bigint AS xmax
	                  FROM (SELECT pg_catalog.pg_current_snapshot() AS snap) s) p) q) f`

// TransactionVisible reports whether the committed transaction xid is
// visible to a query on conn now.
func TransactionVisible(ctx context.Context, conn *pgx.Conn, xid uint32) (bool, error) {
	var v bool
	err := conn.QueryRow(ctx, txnVisibleSQL, int64(xid)).Scan(&v)
	return v, err
}

// awaitVisible waits until transaction xid is visible to conn's queries.
func awaitVisible(ctx context.Context, conn *pgx.Conn, xid uint32) error {
	ok, err := untilTrue(ctx, visibleWithin, func() (bool, error) { return TransactionVisible(ctx, conn, xid) })
	switch {
	case err != nil:
		return fmt.Errorf("reader: is transaction %d visible yet: %w", xid, err)
	case !ok:
		return fmt.Errorf("reader: transaction %d is in the change stream and not yet visible to other sessions after %s (a synchronous standby that does not confirm?)", xid, visibleWithin)
	}
	return nil
}

// catalogSeesCurrent makes sure the transaction being decoded is visible
// before what is looked up about it is read (once per transaction).
func (s *readSession) catalogSeesCurrent() error {
	if s.cur == nil || s.cur.visible {
		return nil
	}
	if err := awaitVisible(s.ctx, s.conn, s.cur.xid); err != nil {
		return err
	}
	s.cur.visible = true
	return nil
}
