package postgres

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/polyregion/polyregion/conflict"
)

// readCopyStream reads back a binary COPY stream in tests: rows of fields,
// each field's bytes or nil for NULL.
func readCopyStream(t *testing.T, data []byte) [][][]byte {
	t.Helper()
	if !bytes.HasPrefix(data, []byte(copySignature)) {
		t.Fatalf("stream starts %q, want the COPY signature", data[:min(len(data), 11)])
	}
	r := data[len(copySignature):]
	next := func(n int) []byte {
		t.Helper()
		if len(r) < n {
			t.Fatalf("stream ends early")
		}
		p := r[:n]
		r = r[n:]
		return p
	}
	if flags, ext := binary.BigEndian.Uint32(next(4)), binary.BigEndian.Uint32(next(4)); flags != 0 || ext != 0 {
		t.Fatalf("flags %x, header extension %d: want none", flags, ext)
	}
	var rows [][][]byte
	for {
		n := int16(binary.BigEndian.Uint16(next(2)))
		if n == -1 {
			break
		}
		row := make([][]byte, n)
		for i := range row {
			l := int32(binary.BigEndian.Uint32(next(4)))
			if l >= 0 {
				row[i] = next(int(l))
			}
		}
		rows = append(rows, row)
	}
	if len(r) != 0 {
		t.Fatalf("%d bytes after the trailer", len(r))
	}
	return rows
}

// A new version's COPY row reads back, through pgx's own binary decoders,
// as the version: a live row with counters, stamps and an xid, and a
// tombstone with none of them and the time it was deleted.
func TestVersionCopyRowsReadBackAsWritten(t *testing.T) {
	live := &meta{
		version: conflict.Version{Vector: conflict.Vector{"us": 3, "eu": 12}, HLC: 1 << 50, Origin: "us", Epoch: 4,
			Stamps: map[string]conflict.Stamp{"title": {Origin: "eu", HLC: 77}}},
		xid: "4000000000", counters: map[string]string{"hits": "-12"}, srcSeq: 42,
	}
	tomb := &meta{version: conflict.Version{Vector: conflict.Vector{"ap": 1}, HLC: 5, Origin: "ap", Deleted: true}}
	keys := []metaKey{{"public.docs", `["a\tb"]`}, {"public.docs", `["c"]`}}
	before := time.Now()
	vc := newVersionCopy(2)
	for i, m := range []*meta{live, tomb} {
		xid, err := parseXid(keys[i], m.xid)
		if err != nil {
			t.Fatal(err)
		}
		vc.add(keys[i], m, xid)
	}
	data, err := io.ReadAll(newCopyReader(len(vc.rows), vc.encode))
	if err != nil {
		t.Fatal(err)
	}
	rows := readCopyStream(t, data)
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2", len(rows))
	}
	pm := pgtype.NewMap()
	for i, m := range []*meta{live, tomb} {
		row := rows[i]
		if len(row) != versionFields {
			t.Fatalf("row %d has %d fields, want %d", i, len(row), versionFields)
		}
		var tbl, key, vv, origin string
		var hlc, srcSeq, epoch int64
		var deleted bool
		var xid pgtype.Uint32
		var deletedAt pgtype.Timestamptz
		var counters, siblings, stamps, own *string
		for j, f := range []struct {
			oid uint32
			dst any
		}{{pgtype.TextOID, &tbl}, {pgtype.TextOID, &key}, {pgtype.TextOID, &vv}, {pgtype.Int8OID, &hlc}, {pgtype.TextOID, &origin},
			{pgtype.BoolOID, &deleted}, {pgtype.XIDOID, &xid}, {pgtype.JSONBOID, &counters}, {pgtype.Int8OID, &srcSeq},
			{pgtype.TimestamptzOID, &deletedAt}, {pgtype.JSONBOID, &siblings}, {pgtype.JSONBOID, &stamps}, {pgtype.JSONBOID, &own}, {pgtype.Int8OID, &epoch}} {
			if err := pm.Scan(f.oid, pgtype.BinaryFormatCode, row[j], f.dst); err != nil {
				t.Fatalf("row %d field %d: %v", i, j, err)
			}
		}
		if tbl != keys[i].tbl || key != keys[i].key || vv != m.version.Vector.String() || hlc != int64(m.version.HLC) || origin != string(m.version.Origin) ||
			deleted != m.version.Deleted || srcSeq != m.srcSeq || epoch != int64(m.version.Epoch) {
			t.Fatalf("row %d reads back as %s %s %s %d %s %v %d %d", i, tbl, key, vv, hlc, origin, deleted, srcSeq, epoch)
		}
		if want, _ := parseXid(keys[i], m.xid); (want == nil) != !xid.Valid || (want != nil && *want != xid.Uint32) {
			t.Fatalf("row %d xid reads back as %+v, want %v", i, xid, m.xid)
		}
		if m.version.Deleted != deletedAt.Valid || (deletedAt.Valid && (deletedAt.Time.Before(before.Truncate(time.Microsecond)) || deletedAt.Time.After(time.Now()))) {
			t.Fatalf("row %d deleted_at %+v", i, deletedAt)
		}
		if siblings != nil || own != nil {
			t.Fatalf("row %d: siblings %v, own %v: want NULL", i, siblings, own)
		}
		if m == live {
			if counters == nil || *counters != `{"hits":"-12"}` || stamps == nil || !strings.Contains(*stamps, `"title"`) {
				t.Fatalf("counters %v, stamps %v", counters, stamps)
			}
		} else if counters != nil || stamps != nil {
			t.Fatalf("tombstone: counters %v, stamps %v: want NULL", counters, stamps)
		}
	}
}

// A stream longer than a chunk is encoded as it is read, whatever the
// reader's buffer: read a few bytes at a time it is the same stream, and
// rows are encoded only a chunk ahead of the reading. An error encoding a
// row ends the stream with it.
func TestCopyStreamsAreEncodedAsRead(t *testing.T) {
	const n = 5000
	payload := bytes.Repeat([]byte{0xab}, 100)
	rowOf := func(b *binaryCopy, i int) { b.row(2); b.int8(int64(i)); b.bytea(payload) }
	var whole binaryCopy
	whole.header()
	for i := 0; i < n; i++ {
		rowOf(&whole, i)
	}
	whole.trailer()

	encoded := 0
	r := newCopyReader(n, func(b *binaryCopy, i int) error {
		if i != encoded {
			t.Fatalf("row %d encoded after %d rows", i, encoded)
		}
		encoded++
		rowOf(b, i)
		return nil
	})
	var got []byte
	p := make([]byte, 7)
	for {
		k, err := r.Read(p)
		got = append(got, p[:k]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if ahead := encoded*(2+12+104) - len(got); ahead > copyChunk+200 {
			t.Fatalf("%d bytes encoded ahead of the reading", ahead)
		}
	}
	if !bytes.Equal(got, whole.buf) {
		t.Fatalf("stream read %d bytes, want %d the same as encoded at once", len(got), len(whole.buf))
	}
	if rows := readCopyStream(t, got); len(rows) != n {
		t.Fatalf("%d rows, want %d", len(rows), n)
	}

	bad := errors.New("row 3000 cannot be encoded")
	r = newCopyReader(n, func(b *binaryCopy, i int) error {
		if i == 3000 {
			return bad
		}
		rowOf(b, i)
		return nil
	})
	if _, err := io.ReadAll(r); !errors.Is(err, bad) {
		t.Fatalf("reading a stream whose row fails: %v, want its error", err)
	}
}
