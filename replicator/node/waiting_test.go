package node

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator/postgres"
)

func TestAWaitingTableIsLeftOutOfTheRunAndNamed(t *testing.T) {
	cfg := Config{Region: "ap", Cluster: regions.Cluster{Tables: []regions.Table{{Name: "public.kv"}, {Name: "public.notes", Added: 2}}}}
	w := tablesWaiting{"public.notes": {reason: `table "public.notes" does not exist`}}
	run := cfg.withoutTables(w)
	if got := run.TableNames(); len(got) != 1 || got[0] != "public.kv" {
		t.Fatalf("tables of the run: %v", got)
	}
	if len(cfg.Cluster.Tables) != 2 {
		t.Fatalf("leaving a table out of the run changed the configuration: %v", cfg.TableNames())
	}
	park := w.parkReasons("ap")["public.notes"]
	if !strings.Contains(park, "public.notes") || !strings.Contains(park, "region ap") || !strings.Contains(park, "does not exist") {
		t.Fatalf("park reason %q", park)
	}
	if h := w.healthReasons(); len(h) != 1 || !strings.Contains(h[0], "public.notes") || !strings.Contains(h[0], "every other table replicates") {
		t.Fatalf("health reasons %q", h)
	}
	if (tablesWaiting{}).parkReasons("ap") != nil || (tablesWaiting{}).healthReasons() != nil {
		t.Fatal("no waiting table, yet reasons")
	}
}

func TestASeedThatFailsIsTriedLessAndLessOften(t *testing.T) {
	if seedRetry(-1) != seedRetryAfter || seedRetry(0) != seedRetryAfter || seedRetry(1) != 2*seedRetryAfter || seedRetry(10) != seedRetryMax {
		t.Fatalf("seed retries after %s, %s, %s", seedRetry(0), seedRetry(1), seedRetry(10))
	}
	if d := (tablesWaiting{"public.b": {reason: "two"}, "public.a": {reason: "one"}}).describe(); d != "public.a: one; public.b: two" {
		t.Fatalf("describe: %q", d)
	}
}

// A table seeded while the data plane runs ends the run itself when its
// seed ends: the watch never restarts for it (its checks pass all along,
// so it would restart the run over and over), nor reaches a database.
func TestATableSeedingWithTheDataPlaneIsNotReadyByItsChecks(t *testing.T) {
	w := tablesWaiting{"public.notes": {reason: "seeding", seedNow: true}}
	if ok, err := w.ready(context.Background(), "postgres://unreachable.invalid/db"); ok || err != nil {
		t.Fatalf("ready: %v, %v", ok, err)
	}
	// Runs whose seed failed in a row: reset by a run whose seeds ended,
	// kept by a run that ran none.
	for _, c := range []struct {
		before      int
		ran, failed bool
		want        int
	}{{0, true, true, 1}, {3, true, true, 4}, {3, true, false, 0}, {3, false, false, 3}} {
		if got := nextSeedFailures(c.before, c.ran, c.failed); got != c.want {
			t.Errorf("nextSeedFailures(%d, %v, %v) = %d, want %d", c.before, c.ran, c.failed, got, c.want)
		}
	}
	serve := func(context.Context, conflict.RegionID, io.Writer) error { return nil }
	for _, c := range []struct {
		waiting tablesWaiting
		want    string
	}{
		{tablesWaiting{"public.notes": {reason: "seeding", seedNow: true}},
			"this region is seeding public.notes, added by the cluster: a snapshot is served once every table replicates here"},
		// A seed that missed its lock, a table missing here: their rows
		// here are not versioned, their peers' changes parked.
		{tablesWaiting{"public.notes": {reason: "seed: writers held it"}, "public.tags": {reason: "no such table"}},
			"this region does not replicate public.notes (seed: writers held it), public.tags (no such table) yet: a snapshot is served once every table replicates here"},
		{tablesWaiting{"public.notes": {reason: "seeding", seedNow: true}, "public.tags": {reason: "no such table"}},
			"this region is seeding public.notes, added by the cluster; this region does not replicate public.tags (no such table) yet: a snapshot is served once every table replicates here"},
	} {
		err := snapshotUnlessWaiting(serve, c.waiting)(context.Background(), "eu", io.Discard)
		if err == nil || err.Error() != c.want {
			t.Errorf("snapshot while %v wait: %v, want %q", c.waiting, err, c.want)
		}
	}
	if err := snapshotUnlessWaiting(serve, nil)(context.Background(), "eu", io.Discard); err != nil {
		t.Fatalf("snapshot with no table waiting: %v", err)
	}
}

func TestASeedsProgressIsShownInItsReason(t *testing.T) {
	for _, c := range []struct {
		st   postgres.SeedStats
		done bool
		want string
	}{
		{postgres.SeedStats{}, false, "its rows here are being seeded into this region's change stream"},
		{postgres.SeedStats{Rows: 15000, Chunks: 3}, false, "its rows here are being seeded into this region's change stream: 15000 rows so far"},
		{postgres.SeedStats{Resumed: true, Earlier: 25000}, false, "its rows here are being seeded into this region's change stream, again from the first key: an earlier run had seeded 25000 rows when it stopped"},
		{postgres.SeedStats{Rows: 5000, Chunks: 1, Resumed: true, Earlier: 25000}, false, "its rows here are being seeded into this region's change stream: 5000 rows so far"},
		{postgres.SeedStats{Rows: 15001, Chunks: 4}, true, "seeded (15001 rows into this region's change stream); replicated once the data plane restarts"},
	} {
		if got := seedProgress(c.st, c.done); got != c.want {
			t.Errorf("seedProgress(%+v, %v) = %q, want %q", c.st, c.done, got, c.want)
		}
	}
}
