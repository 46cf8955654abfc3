package postgres

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
)

// TestChangesOfADroppedTableAreSkipped: a peer that has not learned of the
// change that dropped a table still ships its changes; the applier leaves
// them out (each transaction keeps its other changes, and its place in the
// source's order) and says so once per table. Without a dropped table the
// transactions are passed on as they are.
func TestChangesOfADroppedTableAreSkipped(t *testing.T) {
	c := regions.Cluster{Tables: []regions.Table{{Name: "public.kv"}, {Name: "public.notes", Added: 2}},
		Changes: []regions.Epoch{
			{Number: 2, Policies: map[string]conflict.Policy{"public.kv": {}, "public.notes": {}, "public.old": {}}},
			{Number: 3, Policies: map[string]conflict.Policy{"public.kv": {}, "public.notes": {}}},
		},
		Dropped: []regions.Table{{Name: "public.gone"}}}
	dropped := c.DroppedTables()
	if len(dropped) != 2 || !dropped["public.gone"] || !dropped["public.old"] {
		t.Fatalf("dropped: %v, want public.gone and public.old", dropped)
	}
	var logs bytes.Buffer
	a := &Applier{cfg: ApplierConfig{Source: "eu", Logger: slog.New(slog.NewTextHandler(&logs, nil))}, dropped: dropped, skipped: map[string]bool{}}
	shapes := []replicator.Shape{{Table: "public.kv"}, {Table: "public.gone"}}
	txns := []*replicator.Txn{
		{Seq: 1, Shapes: shapes, Changes: []replicator.Change{{T: 1, Key: `["1"]`}, {T: 0, Key: `["2"]`}, {T: 1, Key: `["3"]`}}},
		{Seq: 2, Shapes: shapes, Changes: []replicator.Change{{T: 1, Key: `["4"]`}}},
		{Seq: 3, Shapes: shapes, Changes: []replicator.Change{{T: 0, Key: `["5"]`}}},
	}
	got := a.withoutDropped(txns)
	if len(got) != 3 || got[0].Seq != 1 || len(got[0].Changes) != 1 || got[0].Changes[0].Key != `["2"]` || len(got[1].Changes) != 0 || got[2] != txns[2] {
		t.Fatalf("kept: %+v %+v %+v", got[0].Changes, got[1].Changes, got[2].Changes)
	}
	if len(txns[0].Changes) != 3 {
		t.Fatal("the shipped transaction itself was changed")
	}
	if n := strings.Count(logs.String(), "changes of a table the cluster dropped are no longer applied"); n != 1 || !strings.Contains(logs.String(), "public.gone") {
		t.Fatalf("logged %d times:\n%s", n, logs.String())
	}
	a.dropped = nil
	if same := a.withoutDropped(txns); &same[0] != &txns[0] {
		t.Fatal("without a dropped table the batch was copied")
	}
}
