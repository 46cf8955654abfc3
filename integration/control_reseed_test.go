package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestReseedARegionThroughTheControlPlane: three regions that already
// replicate found the control plane together. ap is away while us writes
// past its outbox cap, so us's stream to ap is refused as too far behind;
// ap also wrote while away. region reseed ap --from eu, asked in us while
// us and eu go on writing: ap's replicator ships its own write first, then
// empties ap and loads eu's snapshot, and is active again. Nothing written
// anywhere is lost or doubled, and ap's next write reaches the others.
func TestReseedARegionThroughTheControlPlane(t *testing.T) {
	tables := []TableSpec{{Name: "public.kv"}}
	ctx := ctxFor(t, 6*time.Minute)
	h := startFounded(t, ctx, tables, func(c *RegionConfig) { c.OutboxMaxTransactions = 20 })
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]

	for i := 1; i <= 5; i++ {
		mustExec(t, ctx, ap, `INSERT INTO public.kv (id, val) VALUES ($1, 'ap')`, i)
	}
	waitRow(t, ctx, us, `SELECT count(*) FROM public.kv WHERE val = 'ap'`, 5)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv WHERE val = 'ap'`, 5)
	if err := ap.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i := 100; i < 200; i++ {
		mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES ($1, 'us')`, i)
	}
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv WHERE val = 'us'`, 100)
	mustExec(t, ctx, ap, `INSERT INTO public.kv (id, val) VALUES (500, 'ap while away')`)
	if err := ap.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); !strings.Contains(ap.Logs(1<<22), "re-seed ap"); time.Sleep(100 * time.Millisecond) {
		if time.Since(start) > time.Minute {
			t.Fatalf("ap was not told it must be re-seeded:\n%s", ap.Logs(4000))
		}
	}

	for _, bad := range []struct{ args []string }{
		{[]string{"region", "reseed", "ap", "--from", "ap", "--config", us.ConfigPath}},
		{[]string{"region", "reseed", "ap", "--from", "sa", "--config", us.ConfigPath}},
	} {
		if out, err := polyregion(ctx, bad.args...); err == nil || !strings.Contains(out, "refused") {
			t.Fatalf("polyregion %s: %v\n%s", strings.Join(bad.args, " "), err, out)
		}
	}

	// us and eu write throughout the reseed.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var written atomic.Int64
	var werr atomic.Value
	for i, r := range []*Region{us, eu} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				pool, err := r.Pool(ctx)
				if err == nil {
					_, err = pool.Exec(ctx, `INSERT INTO public.kv (id, val) VALUES ($1, $2)`, 10000*(i+1)+n, r.Name+" during")
				}
				if err != nil {
					werr.Store(fmt.Errorf("%s: %w", r.Name, err))
					return
				}
				written.Add(1)
			}
		}()
	}

	out := mustPolyregion(t, ctx, "region", "reseed", "ap", "--from", "eu", "--config", us.ConfigPath)
	if !strings.Contains(out, "member ap") || !strings.Contains(out, "reseeding (from eu)") {
		t.Fatalf("region reseed output does not show ap reseeding from eu:\n%s", out)
	}
	if out, err := polyregion(ctx, "region", "reseed", "ap", "--from", "us", "--config", eu.ConfigPath); err == nil || !strings.Contains(out, "already being re-seeded from eu") {
		t.Fatalf("a second reseed from another source: %v\n%s", err, out)
	}
	// 503 (reseeding) until it is back, and it keeps its vote meanwhile.
	waitStatus(t, ap, time.Minute, "reseeding on /health", func(st opsStatus) bool { return strings.Contains(st.Joining, "reseeding") })
	if c, _ := controlOf(us); len(c.Voters) != 3 {
		t.Fatalf("ap lost its vote while being re-seeded: voters %v", c.Voters)
	}
	// A kill -9 once ap is emptied: restarted, it loads (it is not
	// emptied again, nor active before it loaded).
	for start := time.Now(); !strings.Contains(ap.Logs(1<<22), "reseed: emptied"); time.Sleep(20 * time.Millisecond) {
		if time.Since(start) > 2*time.Minute {
			t.Fatalf("ap was not emptied:\n%s", ap.Logs(4000))
		}
	}
	if err := ap.StopReplicator(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := ap.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitControl(t, us, 3*time.Minute, "ap active again", func(c controlStatus) bool { return c.state("ap") == "active" })
	waitJoined(t, ctx, ap, 2*time.Minute)
	close(stop)
	wg.Wait()
	if err, _ := werr.Load().(error); err != nil {
		t.Fatal(err)
	}
	if written.Load() < 20 {
		t.Fatalf("only %d writes went on during the reseed", written.Load())
	}

	mustExec(t, ctx, ap, `INSERT INTO public.kv (id, val) VALUES (600, 'ap after the re-seed')`)
	if err := h.WaitConverged(ctx, tableNames(tables), 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	want := 110 + written.Load() // 3 markers, 5 + 2 of ap's, 100 of us's
	for _, r := range h.Regions {
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.kv`); int64(n) != want {
			t.Errorf("region %s holds %d rows, want %d", r.Name, n, want)
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.kv WHERE id IN (500, 600)`); n != 2 {
			t.Errorf("region %s lacks ap's writes from while it was away or after the re-seed (%d of 2)", r.Name, n)
		}
	}
	logs := ap.Logs(1 << 24)
	for _, line := range []string{"reseed: every other region confirmed all this region shipped", "reseed: emptied", "joined: snapshot loaded"} {
		if !strings.Contains(logs, line) {
			t.Errorf("ap's log lacks %q", line)
		}
	}
	if n := strings.Count(logs, "reseed: emptied"); n != 1 {
		t.Errorf("ap was emptied %d times, want once", n)
	}
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, "reseed") || strings.Contains(l, "snapshot loaded") || strings.Contains(l, "is active") {
			t.Log(l)
		}
	}
	t.Logf("us and eu wrote %d rows during the reseed", written.Load())
}

// waitStatus waits until ok accepts r's /status.
func waitStatus(t *testing.T, r *Region, within time.Duration, what string, ok func(opsStatus) bool) {
	t.Helper()
	var st opsStatus
	for start := time.Now(); time.Since(start) < within; time.Sleep(50 * time.Millisecond) {
		var up bool
		if st, up = statusOf(r); up && ok(st) {
			return
		}
	}
	t.Fatalf("%s did not show %s within %s; last: %+v\n%s", r.Name, what, within, st, r.Logs(4000))
}

// startFounded starts three regions replicating tables (kvSchema), each
// with the control plane (configure adds to each one's configuration),
// founds the control plane with all three (cluster init --members) and
// waits until each runs its data plane with the agreed membership and every
// link carries rows (a marker row from each region, ids 900-902, reaches
// the others).
func startFounded(t *testing.T, ctx context.Context, tables []TableSpec, configure func(*RegionConfig)) *Harness {
	t.Helper()
	return startFoundedThrough(t, ctx, kvSchema, tables, configure, nil)
}

// startFoundedThrough is startFounded with schema, and with every link
// through nf (nil: direct), which the test cuts and heals.
func startFoundedThrough(t *testing.T, ctx context.Context, schema []string, tables []TableSpec, configure func(*RegionConfig), nf *NetFaults) *Harness {
	t.Helper()
	dir := t.TempDir()
	spec := Spec{SchemaSQL: schema, Tables: tables, Configure: func(region string, c *RegionConfig) {
		c.Control = &ControlSection{Dir: filepath.Join(dir, region+"-control"), ReportInterval: "1s"}
		configure(c)
	}}
	if nf != nil {
		spec.Configure = nf.Configure(spec.Configure)
	}
	h := startRegions(t, spec)
	if nf != nil {
		names := make([]string, len(h.Regions))
		for i, r := range h.Regions {
			names[i] = r.Name
		}
		if err := nf.Check(names); err != nil {
			t.Fatal(err)
		}
	}
	us := h.Regions[0]
	for _, r := range h.Regions {
		if err := r.WaitReady(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	mustPolyregion(t, ctx, "cluster", "init", "--config", us.ConfigPath, "--members", "us,eu,ap")
	for _, r := range h.Regions {
		waitControl(t, r, time.Minute, "three active voters", func(c controlStatus) bool {
			return len(c.Voters) == 3 && c.state("us") == "active" && c.state("eu") == "active" && c.state("ap") == "active"
		})
		// Its data plane restarts once, to run with the agreed membership:
		// a burst meanwhile could leave it past a small outbox cap.
		for start := time.Now(); !strings.Contains(r.Logs(1<<22), "restarting the data plane with them"); time.Sleep(50 * time.Millisecond) {
			if time.Since(start) > time.Minute {
				t.Fatalf("%s did not restart its data plane with the agreed membership:\n%s", r.Name, r.Logs(4000))
			}
		}
	}
	for _, r := range h.Regions {
		// Each reported running this release (a change waits for that).
		waitControl(t, r, time.Minute, "every region's release reported", func(c controlStatus) bool {
			return c.Takes["us"] > 0 && c.Takes["eu"] > 0 && c.Takes["ap"] > 0
		})
	}
	for i, r := range h.Regions {
		mustExec(t, ctx, r, `INSERT INTO public.kv (id, val) VALUES ($1, 'marker')`, 900+i)
	}
	for _, r := range h.Regions {
		waitRow(t, ctx, r, `SELECT count(*) FROM public.kv WHERE val = 'marker'`, 3)
	}
	return h
}
