package integration

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestMaxAndMinColumnsMergeInEveryRegion: columns declared max (min) end,
// in every region, at the greatest (least) value any region wrote, whatever
// the arrival order, and a local write that would move one back keeps the
// value it had (the merge trigger). public.visits has only counter, max and
// min columns: concurrent updates of it lose nothing, are taken in place
// and are not logged. public.profiles also has a column decided by
// last-writer-wins: the concurrent writes of its name are logged, yet its
// max column still merges, also when the write that brought the greatest
// value lost the row.
func TestMaxAndMinColumnsMergeInEveryRegion(t *testing.T) {
	schema := []string{
		`CREATE TABLE public.visits (id integer PRIMARY KEY, hits bigint NOT NULL DEFAULT 0, last_seen timestamptz, first_seen timestamptz)`,
		`ALTER TABLE public.visits REPLICA IDENTITY FULL`,
		`CREATE TABLE public.profiles (id integer PRIMARY KEY, name text, seen integer)`,
		`INSERT INTO public.visits VALUES (1, 0, '2026-01-01 00:00:00+00', '2026-01-01 00:00:00+00')`,
		`INSERT INTO public.profiles VALUES (1, 'base', 0)`,
	}
	tables := []TableSpec{
		{Name: "public.visits", Deletes: "delete_wins", Counters: []string{"hits"}, Max: []string{"last_seen"}, Min: []string{"first_seen"}},
		{Name: "public.profiles", Deletes: "delete_wins", Max: []string{"seen"}},
	}
	h := startRegions(t, Spec{SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 4*time.Minute)
	names := tableNames(tables)
	if err := h.WaitConverged(ctx, names, time.Minute); err != nil {
		t.Fatal(err)
	}
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]

	// Locally, the trigger keeps a column from moving back.
	mustExec(t, ctx, us, `UPDATE public.visits SET last_seen = '2025-06-01 00:00:00+00', first_seen = '2026-06-01 00:00:00+00' WHERE id = 1`)
	if n := queryInt(t, ctx, us, `SELECT count(*) FROM public.visits WHERE id = 1 AND last_seen = '2026-01-01 00:00:00+00' AND first_seen = '2026-01-01 00:00:00+00'`); n != 1 {
		t.Errorf("a local write moved last_seen or first_seen back: %s", queryString(t, ctx, us, `SELECT last_seen || ' ' || first_seen FROM public.visits`))
	}
	if err := h.WaitConverged(ctx, names, time.Minute); err != nil {
		t.Fatal(err)
	}

	// Concurrent writes in every region (no region hears the others): ap
	// brings the greatest last_seen, eu the least first_seen; for
	// profiles, us brings the greatest seen and (written first) loses the
	// name to eu and ap under last-writer-wins.
	// A restart finds the trigger in place and leaves it (replacing it
	// would lock the table, every start).
	triggerRow := `SELECT string_agg(g.xmin::text, ',' ORDER BY g.tgrelid) FROM pg_catalog.pg_trigger g WHERE g.tgname = 'polyregion_merge_columns'`
	before := queryString(t, ctx, us, triggerRow)
	stopAll(t, h)
	writes := []struct {
		r                 *Region
		last, first, name string
		seen              int
	}{
		{us, "2026-03-01 00:00:00+00", "2025-12-01 00:00:00+00", "us", 30},
		{eu, "2026-02-01 00:00:00+00", "2025-11-01 00:00:00+00", "eu", 20},
		{ap, "2026-04-01 00:00:00+00", "2025-12-15 00:00:00+00", "ap", 10},
	}
	for _, w := range writes {
		mustExec(t, ctx, w.r, `UPDATE public.visits SET hits = hits + 1, last_seen = $1, first_seen = $2 WHERE id = 1`, w.last, w.first)
		mustExec(t, ctx, w.r, `UPDATE public.profiles SET name = $1, seen = $2 WHERE id = 1`, w.name, w.seen)
		time.Sleep(20 * time.Millisecond) // orders the hybrid clocks: ap's name is the last write
	}
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, names, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if after := queryString(t, ctx, us, triggerRow); after != before {
		t.Errorf("the restart replaced the merge triggers (pg_trigger xmin %s, then %s)", before, after)
	}
	for _, r := range h.Regions {
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.visits WHERE id = 1 AND hits = 3
			AND last_seen = '2026-04-01 00:00:00+00' AND first_seen = '2025-11-01 00:00:00+00'`); n != 1 {
			t.Errorf("%s: visits = %s, want 3 increments, last_seen 2026-04-01 (ap's) and first_seen 2025-11-01 (eu's)", r.Name,
				queryString(t, ctx, r, `SELECT hits || ' ' || last_seen || ' ' || first_seen FROM public.visits`))
		}
		got := queryString(t, ctx, r, `SELECT name || ' ' || seen FROM public.profiles WHERE id = 1`)
		if want := "ap 30"; got != want {
			t.Errorf("%s: profiles = %s, want %s (name by last writer, seen the greatest)", r.Name, got, want)
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl = 'public.visits'`); n != 0 {
			t.Errorf("%s: %d conflicts logged for visits, whose columns all merge", r.Name, n)
		}
	}
	var logged int64
	for _, r := range h.Regions {
		logged += queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl = 'public.profiles'`)
	}
	if logged == 0 {
		t.Error("no conflict logged for the profile names three regions overwrote concurrently")
	}
}

// TestMaxColumnThatCannotMergeIsRefusedByName: a max column whose type has
// no order (json) cannot be merged; the replicator refuses to start (its
// process ends) and says which column of which table and why, and leaves
// no trigger an application write could fail on.
func TestMaxColumnThatCannotMergeIsRefusedByName(t *testing.T) {
	h := startClusters(t, Spec{Regions: []string{"us", "eu"},
		SchemaSQL: []string{`CREATE TABLE public.docs (id integer PRIMARY KEY, doc json, note text)`},
		Tables:    []TableSpec{{Name: "public.docs", Deletes: "delete_wins", Max: []string{"doc"}}}})
	us := h.Region("us")
	if err := us.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitExited(t, us, time.Minute)
	if log := us.Logs(1 << 16); !strings.Contains(log, `table public.docs: max column "doc": type json cannot be merged by max`) {
		t.Errorf("the refusal does not name the table, column and type:\n%s", log)
	}
	ctx := ctxFor(t, time.Minute)
	if n := queryInt(t, ctx, us, `SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgname = 'polyregion_merge_columns'`); n != 0 {
		t.Errorf("%d merge triggers left on the tables", n)
	}
}

// A max column with three regions, when a delete saw a value the winning
// write did not: b raises seen to 9 (L); c, having received L, deletes the
// row (D) and inserts it again with seen 2 (I); a, hearing nothing,
// updates seen to 1 (T, the latest timestamp). Of these writes, T and I are
// the ones no other write has seen; L was seen by D, which deleted the row
// with its value. So every region must end with T's row and the greatest
// of T's and I's seen, 2, whatever the order of arrival. b receives T
// before D: T wins over its own L and merges L's 9 into the row, and when D
// then wins over T, b keeps T's row to bring back; it must keep T's own
// values (1), not the row it showed (9).
func TestMaxColumnForgetsWhatADeleteSaw(t *testing.T) {
	ctx := ctxFor(t, 4*time.Minute)
	h, nf, tables := startSeen(t, ctx, 0, "a", "b", "c")
	a, b, c := h.Region("a"), h.Region("b"), h.Region("c")
	seen := func(r *Region) string { return seenOf(t, ctx, r) }
	if err := nf.Cut(Link{From: "b", To: "c"}); err != nil { // b hears nothing of c for now
		t.Fatal(err)
	}
	if err := nf.Isolate("a"); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, b, `UPDATE public.seen SET name = 'L', seen = 9 WHERE id = 1`)
	waitFor(ctx, t, time.Minute, "c has L", func() bool { return seen(c) == "L 9" })
	mustExec(t, ctx, c, `DELETE FROM public.seen WHERE id = 1`)
	mustExec(t, ctx, c, `INSERT INTO public.seen VALUES (1, 'I', 2)`)
	time.Sleep(20 * time.Millisecond)
	mustExec(t, ctx, a, `UPDATE public.seen SET name = 'T', seen = 1 WHERE id = 1`)
	// b gets T (and its 9 merges into T's row there) before D and I.
	if err := nf.Heal(Link{From: "b", To: "a"}); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, time.Minute, "b has T", func() bool { return strings.HasPrefix(seen(b), "T ") })
	if err := nf.HealAll(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		if got := seen(r); got != "T 2" {
			t.Errorf("region %s holds %q, want T 2\n%s", r.Name, got, conflictLog(t, ctx, r))
		}
	}
}

// The other shape, without siblings: x deletes a row holding 9, y
// receives the delete and inserts the row again with 2, and z receives
// y's insert before x's delete. The insert has seen the delete, which saw
// the 9: z must take the insert's 2 as it is, not keep its 9.
func TestMaxColumnTakesAWriteThatSawADeleteAsItIs(t *testing.T) {
	ctx := ctxFor(t, 4*time.Minute)
	h, nf, tables := startSeen(t, ctx, 9, "x", "y", "z")
	x, y, z := h.Region("x"), h.Region("y"), h.Region("z")
	seen := func(r *Region) string { return seenOf(t, ctx, r) }
	if err := nf.Cut(Link{From: "z", To: "x"}); err != nil { // z hears nothing of x for now
		t.Fatal(err)
	}
	mustExec(t, ctx, x, `DELETE FROM public.seen WHERE id = 1`)
	waitFor(ctx, t, time.Minute, "y has the delete", func() bool { return seen(y) == "none" })
	mustExec(t, ctx, y, `INSERT INTO public.seen VALUES (1, 'again', 2)`)
	waitFor(ctx, t, time.Minute, "z has y's insert", func() bool { return strings.HasPrefix(seen(z), "again ") })
	if err := nf.HealAll(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		if got := seen(r); got != "again 2" {
			t.Errorf("region %s holds %q, want again 2", r.Name, got)
		}
	}
}

// startSeen starts three regions with their links through NetFaults and
// public.seen, whose seen column merges by max, holding row 1 (base, base)
// everywhere.
func startSeen(t *testing.T, ctx context.Context, base int, regions ...string) (*Harness, *NetFaults, []TableSpec) {
	t.Helper()
	tables := []TableSpec{{Name: "public.seen", Deletes: "delete_wins", Max: []string{"seen"}}}
	h, nf := startWithNetFaults(t, Spec{
		Regions:   regions,
		SchemaSQL: []string{`CREATE TABLE public.seen (id integer PRIMARY KEY, name text, seen integer)`},
		Tables:    tables,
	})
	mustExec(t, ctx, h.Region(regions[0]), `INSERT INTO public.seen VALUES (1, 'base', $1)`, base)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	return h, nf, tables
}

// seenOf is row 1 of public.seen in r as "name seen", or "none".
func seenOf(t *testing.T, ctx context.Context, r *Region) string {
	t.Helper()
	return queryString(t, ctx, r, `SELECT coalesce((SELECT name || ' ' || seen FROM public.seen WHERE id = 1), 'none')`)
}
