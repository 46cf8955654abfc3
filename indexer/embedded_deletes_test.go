package indexer

import (
	"context"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// versionsHeld counts the versions an embedded physical index keeps.
func versionsHeld(t *testing.T, e *Embedded, name string) int {
	t.Helper()
	e.mu.Lock()
	p, err := e.index(name)
	e.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := p.meta.View(func(tx *bbolt.Tx) error { n = tx.Bucket(bucketVersion).Stats().KeyN; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// A deleted document's version is kept for deletedVersionsKept (a replayed
// older write stays refused), then dropped: the store no longer grows with
// every document ever deleted. A document written again after its delete
// keeps its version. Deletions made before they were listed (an upgraded
// store) are listed at open and expire the same way.
func TestEmbeddedDeletedVersionsExpire(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	open := func() *Embedded {
		t.Helper()
		e, err := OpenEmbedded(dir)
		if err != nil {
			t.Fatal(err)
		}
		e.now = func() time.Time { return clock }
		return e
	}
	e := open()
	mapping := map[string]any{"properties": map[string]any{"name": map[string]any{"type": "text"}}}
	if err := e.CreateIndex(ctx, "p-1", mapping); err != nil {
		t.Fatal(err)
	}
	apply := func(ops ...Op) {
		t.Helper()
		if rej, err := e.Bulk(ctx, ops); err != nil || len(rej) > 0 {
			t.Fatalf("bulk: %v %v", rej, err)
		}
	}
	doc := func(id string, v int64) Op {
		return Op{Index: "p-1", ID: id, Version: v, Doc: []byte(`{"name":"` + id + `"}`)}
	}
	del := func(id string, v int64) Op { return Op{Index: "p-1", ID: id, Version: v, Delete: true} }
	docs := func() map[string]bool {
		t.Helper()
		out := map[string]bool{}
		if err := e.Scan(ctx, "p-1", func(id string, _ []byte) error { out[id] = true; return nil }); err != nil {
			t.Fatal(err)
		}
		return out
	}

	apply(doc("a", 1), doc("b", 1), doc("c", 1), doc("keep", 1))
	apply(del("a", 2), del("b", 2), del("c", 2))
	apply(doc("c", 3)) // written again after its delete
	clock = clock.Add(30 * time.Minute)
	apply(doc("a", 1)) // a replay older than the delete, inside the window: refused
	if d := docs(); d["a"] {
		t.Fatalf("an older write inside the window brought a deleted document back: %v", d)
	}
	if n := versionsHeld(t, e, "p-1"); n != 4 {
		t.Fatalf("%d versions held inside the window, want 4 (a, b, c, keep)", n)
	}
	clock = clock.Add(deletedVersionsKept)
	apply(doc("keep", 2)) // any batch drops what expired
	if n := versionsHeld(t, e, "p-1"); n != 2 {
		t.Fatalf("%d versions held after the window, want 2 (c written again, keep)", n)
	}
	if d := docs(); len(d) != 2 || !d["c"] || !d["keep"] {
		t.Fatalf("documents %v, want c and keep", d)
	}

	// A store from before deletions were listed: drop the list, reopen.
	apply(del("keep", 3))
	e.mu.Lock()
	p := e.open["p-1"]
	err := p.meta.Update(func(tx *bbolt.Tx) error { return tx.DeleteBucket(bucketDeleted) })
	e.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e = open()
	defer e.Close()
	if n := versionsHeld(t, e, "p-1"); n != 2 {
		t.Fatalf("%d versions held after reopening, want 2", n)
	}
	clock = clock.Add(deletedVersionsKept + time.Second)
	apply(doc("d", 1))
	if n := versionsHeld(t, e, "p-1"); n != 2 {
		t.Fatalf("%d versions held after the listed deletion expired, want 2 (c, d)", n)
	}
}
