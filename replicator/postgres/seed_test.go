package postgres

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
)

// TestASeedMessageBecomesInsertsOfItsTransaction: each row of an added
// table's seed message is an insert of the local transaction being
// decoded (NULL kept apart from an empty string); a transaction applied
// from a peer and a table not replicated are left alone; a malformed
// message is refused, naming the table.
func TestASeedMessageBecomesInsertsOfItsTransaction(t *testing.T) {
	r := NewReader(ReaderConfig{Tables: []regions.Table{{Name: "public.notes", Added: 2}}})
	// Where the seed began is known (a reader that does not know reads it
	// from polyregion.seeding first).
	r.seeds.Store(&map[string]seedWindow{"public.notes": {began: 1, ended: math.MaxUint64}})
	rels := map[uint32]*relation{7: {name: "public.notes", shape: replicator.Shape{Table: "public.notes", Columns: []string{"id", "body"}, Types: []string{"integer", "text"}, Key: []int{0}}}}
	ctx := context.Background()
	cur := &pendingTxn{xid: 9}
	if err := r.addSeeded(ctx, nil, cur, rels, []byte("public.notes\n"+`[["1","one"],["2",null],["3",""]]`)); err != nil {
		t.Fatal(err)
	}
	if len(cur.changes) != 3 {
		t.Fatalf("%d changes, want 3", len(cur.changes))
	}
	for i, want := range []struct {
		key  string
		body replicator.Value
	}{{`["1"]`, replicator.Value{Text: "one"}}, {`["2"]`, replicator.Value{Null: true}}, {`["3"]`, replicator.Value{}}} {
		c := cur.changes[i]
		if c.op != conflict.OpInsert || c.key != want.key || c.row[1] != want.body || c.rel != rels[7] {
			t.Errorf("change %d: %s %s %+v, want insert %s %+v", i, c.op, c.key, c.row, want.key, want.body)
		}
	}
	remote := &pendingTxn{remote: true}
	if err := r.addSeeded(ctx, nil, remote, rels, []byte("public.notes\n"+`[["4","x"]]`)); err != nil || len(remote.changes) != 0 {
		t.Fatalf("a transaction applied from a peer: %v, %d changes", err, len(remote.changes))
	}
	other := &pendingTxn{}
	if err := r.addSeeded(ctx, nil, other, rels, []byte("public.other\n"+`[["4","x"]]`)); err != nil || len(other.changes) != 0 {
		t.Fatalf("a table not replicated: %v, %d changes", err, len(other.changes))
	}
	for _, bad := range []struct{ content, want string }{
		{`public.notes`, "no table name"},
		{"public.notes\n" + `[["1"]]`, "public.notes carries 1 values, the table has 2 columns"},
		{"public.notes\n" + `{"1": 2}`, "malformed seed of public.notes"},
		{"public.notes\n" + `[[null,"x"]]`, "public.notes"},
	} {
		if err := r.addSeeded(ctx, nil, &pendingTxn{}, rels, []byte(bad.content)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: %v, want an error naming %q", bad.content, err, bad.want)
		}
	}
	if err := r.addSeeded(ctx, nil, nil, rels, []byte("public.notes\n[]")); err == nil {
		t.Error("a seed outside a transaction was taken")
	}
}
