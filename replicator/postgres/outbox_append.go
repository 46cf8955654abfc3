package postgres

// Appending the reader's versioned transactions to the outbox: one binary
// COPY per batch. Binding the batch as arrays instead made pgx encode every
// payload into a bytea[] parameter by reflection and grow it by copying
// (about a fifth of the origin replicator's CPU on an insert backlog), and
// the server unnest them again.

import (
	"bytes"
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

// outboxFields is the number of an outbox row's columns;
// outboxEntryFixed the bytes a row takes in the COPY besides its payload.
const (
	outboxFields     = 7
	outboxEntryFixed = 2 + 7*4 + 8 + 4 + 1 + 8 + 8 + 4
)

const outboxCopySQL = `COPY polyregion.outbox (seq, part, more, lsn, commit_ts, rows, payload) FROM STDIN (FORMAT binary)`

// encodeOutbox returns the COPY data of entries; size is their length
// without the stream's header and trailer.
func encodeOutbox(entries []outboxEntry, size int) []byte {
	b := newBinaryCopy(size)
	for _, e := range entries {
		b.row(outboxFields)
		b.int8(e.seq)
		b.int4(e.part)
		b.bool(e.more)
		b.lsn(e.lsn)
		b.timestamptz(e.commit)
		b.int4(e.rows)
		b.bytea(e.payload)
	}
	return b.finish()
}

// appendOutbox writes entries in tx.
func appendOutbox(ctx context.Context, tx pgx.Tx, entries []outboxEntry, size int) error {
	if len(entries) == 0 {
		return nil
	}
	tag, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(encodeOutbox(entries, size)), outboxCopySQL)
	if err != nil {
		return fmt.Errorf("reader: append outbox: %w", err)
	}
	if tag.RowsAffected() != int64(len(entries)) {
		return fmt.Errorf("reader: append outbox: %d of %d transactions written", tag.RowsAffected(), len(entries))
	}
	return nil
}
