package postgres

// The data of a COPY ... FROM STDIN (FORMAT binary) written field by field
// for a table whose column types the caller knows: no per-value type lookup
// or reflection, one buffer sized once. The layout is PostgreSQL's (the
// COPY reference, "Binary Format"): a signature, flags and header
// extension; per row the number of fields, then each field's length and
// bytes in the type's send format (-1 for NULL); a trailer of -1.

import (
	"encoding/binary"
	"time"

	"github.com/jackc/pglogrepl"
)

// copySignature opens every binary COPY stream.
const copySignature = "PGCOPY\n\xff\r\n\x00"

// postgresEpochMicros is 2000-01-01 00:00:00 UTC in Unix microseconds:
// timestamptz's binary form counts microseconds from there.
const postgresEpochMicros = 946_684_800_000_000

type binaryCopy struct {
	buf []byte
}

// newBinaryCopy starts a stream; size is a hint of its length in bytes.
func newBinaryCopy(size int) *binaryCopy {
	b := &binaryCopy{buf: make([]byte, 0, len(copySignature)+8+size+2)}
	b.buf = append(b.buf, copySignature...)
	b.buf = binary.BigEndian.AppendUint32(b.buf, 0) // flags: no OIDs
	b.buf = binary.BigEndian.AppendUint32(b.buf, 0) // no header extension
	return b
}

// row starts a row of n fields.
func (b *binaryCopy) row(n int) {
	b.buf = binary.BigEndian.AppendUint16(b.buf, uint16(n))
}

func (b *binaryCopy) int8(v int64) {
	b.buf = binary.BigEndian.AppendUint32(b.buf, 8)
	b.buf = binary.BigEndian.AppendUint64(b.buf, uint64(v))
}

func (b *binaryCopy) int4(v int32) {
	b.buf = binary.BigEndian.AppendUint32(b.buf, 4)
	b.buf = binary.BigEndian.AppendUint32(b.buf, uint32(v))
}

func (b *binaryCopy) bool(v bool) {
	b.buf = binary.BigEndian.AppendUint32(b.buf, 1)
	if v {
		b.buf = append(b.buf, 1)
	} else {
		b.buf = append(b.buf, 0)
	}
}

// lsn writes a pg_lsn: its 64-bit position, as pg_lsn_send does.
func (b *binaryCopy) lsn(v pglogrepl.LSN) {
	b.int8(int64(v))
}

// timestamptz writes t to the microsecond (the type's precision).
func (b *binaryCopy) timestamptz(t time.Time) {
	b.int8(t.UnixMicro() - postgresEpochMicros)
}

func (b *binaryCopy) bytea(p []byte) {
	b.buf = binary.BigEndian.AppendUint32(b.buf, uint32(len(p)))
	b.buf = append(b.buf, p...)
}

// finish ends the stream and returns it.
func (b *binaryCopy) finish() []byte {
	return binary.BigEndian.AppendUint16(b.buf, 0xffff)
}

func (b *binaryCopy) null() {
	b.buf = binary.BigEndian.AppendUint32(b.buf, 0xffffffff)
}

func (b *binaryCopy) text(s string) {
	b.buf = binary.BigEndian.AppendUint32(b.buf, uint32(len(s)))
	b.buf = append(b.buf, s...)
}

// textOrNull writes s, or NULL when s is nil.
func (b *binaryCopy) textOrNull(s *string) {
	if s == nil {
		b.null()
		return
	}
	b.text(*s)
}

// jsonb writes a JSON document (jsonb's binary form is a version byte, 1,
// and the text), or NULL when s is nil.
func (b *binaryCopy) jsonb(s *string) {
	if s == nil {
		b.null()
		return
	}
	b.buf = binary.BigEndian.AppendUint32(b.buf, uint32(len(*s)+1))
	b.buf = append(b.buf, 1)
	b.buf = append(b.buf, *s...)
}

// xid writes a 32-bit transaction id.
func (b *binaryCopy) xid(v uint32) {
	b.buf = binary.BigEndian.AppendUint32(b.buf, 4)
	b.buf = binary.BigEndian.AppendUint32(b.buf, v)
}
