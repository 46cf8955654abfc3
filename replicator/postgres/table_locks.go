package postgres

// Locks the replicator takes on the applications' tables. Creating a
// trigger, publishing a table or seeding it conflicts with the
// applications' writes; a lock request that waits also holds every write
// that comes after it (PostgreSQL queues them behind it). So no such
// request waits long: each wait is bounded by tableLockAttempt and tried
// again, for a budget, after which the work is refused with a *LockBusy
// naming the sessions that held the table. Work already in place takes no
// lock at all.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// tableLockAttempt bounds one wait for a lock on an application's table:
// writers that come after the wait queue behind it, so it is short, and
// tried again.
const tableLockAttempt = 200 * time.Millisecond

// prepareLockBudget bounds how long preparing the data plane tries to lock
// a table it has to change (the data plane is not running meanwhile; the
// start is tried again after a backoff).
const prepareLockBudget = 5 * time.Second

// LockBusy is work on tables the applications held for longer than the
// replicator waits for their lock.
type LockBusy struct {
	Tables  []string
	What    string // what the lock was for
	Waited  time.Duration
	Holders []string // the sessions that held the tables, described
}

func (e *LockBusy) Error() string {
	held := "sessions that ended meanwhile"
	if len(e.Holders) > 0 {
		held = strings.Join(e.Holders, "; ")
	}
	return fmt.Sprintf("%s: could not lock %s within %s (each wait at most %s, so that the applications' writes do not queue behind it): held by %s",
		e.What, strings.Join(e.Tables, ", "), e.Waited.Round(time.Millisecond), tableLockAttempt, held)
}

// lockTables begins a transaction holding tables in mode and returns it
// with when it got the lock. Each wait is bounded by tableLockAttempt
// (lock_timeout stays so for the transaction: a later lock it needs waits
// no longer); attempts go on for budget, then a *LockBusy for what says
// which sessions held the tables.
func lockTables(ctx context.Context, conn *pgx.Conn, tables []string, mode string, budget time.Duration, what string) (pgx.Tx, time.Time, error) {
	names := qualifiedNames(tables)
	var tx pgx.Tx
	err := retryLocked(ctx, conn, tables, names, budget, what, func() error {
		t, err := beginLocking(ctx, conn)
		if err == nil && len(names) > 0 {
			_, err = t.Exec(ctx, "LOCK TABLE "+strings.Join(names, ", ")+" IN "+mode+" MODE")
		}
		if err != nil {
			if t != nil {
				t.Rollback(context.Background())
			}
			return err
		}
		tx = t
		return nil
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	return tx, time.Now(), nil
}

// beginLocking begins a transaction in which each lock waits at most
// tableLockAttempt.
func beginLocking(ctx context.Context, conn *pgx.Conn) (pgx.Tx, error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = '%dms'", tableLockAttempt.Milliseconds())); err != nil {
		tx.Rollback(context.Background())
		return nil, err
	}
	return tx, nil
}

// retryLocked runs attempt (whose lock waits end at tableLockAttempt, see
// beginLocking) until it does not fail for a lock, for at most budget;
// then a *LockBusy for what on names (as the user knows them; relations:
// the same as SQL names), with the sessions that held them.
func retryLocked(ctx context.Context, conn *pgx.Conn, names, relations []string, budget time.Duration, what string, attempt func() error) error {
	began := time.Now()
	for {
		err := attempt()
		var pe *pgconn.PgError
		switch {
		case err == nil:
			return nil
		case !errors.As(err, &pe) || pe.Code != "55P03":
			return fmt.Errorf("%s: %w", what, err)
		case time.Since(began) > budget:
			holders, herr := lockHolders(ctx, conn, relations)
			if herr != nil {
				holders = []string{"(the sessions could not be listed: " + herr.Error() + ")"}
			}
			return &LockBusy{Tables: names, What: what, Waited: time.Since(began), Holders: holders}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(tableLockAttempt / 2):
		}
	}
}

// changeTables runs stmts in one transaction holding tables in mode (see
// lockTables), for what; nothing when stmts is empty.
func changeTables(ctx context.Context, conn *pgx.Conn, tables []string, mode, what string, stmts []string) error {
	if len(stmts) == 0 {
		return nil
	}
	tx, _, err := lockTables(ctx, conn, tables, mode, prepareLockBudget, what)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// lockHolders describes the other sessions holding a lock on relations
// (SQL names): pid, role, application, and when visible to the
// replicator's role, state and how long their transaction has run. Never
// their queries (they can carry the applications' data).
func lockHolders(ctx context.Context, conn *pgx.Conn, relations []string) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT DISTINCT l.pid, coalesce(a.usename::text, ''), coalesce(a.application_name, ''), coalesce(a.state, ''),
			coalesce(pg_catalog.floor(extract(epoch FROM pg_catalog.now() - a.xact_start))::int8, -1)
		FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_catalog.pg_backend_pid()
		  AND l.relation = ANY (SELECT pg_catalog.to_regclass(n)::pg_catalog.oid FROM pg_catalog.unnest($1::text[]) n)
		ORDER BY 1 LIMIT 10`, relations)
	if err != nil {
		return nil, err
	}
	var out []string
	for rows.Next() {
		var pid, age int64
		var role, app, state string
		if err := rows.Scan(&pid, &role, &app, &state, &age); err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, describeHolder(pid, role, app, state, age))
	}
	return out, rows.Err()
}

// describeHolder renders one session holding a lock.
func describeHolder(pid int64, role, app, state string, xactSeconds int64) string {
	parts := []string{fmt.Sprintf("pid %d", pid)}
	if role != "" {
		parts = append(parts, "role "+role)
	}
	if app != "" {
		parts = append(parts, fmt.Sprintf("application %q", app))
	}
	if state != "" {
		parts = append(parts, state)
	}
	if xactSeconds >= 0 {
		parts = append(parts, fmt.Sprintf("transaction open %ds", xactSeconds))
	}
	return strings.Join(parts, ", ")
}
