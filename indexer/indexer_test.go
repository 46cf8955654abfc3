package indexer

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/polyregion/polyregion/replicator"
)

func TestParseArray(t *testing.T) {
	cases := []struct {
		in   string
		want []any
	}{
		{`{}`, []any{}},
		{`{1,2,NULL}`, []any{"1", "2", nil}},
		{`{"a b","c\"d","NULL",e}`, []any{"a b", `c"d`, "NULL", "e"}},
		{`{{1,2},{3,4}}`, []any{[]any{"1", "2"}, []any{"3", "4"}}},
		{`[0:1]={7,8}`, []any{"7", "8"}},
		{`{"x\\y"}`, []any{`x\y`}},
	}
	for _, c := range cases {
		got, err := parseArray(c.in)
		if err != nil {
			t.Fatalf("%s: %v", c.in, err)
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: got %#v want %#v", c.in, got, c.want)
		}
	}
	for _, bad := range []string{`{1,2`, `1,2}`, `{"a}`, `{1}x`} {
		if _, err := parseArray(bad); err == nil {
			t.Errorf("%s: parsed, want an error", bad)
		}
	}
}

func TestDocRendersTypes(t *testing.T) {
	shape := replicator.Shape{
		Table:   "public.t",
		Columns: []string{"id", "n", "price", "ok", "at", "local", "day", "meta", "tags", "blob", "uid", "secret", "f"},
		Types: []string{"bigint", "integer", "numeric(10,2)", "boolean", "timestamp with time zone", "timestamp without time zone",
			"date", "jsonb", "text[]", "bytea", "uuid", "text", "double precision"},
		Key: []int{0},
	}
	spec := IndexSpec{Table: "public.t", Index: "t", Exclude: []string{"secret"}, Rename: map[string]string{"n": "count"}}
	tm, err := newTableMap(spec, shape)
	if err != nil {
		t.Fatal(err)
	}
	row := []replicator.Value{{Text: "42"}, {Text: "7"}, {Text: "12.50"}, {Text: "t"}, {Text: "2024-03-01 10:20:30.123456+02"},
		{Text: "2024-03-01 10:20:30"}, {Text: "2024-03-01"}, {Text: `{"a": [1, 2]}`}, {Text: `{x,"y z",NULL}`}, {Text: `\x0102ff`},
		{Text: "6c2b6f4c-3f1e-4f2a-9b7c-0e8d1a2b3c4d"}, {Text: "hidden"}, {Text: "NaN"}}
	doc, err := tm.doc(row)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"id":42,"count":7,"price":12.50,"ok":true,"at":"2024-03-01T08:20:30.123456Z","local":"2024-03-01T10:20:30","day":"2024-03-01","meta":{"a":[1,2]},"tags":["x","y z",null],"blob":"AQL/","uid":"6c2b6f4c-3f1e-4f2a-9b7c-0e8d1a2b3c4d","f":null}`
	if string(doc) != want {
		t.Fatalf("doc\n got %s\nwant %s", doc, want)
	}
	row[1] = replicator.Value{Unchanged: true}
	if _, err := tm.doc(row); err != errUnchanged {
		t.Fatalf("unchanged column: got %v, want errUnchanged", err)
	}
	if got := tm.unchanged(row); !reflect.DeepEqual(got, []int{1}) {
		t.Fatalf("unchanged = %v", got)
	}
	m := tm.Mapping()["properties"].(map[string]any)
	if _, ok := m["secret"]; ok {
		t.Fatal("excluded column mapped")
	}
	if m["count"].(map[string]any)["type"] != "long" || m["at"].(map[string]any)["type"] != "date" {
		t.Fatalf("mapping %v", m)
	}
	row[3] = replicator.Value{Text: "maybe"}
	row[1] = replicator.Value{Text: "1"}
	if _, err := tm.doc(row); err == nil || !strings.Contains(err.Error(), `"ok"`) {
		t.Fatalf("bad boolean: %v (want an error naming the column)", err)
	}
}

func TestDocID(t *testing.T) {
	if got := DocID([]string{"7"}); got != "7" {
		t.Fatal(got)
	}
	if got := DocID([]string{"a|b", `c\`}); got != `a\|b|c\\` {
		t.Fatal(got)
	}
	if DocID([]string{"a|", "b"}) == DocID([]string{"a", "|b"}) {
		t.Fatal("composite ids collide")
	}
	long := DocID([]string{strings.Repeat("x", 600)})
	if !strings.HasPrefix(long, "sha256:") || len(long) != 7+64 {
		t.Fatal(long)
	}
}

func TestSpecValidate(t *testing.T) {
	bad := []IndexSpec{
		{Table: "t", Index: "t"},
		{Table: "public.t", Index: "Bad"},
		{Table: "public.t", Index: "t", Columns: []string{"a"}, Exclude: []string{"a"}},
		{Table: "public.t", Index: "t", Rename: map[string]string{"a": "x", "b": "x"}},
		{Table: "public.t", Index: "t", Rename: map[string]string{"a": "_id"}},
	}
	for _, s := range bad {
		if err := s.Validate(); err == nil {
			t.Errorf("%+v: valid, want an error", s)
		}
	}
	shape := replicator.Shape{Table: "public.t", Columns: []string{"id", "a"}, Types: []string{"int", "text"}, Key: []int{0}}
	if _, err := newTableMap(IndexSpec{Table: "public.t", Index: "t", Columns: []string{"nope"}}, shape); err == nil {
		t.Error("unknown column accepted")
	}
	if _, err := newTableMap(IndexSpec{Table: "public.t", Index: "t", Rename: map[string]string{"a": "id"}}, shape); err == nil {
		t.Error("two columns on one field accepted")
	}
}

func TestDedupeKeepsLastWrite(t *testing.T) {
	ops := []Op{{Index: "i", ID: "1", Doc: []byte("a")}, {Index: "i", ID: "2"}, {Index: "i", ID: "1", Delete: true}, {Index: "j", ID: "1"}}
	got := dedupe(ops)
	if len(got) != 3 || got[0].ID != "2" || !got[1].Delete || got[2].Index != "j" {
		t.Fatalf("%+v", got)
	}
}

// The embedded backend keeps versions like an external engine: an older
// write or a replayed insert after a delete never wins.
func TestEmbeddedVersions(t *testing.T) {
	ctx := context.Background()
	e, err := OpenEmbedded(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	mapping := map[string]any{"properties": map[string]any{"name": map[string]any{"type": "text"}}}
	if err := e.CreateIndex(ctx, "p-1", mapping); err != nil {
		t.Fatal(err)
	}
	if err := e.SwapAlias(ctx, "p", "p-1"); err != nil {
		t.Fatal(err)
	}
	apply := func(ops ...Op) {
		t.Helper()
		rej, err := e.Bulk(ctx, ops)
		if err != nil || len(rej) > 0 {
			t.Fatalf("bulk: %v %v", rej, err)
		}
	}
	apply(Op{Index: "p-1", ID: "1", Version: 10, Doc: []byte(`{"name":"ten"}`)},
		Op{Index: "p-1", ID: "2", Version: 10, Doc: []byte(`{"name":"two"}`)})
	apply(Op{Index: "p-1", ID: "1", Version: 5, Doc: []byte(`{"name":"five"}`)}) // older: ignored
	apply(Op{Index: "p-1", ID: "2", Version: 20, Delete: true})
	apply(Op{Index: "p-1", ID: "2", Version: 10, Doc: []byte(`{"name":"two"}`)}) // replay: stays deleted
	apply(Op{Index: "p-1", ID: "1", Version: 10, Doc: []byte(`{"name":"ten renewed"}`)})
	docs := map[string]string{}
	if err := e.Scan(ctx, "p", func(id string, src []byte) error { docs[id] = string(src); return nil }); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(docs, map[string]string{"1": `{"name":"ten renewed"}`}) {
		t.Fatalf("docs %v", docs)
	}
	rej, err := e.Bulk(ctx, []Op{{Index: "p-1", ID: "3", Version: 30, Doc: []byte(`[1]`)}})
	if err != nil || len(rej) != 1 || rej[0].Op != 0 {
		t.Fatalf("non-object document: %v %v", rej, err)
	}

	srv := httptest.NewServer(e.SearchHandler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/search/p?q=name:renewed")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Total uint64
		Hits  []struct {
			ID     string          `json:"_id"`
			Source json.RawMessage `json:"_source"`
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if out.Total != 1 || out.Hits[0].ID != "1" || string(out.Hits[0].Source) != `{"name":"ten renewed"}` {
		t.Fatalf("search: %+v", out)
	}
	if r, _ := http.Get(srv.URL + "/search/nope"); r.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown index: %d", r.StatusCode)
	}
	// A rebuilt physical index takes over the alias for searches at once.
	if err := e.CreateIndex(ctx, "p-2", mapping); err != nil {
		t.Fatal(err)
	}
	apply(Op{Index: "p-2", ID: "9", Version: 1, Doc: []byte(`{"name":"rebuilt"}`)})
	if err := e.SwapAlias(ctx, "p", "p-2"); err != nil {
		t.Fatal(err)
	}
	if err := e.DeleteIndex(ctx, "p-1"); err != nil {
		t.Fatal(err)
	}
	resp2, err := http.Get(srv.URL + "/search/p")
	if err != nil {
		t.Fatal(err)
	}
	defer resp2.Body.Close()
	if err := json.NewDecoder(resp2.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	if out.Total != 1 || out.Hits[0].ID != "9" {
		t.Fatalf("after swap: %+v", out)
	}
}

// A search URL the settings refuse is named by its place in the list: the
// message never carries the password the URL holds.
func TestRefusedSearchURLsKeepTheirPasswords(t *testing.T) {
	for _, u := range []string{"https://elastic:pa#ss@es:9200", "https://elastic:a/b@es:9200", "ftp://elastic:s3cret@es:21", "elastic:s3cret@es:9200"} {
		err := (&BackendConfig{Kind: KindElasticsearch, URLs: []string{"https://es:9200", u}}).Validate()
		if err == nil {
			t.Fatalf("%s: accepted", u)
		}
		if !strings.Contains(err.Error(), "search.urls[1]") {
			t.Errorf("%s: %v does not name the URL's place", u, err)
		}
		for _, secret := range []string{"pa#ss", "a/b", "s3cret"} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%s: the message carries the password: %v", u, err)
			}
		}
	}
	if err := (&BackendConfig{Kind: KindElasticsearch, URLs: []string{"https://elastic:s3cret@es:9200"}}).Validate(); err != nil {
		t.Errorf("a URL with credentials refused: %v", err)
	}
}
