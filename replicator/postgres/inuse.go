package postgres

// Objects an earlier session of this replicator may still hold. The server
// ends a backend asynchronously: after a replicator is killed, its
// walsender keeps the replication slot, and a session in the middle of a
// statement its replication origin, until it notices the connection
// gone, which takes from a moment (an idle walsender) to
// wal_sender_timeout (60 s by default; one busy decoding a large
// transaction notices only when it next writes). A session that starts
// meanwhile waits that out instead of failing the replicator.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// slotHeldWait bounds the wait for a replication slot or origin another
// session holds: beyond the default wal_sender_timeout, the holder is not
// a session the server is about to end but a live one (a second
// replicator for the same region, or a tool reading the slot).
const slotHeldWait = 90 * time.Second

// inUseRetry is the pause between attempts.
const inUseRetry = 250 * time.Millisecond

// whileInUse runs op until it does not fail with object_in_use (55006), or
// until bound has passed; it returns op's last error, or ctx's when ctx
// ends first.
func whileInUse(ctx context.Context, bound time.Duration, op func() error) error {
	deadline := time.Now().Add(bound)
	for {
		err := op()
		if !inUse(err) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(inUseRetry):
		}
	}
}

// WhileSlotHeld runs op, an acquisition of slot, waiting out a holder of
// the slot for up to slotHeldWait; past that the error says what holds it.
func WhileSlotHeld(ctx context.Context, slot string, op func() error) error {
	err := whileInUse(ctx, slotHeldWait, op)
	if inUse(err) {
		return fmt.Errorf("slot %s is still held by another session after %s; is a second replicator running for this region? %w", slot, slotHeldWait, err)
	}
	return err
}

// takeOrigin gives conn's session the replication origin named origin,
// waiting out a session of an earlier run that still holds it for up to
// slotHeldWait.
func takeOrigin(ctx context.Context, conn *pgx.Conn, origin string) error {
	return whileInUse(ctx, slotHeldWait, func() error {
		_, err := conn.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_session_setup($1)`, origin)
		return err
	})
}

func inUse(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55006"
}

// WithStop returns a context that also ends when stop is closed: a wait
// for a held slot or origin at start ends with a graceful stop instead of
// holding it up to its deadline. Cancel it once the wait is over (what it
// started must not depend on it afterwards).
func WithStop(ctx context.Context, stop <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}
