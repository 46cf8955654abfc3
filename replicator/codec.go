package replicator

// The binary form of a transaction, as stored in the outbox and shipped over
// the link. Earlier versions wrote JSON; DecodeTxn still reads it, telling the
// two apart by the first byte (JSON starts with '{', possibly after
// whitespace; the binary form with binaryMagic, which never starts JSON).
//
// Version 1, after the two header bytes binaryMagic and binaryVersion:
//
//	txn     = string(Origin) uvarint(Seq) string(LSN) varint(CommitUnix)
//	          varint(Part) bool(More) list(shape) list(change)
//	shape   = string(Table) list(string Columns) list(string Types) list(varint Key)
//	change  = varint(T) varint(Op) string(Key) list(value Row)
//	          list(string key, string value: Deltas) version
//	version = list(string region, uvarint count: Vector) u64le(HLC)
//	          byte(flags) [string(Origin)] [stamps] [uvarint(Epoch)]
//	stamps  = list(string column, u64le HLC, string origin: Stamps)
//	value   = uvarint(len(Text)<<2 | Unchanged<<1 | Null) Text bytes
//
// A string is a uvarint byte length and the bytes; a list (or map) is a
// uvarint of its length plus one, 0 standing for nil, so nil and empty
// survive a round trip; a bool is a byte 0 or 1. Maps are written in
// strictly increasing key order. The version flags are 1 for Deleted and 2
// when the version's origin is the transaction's (the origin string is
// written only without flag 2); flag 4 says the version's column stamps
// follow (column-level last-writer-wins; a non-empty map); flag 8 that the
// version's epoch follows (written only from epoch 2 on: a row whose
// writes are all from the founding configuration carries none). Varints
// are encoding/binary's, zig-zag for signed values.
//
// Version 2 is version 1 with uvarint(Known) after More: the configuration
// epoch the origin knew when it shipped the transaction (2 or more; a
// transaction shipped under the founding configuration is written as
// version 1, which every release reads).
//
// The encoding is canonical: the decoder accepts only what the encoder
// writes (minimal varints, sorted keys, 0/1 bools, no trailing bytes), so
// decoding and re-encoding gives back the same bytes.

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/polyregion/polyregion/conflict"
)

const (
	// binaryMagic starts every binary payload. It is not valid UTF-8 on
	// its own and not JSON whitespace or '{'.
	binaryMagic = 0xB7
	// binaryVersion is the format version this code writes for a
	// transaction shipped under the founding configuration;
	// binaryVersionKnown the one for a later epoch. Both are read.
	binaryVersion      = 1
	binaryVersionKnown = 2

	versionDeleted    = 1 // Version.Deleted
	versionTxnOrigin  = 2 // Version.Origin equals Txn.Origin (not written)
	versionStamps     = 4 // Version.Stamps follow
	versionEpoch      = 8 // Version.Epoch follows (2 or more)
	versionFlagsKnown = versionDeleted | versionTxnOrigin | versionStamps | versionEpoch

	// Smallest encodings, used to bound counts by the bytes left before
	// allocating anything.
	minShapeSize  = 4      // empty table name, three nil lists
	minChangeSize = 1 + 14 // T, Op, Key, Row, Deltas, Vector, HLC (8), flags
)

// encoder appends the binary form to b.
type encoder struct {
	b []byte
}

type kv[K ~string, V any] struct {
	k K
	v V
}

// appendBinary appends t's binary form to b.
func (t *Txn) appendBinary(b []byte) []byte {
	e := encoder{b: b}
	if t.Known > 1 {
		e.b = append(e.b, binaryMagic, binaryVersionKnown)
	} else {
		e.b = append(e.b, binaryMagic, binaryVersion)
	}
	e.str(string(t.Origin))
	e.uvarint(uint64(t.Seq))
	e.str(t.LSN)
	e.varint(t.CommitUnix)
	e.varint(int64(t.Part))
	e.bool(t.More)
	if t.Known > 1 {
		e.uvarint(t.Known)
	}
	e.list(len(t.Shapes), t.Shapes == nil)
	for i := range t.Shapes {
		s := &t.Shapes[i]
		e.str(s.Table)
		e.list(len(s.Columns), s.Columns == nil)
		for _, c := range s.Columns {
			e.str(c)
		}
		e.list(len(s.Types), s.Types == nil)
		for _, c := range s.Types {
			e.str(c)
		}
		e.list(len(s.Key), s.Key == nil)
		for _, k := range s.Key {
			e.varint(int64(k))
		}
	}
	e.list(len(t.Changes), t.Changes == nil)
	for i := range t.Changes {
		e.change(&t.Changes[i], t.Origin)
	}
	return e.b
}

func (e *encoder) change(c *Change, origin conflict.RegionID) {
	e.varint(int64(c.T))
	e.varint(int64(c.Op))
	e.str(c.Key)
	e.list(len(c.Row), c.Row == nil)
	for j := range c.Row {
		v := &c.Row[j]
		h := uint64(len(v.Text)) << 2
		if v.Null {
			h |= 1
		}
		if v.Unchanged {
			h |= 2
		}
		e.uvarint(h)
		e.b = append(e.b, v.Text...)
	}
	e.list(len(c.Deltas), c.Deltas == nil)
	if len(c.Deltas) > 0 {
		var buf [8]kv[string, string]
		for _, d := range sorted(c.Deltas, buf[:0]) {
			e.str(d.k)
			e.str(d.v)
		}
	}
	vec := c.Version.Vector
	e.list(len(vec), vec == nil)
	if len(vec) > 0 {
		// Sorted on the stack: no allocation, and no write barriers.
		var buf [8]kv[conflict.RegionID, uint64]
		for _, r := range sorted(vec, buf[:0]) {
			e.str(string(r.k))
			e.uvarint(r.v)
		}
	}
	e.b = binary.LittleEndian.AppendUint64(e.b, uint64(c.Version.HLC))
	var flags byte
	if c.Version.Deleted {
		flags |= versionDeleted
	}
	if c.Version.Origin == origin {
		flags |= versionTxnOrigin
	}
	if len(c.Version.Stamps) > 0 {
		flags |= versionStamps
	}
	if c.Version.Epoch > 1 {
		flags |= versionEpoch
	}
	e.b = append(e.b, flags)
	if flags&versionTxnOrigin == 0 {
		e.str(string(c.Version.Origin))
	}
	if flags&versionStamps != 0 {
		st := c.Version.Stamps
		e.list(len(st), false)
		var buf [8]kv[string, conflict.Stamp]
		for _, s := range sorted(st, buf[:0]) {
			e.str(s.k)
			e.b = binary.LittleEndian.AppendUint64(e.b, uint64(s.v.HLC))
			e.str(string(s.v.Origin))
		}
	}
	if flags&versionEpoch != 0 {
		e.uvarint(c.Version.Epoch)
	}
}

// sorted returns m's entries in increasing key order, in scratch's array
// while they fit. Maps here are usually small (a few regions or counter
// columns): insertion sort, unless there are many entries.
func sorted[K ~string, V any](m map[K]V, scratch []kv[K, V]) []kv[K, V] {
	scratch = scratch[:0]
	if len(m) > 16 {
		for k, v := range m {
			scratch = append(scratch, kv[K, V]{k, v})
		}
		slices.SortFunc(scratch, func(a, b kv[K, V]) int { return cmp.Compare(a.k, b.k) })
		return scratch
	}
	for k, v := range m {
		scratch = append(scratch, kv[K, V]{k, v})
		for i := len(scratch) - 1; i > 0 && scratch[i].k < scratch[i-1].k; i-- {
			scratch[i], scratch[i-1] = scratch[i-1], scratch[i]
		}
	}
	return scratch
}

func (e *encoder) uvarint(v uint64) {
	if v < 0x80 {
		e.b = append(e.b, byte(v))
		return
	}
	e.b = binary.AppendUvarint(e.b, v)
}

func (e *encoder) varint(v int64) { e.uvarint(uint64(v<<1) ^ uint64(v>>63)) }

func (e *encoder) str(s string) {
	e.uvarint(uint64(len(s)))
	e.b = append(e.b, s...)
}

func (e *encoder) list(n int, isNil bool) {
	if isNil {
		e.b = append(e.b, 0)
		return
	}
	e.uvarint(uint64(n) + 1)
}

func (e *encoder) bool(v bool) {
	if v {
		e.b = append(e.b, 1)
	} else {
		e.b = append(e.b, 0)
	}
}

// binarySize estimates the length of t's binary form, erring on the large
// side, so that Encode allocates once.
func (t *Txn) binarySize() int {
	n := 2 + 3 + len(t.Origin) + 10 + 3 + len(t.LSN) + 10 + 10 + 1 + 10 + 3 + 3
	for i := range t.Shapes {
		s := &t.Shapes[i]
		n += 3 + len(s.Table) + 9 + 2*len(s.Key)
		for _, c := range s.Columns {
			n += 2 + len(c)
		}
		for _, c := range s.Types {
			n += 2 + len(c)
		}
	}
	for i := range t.Changes {
		c := &t.Changes[i]
		// T, Op, Key length, Row/Deltas/Vector counts, HLC, flags, epoch.
		n += 2 + 1 + 3 + len(c.Key) + 3 + 2 + 2 + 8 + 1 + 10
		if c.Version.Origin != t.Origin {
			n += 3 + len(c.Version.Origin)
		}
		for j := range c.Row {
			n += 3 + len(c.Row[j].Text)
		}
		for k, v := range c.Deltas {
			n += 4 + len(k) + len(v)
		}
		// Region names of a cluster tend to be alike in length.
		n += len(c.Version.Vector) * (1 + len(t.Origin) + 5)
		for k, s := range c.Version.Stamps {
			n += 3 + len(k) + 8 + 3 + len(s.Origin)
		}
	}
	return n
}

// decoder reads the binary form from s. The first error is kept in err and
// moves off to the end, so later reads fail fast and return zero values;
// callers check err once per change.
type decoder struct {
	s   string
	off int
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf("at byte %d: %s", d.off, fmt.Sprintf(format, args...))
	}
	d.off = len(d.s)
}

func (d *decoder) left() int { return len(d.s) - d.off }

func (d *decoder) uvarint(what string) uint64 {
	if d.off < len(d.s) {
		if c := d.s[d.off]; c < 0x80 {
			d.off++
			return uint64(c)
		}
	}
	return d.uvarintSlow(what)
}

func (d *decoder) uvarintSlow(what string) uint64 {
	var x uint64
	var shift uint
	for i := 0; i < binary.MaxVarintLen64; i++ {
		if d.off+i >= len(d.s) {
			d.fail("%s: truncated", what)
			return 0
		}
		c := d.s[d.off+i]
		if c < 0x80 {
			if i == binary.MaxVarintLen64-1 && c > 1 {
				break
			}
			if c == 0 && i > 0 {
				d.fail("%s: varint is not in its shortest form", what)
				return 0
			}
			d.off += i + 1
			return x | uint64(c)<<shift
		}
		x |= uint64(c&0x7f) << shift
		shift += 7
	}
	d.fail("%s: varint overflows 64 bits", what)
	return 0
}

func (d *decoder) varint(what string) int64 {
	u := d.uvarint(what)
	x := int64(u >> 1)
	if u&1 != 0 {
		x = ^x
	}
	return x
}

// int reads a signed varint that must fit an int.
func (d *decoder) int(what string) int {
	x := d.varint(what)
	if int64(int(x)) != x {
		d.fail("%s: %d does not fit an int", what, x)
		return 0
	}
	return int(x)
}

func (d *decoder) str(what string) string {
	n := d.uvarint(what)
	if n > uint64(d.left()) {
		d.fail("%s: %d bytes long but only %d bytes left", what, n, d.left())
		return ""
	}
	s := d.s[d.off : d.off+int(n)]
	d.off += int(n)
	return s
}

// list reads a list length; nil reports the nil list. Each element takes at
// least minSize bytes, which bounds n by the bytes left before the caller
// allocates n elements.
func (d *decoder) list(what string, minSize int) (n int, isNil bool) {
	v := d.uvarint(what)
	if v == 0 {
		return 0, true
	}
	if v-1 > uint64(d.left()/minSize) {
		d.fail("%s: %d elements cannot fit in the %d bytes left", what, v-1, d.left())
		return 0, false
	}
	return int(v - 1), false
}

func (d *decoder) bool(what string) bool {
	if d.off >= len(d.s) {
		d.fail("%s: truncated", what)
		return false
	}
	c := d.s[d.off]
	if c > 1 {
		d.fail("%s: byte %d is not a boolean (0 or 1)", what, c)
		return false
	}
	d.off++
	return c == 1
}

func (d *decoder) strings(what string) []string {
	n, isNil := d.list(what, 1)
	if isNil {
		return nil
	}
	out := make([]string, n)
	for i := range out {
		out[i] = d.str(what)
	}
	return out
}

// decodeBinary decodes the binary form (b starts with binaryMagic). The
// payload is converted to one string and every string of the transaction
// is a substring of it.
func decodeBinary(b []byte) (*Txn, error) {
	if len(b) < 2 {
		return nil, fmt.Errorf("decode transaction: truncated header")
	}
	if b[1] != binaryVersion && b[1] != binaryVersionKnown {
		return nil, fmt.Errorf("decode transaction: binary format version %d is not supported (this replicator reads versions %d and %d)", b[1], binaryVersion, binaryVersionKnown)
	}
	d := &decoder{s: string(b), off: 2}
	t := &Txn{}
	t.Origin = conflict.RegionID(d.str("origin"))
	t.Seq = Seq(d.uvarint("seq"))
	t.LSN = d.str("lsn")
	t.CommitUnix = d.varint("commit time")
	t.Part = d.int("part")
	t.More = d.bool("more")
	if b[1] == binaryVersionKnown {
		if t.Known = d.uvarint("known epoch"); t.Known < 2 && d.err == nil {
			d.fail("known epoch %d written in format version %d, which is for epoch 2 on", t.Known, binaryVersionKnown)
		}
	}
	if n, isNil := d.list("shapes", minShapeSize); !isNil {
		t.Shapes = make([]Shape, n)
	}
	for i := range t.Shapes {
		s := &t.Shapes[i]
		s.Table = d.str("table")
		s.Columns = d.strings("columns")
		s.Types = d.strings("types")
		if n, isNil := d.list("key", 1); !isNil {
			s.Key = make([]int, n)
			for j := range s.Key {
				s.Key[j] = d.int("key column")
			}
		}
		if d.err != nil {
			return nil, fmt.Errorf("decode transaction: shape %d: %w", i, d.err)
		}
	}
	if d.err != nil {
		return nil, fmt.Errorf("decode transaction: %w", d.err)
	}
	if n, isNil := d.list("changes", minChangeSize); !isNil {
		t.Changes = make([]Change, n)
	}
	if d.err != nil {
		return nil, fmt.Errorf("decode transaction: %w", d.err)
	}
	var slab []Value // backing array shared by the rows, each capped to its length
	for i := range t.Changes {
		c := &t.Changes[i]
		c.T = d.int("shape index")
		c.Op = conflict.Op(d.int("operation"))
		c.Key = d.str("key")
		if n, isNil := d.list("row", 1); !isNil {
			if n == 0 {
				c.Row = []Value{}
			} else {
				if cap(slab)-len(slab) < n {
					// Room for this row in every change left (most
					// rows of a transaction are alike), within what the
					// bytes left can hold.
					est := min(n*(len(t.Changes)-i), d.left())
					slab = make([]Value, 0, max(est, n))
				}
				l := len(slab)
				slab = slab[:l+n]
				c.Row = slab[l : l+n : l+n]
				for j := range c.Row {
					h := d.uvarint("value")
					if h>>2 > uint64(d.left()) {
						d.fail("value %d: %d bytes long but only %d bytes left", j, h>>2, d.left())
						break
					}
					ln := int(h >> 2)
					c.Row[j] = Value{Text: d.s[d.off : d.off+ln], Null: h&1 != 0, Unchanged: h&2 != 0}
					d.off += ln
				}
			}
		}
		if n, isNil := d.list("deltas", 2); !isNil {
			c.Deltas = make(map[string]string, n)
			prev := ""
			for j := 0; j < n && d.err == nil; j++ {
				k := d.str("delta column")
				if j > 0 && k <= prev {
					d.fail("delta columns not in increasing order (%q after %q)", k, prev)
				}
				c.Deltas[k] = d.str("delta")
				prev = k
			}
		}
		if n, isNil := d.list("version vector", 2); !isNil {
			vec := make(conflict.Vector, n)
			var prev conflict.RegionID
			for j := 0; j < n && d.err == nil; j++ {
				r := conflict.RegionID(d.str("vector region"))
				if j > 0 && r <= prev {
					d.fail("vector regions not in increasing order (%q after %q)", r, prev)
				}
				vec[r] = d.uvarint("vector count")
				prev = r
			}
			c.Version.Vector = vec
		}
		if d.left() < 9 {
			d.fail("version: truncated")
		} else {
			c.Version.HLC = conflict.Timestamp(le64(d.s[d.off:]))
			flags := d.s[d.off+8]
			d.off += 9
			if flags&^versionFlagsKnown != 0 {
				d.fail("version: unknown flags %#x", flags)
			}
			c.Version.Deleted = flags&versionDeleted != 0
			if flags&versionTxnOrigin != 0 {
				c.Version.Origin = t.Origin
			} else if c.Version.Origin = conflict.RegionID(d.str("version origin")); c.Version.Origin == t.Origin && d.err == nil {
				d.fail("version: origin %q written out although it is the transaction's", c.Version.Origin)
			}
			if flags&versionStamps != 0 {
				c.Version.Stamps = d.stamps()
			}
			if flags&versionEpoch != 0 {
				if c.Version.Epoch = d.uvarint("version epoch"); c.Version.Epoch < 2 && d.err == nil {
					d.fail("version: epoch %d written out, though epochs below 2 are not", c.Version.Epoch)
				}
			}
		}
		if d.err != nil {
			return nil, fmt.Errorf("decode transaction: change %d: %w", i, d.err)
		}
	}
	if d.left() > 0 {
		return nil, fmt.Errorf("decode transaction: %d bytes left over after the transaction", d.left())
	}
	return t, nil
}

// stamps reads a version's column stamps: a non-empty map, columns in
// increasing order.
func (d *decoder) stamps() map[string]conflict.Stamp {
	n, isNil := d.list("column stamps", 10)
	if d.err == nil && (isNil || n == 0) {
		d.fail("column stamps: flagged but empty")
	}
	out := make(map[string]conflict.Stamp, n)
	prev := ""
	for j := 0; j < n && d.err == nil; j++ {
		col := d.str("stamp column")
		if j > 0 && col <= prev {
			d.fail("stamp columns not in increasing order (%q after %q)", col, prev)
		}
		if d.left() < 8 {
			d.fail("column stamp: truncated")
			break
		}
		hlc := conflict.Timestamp(le64(d.s[d.off:]))
		d.off += 8
		out[col] = conflict.Stamp{HLC: hlc, Origin: conflict.RegionID(d.str("stamp origin"))}
		prev = col
	}
	return out
}

// isJSON reports whether b starts like a JSON object: '{' after optional
// JSON whitespace.
func isJSON(b []byte) bool {
	i := 0
	for i < len(b) && strings.IndexByte(" \t\r\n", b[i]) >= 0 {
		i++
	}
	return i < len(b) && b[i] == '{'
}

// le64 reads a little-endian uint64 from the first 8 bytes of s.
func le64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}
