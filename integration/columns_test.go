package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Column-level last-writer-wins in three real regions: concurrent edits
// of different columns are all kept (with an unchanged TOAST value intact),
// concurrent edits of one column keep the later and log the other as lost,
// and a concurrent delete wins over both kinds of edit. Every edit also
// sets seen, a max column: it ends at the greatest, and makes no edit a
// lost one.
func TestColumnLWWKeepsConcurrentEditsOfDifferentColumns(t *testing.T) {
	tables := []TableSpec{{Name: "public.profile", Deletes: "delete_wins", Columns: "column_lww", Max: []string{"seen"}}}
	h, nf := startWithNetFaults(t, Spec{
		SchemaSQL: []string{
			`CREATE TABLE public.profile (id integer PRIMARY KEY, email text, bio text, name text, big text, seen integer)`,
			`ALTER TABLE public.profile REPLICA IDENTITY FULL`,
		},
		Tables: tables,
	})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	execAll := func(r *Region, stmts ...string) {
		t.Helper()
		for _, q := range stmts {
			mustExec(t, ctx, r, q)
		}
	}
	// Row 4's big value is stored out of line (TOAST): incompressible and
	// well over the 2 kB threshold.
	execAll(us, `INSERT INTO public.profile (id, email, bio, name) SELECT g, 'e'||g, 'b'||g, 'n'||g FROM generate_series(1, 4) g`,
		`UPDATE public.profile SET big = (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 3000) i) WHERE id = 4`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	bigSum := queryString(t, ctx, us, `SELECT md5(big) FROM public.profile WHERE id = 4`)

	for _, r := range []string{"us", "eu", "ap"} {
		if err := nf.Isolate(r); err != nil {
			t.Fatal(err)
		}
	}
	// Row 1: each region edits its own column. Row 2: us, then eu, edit
	// the same column. Row 3: us and eu edit columns, ap deletes the row.
	// Row 4: two columns next to an unchanged TOAST value.
	execAll(us, `UPDATE public.profile SET email = 'us-email', seen = 30 WHERE id = 1`,
		`UPDATE public.profile SET email = 'first', seen = 3 WHERE id = 2`,
		`UPDATE public.profile SET email = 'us-3' WHERE id = 3`,
		`UPDATE public.profile SET email = 'us-4', seen = 5 WHERE id = 4`)
	time.Sleep(20 * time.Millisecond) // eu's edit of row 2 is the later one
	execAll(eu, `UPDATE public.profile SET bio = 'eu-bio', seen = 20 WHERE id = 1`,
		`UPDATE public.profile SET email = 'second', seen = 1 WHERE id = 2`,
		`UPDATE public.profile SET bio = 'eu-3' WHERE id = 3`,
		`UPDATE public.profile SET bio = 'eu-4', seen = 7 WHERE id = 4`)
	execAll(ap, `UPDATE public.profile SET name = 'ap-name', seen = 10 WHERE id = 1`,
		`DELETE FROM public.profile WHERE id = 3`)
	if err := nf.HealAll(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}

	// lostBy counts a region's records that log a write of origin as
	// overwritten on key.
	lostBy := func(r *Region, key, origin string) int64 {
		return queryInt(t, ctx, r, fmt.Sprintf(`SELECT count(*) FROM polyregion.conflict_log WHERE tbl = 'public.profile' AND key = '["%s"]'
			AND outcome = 'overwritten' AND ((winner = 'local' AND remote_origin = '%s') OR (winner = 'remote' AND local_origin = '%s'))`, key, origin, origin))
	}
	for _, r := range h.Regions {
		rows := queryString(t, ctx, r, `SELECT string_agg(format('%s:%s/%s/%s/%s', id, email, bio, name, seen), ' ' ORDER BY id) FROM public.profile WHERE id <> 4`)
		if want := "1:us-email/eu-bio/ap-name/30 2:second/b2/n2/3"; rows != want {
			t.Errorf("region %s holds %q, want %q\n%s", r.Name, rows, want, conflictLog(t, ctx, r))
		}
		row4 := queryString(t, ctx, r, `SELECT format('%s/%s/%s/%s/%s', email, bio, name, seen, md5(big)) FROM public.profile WHERE id = 4`)
		if want := "us-4/eu-4/n4/7/" + bigSum; row4 != want {
			t.Errorf("region %s holds row 4 as %q, want %q", r.Name, row4, want)
		}
		// Nothing of rows 1 and 4 was lost: no record says so.
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl = 'public.profile' AND key IN ('["1"]', '["4"]') AND outcome <> 'merged'`); n != 0 {
			t.Errorf("region %s logs %d lost writes on rows whose edits were all kept\n%s", r.Name, n, conflictLog(t, ctx, r))
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl = 'public.profile' AND key IN ('["1"]', '["4"]')`); n == 0 {
			t.Errorf("region %s logs no conflict (merged) for the concurrent edits of rows 1 and 4", r.Name)
		}
		// Row 2: exactly one lost write, us's.
		if n, all := lostBy(r, "2", "us"), queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE key = '["2"]' AND outcome = 'overwritten'`); n != 1 || all != 1 {
			t.Errorf("region %s: %d records log us's edit of row 2 as lost, %d in all; want exactly one\n%s", r.Name, n, all, conflictLog(t, ctx, r))
		}
		// Row 3: ap's delete wins; us's and eu's edits are logged as lost.
		for _, o := range []string{"us", "eu"} {
			if lostBy(r, "3", o) == 0 {
				t.Errorf("region %s: %s's edit of the deleted row 3 is not logged as lost\n%s", r.Name, o, conflictLog(t, ctx, r))
			}
		}
	}

	// A later write in one region has seen everything: no siblings remain.
	mustExec(t, ctx, ap, `UPDATE public.profile SET name = 'later' WHERE id IN (1, 4)`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		got := queryString(t, ctx, r, `SELECT string_agg(format('%s:%s/%s/%s', id, email, bio, name), ' ' ORDER BY id) FROM public.profile WHERE id IN (1, 4)`)
		if want := "1:us-email/eu-bio/later 4:us-4/eu-4/later"; got != want {
			t.Errorf("region %s holds %q after a later edit, want %q", r.Name, got, want)
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.row_version WHERE tbl = 'public.profile' AND key IN ('["1"]', '["4"]') AND siblings IS NOT NULL`); n != 0 {
			t.Errorf("region %s keeps siblings on live rows after a write that saw them all", r.Name)
		}
	}
}

// A column_lww table without REPLICA IDENTITY FULL is refused at start,
// with the statement that fixes it.
func TestColumnLWWNeedsTheOldRow(t *testing.T) {
	h := startClusters(t, Spec{Regions: []string{"us", "eu"},
		SchemaSQL: []string{`CREATE TABLE public.profile (id integer PRIMARY KEY, email text)`},
		Tables:    []TableSpec{{Name: "public.profile", Deletes: "delete_wins", Columns: "column_lww"}}})
	us := h.Region("us")
	if err := us.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitExited(t, us, time.Minute)
	if log := us.Logs(1 << 16); !strings.Contains(log, "table public.profile: columns: column_lww needs REPLICA IDENTITY FULL") ||
		!strings.Contains(log, `ALTER TABLE "public"."profile" REPLICA IDENTITY FULL`) {
		t.Errorf("the refusal does not name the table and the fix:\n%s", us.Logs(3000))
	}
}
