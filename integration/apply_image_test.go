package integration

import (
	"testing"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestAMaxColumnCountsASiblingAfterACounterWrite: one batch brings two
// writes of a row. The first is older than the row here (a third region's
// write that saw it arrived first), so only its counter increment is
// added; the second is concurrent with the row and loses to it, so it is
// kept as a sibling and its max column counts. Before the
// fix, the counter-only write left the row marked written without its
// image, the decision found no local row to merge into, and the max
// column kept the row's own value: the region diverged from the others
// (in the demo, updated_at 28 ms apart for ever, with equal counters).
// The same history on a table whose other columns are decided by the
// policy logs the conflict with the local row as it was, increment
// included; before the fix the record had no local row.
func TestAMaxColumnCountsASiblingAfterACounterWrite(t *testing.T) {
	pol := conflict.Policy{Deletes: conflict.DeleteWins, Counters: []string{"n"}, Max: []string{"at"}}
	b := startApplierBench(t, []string{
		`CREATE TABLE public.hits (id integer PRIMARY KEY, n bigint NOT NULL, at timestamptz NOT NULL)`,
		`CREATE TABLE public.named (id integer PRIMARY KEY, n bigint NOT NULL, name text NOT NULL)`},
		regions.Table{Name: "public.hits", Policy: pol}, regions.Table{Name: "public.named", Policy: conflict.Policy{Counters: []string{"n"}}})
	ctx, ap, sh, named := b.ctx, b.ap, b.shapes["public.hits"], b.shapes["public.named"]
	fromUS, fromEU := b.applier(t, "us", postgres.ApplierConfig{}), b.applier(t, "eu", postgres.ApplierConfig{})
	ts := func(s int64) conflict.Timestamp { return conflict.MakeTimestamp(1_700_000_000_000+s*1000, 0) }
	write := func(src conflict.RegionID, seq replicator.Seq, op conflict.Op, n, at string, vec conflict.Vector, hlc conflict.Timestamp) *replicator.Txn {
		return &replicator.Txn{Origin: src, Seq: seq, LSN: "0/1", Shapes: []replicator.Shape{sh, named}, Changes: []replicator.Change{{
			Op: op, Key: `["1"]`, Row: []replicator.Value{{Text: "1"}, {Text: n}, {Text: at}}, Deltas: map[string]string{"n": "1"},
			Version: conflict.Version{Vector: vec, HLC: hlc, Origin: src}}, {
			T: 1, Op: op, Key: `["1"]`, Row: []replicator.Value{{Text: "1"}, {Text: n}, {Text: string(src) + " " + at[17:19]}}, Deltas: map[string]string{"n": "1"},
			Version: conflict.Version{Vector: vec, HLC: hlc, Origin: src}}}}
	}
	// eu inserted the row, then (having applied us's first write) wrote it
	// again; both are here, us's first write not yet.
	for _, txn := range []*replicator.Txn{
		write("eu", 1, conflict.OpInsert, "1", "2026-01-01 00:00:01+00", conflict.Vector{"eu": 1}, ts(1)),
		write("eu", 2, conflict.OpUpdate, "3", "2026-01-01 00:00:04+00", conflict.Vector{"eu": 2, "us": 1}, ts(4)),
	} {
		if _, err := fromEU.Apply(ctx, []*replicator.Txn{txn}); err != nil {
			t.Fatal(err)
		}
	}
	// us's two writes in one batch: the first eu's second write saw; the
	// second concurrent with it, older by the clock, with the greatest at.
	if _, err := fromUS.Apply(ctx, []*replicator.Txn{
		write("us", 1, conflict.OpUpdate, "2", "2026-01-01 00:00:02+00", conflict.Vector{"eu": 1, "us": 1}, ts(2)),
		write("us", 2, conflict.OpUpdate, "3", "2026-01-01 00:00:09+00", conflict.Vector{"eu": 1, "us": 2}, ts(3)),
	}); err != nil {
		t.Fatal(err)
	}
	// Every increment once; at the greatest of the live writes' (eu's
	// second, which the row keeps, and us's second, kept as its sibling).
	got := queryString(t, ctx, ap, `SELECT n || ' ' || to_char(at AT TIME ZONE 'UTC', 'HH24:MI:SS') FROM public.hits WHERE id = 1`)
	if want := "4 00:00:09"; got != want {
		t.Errorf("row 1 = %q, want %q (the sibling's at counts)", got, want)
	}
	if sibs := queryString(t, ctx, ap, `SELECT coalesce(siblings::text, '') FROM polyregion.row_version WHERE tbl = 'public.hits'`); sibs == "" {
		t.Errorf("us's second write is not kept as a sibling")
	}
	// us's second write lost its name to eu's second: logged, the local
	// side eu's row with us's first increment added.
	if got := queryString(t, ctx, ap, `SELECT n || ' ' || name FROM public.named WHERE id = 1`); got != "4 eu 04" {
		t.Errorf("named row 1 = %q, want %q", got, "4 eu 04")
	}
	logged := queryString(t, ctx, ap, `SELECT string_agg(kind || ' ' || coalesce(local_row::text, 'no local row'), '; ') FROM polyregion.conflict_log WHERE tbl = 'public.named'`)
	if want := `update_update {"n": "3", "id": "1", "name": "eu 04"}`; logged != want {
		t.Errorf("conflicts logged for named: %s, want %s", logged, want)
	}
}
