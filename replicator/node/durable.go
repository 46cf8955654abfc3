package node

// Acknowledging only what is durable. Appliers commit asynchronously, as
// PostgreSQL's own apply worker does by default: a commit returns before
// the WAL holding it is flushed, so the applier does not hold the rows it
// wrote (the rows the applications contend for) through a WAL flush. A crash
// of the server may then lose the last applied transactions, together with
// the positions recorded in them; nothing is lost as long as the peer still
// has them, so a position is acknowledged (letting the peer trim its outbox
// and collect tombstones) only after the WAL is flushed past its commit.

import (
	"context"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// durable returns once every commit made before the call is durable (on a
// session of the node's pool).
func (f *follower) durable(ctx context.Context) error { return postgres.FlushWAL(ctx, f.pool) }
