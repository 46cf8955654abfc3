package postgres

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgtype"
)

// The outbox's COPY data reads back, field by field through pgx's own
// binary decoders, as the entries it was written from.
func TestOutboxCopyDataReadsBackAsWritten(t *testing.T) {
	entries := []outboxEntry{
		{seq: 1, part: 0, more: false, lsn: pglogrepl.LSN(0x16B3748), commit: time.Date(2026, 12, 4, 16, 39, 51, 123456789, time.FixedZone("x", 3600)), rows: 3, payload: []byte{0, 1, 2, 0xff}},
		{seq: 1 << 40, part: 7, more: true, lsn: pglogrepl.LSN(0xFFFFFFFF_00000010), commit: time.Date(1999, 12, 31, 23, 59, 59, 999999000, time.UTC), rows: 0, payload: []byte{}},
	}
	data, err := io.ReadAll(outboxCopy(entries))
	if err != nil {
		t.Fatal(err)
	}
	rows := readCopyStream(t, data)
	if len(rows) != len(entries) {
		t.Fatalf("%d rows read back, want %d", len(rows), len(entries))
	}
	m := pgtype.NewMap()
	for i, e := range entries {
		row := rows[i]
		if len(row) != outboxFields {
			t.Fatalf("row %d has %d fields", i, len(row))
		}
		field := func() []byte {
			f := row[0]
			row = row[1:]
			if f == nil {
				t.Fatalf("a NULL field in the outbox")
			}
			return f
		}
		var seq int64
		var part, nrows int32
		var more bool
		var commit time.Time
		var payload []byte
		if err := m.Scan(pgtype.Int8OID, pgtype.BinaryFormatCode, field(), &seq); err != nil {
			t.Fatal(err)
		}
		if err := m.Scan(pgtype.Int4OID, pgtype.BinaryFormatCode, field(), &part); err != nil {
			t.Fatal(err)
		}
		if err := m.Scan(pgtype.BoolOID, pgtype.BinaryFormatCode, field(), &more); err != nil {
			t.Fatal(err)
		}
		lsn := pglogrepl.LSN(binary.BigEndian.Uint64(field()))
		if err := m.Scan(pgtype.TimestamptzOID, pgtype.BinaryFormatCode, field(), &commit); err != nil {
			t.Fatal(err)
		}
		if err := m.Scan(pgtype.Int4OID, pgtype.BinaryFormatCode, field(), &nrows); err != nil {
			t.Fatal(err)
		}
		if err := m.Scan(pgtype.ByteaOID, pgtype.BinaryFormatCode, field(), &payload); err != nil {
			t.Fatal(err)
		}
		if seq != e.seq || part != e.part || more != e.more || lsn != e.lsn || nrows != e.rows || !bytes.Equal(payload, e.payload) {
			t.Fatalf("row %d reads back as seq %d part %d more %v lsn %s rows %d payload %x, want %+v", i, seq, part, more, lsn, nrows, payload, e)
		}
		if want := e.commit.Truncate(time.Microsecond); !commit.Equal(want) {
			t.Fatalf("row %d commit time reads back as %s, want %s", i, commit, want)
		}
	}
}
