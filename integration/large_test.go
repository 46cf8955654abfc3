package integration

import (
	"context"
	"syscall"
	"testing"
	"time"
)

// TestLargeTransactionInPartsAtomically: one source transaction far larger
// than a part travels in parts and is applied all-or-nothing in every region
// (a reader never sees part of it), through a SIGKILL of a receiving
// replicator in the middle; the replicators' memory stays bounded by the
// part size, not the transaction size.
func TestLargeTransactionInPartsAtomically(t *testing.T) {
	schema := []string{`CREATE TABLE public.big (id bigint PRIMARY KEY, payload text NOT NULL)`}
	tables := []TableSpec{{Name: "public.big"}}
	h := startRegions(t, Spec{SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 5*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]

	const rows = 150_000 // about 100 MB of changes, 8 parts
	mustExec(t, ctx, us, `INSERT INTO public.big SELECT g, repeat(md5(g::text), 20) FROM generate_series(1, $1::int) g`, rows)

	// Watch eu and ap: the row count is only ever 0 or all of them.
	partial := make(chan int64, 1)
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	for _, r := range []*Region{eu, ap} {
		go func() {
			conn, err := r.Conn(watchCtx)
			if err != nil {
				return
			}
			defer conn.Close(context.Background())
			for watchCtx.Err() == nil {
				var n int64
				if err := conn.QueryRow(watchCtx, `SELECT count(*) FROM public.big`).Scan(&n); err == nil && n != 0 && n != rows {
					select {
					case partial <- n:
					default:
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	// Kill eu's replicator while the parts are being applied, then restart.
	time.Sleep(3 * time.Second)
	if err := eu.StopReplicator(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := eu.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitRow(t, ctx, ap, `SELECT count(*) FROM public.big`, rows)
	var peak int64
	for _, r := range h.Regions {
		if rss, err := r.PeakRSS(); err == nil {
			t.Logf("region %s replicator peak RSS %.0f MB", r.Name, float64(rss)/(1<<20))
			peak = max(peak, rss)
		}
	}
	if err := h.WaitConverged(ctx, tableNames(tables), 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	stopWatch()
	select {
	case n := <-partial:
		t.Fatalf("a region showed %d of %d rows: the large transaction was not applied atomically", n, rows)
	default:
	}
	if n := queryInt(t, ctx, us, `SELECT count(*) FROM polyregion.applied`); n != 2 {
		t.Logf("us applied from %d sources", n)
	}
	for _, r := range []*Region{eu, ap} {
		if n := queryInt(t, ctx, r, `SELECT seq FROM polyregion.applied WHERE source = 'us'`); n != 1 {
			t.Errorf("region %s applied %d transactions from us, want exactly 1", r.Name, n)
		}
	}
	t.Logf("peak replicator RSS with a %d-row transaction: %.0f MB", rows, float64(peak)/(1<<20))
	if peak > 350<<20 {
		t.Errorf("a replicator peaked at %.0f MB for a %d-row transaction; parts should bound it", float64(peak)/(1<<20), rows)
	}
}

// TestALargeTransactionClashingWithALocalRowGoesIn: us inserts 25,000
// rows into each of two tables in one transaction (applied in parts) while
// eu, cut off, inserts one key of each. eu's applier assumes the keys
// absent, the insert finds the row, and the attempt fails; the retry comes
// on a new stream, by a new applier, which must read every row. Before the
// fix it assumed the same again and failed without end: eu never caught
// up. public.bulk takes the rows by COPY (see apply_copy.go), the check
// constraint keeps public.checked's on INSERT: both clashes fail retryably.
func TestALargeTransactionClashingWithALocalRowGoesIn(t *testing.T) {
	schema := []string{`CREATE TABLE public.bulk (id bigint PRIMARY KEY, v text NOT NULL)`,
		`CREATE TABLE public.checked (id bigint PRIMARY KEY, v text NOT NULL CHECK (v <> ''))`}
	tables := []TableSpec{{Name: "public.bulk"}, {Name: "public.checked"}}
	h := startRegions(t, Spec{SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	stopAll(t, h)
	mustExec(t, ctx, eu, `INSERT INTO public.bulk VALUES (20000, 'eu')`)
	mustExec(t, ctx, eu, `INSERT INTO public.checked VALUES (5000, 'eu')`)
	mustExec(t, ctx, us, `BEGIN; INSERT INTO public.checked SELECT g, 'us' FROM generate_series(1, 25000) g;
		INSERT INTO public.bulk SELECT g, 'us' FROM generate_series(1, 25000) g; COMMIT`)
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), 90*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		for tbl, key := range map[string]int{"bulk": 20000, "checked": 5000} {
			if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.`+tbl); n != 25000 {
				t.Fatalf("%s holds %d rows in %s, want 25000", r.Name, n, tbl)
			}
			if got := queryString(t, ctx, r, `SELECT v FROM public.`+tbl+` WHERE id = $1`, key); got != "us" {
				t.Fatalf("%s: %s row %d holds %q, want us's later insert", r.Name, tbl, key, got)
			}
		}
	}
	if n := queryInt(t, ctx, eu, `SELECT count(*) FROM polyregion.conflict_log WHERE (tbl, key) IN (('public.bulk', '["20000"]'), ('public.checked', '["5000"]'))`); n != 2 {
		t.Fatalf("eu logged %d conflicts of the two rows, want 2", n)
	}
}
