package integration

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestARegionCutOffFromTheLeaderLearnsAPolicyChangeFromAPeer: the data
// plane never waits for the control plane. One region (cut) loses its
// links to the control plane's leader but still reaches the third region
// (mid); the leader and mid, a majority, change public.kv's policy. mid
// then ships under epoch 2, and cut, whose control plane still knows
// epoch 1 only, learns the epoch from mid's stream and applies what mid
// writes: also after its replicator is killed and started again, still
// cut off (the learned epoch is recorded with its policies). After the
// heal cut reports its fence, the epoch comes into effect everywhere, and
// the regions converge.
func TestARegionCutOffFromTheLeaderLearnsAPolicyChangeFromAPeer(t *testing.T) {
	tables := []TableSpec{{Name: "public.kv"}}
	ctx := ctxFor(t, 6*time.Minute)
	nf := NewNetFaults()
	t.Cleanup(nf.Close) // runs after the harness is closed
	h := startFoundedThrough(t, ctx, kvSchema, tables, func(*RegionConfig) {}, nf)
	st := waitControl(t, h.Regions[0], time.Minute, "a leader", func(c controlStatus) bool { return c.Leader != "" })
	var leader, cut, mid *Region
	for _, r := range h.Regions {
		switch {
		case r.Name == st.Leader:
			leader = r
		case cut == nil:
			cut = r
		default:
			mid = r
		}
	}
	t.Logf("leader %s; %s is cut off from it and still reaches %s", leader.Name, cut.Name, mid.Name)
	if err := nf.Partition(cut.Name, leader.Name); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, mid, `INSERT INTO public.kv (id, val) VALUES (1, 'mid, before the change')`)
	waitRow(t, ctx, cut, `SELECT count(*) FROM public.kv WHERE id = 1`, 1)

	path := withTables(t, leader, "priority", []TableSpec{{Name: "public.kv", Policy: "region_priority", Priority: []string{"ap", "us", "eu"}}})
	out := mustPolyregion(t, ctx, "cluster", "configure", "--config", path)
	if !strings.Contains(out, "epoch 2") {
		t.Fatalf("cluster configure:\n%s", out)
	}
	waitControl(t, mid, time.Minute, "epoch 2 announced", func(c controlStatus) bool { return c.Epoch.Number == 2 })
	// mid ships under epoch 2 once its data plane runs with it.
	for start := time.Now(); !strings.Contains(mid.Logs(1<<22), "a policy change was announced"); time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > time.Minute {
			t.Fatalf("%s did not restart its data plane with epoch 2:\n%s", mid.Name, mid.Logs(4000))
		}
	}
	time.Sleep(time.Second)
	mustExec(t, ctx, mid, `INSERT INTO public.kv (id, val) VALUES (2, 'mid, under epoch 2')`)
	mustExec(t, ctx, leader, `INSERT INTO public.kv (id, val) VALUES (3, 'the leader, under epoch 2')`)
	waitRow(t, ctx, cut, `SELECT count(*) FROM public.kv WHERE id = 2`, 1)
	if c, ok := controlOf(cut); !ok || c.Epoch.Number != 1 {
		t.Fatalf("%s applied mid's write under epoch 2 with its control plane at epoch %d (up: %v): the partition did not keep the change from it", cut.Name, c.Epoch.Number, ok)
	}
	if !strings.Contains(cut.Logs(1<<22), "learned a policy change from a peer") {
		t.Fatalf("%s does not say it learned epoch 2 from a peer:\n%s", cut.Name, cut.Logs(4000))
	}
	if n := queryInt(t, ctx, cut, `SELECT count(*) FROM polyregion.epochs WHERE number = 2 AND policies->'public.kv'->>'Kind' = 'region_priority'`); n != 1 {
		t.Fatalf("%s recorded epoch 2 with its policies %d times, want once", cut.Name, n)
	}

	// Killed and started again while still cut off, it knows the epoch
	// from what it recorded (it does not learn it again).
	if err := cut.StopReplicator(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := cut.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, mid, `INSERT INTO public.kv (id, val) VALUES (4, 'mid, under epoch 2, after the restart')`)
	waitRow(t, ctx, cut, `SELECT count(*) FROM public.kv WHERE id = 4`, 1)
	if n := queryInt(t, ctx, cut, `SELECT count(*) FROM public.kv WHERE id = 3`); n != 0 {
		t.Fatalf("%s holds the leader's write while cut off from it", cut.Name)
	}
	if c, ok := controlOf(cut); !ok || c.Epoch.Number != 1 {
		t.Fatalf("%s: control plane at epoch %d (up: %v) before the heal", cut.Name, c.Epoch.Number, ok)
	}
	if n := strings.Count(cut.Logs(1<<22), "learned a policy change from a peer"); n != 1 {
		t.Fatalf("%s learned epoch 2 from a peer %d times; the restarted replicator should have read it from what it recorded", cut.Name, n)
	}

	if err := nf.HealAll(); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		waitControl(t, r, 2*time.Minute, "epoch 2 in effect with every region's fence", func(c controlStatus) bool {
			return c.Epoch.Number == 2 && c.Epoch.Effective > 0 && len(c.Epoch.Fences) == 3
		})
	}
	if err := h.WaitConverged(ctx, tableNames(tables), 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.kv WHERE id BETWEEN 1 AND 4`); n != 4 {
			t.Fatalf("%s holds %d of the 4 rows", r.Name, n)
		}
	}
}
