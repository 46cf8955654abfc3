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
// for a row lock at most the lock timeout (well below PostgreSQL's
// deadlock_timeout of 1 s: in a cycle it is always the applier that gives
// way, and no application transaction fails); after such a failure it
// applies a quarter as many source transactions per local transaction, down
// to one (then it locks exactly as the source transaction did, like
// PostgreSQL's own apply worker), and each further failure doubles the
// wait, up to waiting as long as it takes (an application may hold a row
// for minutes). Twenty commits in a row without a failure double the
// transaction size again and halve the wait, back to no limit and the base
// timeout.
type contention struct {
	base    time.Duration // configured lock timeout
	timeout time.Duration // current lock timeout (0: no limit)
	session time.Duration // what the session has (-1: unknown)
	limit   int           // source transactions per local transaction (0: no limit)
	calm    int           // commits since the last lock failure
}

const (
	// maxLockTimeout: past this the applier waits without limit.
	maxLockTimeout = 5 * time.Second
	// calmCommits: commits without a lock failure before transactions grow.
	calmCommits = 20
	// growLimit: past this size transactions are no longer limited.
	growLimit = 512
)

func newContention(base time.Duration) contention {
	return contention{base: base, timeout: base, session: base}
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
	switch {
	case c.timeout == 0:
	case 2*c.timeout > maxLockTimeout:
		c.timeout = 0
	default:
		c.timeout *= 2
	}
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
	switch {
	case c.timeout == 0:
		c.timeout = maxLockTimeout
	case c.timeout/2 < c.base:
		c.timeout = c.base
	default:
		c.timeout /= 2
	}
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
// after its source (server logs then tell applier sessions apart) with
// the base lock timeout.
func connectApplier(ctx context.Context, connString, source string, lockTimeout time.Duration) (*pgx.Conn, error) {
	return connect(ctx, connString, map[string]string{
		"enable_hashjoin": "off", "enable_mergejoin": "off",
		"application_name": "polyregion-apply-" + source,
		"lock_timeout":     fmt.Sprintf("%d", lockTimeout.Milliseconds()),
	})
}
