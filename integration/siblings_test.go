package integration

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The README's three-region example under region priority (ap > eu > us):
// v1 written in ap; v2 written in us after seeing v1; v3 written in eu
// concurrently with both. ap and eu receive v3 and v1 before v2, us
// receives v3 after writing v2. v2 supersedes v1, and v3 outranks v2, so
// every region must end with v3: in ap and eu that means bringing back a
// write that had lost to v1 (kept as a sibling: from the remote change in
// ap, from the local row in eu). Before siblings, ap and eu kept v2 and us
// kept v3 for ever.
func TestRegionPriorityConvergesWhateverTheArrivalOrder(t *testing.T) {
	tables := []TableSpec{{Name: "public.prio", Policy: "region_priority", Priority: []string{"ap", "eu", "us"}}}
	h, nf := startWithNetFaults(t, Spec{
		SchemaSQL: []string{`CREATE TABLE public.prio (id integer PRIMARY KEY, val text, note text)`},
		Tables:    tables,
	})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	mustExec(t, ctx, us, `INSERT INTO public.prio VALUES (1, 'base', 'base')`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	val := func(r *Region) string {
		return queryString(t, ctx, r, `SELECT val FROM public.prio WHERE id = 1`)
	}

	// eu hears nothing and sends nothing for now.
	if err := nf.Isolate("eu"); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, ap, `UPDATE public.prio SET val = 'v1', note = 'written in ap' WHERE id = 1`)
	waitFor(ctx, t, time.Minute, "us has v1", func() bool { return val(us) == "v1" })
	// us's writes reach nobody for now.
	if err := nf.Cut(Link{From: "ap", To: "us"}); err != nil {
		t.Fatal(err)
	}
	if err := nf.Cut(Link{From: "eu", To: "us"}); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, us, `UPDATE public.prio SET val = 'v2', note = 'written in us on top of v1' WHERE id = 1`)
	mustExec(t, ctx, eu, `UPDATE public.prio SET val = 'v3', note = 'written in eu' WHERE id = 1`)

	// v1 and v3 meet in ap and eu: ap outranks eu.
	for _, l := range []Link{{From: "ap", To: "eu"}, {From: "eu", To: "ap"}, {From: "us", To: "eu"}} {
		if err := nf.Heal(l); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(ctx, t, time.Minute, "eu has v1", func() bool { return val(eu) == "v1" })
	waitFor(ctx, t, time.Minute, "ap has received v3", func() bool {
		vv := queryString(t, ctx, ap, `SELECT vv FROM polyregion.row_version WHERE tbl = 'public.prio' AND key = '["1"]'`)
		return strings.Contains(vv, "eu:")
	})
	if got := val(ap); got != "v1" {
		t.Fatalf("ap holds %q after v3 arrived, want v1 (ap outranks eu)", got)
	}

	// Now v2 arrives in ap and eu: it supersedes v1, not v3, and v3 outranks it.
	if err := nf.HealAll(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		got := queryString(t, ctx, r, `SELECT val || ' / ' || note FROM public.prio WHERE id = 1`)
		if got != "v3 / written in eu" {
			t.Errorf("region %s holds %q, want v3 / written in eu", r.Name, got)
		}
		// v2 lost everywhere, and every region's log says so.
		n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl = 'public.prio'
			AND ((winner = 'local' AND remote_origin = 'us') OR (winner = 'remote' AND local_origin = 'us'))`)
		if n == 0 {
			t.Errorf("region %s: no conflict record names us's write as the one that lost\n%s", r.Name, conflictLog(t, ctx, r))
		}
	}
	// v2 lost to v3 and stays a sibling where it met v3 as one (a later
	// write that saw v3 but not v2 would meet it); status counts it.
	out, err := exec.Command(binary, "status", "--json", "--config", ap.ConfigPath).Output()
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	var st struct {
		RowsWithSiblings int64 `json:"rows_with_siblings"`
	}
	if err := json.Unmarshal(out, &st); err != nil || st.RowsWithSiblings != 1 {
		t.Errorf("ap status: %v, rows_with_siblings %d, want 1:\n%s", err, st.RowsWithSiblings, out)
	}

	// A later write anywhere supersedes everything: siblings are gone.
	mustExec(t, ctx, us, `UPDATE public.prio SET note = 'edited in us' WHERE id = 1`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		if got := queryString(t, ctx, r, `SELECT val || ' / ' || note FROM public.prio WHERE id = 1`); got != "v3 / edited in us" {
			t.Errorf("region %s holds %q after a later edit, want v3 / edited in us", r.Name, got)
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.row_version WHERE tbl = 'public.prio' AND siblings IS NOT NULL`); n != 0 {
			t.Errorf("region %s keeps siblings after a write that saw them all", r.Name)
		}
	}
}

func conflictLog(t *testing.T, ctx context.Context, r *Region) string {
	t.Helper()
	return queryString(t, ctx, r, `SELECT coalesce(string_agg(format('%s %s winner=%s local=%s remote=%s: %s', tbl, kind, winner, local_origin, remote_origin, reason), E'\n'), '')
		FROM polyregion.conflict_log`)
}
