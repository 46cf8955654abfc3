package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// contention sizes an applier's local transactions and its row lock waits
// by what the last attempts met.
//
// Applications lock the rows they write most (counters, totals) all the
// time. An applier that held many of those rows in one long transaction,
// or waited long for one while holding others, would queue every writer of
// the region behind it and, in a lock cycle, have PostgreSQL fail an
// application's transaction after deadlock_timeout. So the applier waits
// for a row lock at most the lock timeout, always below the server's
// deadlock_timeout (three quarters of it at most): in a cycle the applier
// normally gives way before the application's deadlock check fires (the
// application would lose only if it had already waited for the applier
// most of deadlock_timeout when the cycle closed). After
// such a failure it applies a quarter as many source transactions per local
// transaction, down to one, and waits twice as long, up to that cap; twenty
// commits in a row without a failure double the transaction size again and
// halve the wait, back to no limit and the base timeout. A row an
// application holds longer than the cap is retried, batch after batch, until
// it is free.
type contention struct {
	base    time.Duration // configured lock timeout
	cap     time.Duration // the longest wait: below deadlock_timeout
	timeout time.Duration // current lock timeout
	session time.Duration // what the session has (-1: unknown)
	limit   int           // source transactions per local transaction (0: no limit)
	calm    int           // commits since the last lock failure
}

const (
	// calmCommits: commits without a lock failure before transactions grow.
	calmCommits = 20
	// growLimit: past this size transactions are no longer limited.
	growLimit = 512
)

// newContention starts at base, capped at three quarters of the server's
// deadlock_timeout.
func newContention(base, deadlockTimeout time.Duration) contention {
	limit := deadlockTimeout * 3 / 4
	if limit < time.Millisecond {
		limit = time.Millisecond
	}
	base = min(base, limit)
	return contention{base: base, cap: limit, timeout: base, session: -1}
}

// chunk is how many of n pending source transactions the next local
// transaction applies.
func (c *contention) chunk(n int) int {
	if c.limit > 0 && n > c.limit {
		return c.limit
	}
	return n
}

// failed records a lock timeout or deadlock of a transaction that applied n
// source transactions.
func (c *contention) failed(n int) {
	c.calm = 0
	c.limit = max(1, n/4)
	c.timeout = min(2*c.timeout, c.cap)
}

// succeeded records a commit.
func (c *contention) succeeded() {
	if c.limit == 0 && c.timeout == c.base {
		return
	}
	if c.calm++; c.calm < calmCommits {
		return
	}
	c.calm = 0
	if c.limit > 0 {
		if c.limit *= 2; c.limit > growLimit {
			c.limit = 0
		}
	}
	c.timeout = max(c.timeout/2, c.base)
}

// sync sets the session's lock timeout to the current one.
func (c *contention) sync(ctx context.Context, conn *pgx.Conn) error {
	if c.session == c.timeout {
		return nil
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("SET lock_timeout = %d", c.timeout.Milliseconds())); err != nil {
		c.session = -1
		return fmt.Errorf("apply: set lock_timeout: %w", err)
	}
	c.session = c.timeout
	return nil
}

// isLockFailure reports a lock wait that timed out or a deadlock.
func isLockFailure(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "55P03" || pe.Code == "40P01")
}

// connectApplier opens an applier's session: a data-plane session named
// after its source (server logs then tell applier sessions apart). It
// returns the server's deadlock_timeout too.
func connectApplier(ctx context.Context, connString, source string) (*pgx.Conn, time.Duration, error) {
	conn, err := connectWith(ctx, connString, map[string]string{
		"enable_hashjoin": "off", "enable_mergejoin": "off",
		"application_name": "polyregion-apply-" + source,
		// Commits do not wait for the WAL flush (see node/durable.go:
		// positions are acknowledged only once durable).
		"synchronous_commit": "off",
	}, func(c *pgx.ConnConfig) {
		// Application code fired by applied rows runs in this session (as
		// the table's owner, see ownerexec.go) and may PREPARE and
		// DEALLOCATE statements: a statement it put in place of one this
		// session prepared would run with the replicator's privileges. So
		// the session prepares nothing by name: each statement is sent
		// unnamed, with its description cached on this side.
		c.DefaultQueryExecMode = pgx.QueryExecModeCacheDescribe
	})
	if err != nil {
		return nil, 0, err
	}
	// The applier's writes of max and min columns are exact (see
	// maxMinValues); the merge trigger is for the applications'.
	if _, err := conn.Exec(ctx, "SELECT pg_catalog.set_config($1, 'on', false)", ExactMerges); err != nil {
		conn.Close(context.Background())
		return nil, 0, fmt.Errorf("set %s: %w", ExactMerges, err)
	}
	var ms int64 // pg_settings gives deadlock_timeout in milliseconds
	if err := conn.QueryRow(ctx, `SELECT s.setting::pg_catalog.int8 FROM pg_catalog.pg_settings s WHERE s.name = 'deadlock_timeout'`).Scan(&ms); err != nil {
		conn.Close(context.Background())
		return nil, 0, fmt.Errorf("read deadlock_timeout: %w", err)
	}
	return conn, time.Duration(ms) * time.Millisecond, nil
}
