package integration

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRuntimeSIGTERMAndSIGHUP: SIGHUP applies a new log level and health
// hold and refuses (and names) a setting that cannot change while running;
// SIGTERM under load exits 0 within shutdown_timeout after committing and
// acknowledging the batches in flight, and after a restart every
// transaction is applied exactly once in every region.
func TestRuntimeSIGTERMAndSIGHUP(t *testing.T) {
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: ledgerSchema, Tables: ledgerTables,
		Configure: func(region string, c *RegionConfig) {
			c.ShutdownTimeout = "15s"
			c.Health = map[string]string{"hold": "3s"}
		}})
	ctx := ctxFor(t, 4*time.Minute)
	us := h.Regions[0]
	mustExec(t, ctx, us, `INSERT INTO public.totals (region) VALUES ('us'), ('eu')`)
	if err := h.WaitConverged(ctx, tableNames(ledgerTables), time.Minute); err != nil {
		t.Fatal(err)
	}

	// SIGHUP: log level and hold change; listen and join.spool are refused.
	rewriteConfig(t, us, func(c *RegionConfig) {
		c.Log.Level = "debug"
		c.Health["hold"] = "7s"
		c.Listen = "127.0.0.1:1"
		c.Join = map[string]string{"spool": "64MiB"}
	})
	if err := us.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, us, 5*time.Second, `"msg":"config reload: log.level applied","from":"INFO","to":"DEBUG"`)
	waitLog(t, us, 5*time.Second, `"key":"listen"`)
	waitLog(t, us, 5*time.Second, `"key":"join.spool"`)
	waitLog(t, us, 5*time.Second, `"health.hold":"3s -> 7s"`)
	for start := time.Now(); opsSnapshot(t, us).HoldSeconds != 7; time.Sleep(100 * time.Millisecond) {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("after SIGHUP /status hold_seconds = %v, want 7", opsSnapshot(t, us).HoldSeconds)
		}
	}
	if !us.Running() {
		t.Fatal("the replicator exited on SIGHUP")
	}
	rewriteConfig(t, us, func(c *RegionConfig) { c.Listen, c.Join = us.Listen, nil })

	// SIGTERM while both regions write.
	iss := &ledgerIssued{rows: map[string]int64{}, sum: map[string]int64{}, txns: map[string]int64{}}
	iss.txns["us"] = 1 // the totals seed
	work := make(chan error, 1)
	go func() { work <- ledgerWorkload(ctx, h, 8*time.Second, iss) }()
	time.Sleep(3 * time.Second)
	stopAt := time.Now()
	if err := us.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	took := time.Since(stopAt)
	st := us.LastExit()
	if st == nil || st.ExitCode() != 0 {
		t.Fatalf("exit after SIGTERM: %v, want code 0\n%s", st, us.Logs(4000))
	}
	if took > 15*time.Second {
		t.Errorf("SIGTERM to exit took %s, above shutdown_timeout 15s", took)
	}
	logs := us.Logs(1 << 20)
	for _, want := range []string{`"msg":"stopping: finishing the work in flight"`, `"msg":"follower stopped: batch in flight committed"`,
		`"msg":"reader stopped: decoded transactions versioned and confirmed"`, `"msg":"stopped cleanly`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log does not say %s", want)
		}
	}
	t.Logf("SIGTERM under load: exit 0 after %s; the replicator logged:\n%s", took.Round(time.Millisecond), grepLines(logs, "stop"))

	// Restart while the workload goes on; then everything arrives exactly once.
	time.Sleep(time.Second)
	if err := us.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	if err := <-work; err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(ledgerTables), 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		for _, src := range h.Regions {
			rows := queryInt(t, ctx, r, `SELECT count(*) FROM public.ledger WHERE region = $1`, src.Name)
			if rows != iss.rows[src.Name] {
				t.Errorf("region %s holds %d ledger rows from %s, want %d (lost transactions)", r.Name, rows, src.Name, iss.rows[src.Name])
			}
			total := queryInt(t, ctx, r, `SELECT total FROM public.totals WHERE region = $1`, src.Name)
			if total != iss.sum[src.Name] {
				t.Errorf("region %s: total of %s = %d, want %d (a transaction applied twice or lost)", r.Name, src.Name, total, iss.sum[src.Name])
			}
			if src == r {
				continue
			}
			applied := queryInt(t, ctx, r, `SELECT seq FROM polyregion.applied WHERE source = $1`, src.Name)
			if applied != iss.txns[src.Name] {
				t.Errorf("region %s applied %d transactions from %s, want %d", r.Name, applied, src.Name, iss.txns[src.Name])
			}
		}
		shipped := queryInt(t, ctx, r, `SELECT next_seq - 1 FROM polyregion.reader_state`)
		if shipped != iss.txns[r.Name] {
			t.Errorf("region %s shipped %d transactions, %d were written there", r.Name, shipped, iss.txns[r.Name])
		}
	}
	ok, diff, err := h.Compare(ctx, tableNames(ledgerTables))
	if err != nil || !ok {
		t.Fatalf("regions differ: %v %s", err, diff)
	}
	t.Logf("transactions written: %v", iss.txns)
}

// waitLog waits until the replicator's log contains s.
func waitLog(t *testing.T, r *Region, within time.Duration, s string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !strings.Contains(r.Logs(1<<20), s) {
		if time.Now().After(deadline) {
			t.Fatalf("%s's log does not show %s within %s:\n%s", r.Name, s, within, r.Logs(3000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
