package postgres

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

func TestSiblingsRoundTrip(t *testing.T) {
	ws := []conflict.Write{
		{Origin: "eu", Tick: 3, HLC: 70, Deleted: false},
		{Origin: "ap", Tick: 1, HLC: 90, Deleted: true},
	}
	data := siblingSet{
		{"eu", 3}: {row: json.RawMessage(`{"id":"1","val":"x","big":{"unchanged_toast":true},"note":null}`), seq: 12, vv: "ap:1,eu:3"},
		{"ap", 1}: {row: json.RawMessage(`{"id":"1"}`), seq: 4},
	}
	enc := encodeSiblings(ws, data)
	if enc == nil {
		t.Fatal("no siblings encoded")
	}
	got, gotData, err := parseSiblings([]byte(*enc))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, ws) {
		t.Fatalf("writes %+v, want %+v", got, ws)
	}
	if d := gotData[dotKey{"eu", 3}]; d.seq != 12 || d.vv != "ap:1,eu:3" || string(d.row) != string(data[dotKey{"eu", 3}].row) {
		t.Fatalf("live sibling's data %+v", d)
	}
	// A tombstone keeps no row.
	if d := gotData[dotKey{"ap", 1}]; d.row != nil || d.seq != 4 {
		t.Fatalf("tombstone sibling's data %+v", d)
	}
	if v := gotData[dotKey{"ap", 1}].vector(ws[1]); v.String() != "ap:1" {
		t.Fatalf("vector of a sibling without one kept: %s", v)
	}
	if encodeSiblings(nil, nil) != nil {
		t.Fatal("no siblings must encode as NULL")
	}
	if _, _, err := parseSiblings([]byte(`{"not":"an array"}`)); err == nil {
		t.Fatal("malformed siblings accepted")
	}
}

func TestImageRowKeepsWhatTheImageLacks(t *testing.T) {
	sh := replicator.Shape{Table: "public.t", Columns: []string{"id", "val", "big", "note", "added"}}
	row, err := imageRow(sh, json.RawMessage(`{"id":"1","val":"x","big":{"unchanged_toast":true},"note":null}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []replicator.Value{{Text: "1"}, {Text: "x"}, {Unchanged: true}, {Null: true}, {Unchanged: true}}
	if !slices.Equal(row, want) {
		t.Fatalf("row %+v, want %+v", row, want)
	}
}

func TestKeepsSiblings(t *testing.T) {
	for _, tt := range []struct {
		pol  conflict.Policy
		want bool
	}{
		{conflict.Policy{}, false},
		{conflict.Policy{Kind: conflict.LastWriterWins}, false},
		{conflict.Policy{Deletes: conflict.DeleteWins}, true},
		{conflict.Policy{Deletes: conflict.UpdateWins}, true},
		{conflict.Policy{Kind: conflict.RegionPriority, Priority: []conflict.RegionID{"eu"}}, true},
		{conflict.Policy{Kind: conflict.CustomSQL, Resolver: "public.pick"}, true},
	} {
		if got := tt.pol.KeepsSiblings(); got != tt.want {
			t.Errorf("KeepsSiblings(%s) = %v, want %v", tt.pol.Label(), got, tt.want)
		}
	}
}
