package postgres

import (
	"reflect"
	"strings"
	"testing"
)

// Units loaded from several snapshots: streams start after the earliest
// position of each source (0 where some unit's snapshot had applied
// nothing of it), and reads every row up to the latest.
func TestJoinStartIsTheEarliestPositionAndReplayTheLatest(t *testing.T) {
	first := []SnapshotPosition{{Region: "us", Seq: 100, HLC: 7}, {Region: "eu", Seq: 40, LSN: "0/10", HLC: 5}}
	second := []SnapshotPosition{{Region: "us", Seq: 180, HLC: 9}, {Region: "eu", Seq: 35, HLC: 4}, {Region: "ap", Seq: 12, HLC: 3}}
	start, replay, err := JoinStart([][]SnapshotPosition{first, second})
	if err != nil {
		t.Fatal(err)
	}
	want := []SnapshotPosition{{Region: "ap"}, {Region: "eu", Seq: 35, HLC: 4}, {Region: "us", Seq: 100, HLC: 7}}
	if !reflect.DeepEqual(start, want) {
		t.Fatalf("start %+v, want %+v", start, want)
	}
	if wantReplay := map[string]int64{"us": 180, "eu": 40, "ap": 12}; !reflect.DeepEqual(replay, wantReplay) {
		t.Fatalf("replay %v, want %v", replay, wantReplay)
	}
	// One snapshot: its positions, nothing replayed past them.
	start, replay, err = JoinStart([][]SnapshotPosition{first, first})
	if err != nil || !reflect.DeepEqual(start, []SnapshotPosition{first[1], first[0]}) || replay["us"] != 100 || replay["eu"] != 40 {
		t.Fatalf("one snapshot twice: %+v %v %v", start, replay, err)
	}
	if _, _, err := JoinStart(nil); err == nil {
		t.Fatal("no unit: no error")
	}
	if _, _, err := JoinStart([][]SnapshotPosition{{{Region: "us", Seq: 1}, {Region: "us", Seq: 2}}}); err == nil {
		t.Fatal("a region listed twice: no error")
	}
}

// What was committed says what to ask for: tables done, and for a table
// in chunks the last key of its last chunk; a whole unit after chunks of a
// table (it went whole since) makes it done.
func TestResumeFollowsTheCommittedUnits(t *testing.T) {
	units := []loadedUnit{
		{Tables: []string{"public.a", "public.b"}},
		{Tables: []string{"public.big"}, After: []string{"100"}},
		{Tables: []string{"public.big"}, After: []string{"200"}},
		{Tables: []string{"public.other"}, After: []string{"x", "1"}},
		{Tables: []string{"public.other"}},
	}
	r := resumeFrom(units)
	if !reflect.DeepEqual(r.Done, []string{"public.a", "public.b", "public.other"}) {
		t.Fatalf("done %v", r.Done)
	}
	if !reflect.DeepEqual(r.After, map[string][]string{"public.big": {"200"}}) {
		t.Fatalf("after %v", r.After)
	}
	if got := r.Loaded(); !reflect.DeepEqual(got, []string{"public.a", "public.b", "public.big", "public.other"}) {
		t.Fatalf("loaded %v", got)
	}
	if !resumeFrom(nil).Empty() || r.Empty() {
		t.Fatal("Empty wrong")
	}
	// A unit committed later adds to it: the last chunk makes its table
	// done. (A resume of its own: r's After map is not shared.)
	again := resumeFrom(units)
	again.add(loadedUnit{Tables: []string{"public.big"}})
	if !reflect.DeepEqual(again.Done, []string{"public.a", "public.b", "public.big", "public.other"}) || len(again.After) != 0 {
		t.Fatalf("after the last chunk: %+v", again)
	}
}

// Tables done are not sent again; tables a foreign key ties (or with
// parked changes) go whole, the others in chunks; one loaded in chunks
// before that must now go whole restarts.
func TestUnitsSplitTablesWholeAndInChunks(t *testing.T) {
	tables := []SnapshotTable{{Name: "public.parent"}, {Name: "public.child"}, {Name: "public.big"}, {Name: "public.log"}, {Name: "public.done"}}
	whole := map[string]bool{"public.parent": true, "public.child": true, "public.log": true}
	resume := SnapshotResume{Done: []string{"public.done"}, After: map[string][]string{"public.log": {"9"}, "public.big": {"5"}}}
	w, c, restart := splitUnits(tables, whole, resume)
	names := func(ts []SnapshotTable) string {
		var out []string
		for _, t := range ts {
			out = append(out, t.Name)
		}
		return strings.Join(out, ",")
	}
	if names(w) != "public.parent,public.child,public.log" || names(c) != "public.big" {
		t.Fatalf("whole %s, chunked %s", names(w), names(c))
	}
	if !reflect.DeepEqual(restart, map[string]bool{"public.log": true}) {
		t.Fatalf("restart %v", restart)
	}
	if got := (SnapshotResume{Done: []string{"public.gone", "public.big"}, After: map[string][]string{"public.log": {"9"}}}).Unknown([]string{"public.big", "public.log"}); !reflect.DeepEqual(got, []string{"public.gone"}) {
		t.Fatalf("unknown %v", got)
	}
}

// A chunk's range compares the key columns as the table orders them: rows
// by their columns, versions by their key's text read back as the
// columns' types and collations; bounds are quoted literals.
func TestKeyRangeConditions(t *testing.T) {
	keys := []chunkKey{{name: "Region", typ: "text", collate: `pg_catalog."C"`}, {name: "id", typ: "bigint"}}
	got := keyRange(keys, rowKeyExprs(keys), []string{"it's", "7"}, []string{"z", "1"})
	want := `(t."Region", t."id") > (E'it''s'::text, E'7'::bigint) AND (t."Region", t."id") <= (E'z'::text, E'1'::bigint)`
	if got != want {
		t.Fatalf("rows:\n got %s\nwant %s", got, want)
	}
	got = keyRange(keys, versionKeyExprs(keys), nil, []string{`a\b`, "2"})
	want = `((((v.key::pg_catalog.jsonb ->> 0)::text) COLLATE pg_catalog."C"), ((v.key::pg_catalog.jsonb ->> 1)::bigint)) <= (E'a\\b'::text, E'2'::bigint)`
	if got != want {
		t.Fatalf("versions:\n got %s\nwant %s", got, want)
	}
	if got := keyRange(keys, rowKeyExprs(keys), nil, nil); got != "true" {
		t.Fatalf("whole table: %s", got)
	}
}
