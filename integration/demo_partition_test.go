package integration

import (
	"testing"
	"time"
)

// TestDemoTablesConvergeThroughAPartition: the demo's tables (request
// counters whose updated_at merges by max, profiles by last writer) written
// in all three regions while us and ap cannot reach each other. eu keeps
// hearing both, so when the partition heals ap receives us's backlog in
// large batches, in which a row's older writes (eu's writes had seen them)
// only add their increments and its later ones compete with ap's. eu's
// clock runs 2 s ahead: every region's hybrid clock follows eu's writes, so
// which of two concurrent writes wins (the later hybrid timestamp) is not
// always the one with the later updated_at (the region's own clock), and
// the max column must merge the loser's. Every region must end with the
// same rows, every request counted once.
func TestDemoTablesConvergeThroughAPartition(t *testing.T) {
	nf := NewNetFaults()
	t.Cleanup(nf.Close)
	spec := Spec{SchemaSQL: CounterSchema, Tables: CounterTables, Configure: nf.Configure(nil)}
	h := startClusters(t, spec)
	ctx := ctxFor(t, 4*time.Minute)
	if err := nf.Check(spec.Regions); err != nil {
		t.Fatal(err)
	}
	if _, err := FaketimeLib(); err != nil {
		t.Fatal(err)
	}
	if err := SetClockOffset(ctx, h.Region("eu").Cluster, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitReady(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	names := tableNames(CounterTables)
	done := make(chan error, 1)
	var issued map[[3]string]int64
	go func() {
		var err error
		issued, err = h.DemoWorkload(ctx, 8*time.Second, nil)
		done <- err
	}()
	time.Sleep(time.Second)
	if err := nf.Partition("us", "ap"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second)
	if err := nf.HealAll(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, names, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	var want int64
	for _, n := range issued {
		want += n
	}
	for _, r := range h.Regions {
		got := queryInt(t, ctx, r, `SELECT coalesce(sum(requests), 0)::bigint FROM public.usage_counters`)
		if got != want {
			t.Errorf("region %s counted %d requests, %d were issued", r.Name, got, want)
		}
	}
	t.Logf("%d requests counted in every region; rows equal", want)
}
