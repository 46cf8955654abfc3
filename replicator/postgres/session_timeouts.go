package postgres

// Session timeouts: a role's or database's statement_timeout, lock_timeout,
// idle_in_transaction_session_timeout, idle_session_timeout or (from
// PostgreSQL 17) transaction_timeout, set for applications, applies to
// every session of that role or database, the replicator's too. Its work is
// not the applications': a join copies a table in chunks that take as long
// as they take, its source holds one transaction for the whole copy (idle
// while the joining region loads), an applier writes a large transaction
// in one go, the reader's versions wait for rows an applier holds, the
// outbox is trimmed by one statement. Cut by a timeout, each is retried
// from where it began and cut again: a join that never ends, a peer that
// never catches up. So every replicator session turns them off, as pg_dump
// does for its own, and bounds its lock waits itself where it must not
// wait long (the applier's and a snapshot's locks: see contention.go and
// pauseWriters). A connection string that names one of them as a
// parameter of its own (statement_timeout=10min) keeps its value; one set
// inside options (-c statement_timeout=10min) does not. Code an applied
// row fires that changes them has them put back (see execAsBody).

import (
	"context"

	"github.com/jackc/pgx/v5/pgconn"
)

// sessionTimeouts are the timeouts every PostgreSQL version the replicator
// supports knows, turned off at connection.
var sessionTimeouts = []string{"statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout"}

// transactionTimeoutMajor is the first major version with
// transaction_timeout; a server before it refuses the name at connection,
// so it is turned off once connected.
const transactionTimeoutMajor = 17

// pinTimeouts turns the session timeouts off for the sessions cfg opens,
// unless cfg (its connection string) sets them.
func pinTimeouts(cfg *pgconn.Config) {
	for _, p := range sessionTimeouts {
		if _, set := cfg.RuntimeParams[p]; !set {
			cfg.RuntimeParams[p] = "0"
		}
	}
	if _, set := cfg.RuntimeParams["transaction_timeout"]; set {
		return
	}
	after := cfg.AfterConnect
	cfg.AfterConnect = func(ctx context.Context, c *pgconn.PgConn) error {
		if after != nil {
			if err := after(ctx, c); err != nil {
				return err
			}
		}
		if serverMajor(c.ParameterStatus("server_version")) < transactionTimeoutMajor {
			return nil
		}
		_, err := c.Exec(ctx, "SET transaction_timeout = 0").ReadAll()
		return err
	}
}
