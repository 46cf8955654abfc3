package postgres

import (
	"maps"
	"slices"
	"testing"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

func TestChangedColumnsComparesTheOldRow(t *testing.T) {
	sh := replicator.Shape{Table: "public.p", Columns: []string{"id", "email", "bio", "big", "hits"}, Key: []int{0}}
	pol := conflict.Policy{Deletes: conflict.DeleteWins, Columns: conflict.ColumnLWW, Counters: []string{"hits"}}
	cols := stampedColumns(sh, pol)
	if !slices.Equal(cols, []string{"email", "bio", "big"}) {
		t.Fatalf("stamped columns %v, want the non-key, non-counter ones", cols)
	}
	old := []replicator.Value{{Text: "1"}, {Text: "a@x"}, {Null: true}, {Text: "large"}, {Text: "4"}}
	row := []replicator.Value{{Text: "1"}, {Text: "a@x"}, {Text: ""}, {Unchanged: true}, {Text: "5"}}
	if got := changedColumns(sh, cols, old, row); !slices.Equal(got, []bool{false, true, false}) {
		t.Fatalf("changed %v, want only bio (NULL to empty); email equal, big an unchanged TOAST value", got)
	}
	if got := changedColumns(sh, cols, nil, row); !slices.Equal(got, []bool{true, true, false}) {
		t.Fatalf("without the old row: changed %v, want every sent column", got)
	}
	if stampedColumns(sh, conflict.Policy{Deletes: conflict.DeleteWins}) != nil {
		t.Fatal("a row-level table has stamped columns")
	}
}

func TestStampsRoundTrip(t *testing.T) {
	st := map[string]conflict.Stamp{"email": {HLC: conflict.MaxTimestamp, Origin: "eu"}, "bio": {}}
	got, err := parseStamps([]byte(*encodeStamps(st)))
	if err != nil || !maps.Equal(got, st) {
		t.Fatalf("round trip: %v, %v; want %v", got, err, st)
	}
	if encodeStamps(nil) != nil {
		t.Fatal("no stamps are stored as a value")
	}
	if _, err := parseStamps([]byte(`{"email": 3}`)); err == nil {
		t.Fatal("malformed stamps accepted")
	}
}
