package integration

import (
	"strings"
	"testing"
	"time"
)

// TestHotRowsApplierNeverDeadlocksWithApplications runs the hot-row
// workload (bench_hotrow_test.go: every transaction increments a random
// client row, one of ten bucket rows and the single total row, and appends
// a history row) in three regions at once with the replicators running, two
// clients per region, for 12 seconds. The application locks rows in one
// fixed order, so it never deadlocks on its own; the appliers apply the
// peers' increments to the same rows meanwhile. Then: no server logged a
// deadlock (during the writes and the catch-up), no application
// transaction failed, the regions converge, and every transaction and
// increment is in every region exactly once.
func TestHotRowsApplierNeverDeadlocksWithApplications(t *testing.T) {
	h := startRegions(t, Spec{SchemaSQL: hotRowSchema(), Tables: hotRowTables})
	ctx := ctxFor(t, 10*time.Minute)
	offsets := logOffsets(h)
	stats, err := runHotRows(ctx, h, 2, 12*time.Second, "t", nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range sortedRegionNames(stats) {
		s := stats[name]
		t.Logf("%s: %d transactions committed (%.0f/s), %d failed (%d deadlocks, %d of unknown outcome)", name, s.Committed, s.TPS(), s.Failed, s.Deadlocks, s.Unknown)
	}
	stoppedAt := time.Now()
	convErr := h.WaitConverged(ctx, hotRowTablesList, 5*time.Minute)
	if convErr == nil {
		t.Logf("converged %.1fs after the last write", time.Since(stoppedAt).Seconds())
	}

	dl, per, err := hotRowAllDeadlocks(h, offsets)
	if err != nil {
		t.Fatal(err)
	}
	if dl.Total > 0 {
		t.Errorf("servers logged %d deadlocks (per region %v): %d with a replicator session (its session the victim in %d), %d among application sessions alone",
			dl.Total, per, dl.WithReplicator, dl.ReplicatorVictim, dl.AppOnly)
		if dl.Sample != "" {
			t.Logf("first deadlock involving a replicator session, %s", dl.Sample)
		}
	}
	failed := hotRowSum(stats, func(s *hotRowStats) int64 { return s.Failed })
	if failed > 0 {
		t.Errorf("%d application transactions failed (%d deadlock_detected): %s", failed,
			hotRowSum(stats, func(s *hotRowStats) int64 { return s.Deadlocks }), strings.Join(hotRowErrorSummary(stats), "; "))
	}
	if retries := replicatorErrors(ctx, h, "apply_retry"); retries > 0 {
		t.Logf("the appliers retried %d batches (polyregion_errors_total{kind=\"apply_retry\"})", retries)
	}
	if convErr != nil {
		t.Fatal(convErr)
	}
	txns, err := hotRowCheck(ctx, h, stats)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("every region holds all %d transactions once and counters equal to their increments", txns)
}
