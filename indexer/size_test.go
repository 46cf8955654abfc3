package indexer

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/polyregion/polyregion/replicator"
)

// oneColumn maps a table of a key and one column of type typ.
func oneColumn(t testing.TB, typ string) *tableMap {
	t.Helper()
	shape := replicator.Shape{Table: "public.t", Columns: []string{"id", "v"}, Types: []string{"bigint", typ}, Key: []int{0}}
	tm, err := newTableMap(IndexSpec{Table: "public.t", Index: "t"}, shape)
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

// floorHolds checks that the measured lower bound of a row's document is
// no more than the document rendered.
func floorHolds(t testing.TB, tm *tableMap, row []replicator.Value) {
	t.Helper()
	doc, err := tm.doc(row)
	if err != nil {
		return // refused for its content, not its size
	}
	floor, _ := tm.measure(textLens(row))
	if floor > int64(len(doc)) {
		t.Fatalf("%s %q: floor %d over the document's %d bytes (%s)", tm.shape.Types[1], row[1].Text, floor, len(doc), doc)
	}
}

func TestSizeFloorIsNeverMoreThanTheDocument(t *testing.T) {
	cases := map[string][]string{
		"text":                     {"", "x", `a "quoted" \ word`, "<&>", "\x00\x01", "\xff\xfe", "héllo wörld", "\u2028"},
		"uuid":                     {"6c2b6f4c-3f1e-4f2a-9b7c-0e8d1a2b3c4d"},
		"bigint":                   {"0", "-9223372036854775808"},
		"numeric(10,2)":            {"12.50", "NaN", "Infinity", "-Infinity"},
		"double precision":         {"-Infinity", "1e+300"},
		"boolean":                  {"t", "f"},
		"date":                     {"2024-03-01", "-infinity", "4713-01-01 BC"},
		"timestamp with time zone": {"-infinity", "2024-03-01 10:20:30.123456+05:30"},
		"bytea":                    {`\x`, `\x01`, `\x0102`, `\x010203`, `\x` + strings.Repeat("ff", 1000)},
		"jsonb":                    {`{}`, `[]`, `1`, `[1, 2, 3]`, `[[], [], []]`, `{"a": 1, "b": [1, 2], "": {}}`, `"<&>"`},
		"json":                     {`[1,        2]`, "  {}  "},
		"text[]":                   {`{}`, `{a,"b c",NULL}`, `[1:1][1:1]={{a}}`, `{"x\\y"}`},
		"date[]":                   {`{"4713-01-01 BC",-infinity}`},
		"bytea[]":                  {`{"\\x0102"}`},
	}
	for typ, texts := range cases {
		tm := oneColumn(t, typ)
		for _, text := range texts {
			floorHolds(t, tm, []replicator.Value{{Text: "1"}, {Text: text}})
		}
		floorHolds(t, tm, []replicator.Value{{Text: "1"}, {Null: true}})
	}
}

func FuzzSizeFloorIsNeverMoreThanTheDocument(f *testing.F) {
	types := []string{"text", "uuid", "bytea", "bigint", "jsonb"}
	f.Add(uint8(0), "plain words")
	f.Add(uint8(0), "<\xff\x00>")
	f.Add(uint8(1), "\u2028")
	f.Add(uint8(2), `\x00ff10`)
	f.Add(uint8(3), "-12")
	f.Add(uint8(4), `{"a": [1, 2], "b": {"c": "<d>"}}`)
	f.Fuzz(func(t *testing.T, kind uint8, text string) {
		typ := types[int(kind)%len(types)]
		if typ == "jsonb" {
			// jsonb's own text form: compact it, then space it as
			// PostgreSQL does.
			var v any
			if json.Unmarshal([]byte(text), &v) != nil {
				return
			}
			text = jsonbText(v)
		}
		floorHolds(t, oneColumn(t, typ), []replicator.Value{{Text: "1"}, {Text: text}})
	})
}

// jsonbText renders a value as PostgreSQL's jsonb output does: one space
// after each ',' and ':'.
func jsonbText(v any) string {
	switch v := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			kb, _ := json.Marshal(k)
			parts[i] = string(kb) + ": " + jsonbText(v[k])
		}
		return "{" + strings.Join(parts, ", ") + "}"
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = jsonbText(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

// A row far over the limit is refused from its lengths alone, with its
// size, the limit and the setting in the reason; one near the limit is
// rendered, and refused on its exact size if over.
func TestOversizeNamesTheSizeAndTheSetting(t *testing.T) {
	tm := oneColumn(t, "text")
	const limit = 1024
	why := tm.oversize(limit, []int{1, 8 << 20})
	if want := fmt.Sprintf("document is at least %d bytes, over the limit of 1024 bytes (search.max_document_bytes)", 8<<20+15); why != want {
		t.Fatalf("got %q\nwant %q", why, want)
	}
	if why := tm.oversize(limit, []int{1, 1000}); why != "" {
		t.Fatalf("a row that may fit was refused unrendered: %s", why)
	}
	// Escapes make it larger than its text: known once rendered.
	row := []replicator.Value{{Text: "1"}, {Text: strings.Repeat("<", 1000)}}
	doc, err := tm.doc(row)
	if err != nil {
		t.Fatal(err)
	}
	if why := docOversize(doc, limit); why != fmt.Sprintf("document is %d bytes, over the limit of 1024 bytes (search.max_document_bytes)", len(doc)) {
		t.Fatalf("rendered: %q", why)
	}
	if docOversize(doc, len(doc)) != "" {
		t.Fatal("a document of exactly the limit was refused")
	}
	// Plain json has no lower bound: it is rendered unless its text is
	// more than renderFactor times the limit.
	js := oneColumn(t, "json")
	if why := js.oversize(limit, []int{1, renderFactor*limit - 1}); why != "" {
		t.Fatalf("json within the render bound refused: %s", why)
	}
	if why := js.oversize(limit, []int{1, renderFactor * limit}); !strings.Contains(why, "limit of 1024 bytes (search.max_document_bytes)") {
		t.Fatalf("json past the render bound: %q", why)
	}
}

// Only the key and the indexed columns of a streamed row are copied; their
// lengths are read without copying.
func TestTupleValuesCopyOnlyWhatTheIndexNeeds(t *testing.T) {
	shape := replicator.Shape{Table: "public.t", Columns: []string{"id", "title", "blob", "body"}, Types: []string{"bigint", "text", "bytea", "text"}, Key: []int{0}}
	tm, err := newTableMap(IndexSpec{Table: "public.t", Index: "t", Exclude: []string{"blob"}}, shape)
	if err != nil {
		t.Fatal(err)
	}
	tuple := &pglogrepl.TupleData{Columns: []*pglogrepl.TupleDataColumn{
		{DataType: pglogrepl.TupleDataTypeText, Data: []byte("7")},
		{DataType: pglogrepl.TupleDataTypeText, Data: []byte("hello")},
		{DataType: pglogrepl.TupleDataTypeText, Data: []byte(`\x0102`)},
		{DataType: pglogrepl.TupleDataTypeToast},
	}}
	keys := tm.values(tuple, false)
	if keys[0].Text != "7" || !keys[1].Null || !keys[2].Null || !keys[3].Null {
		t.Fatalf("key values: %+v", keys)
	}
	all := tm.values(tuple, true)
	if all[1].Text != "hello" || !all[2].Null || !all[3].Unchanged {
		t.Fatalf("document values: %+v", all)
	}
	if got := tupleLens(4, tuple); fmt.Sprint(got) != "[1 5 6 0]" {
		t.Fatalf("lengths %v", got)
	}
}

func TestBulkPartsKeepOrderAndBoundBytes(t *testing.T) {
	var ops []Op
	for _, n := range []int{300, 300, 300, 2000, 100, 100, 700, 200} {
		ops = append(ops, Op{ID: fmt.Sprint(len(ops)), Doc: make([]byte, n)})
	}
	idx := []int{0, 1, 2, 3, 4, 5, 6, 7}
	parts := bulkParts(ops, idx, 1000)
	if got := fmt.Sprint(parts); got != "[[0 1 2] [3] [4 5 6] [7]]" {
		t.Fatalf("parts %s", got)
	}
	if got := bulkParts(ops, nil, 1000); len(got) != 0 {
		t.Fatalf("no operations: %v", got)
	}
}

// A batch of more than embeddedBatchBytes is applied in parts, in order:
// the last write of a document wins even when it is in a later part.
func TestEmbeddedBulkInPartsKeepsOrder(t *testing.T) {
	ctx := context.Background()
	e, err := OpenEmbedded(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.CreateIndex(ctx, "p-1", map[string]any{"properties": map[string]any{"body": map[string]any{"type": "text"}}}); err != nil {
		t.Fatal(err)
	}
	body := strings.Repeat("word ", 100_000) // 500 kB: a part holds two
	var ops []Op
	for i := range 5 {
		ops = append(ops, Op{Index: "p-1", ID: fmt.Sprint(i), Version: 1, Doc: []byte(`{"body":"` + body + `"}`)})
	}
	ops = append(ops, Op{Index: "p-1", ID: "0", Version: 1, Doc: []byte(`{"body":"last"}`)}, Op{Index: "p-1", ID: "1", Version: 1, Delete: true},
		Op{Index: "p-1", ID: "9", Version: 1, Doc: []byte(`[1]`)})
	rej, err := e.Bulk(ctx, ops)
	if err != nil || len(rej) != 1 || rej[0].Op != 7 {
		t.Fatalf("bulk: %v %v", rej, err)
	}
	docs := map[string]int{}
	if err := e.Scan(ctx, "p-1", func(id string, src []byte) error { docs[id] = len(src); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(docs) != 4 || docs["0"] != len(`{"body":"last"}`) || docs["4"] == 0 {
		t.Fatalf("documents %v", docs)
	}
	if _, ok := docs["1"]; ok {
		t.Fatal("deleted in a later part, still there")
	}
}

func TestConfigSizeSettings(t *testing.T) {
	base := Config{Region: "us", Database: "x", Indices: []IndexSpec{{Table: "public.t", Index: "t"}}}
	c := base
	c.defaults()
	if c.MaxDocumentBytes != DefaultMaxDocumentBytes || c.BatchBytes != DefaultBatchBytes {
		t.Fatalf("defaults: %d %d", c.MaxDocumentBytes, c.BatchBytes)
	}
	for _, bad := range []Config{{MaxDocumentBytes: 100}, {MaxDocumentBytes: -1}, {MaxDocumentBytes: 200 << 20}, {BatchBytes: 10}, {BatchBytes: 1 << 30}} {
		c := base
		c.MaxDocumentBytes, c.BatchBytes = bad.MaxDocumentBytes, bad.BatchBytes
		err := c.Validate()
		if err == nil {
			t.Errorf("%d/%d accepted", bad.MaxDocumentBytes, bad.BatchBytes)
			continue
		}
		if name := map[bool]string{true: "search.max_document_bytes", false: "search.batch_bytes"}[bad.MaxDocumentBytes != 0]; !strings.Contains(err.Error(), name) {
			t.Errorf("%v does not name %s", err, name)
		}
	}
	c = base
	c.MaxDocumentBytes, c.BatchBytes = 50<<20, 16<<20
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

// recorder is a Backend that records the batches it is given.
type recorder struct {
	Backend
	mu      sync.Mutex
	batches [][]Op
}

func (r *recorder) Bulk(_ context.Context, ops []Op) ([]Rejection, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, append([]Op(nil), ops...))
	return nil, nil
}

// The feed writes its batch once it holds BatchBytes of documents, also in
// the middle of a transaction (which stays unacknowledged until its end),
// and lets the documents go.
func TestStreamBatchIsBoundedInBytes(t *testing.T) {
	be := &recorder{}
	f, err := New(Config{Region: "us", Database: "x", Indices: []IndexSpec{{Table: "public.t", Index: "t"}}, BatchBytes: 1024, FlushInterval: time.Hour}, be)
	if err != nil {
		t.Fatal(err)
	}
	s := &streamer{f: f, inTxn: true, txnLSN: 100, acked: 10}
	for i := range 8 {
		if err := s.add(context.Background(), Op{Index: "t-1", ID: fmt.Sprint(i), Version: 100, Doc: make([]byte, 300)}); err != nil {
			t.Fatal(err)
		}
	}
	if len(be.batches) != 2 || len(be.batches[0]) != 4 || len(be.batches[1]) != 4 {
		t.Fatalf("batches of %d", len(be.batches))
	}
	if len(s.ops) != 0 || s.opBytes != 0 || cap(s.ops) == 0 || s.ops[:1][0].Doc != nil {
		t.Fatalf("batch not emptied: %d ops, %d bytes", len(s.ops), s.opBytes)
	}
	if s.acked != 10 {
		t.Fatalf("a transaction still being decoded was acknowledged: %s", s.acked)
	}
}
