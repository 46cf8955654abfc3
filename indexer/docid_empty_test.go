package indexer

import (
	"context"
	"strings"
	"testing"
)

// An empty key value gets a document id of its own, distinct from the ids
// of other keys of as many columns; the ids of keys with a value, or with
// an empty component among others, stay what they were (existing indices
// keep their documents).
func TestDocIDOfEmptyKey(t *testing.T) {
	empty := DocID([]string{""})
	if empty == "" {
		t.Error(`DocID([""]) is empty`)
	}
	for _, k := range []string{"a", " ", "|", `\`, "sha256:", strings.Repeat("x", 600)} {
		if DocID([]string{k}) == empty {
			t.Errorf("%q has the id of the empty key", k)
		}
	}
	kept := map[string][]string{"a": {"a"}, "|a": {"", "a"}, "a|": {"a", ""}, "|": {"", ""}, "||": {"", "", ""}, `\||`: {"|", ""}}
	seen := map[string]bool{}
	for want, parts := range kept {
		if got := DocID(parts); got != want {
			t.Errorf("DocID(%q) = %q, was %q", parts, got, want)
		}
		seen[want] = true
	}
	if len(seen) != len(kept) || seen[empty] {
		t.Errorf("ids collide: %v, empty key %q", seen, empty)
	}

	// The embedded index takes it, a delete (of a document it never had)
	// included.
	ctx := context.Background()
	e, err := OpenEmbedded(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.CreateIndex(ctx, "p-1", map[string]any{"properties": map[string]any{"name": map[string]any{"type": "text"}}}); err != nil {
		t.Fatal(err)
	}
	for _, op := range []Op{{Index: "p-1", ID: empty, Version: 1, Delete: true}, {Index: "p-1", ID: empty, Version: 2, Doc: []byte(`{"name":"blank"}`)}} {
		if rej, err := e.Bulk(ctx, []Op{op}); err != nil || len(rej) > 0 {
			t.Fatalf("delete %v: rejections %v, error %v", op.Delete, rej, err)
		}
	}
	docs := map[string]string{}
	if err := e.Scan(ctx, "p-1", func(id string, src []byte) error { docs[id] = string(src); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(docs) != 1 || docs[empty] != `{"name":"blank"}` {
		t.Fatalf("documents %v", docs)
	}
}
