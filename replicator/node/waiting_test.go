package node

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/polyregion/polyregion/regions"
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

func TestASeedThatDidNotGetItsLockIsTriedAgainAfterAWhile(t *testing.T) {
	w := tablesWaiting{"public.notes": {reason: "seed: lock timeout", seed: true}}
	// No database is reached for a seed: only the time since the run began.
	if ok, err := w.ready(context.Background(), "postgres://unreachable.invalid/db", time.Now(), seedRetry(0)); ok || err != nil {
		t.Fatalf("ready at once: %v, %v", ok, err)
	}
	if ok, err := w.ready(context.Background(), "postgres://unreachable.invalid/db", time.Now().Add(-seedRetryAfter), seedRetry(0)); !ok || err != nil {
		t.Fatalf("ready after %s: %v, %v", seedRetryAfter, ok, err)
	}
	// A seed that keeps missing its lock is tried less and less often.
	if seedRetry(-1) != seedRetryAfter || seedRetry(0) != seedRetryAfter || seedRetry(1) != 2*seedRetryAfter || seedRetry(10) != seedRetryMax {
		t.Fatalf("seed retries after %s, %s, %s", seedRetry(0), seedRetry(1), seedRetry(10))
	}
	if !w.seeding() || (tablesWaiting{"public.x": {reason: "missing"}}).seeding() {
		t.Fatal("seeding")
	}
	if d := (tablesWaiting{"public.b": {reason: "two"}, "public.a": {reason: "one"}}).describe(); d != "public.a: one; public.b: two" {
		t.Fatalf("describe: %q", d)
	}
}
