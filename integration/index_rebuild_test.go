package integration

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/polyregion/polyregion/indexer"
)

// A rebuild interrupted part way resumes where it stopped (same
// generation, rows already copied kept), and the feed then streams every
// change made meanwhile: the index ends equal to the table.
func TestIndexRebuildResumesAfterInterruption(t *testing.T) {
	h := startClusters(t, Spec{Regions: []string{"us"}, SchemaSQL: benchIndexSchema, Tables: []TableSpec{{Name: "public.docs"}}})
	ctx := ctxFor(t, 4*time.Minute)
	const rows = 12000
	d := newDocsIndex(t, ctx, h, rows, 1000)
	r, conn, be, specs, cfg := d.r, d.conn, d.be, d.specs, d.cfg

	// Interrupted after the third batch.
	ictx, cancel := context.WithCancel(ctx)
	icfg := cfg
	icfg.Progress = func(p indexer.BuildProgress) {
		if p.Rows >= 3000 {
			cancel()
		}
	}
	gen, err := indexer.Rebuild(ictx, icfg, be)
	cancel()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted rebuild: %v, want context.Canceled", err)
	}
	var state string
	var copied int64
	if err := conn.QueryRow(ctx, `SELECT state, (progress->'docs'->>'rows')::bigint FROM polyregion.index_generation WHERE gen = $1`, gen).Scan(&state, &copied); err != nil {
		t.Fatal(err)
	}
	if state != "building" || copied < 3000 || copied >= rows {
		t.Fatalf("after the interruption: generation %d %s with %d rows copied", gen, state, copied)
	}

	// Changes while no build runs: some rows copied already change or go,
	// and new rows arrive.
	pool, err := r.Pool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`UPDATE public.docs SET title = 'changed ' || id WHERE id % 97 = 0`,
		`DELETE FROM public.docs WHERE id % 89 = 0`,
	} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	if err := fillDocs(ctx, r, rows+1, 500); err != nil {
		t.Fatal(err)
	}

	var resumedFrom int64 = -1
	rcfg := cfg
	rcfg.Progress = func(p indexer.BuildProgress) {
		if resumedFrom < 0 {
			resumedFrom = p.Rows
		}
	}
	gen2, err := indexer.Rebuild(ctx, rcfg, be)
	if err != nil {
		t.Fatal(err)
	}
	if gen2 != gen || resumedFrom <= copied {
		t.Fatalf("rebuild did not resume: generation %d then %d, first progress at %d rows (%d were copied)", gen, gen2, resumedFrom, copied)
	}

	// The feed switches to the generation and streams from its start.
	defer startFeed(t, ctx, cfg, be)()
	diffs := waitIndexed(ctx, t, r, be, specs, time.Minute)
	t.Logf("generation %d resumed after %d of %d rows: %v", gen, copied, rows, diffs)
}
