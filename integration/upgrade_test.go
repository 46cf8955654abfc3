package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// upgradeFrom is the release an installation upgrades from in
// TestUpgradeInPlaceWithABacklog: the code before parked shapes, owner
// functions and bounded index documents changed the schema.
const upgradeFrom = "073aba8babd2e066eab2e6d0c24a3985010473cb"

// rowVersionKeysInCSQL counts row_version's key columns (tbl, key) that
// compare in the C collation.
const rowVersionKeysInCSQL = `SELECT count(*) FROM pg_catalog.pg_attribute
	WHERE attrelid = 'polyregion.row_version'::pg_catalog.regclass AND attname IN ('tbl', 'key')
	AND attcollation = 'pg_catalog."C"'::pg_catalog.regcollation`

// buildRelease builds the replicator as it was at commit, from the
// repository's history.
func buildRelease(t *testing.T, commit string) string {
	t.Helper()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	archive := exec.Command("sh", "-c", fmt.Sprintf("git -C %q archive %s | tar -x -C %q", root, commit, src))
	if out, err := archive.CombinedOutput(); err != nil {
		t.Fatalf("the release %s is not in the repository's history (a shallow clone?): %v\n%s", commit, err, out)
	}
	bin := filepath.Join(t.TempDir(), "polyregion-"+commit[:7])
	build := exec.Command("go", "build", "-o", bin, "./cmd/polyregion")
	build.Dir = src
	build.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build release %s: %v\n%s", commit, err, out)
	}
	return bin
}

// TestUpgradeInPlaceWithABacklog: two regions run the previous release;
// one region's replicator is away while both take writes (rows, counter
// increments, concurrent edits of the same rows), so each holds a backlog
// for the other in the old schema. Both replicators are then replaced by
// the current build: the schema upgrades in place and the regions converge
// with every row and every increment, none applied twice.
func TestUpgradeInPlaceWithABacklog(t *testing.T) {
	old := buildRelease(t, upgradeFrom)
	// The demo's tables as the previous release knew them (it has no max
	// columns): the same config runs before and after the upgrade.
	tables := []TableSpec{{Name: "public.kv"}, {Name: "public.usage_counters", Counters: []string{"requests"}}, {Name: "public.profiles"}}
	schema := append(append([]string{}, kvSchema...), CounterSchema...)
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: tables, Binary: old})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]

	increment := func(r *Region, client string, n int) {
		for range n {
			mustExec(t, ctx, r, `INSERT INTO public.usage_counters (client_id, window_kind, period, requests) VALUES ($1, 'day', '2026-12-01', 1)
				ON CONFLICT (client_id, window_kind, period) DO UPDATE SET requests = public.usage_counters.requests + 1, updated_at = now()`, client)
		}
	}
	for i := 1; i <= 50; i++ {
		mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES ($1, 'us-before')`, i)
	}
	increment(us, "acme", 5)
	increment(eu, "acme", 5)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}

	// eu's replicator is away: both regions write.
	if err := eu.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i := 51; i <= 1050; i++ {
		mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES ($1, 'us-backlog')`, i)
	}
	mustExec(t, ctx, us, `UPDATE public.kv SET val = 'us-edit' WHERE id <= 20`)
	mustExec(t, ctx, eu, `UPDATE public.kv SET val = 'eu-edit' WHERE id BETWEEN 11 AND 30`)
	mustExec(t, ctx, eu, `DELETE FROM public.kv WHERE id BETWEEN 41 AND 45`)
	increment(us, "acme", 7)
	increment(eu, "acme", 11)
	increment(eu, "globex", 3)
	if n := queryInt(t, ctx, us, `SELECT count(*) FROM polyregion.outbox`); n == 0 {
		t.Fatal("us holds no backlog for eu in its outbox")
	}

	// The old release made the old schema: no owner functions, no retry
	// times for parked changes.
	for _, r := range h.Regions {
		if got := queryInt(t, ctx, r, `SELECT count(*) FROM pg_catalog.pg_proc WHERE proname LIKE 'exec\_as\_%'`); got != 0 {
			t.Fatalf("%s: the release before the upgrade created %d owner functions: is it the old release?", r.Name, got)
		}
		if got := queryInt(t, ctx, r, `SELECT count(*) FROM information_schema.columns WHERE table_schema = 'polyregion' AND table_name = 'parked' AND column_name = 'next_retry_at'`); got != 0 {
			t.Fatalf("%s: the old schema already has parked.next_retry_at", r.Name)
		}
		if got := queryInt(t, ctx, r, rowVersionKeysInCSQL); got != 0 {
			t.Fatalf("%s: the old schema already has %d row_version key columns in the C collation", r.Name, got)
		}
	}

	// Upgrade: both replicators replaced by the current build.
	if err := us.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	h.Spec.Binary = binary
	for _, r := range h.Regions {
		if err := r.StartReplicator(); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.WaitConverged(ctx, tableNames(tables), 2*time.Minute); err != nil {
		t.Fatalf("regions did not converge after the upgrade: %v", err)
	}
	for _, r := range h.Regions {
		if got := queryInt(t, ctx, r, `SELECT coalesce(sum(requests), 0) FROM public.usage_counters WHERE client_id = 'acme'`); got != 28 {
			t.Errorf("%s: acme counted %d requests, want 28 (every increment once)", r.Name, got)
		}
		if got := queryInt(t, ctx, r, `SELECT coalesce(sum(requests), 0) FROM public.usage_counters WHERE client_id = 'globex'`); got != 3 {
			t.Errorf("%s: globex counted %d requests, want 3", r.Name, got)
		}
		if got := queryInt(t, ctx, r, `SELECT count(*) FROM public.kv WHERE val IN ('us-before', 'us-backlog', 'us-edit', 'eu-edit')`); got != 1045 {
			t.Errorf("%s: %d kv rows, want 1045 (1050 written, 5 deleted)", r.Name, got)
		}
		if got := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.parked WHERE resolved_at IS NULL`); got != 0 {
			t.Errorf("%s: %d changes parked after the upgrade", r.Name, got)
		}
		if got := queryInt(t, ctx, r, `SELECT count(*) FROM pg_catalog.pg_proc WHERE proname LIKE 'exec\_as\_%' AND pronamespace = 'polyregion'::regnamespace AND prosecdef`); got != 1 {
			t.Errorf("%s: %d owner functions after the upgrade, want 1", r.Name, got)
		}
		if got := queryInt(t, ctx, r, rowVersionKeysInCSQL); got != 2 {
			t.Errorf("%s: %d row_version key columns in the C collation after the upgrade, want 2", r.Name, got)
		}
		if !strings.Contains(r.Logs(1<<20), "keys move to the C collation") {
			t.Errorf("%s: the upgrade converted row_version's keys without saying so in the log", r.Name)
		}
	}
}
