package replicator

import (
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/polyregion/polyregion/conflict"
)

// A local write's version, counter sums and deltas, decided from the row's
// recorded state: one case per rule of VersionLocalWrite.
func TestVersionLocalWrite(t *testing.T) {
	commit := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	at := conflict.MakeTimestamp(commit.UnixMilli(), 0)
	ahead := conflict.MakeTimestamp(commit.Add(5*time.Second).UnixMilli(), 3) // a peer's clock 5 s ahead
	kv := Shape{Table: "public.kv", Columns: []string{"id", "v"}, Key: []int{0}}
	hits := Shape{Table: "public.hits", Columns: []string{"id", "hits", "note"}, Key: []int{0}}
	lww := conflict.Policy{Deletes: conflict.DeleteWins}
	counted := conflict.Policy{Deletes: conflict.DeleteWins, Counters: []string{"hits"}}
	row := func(vals ...string) []Value {
		out := make([]Value, len(vals))
		for i, v := range vals {
			switch v {
			case "NULL":
				out[i] = Value{Null: true}
			case "TOAST":
				out[i] = Value{Unchanged: true}
			default:
				out[i] = Value{Text: v}
			}
		}
		return out
	}
	cases := []struct {
		name   string
		p      conflict.Policy
		prior  Recorded
		w      LocalWrite
		vector string
		hlc    conflict.Timestamp
		sums   map[string]string
		deltas map[string]string
	}{
		{name: "the first write of a row: its own tick, its commit time", p: lww,
			w:      LocalWrite{Op: conflict.OpInsert, Shape: kv, Row: row("1", "a")},
			vector: "us:1", hlc: at},
		{name: "after a peer's write: follows it, timestamped past it whatever the clocks say", p: lww,
			prior:  Recorded{Version: conflict.Version{Vector: conflict.Vector{"eu": 3, "us": 1}, HLC: ahead, Origin: "eu"}},
			w:      LocalWrite{Op: conflict.OpUpdate, Shape: kv, Row: row("1", "b")},
			vector: "eu:3,us:2", hlc: ahead + 1},
		{name: "a delete keeps the counters' sums in its tombstone", p: counted,
			prior:  Recorded{Version: conflict.Version{Vector: conflict.Vector{"us": 2}, HLC: at - 10}, Counters: map[string]string{"hits": "10"}},
			w:      LocalWrite{Op: conflict.OpDelete, Shape: hits, Row: row("1", "NULL", "NULL")},
			vector: "us:3", hlc: at, sums: map[string]string{"hits": "10"}},
		{name: "with the full old row the delta is exact and the recorded sum moves by it", p: counted,
			// Peers' increments were folded into the sum (12) after the
			// row held 5 here; this write made it 7.
			prior:  Recorded{Version: conflict.Version{Vector: conflict.Vector{"us": 1}}, Counters: map[string]string{"hits": "12"}},
			w:      LocalWrite{Op: conflict.OpUpdate, Shape: hits, Row: row("1", "7", "x"), Old: row("1", "5", "x"), OldFull: true},
			vector: "us:2", hlc: at, sums: map[string]string{"hits": "14"}, deltas: map[string]string{"hits": "2"}},
		{name: "without the old row the delta is from the recorded sum", p: counted,
			prior:  Recorded{Version: conflict.Version{Vector: conflict.Vector{"us": 1}}, Counters: map[string]string{"hits": "5"}},
			w:      LocalWrite{Op: conflict.OpUpdate, Shape: hits, Row: row("1", "7", "x")},
			vector: "us:2", hlc: at, sums: map[string]string{"hits": "7"}, deltas: map[string]string{"hits": "2"}},
		{name: "a row written before replication: the stream's old value is the start", p: counted,
			w:      LocalWrite{Op: conflict.OpUpdate, Shape: hits, Row: row("1", "41", "x"), Old: row("1", "40", "x"), OldFull: true},
			vector: "us:1", hlc: at, sums: map[string]string{"hits": "41"}, deltas: map[string]string{"hits": "1"}},
		{name: "a row its table's seed has not reached: the whole value, whatever the stream's old value", p: counted,
			// Peers never had the row's 40: the write is its first
			// shipped state, and the seed's row then follows it by 0.
			w:      LocalWrite{Op: conflict.OpUpdate, Shape: hits, Row: row("1", "41", "x"), Old: row("1", "40", "x"), OldFull: true, Unseeded: true},
			vector: "us:1", hlc: at, sums: map[string]string{"hits": "41"}, deltas: map[string]string{"hits": "41"}},
		{name: "an unchanged counter moves by nothing", p: counted,
			prior:  Recorded{Counters: map[string]string{"hits": "9"}},
			w:      LocalWrite{Op: conflict.OpUpdate, Shape: hits, Row: row("1", "TOAST", "y")},
			vector: "us:1", hlc: at, sums: map[string]string{"hits": "9"}, deltas: map[string]string{"hits": "0"}},
		{name: "an insert's counters count from zero (NULL is 0)", p: counted,
			w:      LocalWrite{Op: conflict.OpInsert, Shape: hits, Row: row("1", "3", "NULL")},
			vector: "us:1", hlc: at, sums: map[string]string{"hits": "3"}, deltas: map[string]string{"hits": "3"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.w.Region, c.w.Commit = "us", commit
			got, err := VersionLocalWrite(c.p, c.prior, c.w)
			if err != nil {
				t.Fatal(err)
			}
			if got.Version.Vector.String() != c.vector || got.Version.HLC != c.hlc || got.Version.Origin != "us" || got.Version.Deleted != (c.w.Op == conflict.OpDelete) {
				t.Fatalf("version %s hlc %s origin %s deleted %v; want %s, %s, us", got.Version.Vector, got.Version.HLC, got.Version.Origin, got.Version.Deleted, c.vector, c.hlc)
			}
			if !maps.Equal(got.Counters, c.sums) || !maps.Equal(got.Deltas, c.deltas) {
				t.Fatalf("sums %v deltas %v; want %v, %v", got.Counters, got.Deltas, c.sums, c.deltas)
			}
		})
	}
	if _, err := VersionLocalWrite(counted, Recorded{}, LocalWrite{Region: "us", Op: conflict.OpUpdate, Shape: hits, Row: row("1", "many", "x")}); err == nil || !strings.Contains(err.Error(), "counter hits") {
		t.Fatalf("a counter that is not a number: %v, want an error naming the column", err)
	}
}

// Column stamps: an update of a live row keeps the stamps of the columns it
// did not change; an insert, or an update of a deleted row, stamps them all
// as its own.
func TestVersionLocalWriteKeepsTheStampsOfUnchangedColumns(t *testing.T) {
	sh := Shape{Table: "public.p", Columns: []string{"id", "email", "bio"}, Key: []int{0}}
	p := conflict.Policy{Deletes: conflict.DeleteWins, Columns: conflict.ColumnLWW}
	email := conflict.Stamp{HLC: 77, Origin: "eu"}
	prior := Recorded{Version: conflict.Version{Vector: conflict.Vector{"eu": 1}, HLC: 90, Origin: "ap", Stamps: map[string]conflict.Stamp{"email": email}}}
	w := LocalWrite{Region: "us", Commit: time.Now(), Op: conflict.OpUpdate, Shape: sh,
		Row: []Value{{Text: "1"}, {Text: "a@x"}, {Text: "new"}}, Old: []Value{{Text: "1"}, {Text: "a@x"}, {Text: "old"}}, OldFull: true}
	got, err := VersionLocalWrite(p, prior, w)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got.Version.Stamps, map[string]conflict.Stamp{"email": email}) {
		t.Fatalf("stamps %v: want email's kept (%v), bio the write's own", got.Version.Stamps, email)
	}
	w.OldFull = false // without the old row every column counts as changed
	if got, _ := VersionLocalWrite(p, prior, w); got.Version.Stamps != nil {
		t.Fatalf("stamps %v without the old row, want none kept", got.Version.Stamps)
	}
	w.OldFull, w.Unseeded = true, true // the write is the row's first shipped state
	if got, _ := VersionLocalWrite(p, prior, w); got.Version.Stamps != nil {
		t.Fatalf("stamps %v of a row its seed had not reached, want none kept", got.Version.Stamps)
	}
	w.Unseeded = false
	prior.Version.Deleted = true
	if got, _ := VersionLocalWrite(p, prior, w); got.Version.Stamps != nil {
		t.Fatalf("stamps %v over a tombstone, want none kept", got.Version.Stamps)
	}
}

func TestChangedColumnsComparesTheOldRow(t *testing.T) {
	sh := Shape{Table: "public.p", Columns: []string{"id", "email", "bio", "big", "hits"}, Key: []int{0}}
	pol := conflict.Policy{Deletes: conflict.DeleteWins, Columns: conflict.ColumnLWW, Counters: []string{"hits"}}
	cols := StampedColumns(sh, pol)
	if !slices.Equal(cols, []string{"email", "bio", "big"}) {
		t.Fatalf("stamped columns %v, want the non-key, non-counter ones", cols)
	}
	old := []Value{{Text: "1"}, {Text: "a@x"}, {Null: true}, {Text: "large"}, {Text: "4"}}
	row := []Value{{Text: "1"}, {Text: "a@x"}, {Text: ""}, {Unchanged: true}, {Text: "5"}}
	if got := ChangedColumns(sh, cols, old, row); !slices.Equal(got, []bool{false, true, false}) {
		t.Fatalf("changed %v, want only bio (NULL to empty); email equal, big an unchanged TOAST value", got)
	}
	if got := ChangedColumns(sh, cols, nil, row); !slices.Equal(got, []bool{true, true, false}) {
		t.Fatalf("without the old row: changed %v, want every sent column", got)
	}
	if StampedColumns(sh, conflict.Policy{Deletes: conflict.DeleteWins}) != nil {
		t.Fatal("a row-level table has stamped columns")
	}
}

// TestVersionLocalWriteCarriesTheRowsLatestEpoch: a row's epoch is the
// latest its writes were made under, the recorded one or the write's.
func TestVersionLocalWriteCarriesTheRowsLatestEpoch(t *testing.T) {
	kv := Shape{Table: "public.kv", Columns: []string{"id", "v"}, Key: []int{0}}
	w := LocalWrite{Region: "us", Op: conflict.OpUpdate, Shape: kv, Row: []Value{{Text: "1"}, {Text: "b"}}}
	for _, c := range []struct{ recorded, write, want uint64 }{{0, 0, 0}, {2, 0, 2}, {0, 2, 2}, {3, 2, 3}, {2, 3, 3}} {
		w.Epoch = c.write
		v, err := VersionLocalWrite(conflict.Policy{}, Recorded{Version: conflict.Version{Vector: conflict.Vector{"eu": 1}, Origin: "eu", Epoch: c.recorded}}, w)
		if err != nil {
			t.Fatal(err)
		}
		if v.Version.Epoch != c.want {
			t.Errorf("recorded epoch %d, write's %d: version's %d, want %d", c.recorded, c.write, v.Version.Epoch, c.want)
		}
	}
}
