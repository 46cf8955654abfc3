package replicator

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/polyregion/polyregion/conflict"
)

// richTxn exercises every field and the corner cases of the encoding.
func richTxn() *Txn {
	hlc := conflict.MakeTimestamp(1767225600123, 7)
	return &Txn{
		Origin: "us-east", Seq: 1<<40 + 3, LSN: "16/B374D848", CommitUnix: 1767225600123456,
		Part: 2, More: true,
		Shapes: []Shape{
			shape(),
			{Table: "public.counters", Columns: []string{"id", "hits", "note"}, Types: []string{"bigint", "bigint", "text"}, Key: []int{0}},
			{Table: `weird."tablé"`, Columns: []string{}, Types: []string{}, Key: []int{}},
		},
		Changes: []Change{
			{T: 0, Op: conflict.OpInsert, Key: `["2026-01-01","1"]`,
				Row:     []Value{{Text: "1"}, {Null: true}, {Text: "2026-01-01"}},
				Version: conflict.Version{Vector: conflict.Vector{"us-east": 1}, HLC: hlc, Origin: "us-east"}},
			{T: 0, Op: conflict.OpUpdate, Key: `["d","1"]`,
				Row: []Value{{Text: ""}, {Unchanged: true}, {Text: "héllo, 世界 \x00\xff \"quoted\""}},
				Version: conflict.Version{Vector: conflict.Vector{"us-east": 5, "eu-west": 3, "ap-south": 1 << 62}, HLC: hlc + 1, Origin: "eu-west",
					Stamps: map[string]conflict.Stamp{"d": {HLC: hlc, Origin: "us-east"}, "b": {HLC: 0, Origin: ""}, "a": {HLC: ^conflict.Timestamp(0), Origin: "ap-south"}}}},
			{T: 0, Op: conflict.OpDelete, Key: `["d","2"]`,
				Version: conflict.Version{Vector: conflict.Vector{"us-east": 6, "eu-west": 0}, HLC: 0, Origin: "us-east", Deleted: true}},
			{T: 1, Op: conflict.OpUpdate, Key: `["9"]`,
				Row:     []Value{{Text: "9"}, {Text: "12"}, {Null: true, Unchanged: true}},
				Deltas:  map[string]string{"hits": "-3", "b": "1.50", "a": "0"},
				Version: conflict.Version{Vector: conflict.Vector{}, HLC: ^conflict.Timestamp(0), Origin: ""}},
			{T: 1, Op: conflict.OpInsert, Key: `["10"]`,
				Row:     []Value{{Text: "10"}, {Text: strings.Repeat("x", 70000)}, {Text: "odd", Null: true}},
				Deltas:  map[string]string{},
				Version: conflict.Version{HLC: hlc, Origin: "ap-south"}},
			{T: 2, Op: conflict.OpInsert, Key: `[]`, Row: []Value{}},
			{T: 2, Op: conflict.OpDelete, Key: `[]`, Row: []Value{}},
		},
	}
}

func mustEncode(t testing.TB, txn *Txn) []byte {
	t.Helper()
	b, err := txn.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCodecRoundTrip(t *testing.T) {
	cases := []*Txn{
		richTxn(),
		{},
		{Origin: "us", Seq: 1, Shapes: []Shape{}, Changes: []Change{}},
		{Origin: "us", Seq: 1, Part: 0, More: false, CommitUnix: -5},
		benchTxn(50),
		epochTxn(),
	}
	for i, want := range cases {
		b := mustEncode(t, want)
		if version := byte(binaryVersion); b[0] != binaryMagic || b[1] != version && !(want.Known > 1 && b[1] == binaryVersionKnown) {
			t.Fatalf("case %d: header % x", i, b[:2])
		}
		got, err := DecodeTxn(b)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("case %d: round trip\n got %#v\nwant %#v", i, got, want)
		}
		if again := mustEncode(t, got); !bytes.Equal(again, b) {
			t.Fatalf("case %d: re-encoding differs", i)
		}
	}
	// Nil and empty rows stay apart (DeepEqual above checks it too).
	got, _ := DecodeTxn(mustEncode(t, richTxn()))
	if got.Changes[2].Row != nil || got.Changes[5].Row == nil || got.Changes[6].Row == nil {
		t.Fatalf("nil vs empty row lost: %#v %#v %#v", got.Changes[2].Row, got.Changes[5].Row, got.Changes[6].Row)
	}
}

// epochTxn is richTxn shipped under epoch 3, its versions from epochs 2
// and 3 (and one from the founding configuration, which carries none).
func epochTxn() *Txn {
	t := richTxn()
	t.Known = 3
	t.Changes[0].Version.Epoch = 3
	t.Changes[1].Version.Epoch = 2
	return t
}

// TestCodecWritesEpochsOnlyFromEpoch2: a transaction of the founding
// configuration is written in the format every release reads, byte for
// byte as before epochs existed.
func TestCodecWritesEpochsOnlyFromEpoch2(t *testing.T) {
	plain := mustEncode(t, richTxn())
	one := richTxn()
	one.Known, one.Changes[0].Version.Epoch = 1, 1
	if b := mustEncode(t, one); !bytes.Equal(b, plain) {
		t.Fatal("epoch 1 changed the encoding")
	}
	b := mustEncode(t, epochTxn())
	if b[1] != binaryVersionKnown || len(b) != len(plain)+3 {
		t.Fatalf("epoch 3: format %d, %d bytes (founding: %d)", b[1], len(b), len(plain))
	}
}

// Rows decoded from one payload share a backing array; appending to one row
// must not overwrite the next.
func TestCodecRowsDoNotAlias(t *testing.T) {
	got, err := DecodeTxn(mustEncode(t, benchTxn(3)))
	if err != nil {
		t.Fatal(err)
	}
	r0 := append(got.Changes[0].Row, Value{Text: "extra"})
	_ = r0
	if want := benchTxn(3); !reflect.DeepEqual(got, want) {
		t.Fatalf("append to a decoded row changed another row")
	}
}

// The JSON form written by earlier versions still decodes, exactly as the
// JSON decoder alone reads it.
func TestCodecDecodesJSON(t *testing.T) {
	for i, txn := range []*Txn{richTxn(), benchTxn(20), {Origin: "us", Seq: 9}} {
		j, err := json.Marshal(txn)
		if err != nil {
			t.Fatal(err)
		}
		var want Txn
		if err := json.Unmarshal(j, &want); err != nil {
			t.Fatal(err)
		}
		for _, payload := range [][]byte{j, append([]byte(" \n\t\r"), j...)} {
			got, err := DecodeTxn(payload)
			if err != nil {
				t.Fatalf("case %d: %v", i, err)
			}
			if !reflect.DeepEqual(got, &want) {
				t.Fatalf("case %d: JSON decode\n got %#v\nwant %#v", i, got, &want)
			}
			// And it survives conversion to the binary form.
			back, err := DecodeTxn(mustEncode(t, got))
			if err != nil || !reflect.DeepEqual(back, got) {
				t.Fatalf("case %d: JSON then binary: %v", i, err)
			}
		}
	}
	// A payload as the JSON-writing versions stored it, byte for byte.
	old := `{"origin":"us","seq":3,"lsn":"0/16B3748","commit_us":1767225600123456,` +
		`"shapes":[{"table":"public.t","columns":["a","b","c"],"types":["integer","text","date"],"key":[2,0]}],` +
		`"changes":[{"t":0,"o":1,"k":"[\"d\",\"1\"]","r":[{"v":"1"},{"n":true},{"v":"d"}],` +
		`"ver":{"Vector":{"eu":2,"us":4},"HLC":115813962326016007,"Origin":"us","Deleted":false}},` +
		`{"t":0,"o":3,"k":"[\"e\",\"2\"]","ver":{"Vector":{"us":5},"HLC":115813962326016008,"Origin":"us","Deleted":true}}],` +
		`"part":1,"more":true}`
	got, err := DecodeTxn([]byte(old))
	if err != nil {
		t.Fatal(err)
	}
	want := &Txn{Origin: "us", Seq: 3, LSN: "0/16B3748", CommitUnix: 1767225600123456, Part: 1, More: true,
		Shapes: []Shape{shape()},
		Changes: []Change{
			{T: 0, Op: conflict.OpInsert, Key: `["d","1"]`, Row: []Value{{Text: "1"}, {Null: true}, {Text: "d"}},
				Version: conflict.Version{Vector: conflict.Vector{"eu": 2, "us": 4}, HLC: 115813962326016007, Origin: "us"}},
			{T: 0, Op: conflict.OpDelete, Key: `["e","2"]`,
				Version: conflict.Version{Vector: conflict.Vector{"us": 5}, HLC: 115813962326016008, Origin: "us", Deleted: true}},
		}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("old payload\n got %#v\nwant %#v", got, want)
	}
}

func TestCodecIsDeterministic(t *testing.T) {
	build := func(reverse bool) *Txn {
		txn := richTxn()
		// More regions than the encoder sorts by insertion.
		var regions []conflict.RegionID
		for i := range 20 {
			regions = append(regions, conflict.RegionID(fmt.Sprintf("r%02d", (i*7)%20)))
		}
		cols := []string{"c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"}
		if reverse {
			for i, j := 0, len(regions)-1; i < j; i, j = i+1, j-1 {
				regions[i], regions[j] = regions[j], regions[i]
			}
			for i, j := 0, len(cols)-1; i < j; i, j = i+1, j-1 {
				cols[i], cols[j] = cols[j], cols[i]
			}
		}
		vec := conflict.Vector{}
		for _, r := range regions {
			vec[r] = uint64(r[2]) * 1000
		}
		deltas := map[string]string{}
		for _, c := range cols {
			deltas[c] = c + "0"
		}
		txn.Changes[3].Version.Vector = vec
		txn.Changes[3].Deltas = deltas
		return txn
	}
	first := mustEncode(t, build(false))
	if got, err := DecodeTxn(first); err != nil || !reflect.DeepEqual(got, build(false)) {
		t.Fatalf("round trip: %v", err)
	}
	for i := 0; i < 20; i++ {
		if b := mustEncode(t, build(i%2 == 1)); !bytes.Equal(b, first) {
			t.Fatalf("encoding %d differs from the first", i)
		}
	}
}

func TestCodecRejectsTruncation(t *testing.T) {
	for _, txn := range []*Txn{richTxn(), benchTxn(5), {}} {
		b := mustEncode(t, txn)
		for n := 0; n < len(b); n++ {
			if n > 200 && n < len(b)-200 && n%97 != 0 {
				continue // the long value in the middle: sample it
			}
			if _, err := DecodeTxn(b[:n]); err == nil {
				t.Fatalf("prefix of %d of %d bytes decoded", n, len(b))
			} else if !strings.HasPrefix(err.Error(), "decode transaction") {
				t.Fatalf("prefix of %d bytes: error %q lacks the prefix", n, err)
			}
		}
	}
}

func TestCodecRejectsMalformed(t *testing.T) {
	good := mustEncode(t, &Txn{Origin: "us", Seq: 3, Shapes: []Shape{shape()},
		Changes: []Change{{T: 0, Op: conflict.OpInsert, Key: `["d","1"]`, Row: []Value{{Text: "1"}, {Null: true}, {Text: "d"}},
			Version: conflict.Version{Vector: conflict.Vector{"eu": 1, "us": 2}, HLC: 5, Origin: "us"}}}})
	if _, err := DecodeTxn(good); err != nil {
		t.Fatal(err)
	}
	with := func(f func([]byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	// Offsets in good: header 2, origin "us" 3, seq 1, lsn 1, commit 1,
	// part 1, more 1, then the shapes list at 10.
	shapesAt := 10
	vecAt := bytes.Index(good, []byte("\x02eu"))
	cases := []struct {
		name, want string
		b          []byte
	}{
		{"empty", "empty payload", nil},
		{"garbage", "byte 0x00, neither", []byte{0, 1, 2}},
		{"null", "byte 0x6e, neither", []byte("null")},
		{"header only", "truncated header", []byte{binaryMagic}},
		{"version 3", "version 3 is not supported", with(func(b []byte) []byte { b[1] = 3; return b })},
		{"known epoch 1", "known epoch 1 written in format version 2", with(func(b []byte) []byte {
			b[1] = binaryVersionKnown
			return append(append(append([]byte(nil), b[:shapesAt]...), 1), b[shapesAt:]...)
		})},
		{"version epoch 1", "epoch 1 written out", append(with(func(b []byte) []byte { b[len(b)-1] |= versionEpoch; return b }), 1)},
		{"version epoch cut", "version epoch: truncated", with(func(b []byte) []byte { b[len(b)-1] |= versionEpoch; return b })},
		{"version 0", "version 0 is not supported", with(func(b []byte) []byte { b[1] = 0; return b })},
		{"trailing", "1 bytes left over", append(with(func(b []byte) []byte { return b }), 0)},
		{"bool", "not a boolean", with(func(b []byte) []byte { b[shapesAt-1] = 2; return b })},
		{"huge list", "cannot fit", append(append(append([]byte(nil), good[:shapesAt]...), 0xff, 0xff, 0xff, 0xff, 0x0f), good[shapesAt+1:]...)},
		{"overflow", "overflows 64 bits", append(append([]byte(nil), good[:7]...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f)},
		{"long varint", "shortest form", append(append(append([]byte(nil), good[:6]...), 0x80, 0x00), good[7:]...)},
		{"unsorted vector", "not in increasing order", with(func(b []byte) []byte { b[vecAt+1], b[vecAt+2] = 'u', 's'; return b })},
		{"flags", "unknown flags", with(func(b []byte) []byte { b[len(b)-1] = 0x80; return b })},
		{"long string", "bytes long but only", with(func(b []byte) []byte { b[2] = 100; return b })},
		{"stamps flagged, none", "flagged but empty", with(func(b []byte) []byte { b[len(b)-1] |= versionStamps; return append(b, 1) })},
		{"stamps unsorted", "stamp columns not in increasing order", append(with(func(b []byte) []byte { b[len(b)-1] |= versionStamps; return b }),
			3, 1, 'b', 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 'a', 0, 0, 0, 0, 0, 0, 0, 0, 0)},
		{"stamp truncated", "cannot fit", append(with(func(b []byte) []byte { b[len(b)-1] |= versionStamps; return b }), 2, 1, 'a', 0, 0)},
		{"stamp cut short", "column stamp: truncated", append(with(func(b []byte) []byte { b[len(b)-1] |= versionStamps; return b }), 2, 9, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 0, 0)},
	}
	for _, c := range cases {
		_, err := DecodeTxn(c.b)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "decode transaction") {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}

	// The receiver's checks apply to both forms.
	for _, c := range []struct {
		want string
		txn  *Txn
	}{
		{"names shape 1 of 1", &Txn{Shapes: []Shape{shape()}, Changes: []Change{{T: 1, Op: conflict.OpInsert}}}},
		{"names shape -1 of 1", &Txn{Shapes: []Shape{shape()}, Changes: []Change{{T: -1, Op: conflict.OpInsert}}}},
		{"1 values for 3 columns", &Txn{Shapes: []Shape{shape()}, Changes: []Change{{Op: conflict.OpUpdate, Row: []Value{{}}}}}},
		{"unknown operation 0", &Txn{Shapes: []Shape{shape()}, Changes: []Change{{Row: make([]Value, 3)}}}},
		{"unknown operation 4", &Txn{Shapes: []Shape{shape()}, Changes: []Change{{Op: 4}}}},
		{"2 types for 3 columns", &Txn{Shapes: []Shape{{Table: "t", Columns: []string{"a", "b", "c"}, Types: []string{"int", "int"}}}}},
		{"key column 3 of 3", &Txn{Shapes: []Shape{{Table: "t", Columns: []string{"a", "b", "c"}, Types: []string{"int", "int", "int"}, Key: []int{3}}}}},
	} {
		j, _ := json.Marshal(c.txn)
		for form, b := range map[string][]byte{"binary": mustEncode(t, c.txn), "json": j} {
			if _, err := DecodeTxn(b); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s form: error %v, want one containing %q", form, err, c.want)
			}
		}
	}
}

func FuzzDecodeTxn(f *testing.F) {
	// Small seeds: the fuzzer minimises every new input it finds, which
	// takes long on large ones.
	rich := richTxn()
	rich.Changes[4].Row[1].Text = strings.Repeat("x", 200)
	for _, txn := range []*Txn{rich, benchTxn(3), {}, {Origin: "us", Seq: 1, Shapes: []Shape{shape()}}} {
		b, _ := txn.Encode()
		f.Add(b)
		j, _ := json.Marshal(txn)
		f.Add(j)
	}
	f.Add([]byte{binaryMagic, binaryVersion})
	f.Add([]byte(" {}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		txn, err := DecodeTxn(b)
		if err != nil {
			if txn != nil {
				t.Fatal("transaction returned with an error")
			}
			if !strings.HasPrefix(err.Error(), "decode transaction") {
				t.Fatalf("error %q lacks the prefix", err)
			}
			return
		}
		enc, err := txn.Encode()
		if err != nil {
			t.Fatal(err)
		}
		back, err := DecodeTxn(enc)
		if err != nil {
			t.Fatalf("re-encoded transaction does not decode: %v", err)
		}
		if !reflect.DeepEqual(back, txn) {
			t.Fatalf("round trip differs\n got %#v\nwant %#v", back, txn)
		}
		// The binary form is canonical: what decodes re-encodes to itself.
		if b[0] == binaryMagic && !bytes.Equal(enc, b) {
			t.Fatalf("binary payload decoded but re-encodes differently\n in % x\nout % x", b, enc)
		}
	})
}

// benchTxn is a transaction shaped like a typical table's: id bigint,
// payload text of about 40 characters, n integer; versions with a vector
// over three regions.
func benchTxn(n int) *Txn {
	txn := &Txn{Origin: "us-east", Seq: 123456, LSN: "3/5D2E1A08", CommitUnix: 1767225600123456,
		Shapes: []Shape{{Table: "public.items", Columns: []string{"id", "payload", "n"}, Types: []string{"bigint", "text", "integer"}, Key: []int{0}}}}
	hlc := conflict.MakeTimestamp(1767225600123, 0)
	for i := range n {
		id := fmt.Sprint(1000000 + i*7)
		c := Change{T: 0, Op: conflict.OpUpdate, Key: `["` + id + `"]`,
			Row: []Value{{Text: id}, {Text: fmt.Sprintf("order %d shipped to warehouse 12, bin A-%03d", i, i%1000)}, {Text: fmt.Sprint(i % 5000)}},
			Version: conflict.Version{
				Vector: conflict.Vector{"us-east": uint64(1000 + i), "eu-west": uint64(i % 300)},
				HLC:    hlc + conflict.Timestamp(i), Origin: "us-east"}}
		switch i % 10 {
		case 0, 1:
			c.Op = conflict.OpInsert
		case 2:
			c.Op, c.Row, c.Version.Deleted = conflict.OpDelete, nil, true
		}
		if i%3 == 0 {
			c.Version.Vector["ap-south"] = uint64(i % 17)
		}
		txn.Changes = append(txn.Changes, c)
	}
	return txn
}

func BenchmarkEncodeTxn(b *testing.B) {
	txn := benchTxn(1000)
	j, _ := json.Marshal(txn)
	bin := mustEncode(b, txn)
	b.Run("json", func(b *testing.B) {
		b.SetBytes(int64(len(j)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(txn); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(j)), "payload-bytes")
	})
	b.Run("binary", func(b *testing.B) {
		b.SetBytes(int64(len(bin)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := txn.Encode(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(bin)), "payload-bytes")
	})
}

func BenchmarkDecodeTxn(b *testing.B) {
	txn := benchTxn(1000)
	j, _ := json.Marshal(txn)
	bin := mustEncode(b, txn)
	for _, c := range []struct {
		name    string
		payload []byte
	}{{"json", j}, {"binary", bin}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(c.payload)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := DecodeTxn(c.payload); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(c.payload)), "payload-bytes")
		})
	}
}
