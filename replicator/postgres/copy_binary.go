package postgres

// The data of a COPY ... FROM STDIN (FORMAT binary) written field by field
// for a table whose column types the caller knows: no per-value type lookup
// or reflection, encoded a chunk at a time as the COPY sends it. The layout is PostgreSQL's (the
// COPY reference, "Binary Format"): a signature, flags and header
// extension; per row the number of fields, then each field's length and
// bytes in the type's send format (-1 for NULL); a trailer of -1.

import (
	"encoding/binary"
	"io"
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

// header starts the stream.
func (b *binaryCopy) header() {
	b.buf = append(b.buf, copySignature...)
	b.buf = binary.BigEndian.AppendUint32(b.buf, 0) // flags: no OIDs
	b.buf = binary.BigEndian.AppendUint32(b.buf, 0) // no header extension
}

// trailer ends the stream.
func (b *binaryCopy) trailer() {
	b.buf = binary.BigEndian.AppendUint16(b.buf, 0xffff)
}

// copyChunk is how much of a stream copyReader encodes ahead of the COPY:
// as much as the COPY sends at a time.
const copyChunk = 64 << 10

// copyReader is the data of a binary COPY of n rows, each encoded by
// encode as the COPY reads the stream: the server works on the first rows
// while later ones are encoded (encoding all before sending would leave
// the server idle meanwhile). An error of encode ends the COPY with it.
type copyReader struct {
	b      binaryCopy
	n, i   int
	encode func(b *binaryCopy, i int) error
	off    int
	done   bool
}

func newCopyReader(n int, encode func(b *binaryCopy, i int) error) *copyReader {
	return &copyReader{n: n, encode: encode}
}

func (r *copyReader) Read(p []byte) (int, error) {
	for r.off == len(r.b.buf) {
		if r.done {
			return 0, io.EOF
		}
		r.b.buf, r.off = r.b.buf[:0], 0
		if r.i == 0 {
			r.b.header()
		}
		for len(r.b.buf) < copyChunk && r.i < r.n {
			if err := r.encode(&r.b, r.i); err != nil {
				return 0, err
			}
			r.i++
		}
		if r.i == r.n {
			r.b.trailer()
			r.done = true
		}
	}
	n := copy(p, r.b.buf[r.off:])
	r.off += n
	return n, nil
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

func (b *binaryCopy) null() {
	b.buf = binary.BigEndian.AppendUint32(b.buf, 0xffffffff)
}

func (b *binaryCopy) text(s string) {
	b.buf = binary.BigEndian.AppendUint32(b.buf, uint32(len(s)))
	b.buf = append(b.buf, s...)
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
