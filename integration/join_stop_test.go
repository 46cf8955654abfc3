package integration

import (
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestARegionJustJoinedStopsWithinItsDeadline: a region that has just
// loaded a large snapshot has its reader pass every loaded row first
// (before PostgreSQL 16 the change stream carries them), and an applier
// that must wait for the reader (a peer's insert) waits behind all of
// them. Stopped then, the region rolls back the batch still waiting half
// its shutdown_timeout in, leaves the loaded transaction its reader was
// passing, and exits 0 within the deadline; the batch comes again at the
// next start, once. Before, the stop waited for the reader to pass every
// loaded row, overran the deadline and exited 1.
func TestARegionJustJoinedStopsWithinItsDeadline(t *testing.T) {
	const rows = 1_500_000
	h := startClusters(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: joinBenchSchemaKeyed("bigint"),
		Tables:    []TableSpec{{Name: "public.bulk"}, {Name: "public.lag"}},
		Configure: func(region string, c *RegionConfig) { c.ShutdownTimeout = "3s" }})
	ctx := ctxFor(t, 6*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, us, `INSERT INTO public.bulk (id, payload) SELECT g, pg_catalog.md5(g::text) FROM pg_catalog.generate_series(1, $1::int) g`, rows)
	startReady(t, ctx, us)
	// us inserts a row every 10 ms until the end: each one eu applies
	// waits for eu's reader.
	stop := make(chan struct{})
	werr := make(chan error, 1)
	go func() { werr <- writeLagRows(ctx, us, stop) }()
	stopWriting := sync.OnceValue(func() error {
		close(stop)
		return <-werr
	})
	defer stopWriting()

	if err := eu.StartReplicatorWith("--join", "us"); err != nil {
		t.Fatal(err)
	}
	waitLoaded(t, ctx, eu, 4*time.Minute)
	// Long enough for eu to follow us again; far shorter than its reader
	// takes to pass the loaded rows (seconds).
	waitLog(t, eu, time.Minute, `"msg":"replicator running"`)
	time.Sleep(500 * time.Millisecond)
	if err := eu.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if st := eu.LastExit(); st == nil || st.ExitCode() != 0 {
		t.Fatalf("eu's exit after SIGTERM: %v, want code 0 (a stop within shutdown_timeout)\n%s", st, eu.Logs(6000))
	}
	stopped := grepLines(eu.Logs(1<<22), "stop")
	if !strings.Contains(stopped, "still waiting for the local reader was rolled back") {
		t.Fatalf("eu's stop found no batch waiting for its reader (the reader caught up first?): the case is not tested\n%s", stopped)
	}
	t.Logf("eu stopped:\n%s", stopped)

	// Started again, eu catches up and holds every row once.
	joinFrom(t, ctx, eu, "us", 4*time.Minute)
	if err := stopWriting(); err != nil {
		t.Fatal(err)
	}
	written := queryInt(t, ctx, us, `SELECT count(*) FROM public.lag`)
	if err := waitCount(ctx, eu, `SELECT count(*) FROM public.lag`, written, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, []string{"public.bulk", "public.lag"}, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, ctx, eu, `SELECT count(*) FROM public.bulk`); n != rows {
		t.Fatalf("eu holds %d rows of public.bulk, want %d", n, rows)
	}
}
