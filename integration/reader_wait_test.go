package integration

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestApplierWaitsForTheReaderHoldingNoApplicationRow: the applier waits
// for the local reader to version local writes in two cases, and in
// neither may it hold a row the applications write meanwhile (every local
// writer of that row would queue behind the reader too). The reader is
// held back by a session that locks polyregion.row_version while a local
// write waits to be versioned.
//
//  1. A peer's transaction updates a row and inserts a history row whose
//     key was inserted and deleted here, not versioned yet: the new key
//     needs the wait. A local update of the updated row must not wait for
//     it (before: the applier had locked and updated the row, then waited,
//     and the local update timed out).
//  2. A peer updates a row just written here and not versioned yet: the
//     applier must wait without holding it. A second local update of that
//     row must not wait (before: the applier waited holding it).
//
// Then the reader is let go and the regions converge.
func TestApplierWaitsForTheReaderHoldingNoApplicationRow(t *testing.T) {
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: []string{
		`CREATE TABLE public.hot (id integer PRIMARY KEY, v text)`,
		`CREATE TABLE public.hist (id text PRIMARY KEY, v text)`,
		`INSERT INTO public.hot SELECT g, 'seed' FROM generate_series(1, 10) g`,
	}, Tables: []TableSpec{{Name: "public.hot"}, {Name: "public.hist"}}})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu := h.Region("us"), h.Region("eu")
	tables := []string{"public.hot", "public.hist"}
	if err := h.WaitConverged(ctx, tables, time.Minute); err != nil {
		t.Fatal(err)
	}
	app := func(r *Region, sql string, args ...any) error {
		conn, err := pgx.Connect(ctx, r.Cluster.URL("app", AppDB))
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, `SET lock_timeout = '2s'`); err != nil {
			return err
		}
		_, err = conn.Exec(ctx, sql, args...)
		return err
	}
	// stall holds eu's reader back: a local write it must version waits
	// for a lock on the versions.
	stall := func(id int) func() {
		t.Helper()
		hold, err := eu.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{`BEGIN`, `LOCK TABLE polyregion.row_version IN SHARE MODE`} {
			if _, err := hold.Exec(ctx, s); err != nil {
				t.Fatal(err)
			}
		}
		if err := app(eu, `UPDATE public.hot SET v = 'eu stall' WHERE id = $1`, id); err != nil {
			t.Fatal(err)
		}
		return func() {
			if _, err := hold.Exec(ctx, `COMMIT`); err != nil {
				t.Error(err)
			}
			hold.Close(context.Background())
		}
	}
	// applying waits until eu's applier for us is inside a transaction that
	// holds something, and has stayed there a moment (it waits for the
	// reader).
	applying := func() {
		t.Helper()
		conn, err := eu.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		deadline := time.Now().Add(30 * time.Second)
		for {
			var n int
			err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE application_name = 'polyregion-apply-us'
				AND state = 'idle in transaction' AND backend_xid IS NOT NULL AND now() - state_change > interval '300 ms'`).Scan(&n)
			if err != nil {
				t.Fatal(err)
			}
			if n > 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("eu's applier never waited inside its transaction")
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	// 1. An update and a new history row from us, whose key eu inserted and
	// deleted just before (its reader holds both, unversioned).
	release := stall(10)
	if err := app(eu, `BEGIN; INSERT INTO public.hist VALUES ('us-1', 'eu'); DELETE FROM public.hist WHERE id = 'us-1'; COMMIT`); err != nil {
		t.Fatal(err)
	}
	if err := app(us, `BEGIN; UPDATE public.hot SET v = 'us 2' WHERE id = 2; INSERT INTO public.hist VALUES ('us-1', 'x'); COMMIT`); err != nil {
		t.Fatal(err)
	}
	applying()
	if err := app(eu, `UPDATE public.hot SET v = 'eu 2' WHERE id = 2`); err != nil {
		t.Errorf("a local update of a row the applier updates waited for the reader with it: %v", err)
	}
	release()
	if err := h.WaitConverged(ctx, tables, time.Minute); err != nil {
		t.Fatal(err)
	}

	// 2. An update from us of a row written here and not versioned yet.
	release = stall(5)
	if err := app(us, `UPDATE public.hot SET v = 'us 5' WHERE id = 5`); err != nil {
		t.Fatal(err)
	}
	applying()
	if err := app(eu, `UPDATE public.hot SET v = 'eu 5 again' WHERE id = 5`); err != nil {
		t.Errorf("a local update of a row the applier read waited for the reader with it: %v", err)
	}
	release()
	if err := h.WaitConverged(ctx, tables, time.Minute); err != nil {
		t.Fatal(err)
	}
	var hist int
	conn, err := eu.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM public.hist WHERE id = 'us-1'`).Scan(&hist); err != nil || hist != 1 {
		t.Errorf("us's history row in eu: %d rows (%v)", hist, err)
	}
}

// TestRowsFromBeforeReplicationAreNotWaitedForHoldingThem: rows a region
// held before it replicated have no recorded version, and none will come
// (the reader versions only what it decodes). A peer's update of such rows
// makes the applier wait for the reader once, holding nothing, and then
// decide with no version. Before, the applier found them unversioned again
// after each wait, waited three times, and then a fourth time holding the
// rows (every local writer of them queued behind it): on a region that
// started from existing data that was most batches of a hot-row workload
// until each row had been written here once.
func TestRowsFromBeforeReplicationAreNotWaitedForHoldingThem(t *testing.T) {
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: []string{
		`CREATE TABLE public.seeded (id integer PRIMARY KEY, v text)`,
		`INSERT INTO public.seeded SELECT g, 'seed' FROM generate_series(1, 50) g`,
	}, Tables: []TableSpec{{Name: "public.seeded"}}})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu := h.Region("us"), h.Region("eu")
	tables := []string{"public.seeded"}
	if err := h.WaitConverged(ctx, tables, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := us.Cluster.Exec(ctx, AppDB, `UPDATE public.seeded SET v = 'us' WHERE id <= 20`); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tables, time.Minute); err != nil {
		t.Fatal(err)
	}
	conn, err := eu.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM public.seeded WHERE v = 'us'`).Scan(&n); err != nil || n != 20 {
		t.Fatalf("eu holds %d of us's 20 updated rows (%v)", n, err)
	}
	m := scrapeMetrics(ctx, eu)
	holding, _ := metricValue(m, "polyregion_apply_reader_waits_total", `holding_rows="true"`)
	free, _ := metricValue(m, "polyregion_apply_reader_waits_total", `holding_rows="false"`)
	if holding != 0 {
		t.Errorf("eu's applier waited for the reader %v times holding rows, want 0", holding)
	}
	if free != 1 {
		t.Errorf("eu's applier waited for the reader %v times holding nothing, want 1 (the rows have no version to wait for)", free)
	}
}
