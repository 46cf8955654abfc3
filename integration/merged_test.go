package integration

import (
	"math/rand"
	"testing"
	"time"

	"github.com/polyregion/polyregion/conflict"
)

// TestConcurrentCounterOnlyUpdatesAreMergedNotLogged: concurrent updates of
// a row whose columns are all key or counter columns lose nothing (every
// increment is kept whichever write wins), so they are counted as merged
// and not logged as conflicts (public.sums, REPLICA IDENTITY FULL, takes
// them in place without reading its rows: integer and numeric counters,
// one starting NULL); a concurrent update of a counter row that also has
// other columns still is logged. Then the SQL vector merge the in-place
// path uses is checked against conflict.Merge.
func TestConcurrentCounterOnlyUpdatesAreMergedNotLogged(t *testing.T) {
	schema := []string{
		`CREATE TABLE public.totals (id integer PRIMARY KEY, hits bigint NOT NULL DEFAULT 0)`,
		// Folded in place (see the applier's foldRows): needs the old row in
		// the WAL.
		`CREATE TABLE public.sums (id integer PRIMARY KEY, hits bigint NOT NULL DEFAULT 0, amount numeric(12,2))`,
		`ALTER TABLE public.sums REPLICA IDENTITY FULL`,
		`CREATE TABLE public.visits (id integer PRIMARY KEY, hits bigint NOT NULL DEFAULT 0, note text)`,
	}
	tables := []TableSpec{
		{Name: "public.totals", Counters: []string{"hits"}},
		{Name: "public.sums", Counters: []string{"hits", "amount"}},
		{Name: "public.visits", Counters: []string{"hits"}},
	}
	h := startRegions(t, Spec{SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	mustExec(t, ctx, us, `INSERT INTO public.totals VALUES (1, 0)`)
	mustExec(t, ctx, us, `INSERT INTO public.sums VALUES (1, 0, NULL), (2, 5, 1.50)`)
	mustExec(t, ctx, us, `INSERT INTO public.visits VALUES (1, 0, 'base')`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	stopAll(t, h)
	// The same rows incremented in every region while no region hears
	// from the others: every pair of them is concurrent.
	for i, r := range h.Regions {
		for n := 0; n <= i; n++ {
			mustExec(t, ctx, r, `UPDATE public.totals SET hits = hits + 1 WHERE id = 1`)
			mustExec(t, ctx, r, `UPDATE public.sums SET hits = hits + 1, amount = coalesce(amount, 0) + 0.25 WHERE id IN (1, 2)`)
		}
		mustExec(t, ctx, r, `UPDATE public.visits SET hits = hits + 1, note = $1 WHERE id = 1`, r.Name)
	}
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	var totalLogged, visitsLogged int64
	for _, r := range []*Region{us, eu, ap} {
		if got := queryInt(t, ctx, r, `SELECT hits FROM public.totals WHERE id = 1`); got != 6 {
			t.Errorf("%s: totals.hits = %d, want 6 (1+2+3 increments)", r.Name, got)
		}
		if got := queryString(t, ctx, r, `SELECT string_agg(id || ':' || hits || ':' || amount, ' ' ORDER BY id) FROM public.sums`); got != "1:6:1.50 2:11:3.00" {
			t.Errorf("%s: sums = %q, want 1:6:1.50 2:11:3.00", r.Name, got)
		}
		if got := queryInt(t, ctx, r, `SELECT hits FROM public.visits WHERE id = 1`); got != 3 {
			t.Errorf("%s: visits.hits = %d, want 3", r.Name, got)
		}
		totalLogged += queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl IN ('public.totals', 'public.sums')`)
		visitsLogged += queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl = 'public.visits'`)
	}
	if totalLogged != 0 {
		t.Errorf("%d conflicts logged for the counter-only rows; concurrent increments lose nothing", totalLogged)
	}
	if visitsLogged == 0 {
		t.Errorf("no conflict logged for the row whose note three regions overwrote concurrently")
	}
	var merged float64
	for _, r := range h.Regions {
		_, body := opsGet(t, r, "/metrics")
		v, _ := metricValue(body, "polyregion_merged_updates_total")
		merged += v
	}
	if merged == 0 {
		t.Errorf("polyregion_merged_updates_total counted no merged update")
	}
	t.Logf("counter-only row: %v merged updates counted, none logged; row with a note: %d conflicts logged", merged, visitsLogged)

	// The fold's vector merge in SQL writes exactly what conflict.Merge
	// and Vector.String do (regions compare versions parsed from it).
	rng := rand.New(rand.NewSource(1))
	ids := []conflict.RegionID{"ap", "eu", "us", "eu-west-2", "z9"}
	randVec := func() conflict.Vector {
		v := conflict.Vector{}
		for _, r := range ids {
			if rng.Intn(2) == 0 {
				v[r] = uint64(rng.Intn(3)) * uint64(1+rng.Intn(1<<20)) * uint64(1+rng.Intn(1<<30))
			}
		}
		return v
	}
	for i := 0; i < 300; i++ {
		a, b := randVec(), randVec()
		want := conflict.Merge(a, b).String()
		if got := queryString(t, ctx, us, `SELECT polyregion.vv_merge($1, $2)`, a.String(), b.String()); got != want {
			t.Fatalf("vv_merge(%q, %q) = %q, want %q", a.String(), b.String(), got, want)
		}
	}
}

// TestFoldedIncrementsSurviveADeleteThatLoses: a counter-only row whose
// peers' increments were added in place is deleted in one region while
// another region increments it later (last-writer-wins: the increment
// wins and the row comes back). The resurrected row must hold every
// increment in every region: the tombstone keeps the sums the in-place
// increments brought, not the sums recorded before them.
func TestFoldedIncrementsSurviveADeleteThatLoses(t *testing.T) {
	schema := []string{
		`CREATE TABLE public.hits (id integer PRIMARY KEY, n bigint NOT NULL DEFAULT 0)`,
		`ALTER TABLE public.hits REPLICA IDENTITY FULL`,
	}
	tables := []TableSpec{{Name: "public.hits", Counters: []string{"n"}}}
	h := startRegions(t, Spec{SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	mustExec(t, ctx, us, `INSERT INTO public.hits VALUES (1, 0)`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	// Increments made in eu and ap reach us as in-place folds.
	for i := 0; i < 20; i++ {
		mustExec(t, ctx, eu, `UPDATE public.hits SET n = n + 1 WHERE id = 1`)
		mustExec(t, ctx, ap, `UPDATE public.hits SET n = n + 2 WHERE id = 1`)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	stopAll(t, h)
	mustExec(t, ctx, us, `DELETE FROM public.hits WHERE id = 1`)
	time.Sleep(20 * time.Millisecond) // orders the hybrid clocks
	mustExec(t, ctx, eu, `UPDATE public.hits SET n = n + 1 WHERE id = 1`)
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		if got := queryInt(t, ctx, r, `SELECT n FROM public.hits WHERE id = 1`); got != 61 {
			t.Errorf("%s: n = %d, want 61 (every increment from every region; the later increment beat the delete)", r.Name, got)
		}
	}
}
