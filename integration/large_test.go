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
