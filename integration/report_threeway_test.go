package integration

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/polyregion/polyregion/replicator/audit"
)

// TestThreeWayConflictReportedOnce: the same row updated in three regions
// at once. Each region decides two of the three pairs, after its row has
// absorbed the first write it met; the write holding the row must still be
// logged with the version it was made with (as every other region logs
// it), not the row's merged vector: the audit report names a write by its
// origin, version and timestamp, and counts each pair once only when every
// region names each write alike.
func TestThreeWayConflictReportedOnce(t *testing.T) {
	schema := []string{`CREATE TABLE public.kv (id integer PRIMARY KEY, val text)`,
		`CREATE TABLE public.visits (id integer PRIMARY KEY, n bigint NOT NULL)`, `ALTER TABLE public.visits REPLICA IDENTITY FULL`}
	tables := []TableSpec{{Name: "public.kv"}, {Name: "public.visits", Counters: []string{"n"}}}
	h := startRegions(t, Spec{SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 5*time.Minute)
	us := h.Regions[0]

	mustExec(t, ctx, us, `INSERT INTO public.kv SELECT g, 'base' FROM generate_series(1, 3) g`)
	mustExec(t, ctx, us, `INSERT INTO public.visits VALUES (1, 0)`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	stopAll(t, h)
	// Three concurrent updates of each of three rows, in timestamp order
	// us < eu < ap.
	for _, r := range h.Regions {
		mustExec(t, ctx, r, `UPDATE public.kv SET val = $1`, r.Name)
		mustExec(t, ctx, r, `UPDATE public.visits SET n = n + 1`)
		time.Sleep(20 * time.Millisecond)
	}
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if got := queryInt(t, ctx, us, `SELECT count(*) FROM public.kv WHERE val = 'ap'`); got != 3 {
		t.Fatalf("%d rows hold ap's write, want 3 (the latest)", got)
	}
	// The counter row's updates are folded in place, not logged (its table comes after kv in lock order): its
	// version ends the same everywhere, held by ap's write (the latest),
	// with the vector ap made it with kept apart from the merged one.
	for _, r := range h.Regions {
		got := queryString(t, ctx, r, `SELECT vv || ' from ' || origin || ', own ' || coalesce(own ->> 'vv', '-') FROM polyregion.row_version WHERE tbl = 'public.visits'`)
		if want := "ap:1,eu:1,us:2 from ap, own ap:1,us:1"; got != want {
			t.Errorf("%s: counter row's version %s; want %s", r.Name, got, want)
		}
	}

	// Every logged side names its write (origin, timestamp) with one
	// version, in every region.
	var src audit.Sources
	versions := map[string]map[string][]string{} // origin@hlc -> version -> logged by
	var records int64
	for _, r := range h.Regions {
		pool, err := pgxpool.New(ctx, r.Cluster.URL("polyregion", AppDB))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		src = append(src, audit.DB{Name: r.Name, Q: pool})
		rows, err := pool.Query(ctx, `SELECT key, local_origin, local_hlc, local_version, remote_origin, remote_hlc, remote_version FROM polyregion.conflict_log`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var key, lo, lv, ro, rv string
			var lh, rh int64
			if err := rows.Scan(&key, &lo, &lh, &lv, &ro, &rh, &rv); err != nil {
				t.Fatal(err)
			}
			records++
			for _, w := range [][3]string{{lo, fmt.Sprint(lh), lv}, {ro, fmt.Sprint(rh), rv}} {
				id := key + " " + w[0] + "@" + w[1]
				if versions[id] == nil {
					versions[id] = map[string][]string{}
				}
				versions[id][w[2]] = append(versions[id][w[2]], r.Name)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
	}
	if len(versions) != 9 {
		t.Errorf("%d writes named in the conflict logs, want 9 (three rows, three writes each)", len(versions))
	}
	var bad []string
	for id, vs := range versions {
		if len(vs) > 1 {
			var seen []string
			for v, by := range vs {
				seen = append(seen, fmt.Sprintf("%s (logged by %s)", v, strings.Join(by, ",")))
			}
			sort.Strings(seen)
			bad = append(bad, id+": "+strings.Join(seen, "; "))
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		t.Errorf("writes logged with different versions in different records:\n%s", strings.Join(bad, "\n"))
	}

	// The report counts each pair once: two pairs per row decided in each
	// region (18 records), at most three distinct pairs per row.
	rep, err := audit.Read(ctx, src, audit.Filters{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pairs := map[string]bool{}
	for _, row := range rep.Rows {
		pairs[row.Table+row.Key+row.A.Origin+row.B.Origin] = true
	}
	if records != 18 || rep.Summary.Total != len(pairs) || rep.Summary.Disputed != 0 || len(pairs) > 9 {
		t.Errorf("report: %d conflicts from %d records (%d distinct region pairs), %d disputed; want each pair once from 18 records, none disputed\n%s",
			rep.Summary.Total, records, len(pairs), rep.Summary.Disputed, mustJSON(t, rep.Summary))
	}
}
