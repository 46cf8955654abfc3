package integration

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"
)

// stopAll stops every replicator gracefully; writes made meanwhile are
// concurrent across regions (and pile up in each region's slot).
func stopAll(t *testing.T, h *Harness) {
	t.Helper()
	for _, r := range h.Regions {
		if err := r.StopReplicator(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
}

func TestConflictKindsFollowPolicy(t *testing.T) {
	schema := []string{
		`CREATE TABLE public.t_lww (id integer PRIMARY KEY, val text)`,
		`CREATE TABLE public.t_dw (id integer PRIMARY KEY, val text)`,
		`CREATE TABLE public.t_uw (id integer PRIMARY KEY, val text)`,
		`CREATE TABLE public.t_prio (id integer PRIMARY KEY, val text)`,
		`CREATE TABLE public.t_custom (id integer PRIMARY KEY, val text)`,
		// Deterministic: the greater value wins, whichever side is local.
		`CREATE FUNCTION public.pick_greater(tbl text, key text, l jsonb, r jsonb, lv jsonb, rv jsonb) RETURNS text
			LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN coalesce(l->>'val', '') >= coalesce(r->>'val', '') THEN 'local' ELSE 'remote' END $$`,
	}
	tables := []TableSpec{
		{Name: "public.t_lww"},
		{Name: "public.t_dw", Deletes: "delete_wins"},
		{Name: "public.t_uw", Deletes: "update_wins"},
		{Name: "public.t_prio", Policy: "region_priority", Priority: []string{"ap", "eu", "us"}},
		{Name: "public.t_custom", Policy: "custom_sql", Resolver: "public.pick_greater"},
	}
	h := startRegions(t, Spec{SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	for _, tb := range tables {
		mustExec(t, ctx, us, `INSERT INTO `+tb.Name+` (id, val) SELECT g, 'base' FROM generate_series(1, 5) g`)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	stopAll(t, h)
	step := func() { time.Sleep(20 * time.Millisecond) } // orders the hybrid clocks

	// insert vs insert: the later write wins under last-writer-wins.
	mustExec(t, ctx, us, `INSERT INTO public.t_lww VALUES (100, 'us')`)
	step()
	mustExec(t, ctx, eu, `INSERT INTO public.t_lww VALUES (100, 'eu')`)
	// update vs delete under last-writer-wins: the later update wins.
	mustExec(t, ctx, us, `DELETE FROM public.t_lww WHERE id = 1`)
	step()
	mustExec(t, ctx, eu, `UPDATE public.t_lww SET val = 'eu-after-delete' WHERE id = 1`)
	// delete vs delete.
	mustExec(t, ctx, us, `DELETE FROM public.t_lww WHERE id = 2`)
	mustExec(t, ctx, eu, `DELETE FROM public.t_lww WHERE id = 2`)
	// Both set the same value: a conflict that loses nothing (merged).
	mustExec(t, ctx, us, `UPDATE public.t_lww SET val = 'same' WHERE id = 3`)
	step()
	mustExec(t, ctx, eu, `UPDATE public.t_lww SET val = 'same' WHERE id = 3`)
	// delete_wins: the delete wins although the update came later.
	mustExec(t, ctx, eu, `DELETE FROM public.t_dw WHERE id = 1`)
	step()
	mustExec(t, ctx, us, `UPDATE public.t_dw SET val = 'us-late-update' WHERE id = 1`)
	// update_wins: the update wins although the delete came later.
	mustExec(t, ctx, us, `UPDATE public.t_uw SET val = 'us-update' WHERE id = 1`)
	step()
	mustExec(t, ctx, eu, `DELETE FROM public.t_uw WHERE id = 1`)
	// region priority: ap beats us even though us wrote later.
	mustExec(t, ctx, ap, `UPDATE public.t_prio SET val = 'ap' WHERE id = 1`)
	step()
	mustExec(t, ctx, us, `UPDATE public.t_prio SET val = 'us' WHERE id = 1`)
	// custom resolver: the greater value wins whatever the time.
	mustExec(t, ctx, us, `UPDATE public.t_custom SET val = 'zzz-us' WHERE id = 1`)
	step()
	mustExec(t, ctx, eu, `UPDATE public.t_custom SET val = 'aaa-eu' WHERE id = 1`)

	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	checks := []struct{ sql, want string }{
		{`SELECT (SELECT val FROM public.t_lww WHERE id = 100)`, "eu"},
		{`SELECT (SELECT val FROM public.t_lww WHERE id = 1)`, "eu-after-delete"},
		{`SELECT (SELECT val FROM public.t_lww WHERE id = 2)`, "<null>"},
		{`SELECT (SELECT val FROM public.t_dw WHERE id = 1)`, "<null>"},
		{`SELECT (SELECT val FROM public.t_uw WHERE id = 1)`, "us-update"},
		{`SELECT (SELECT val FROM public.t_prio WHERE id = 1)`, "ap"},
		{`SELECT (SELECT val FROM public.t_custom WHERE id = 1)`, "zzz-us"},
	}
	for _, r := range h.Regions {
		for _, c := range checks {
			if got := queryString(t, ctx, r, c.sql); got != c.want {
				t.Errorf("region %s: %s = %q, want %q", r.Name, c.sql, got, c.want)
			}
		}
	}
	// Each conflict is logged, with its kind, where it was detected.
	logged := func(tbl, key, kind string) {
		t.Helper()
		var n int64
		for _, r := range h.Regions {
			n += queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl = $1 AND key = $2 AND kind = $3`, tbl, key, kind)
		}
		if n == 0 {
			t.Errorf("no %s conflict logged for %s key %s", kind, tbl, key)
		}
	}
	logged("public.t_lww", `["100"]`, "insert_insert")
	logged("public.t_lww", `["1"]`, "delete_update")
	logged("public.t_lww", `["1"]`, "update_delete")
	logged("public.t_lww", `["2"]`, "delete_delete")
	logged("public.t_lww", `["3"]`, "update_update")
	// What each conflict cost its losing write: two deletes and two equal
	// updates lose nothing; every other conflict here lost a write.
	for _, r := range h.Regions {
		rows := queryString(t, ctx, r, `SELECT coalesce(string_agg(format('%s %s %s %s', tbl, key, kind, outcome), '; ' ORDER BY tbl, key, kind), '')
			FROM polyregion.conflict_log WHERE outcome IS DISTINCT FROM CASE WHEN kind = 'delete_delete' OR (tbl, key) = ('public.t_lww', '["3"]') THEN 'merged' ELSE 'overwritten' END`)
		if rows != "" {
			t.Errorf("region %s: conflicts with the wrong outcome: %s", r.Name, rows)
		}
	}
	logged("public.t_dw", `["1"]`, "update_delete")
	logged("public.t_uw", `["1"]`, "delete_update")
	logged("public.t_prio", `["1"]`, "update_update")
	logged("public.t_custom", `["1"]`, "update_update")
	// Every logged conflict names both versions and the winner.
	for _, r := range h.Regions {
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE local_version = '' OR remote_version = '' OR winner NOT IN ('local', 'remote')`); n != 0 {
			t.Errorf("region %s: %d conflict records lack versions or winner", r.Name, n)
		}
	}
	// Nothing was logged for the tables' untouched rows.
	for _, r := range h.Regions {
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE key NOT IN ('["1"]', '["2"]', '["3"]', '["100"]')`); n != 0 {
			t.Errorf("region %s: %d conflicts logged for rows nobody wrote concurrently", r.Name, n)
		}
	}
}

func TestUniqueViolationAndOrphanChildAreParkedThenResolved(t *testing.T) {
	schema := []string{
		`CREATE TABLE public.users (id integer PRIMARY KEY, email text NOT NULL UNIQUE)`,
		`CREATE TABLE public.parents (id integer PRIMARY KEY, name text)`,
		`CREATE TABLE public.children (id integer PRIMARY KEY, parent_id integer NOT NULL REFERENCES public.parents (id), name text)`,
		`CREATE TABLE public.other (id integer PRIMARY KEY, val text)`,
	}
	tables := []TableSpec{{Name: "public.users"}, {Name: "public.parents"}, {Name: "public.children"}, {Name: "public.other"}}
	h := startRegions(t, Spec{SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]

	// The same email taken in two regions at once: a secondary unique index
	// clash. Each region parks the other's row with the constraint named.
	stopAll(t, h)
	mustExec(t, ctx, us, `INSERT INTO public.users VALUES (1, 'same@example.com')`)
	mustExec(t, ctx, eu, `INSERT INTO public.users VALUES (2, 'same@example.com')`)
	// A child whose parent comes from another region: us creates the
	// parent, eu (which has it) adds a child, and ap hears from eu first.
	mustExec(t, ctx, us, `INSERT INTO public.parents VALUES (10, 'from us')`)
	if err := us.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	if err := eu.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.parents WHERE id = 10`, 1)
	mustExec(t, ctx, eu, `INSERT INTO public.children VALUES (21, 10, 'child of us parent')`)
	mustExec(t, ctx, eu, `INSERT INTO public.other VALUES (1, 'still flowing')`)
	if err := us.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := ap.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitRow(t, ctx, ap, `SELECT count(*) FROM polyregion.parked WHERE tbl = 'public.children' AND resolved_at IS NULL`, 1)
	reason := queryString(t, ctx, ap, `SELECT reason FROM polyregion.parked WHERE tbl = 'public.children' LIMIT 1`)
	if !strings.Contains(reason, "foreign key") {
		t.Errorf("parked orphan child's reason %q does not name the foreign key", reason)
	}
	// The parent arrives; the retry applies the child.
	if err := us.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitRow(t, ctx, ap, `SELECT count(*) FROM public.children WHERE id = 21`, 1)
	waitRow(t, ctx, ap, `SELECT count(*) FROM polyregion.parked WHERE tbl = 'public.children' AND resolved_at IS NULL`, 0)
	if err := h.WaitConverged(ctx, []string{"public.parents", "public.children", "public.other"}, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	// The unique clash stays parked (an operator decides), durably, with a
	// clear reason, and did not stop anything else.
	for _, r := range []*Region{us, eu} {
		n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.parked WHERE tbl = 'public.users' AND resolved_at IS NULL AND reason LIKE '%users_email_key%'`)
		if n != 1 {
			t.Errorf("region %s: %d parked users rows naming users_email_key, want 1", r.Name, n)
		}
	}
	if got := queryString(t, ctx, ap, `SELECT (SELECT val FROM public.other WHERE id = 1)`); got != "still flowing" {
		t.Errorf("other table did not replicate past the parked rows: %q", got)
	}
}

func waitRow(t *testing.T, ctx context.Context, r *Region, sql string, want int64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	var got int64
	for time.Now().Before(deadline) {
		if got = queryInt(t, ctx, r, sql); got == want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("region %s: %s = %d, want %d", r.Name, sql, got, want)
}

// TestAChangeAnApplicationTriggerRefusesIsParked: a peer's change that a
// trigger of the receiving region's application refuses (RAISE EXCEPTION)
// is parked with the trigger's message, and the changes after it, of that
// table and others, go on; once the trigger is gone, the parked change is
// applied. Before, only constraint and value errors were parked: the
// trigger's error stopped every later change from that peer.
func TestAChangeAnApplicationTriggerRefusesIsParked(t *testing.T) {
	schema := []string{
		`CREATE TABLE public.orders (id integer PRIMARY KEY, status text NOT NULL)`,
		`CREATE TABLE public.other (id integer PRIMARY KEY, val text)`,
	}
	tables := []TableSpec{{Name: "public.orders"}, {Name: "public.other"}}
	h := startClusters(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, eu, `CREATE FUNCTION public.no_cancelled() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.status = 'cancelled' THEN
				RAISE EXCEPTION 'orders here are never cancelled (order %)', NEW.id;
			END IF;
			RETURN NEW;
		END $$`)
	mustExec(t, ctx, eu, `CREATE TRIGGER no_cancelled BEFORE INSERT OR UPDATE ON public.orders FOR EACH ROW EXECUTE FUNCTION public.no_cancelled()`)
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatalf("replicators did not come up: %v", err)
	}
	mustExec(t, ctx, us, `INSERT INTO public.orders VALUES (1, 'cancelled')`)
	mustExec(t, ctx, us, `INSERT INTO public.orders VALUES (2, 'open')`)
	mustExec(t, ctx, us, `INSERT INTO public.other VALUES (1, 'after the refused order')`)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.other WHERE id = 1`, 1)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.orders WHERE id = 2`, 1)
	waitRow(t, ctx, eu, `SELECT count(*) FROM polyregion.parked WHERE tbl = 'public.orders' AND resolved_at IS NULL`, 1)
	if reason := queryString(t, ctx, eu, `SELECT reason FROM polyregion.parked WHERE tbl = 'public.orders' LIMIT 1`); !strings.Contains(reason, "orders here are never cancelled (order 1)") {
		t.Errorf("parked order's reason %q does not carry the trigger's message", reason)
	}
	mustExec(t, ctx, eu, `DROP TRIGGER no_cancelled ON public.orders`)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.orders WHERE id = 1 AND status = 'cancelled'`, 1)
	waitRow(t, ctx, eu, `SELECT count(*) FROM polyregion.parked WHERE resolved_at IS NULL`, 0)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
}
