package postgres

// Appending the reader's versioned transactions to the outbox: one binary
// COPY per batch, encoded as it is sent. Binding the batch as arrays
// instead made pgx encode every payload into a bytea[] parameter by
// reflection and grow it by copying (about a fifth of the origin
// replicator's CPU on an insert backlog), and the server unnest them again.

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// outboxEntry is one outbox row: a transaction, or one part of a large one.
type outboxEntry struct {
	seq     int64
	part    int32
	more    bool
	lsn     pglogrepl.LSN
	commit  time.Time
	rows    int32
	payload []byte
}

// outboxFields is the number of an outbox row's columns.
const outboxFields = 7

const outboxCopySQL = `COPY polyregion.outbox (seq, part, more, lsn, commit_ts, rows, payload) FROM STDIN (FORMAT binary)`

// outboxCopy is the COPY data of entries.
func outboxCopy(entries []outboxEntry) *copyReader {
	return newCopyReader(len(entries), func(b *binaryCopy, i int) error {
		e := &entries[i]
		b.row(outboxFields)
		b.int8(e.seq)
		b.int4(e.part)
		b.bool(e.more)
		b.lsn(e.lsn)
		b.timestamptz(e.commit)
		b.int4(e.rows)
		b.bytea(e.payload)
		return nil
	})
}

// appendOutbox writes entries in tx.
func appendOutbox(ctx context.Context, tx pgx.Tx, entries []outboxEntry) error {
	if len(entries) == 0 {
		return nil
	}
	tag, err := tx.Conn().PgConn().CopyFrom(ctx, outboxCopy(entries), outboxCopySQL)
	if err != nil {
		return fmt.Errorf("reader: append outbox: %w", err)
	}
	if tag.RowsAffected() != int64(len(entries)) {
		return fmt.Errorf("reader: append outbox: %d of %d transactions written", tag.RowsAffected(), len(entries))
	}
	return nil
}
