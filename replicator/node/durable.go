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
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// walFlusher makes the commits before a call durable, on a session of its
// own (opened on first use, reopened after an error).
type walFlusher struct {
	connString string
	mu         sync.Mutex
	conn       *pgx.Conn
}

// flush returns once every commit made before the call is durable.
func (w *walFlusher) flush(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.conn == nil {
		c, err := postgres.Connect(ctx, w.connString)
		if err != nil {
			return err
		}
		w.conn = c
	}
	if err := postgres.FlushWAL(ctx, w.conn); err != nil {
		w.conn.Close(context.Background())
		w.conn = nil
		return err
	}
	return nil
}

func (w *walFlusher) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.conn != nil {
		w.conn.Close(context.Background())
		w.conn = nil
	}
}
