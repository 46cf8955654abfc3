package integration

import (
	"testing"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestAFailedBatchReadsItsRowsWhenRetriedInParts: a batch whose insert
// found its row already here (another region inserted the key first) is
// retried reading every row, even when lock contention splits it into
// several local transactions and the first ones were committed by the
// failed attempt. Before the fix, the retry skipped those first parts,
// took that for a commit and assumed the key absent again: the insert
// failed on every retry (in the demo, 20 times in a row on two links).
func TestAFailedBatchReadsItsRowsWhenRetriedInParts(t *testing.T) {
	b := startApplierBench(t, []string{`CREATE TABLE public.kv (id integer PRIMARY KEY, v text)`}, regions.Table{Name: "public.kv"})
	ctx, ap, sh := b.ctx, b.ap, b.shapes["public.kv"]
	// Lock waits time out soon: the batch goes on in parts.
	fromUS := b.applier(t, "us", postgres.ApplierConfig{LockTimeout: 50 * time.Millisecond})
	fromEU := b.applier(t, "eu", postgres.ApplierConfig{LockTimeout: 50 * time.Millisecond})
	ts := func(ms int64) conflict.Timestamp { return conflict.MakeTimestamp(1_700_000_000_000+ms, 0) }
	change := func(op conflict.Op, id, v string, vec conflict.Vector, origin conflict.RegionID, ms int64) replicator.Change {
		return replicator.Change{Op: op, Key: `["` + id + `"]`, Row: []replicator.Value{{Text: id}, {Text: v}},
			Version: conflict.Version{Vector: vec, HLC: ts(ms), Origin: origin}}
	}
	// eu inserted rows 1 and 5 first; they are here.
	if _, err := fromEU.Apply(ctx, []*replicator.Txn{{Origin: "eu", Seq: 1, LSN: "0/1", Shapes: []replicator.Shape{sh}, Changes: []replicator.Change{
		change(conflict.OpInsert, "1", "eu", conflict.Vector{"eu": 1}, "eu", 1),
		change(conflict.OpInsert, "5", "eu", conflict.Vector{"eu": 1}, "eu", 1),
	}}}); err != nil {
		t.Fatal(err)
	}
	// us's eight transactions: the first updates row 1, the fifth inserts
	// row 5 (concurrently with eu's insert), the others insert rows of
	// their own.
	var batch []*replicator.Txn
	for seq := 1; seq <= 8; seq++ {
		c := change(conflict.OpInsert, "1"+string(rune('0'+seq)), "us", conflict.Vector{"us": uint64(seq)}, "us", int64(10+seq))
		switch seq {
		case 1:
			c = change(conflict.OpUpdate, "1", "us", conflict.Vector{"us": 1}, "us", 11)
		case 5:
			c = change(conflict.OpInsert, "5", "us", conflict.Vector{"us": 5}, "us", 15)
		}
		batch = append(batch, &replicator.Txn{Origin: "us", Seq: replicator.Seq(seq), LSN: "0/1", Shapes: []replicator.Shape{sh}, Changes: []replicator.Change{c}})
	}
	// An application holds row 1: the batch's lock wait times out, and
	// the applier goes on two source transactions at a time.
	hold := holdLocks(t, ctx, ap, `SELECT FROM public.kv WHERE id = 1 FOR UPDATE`)
	if _, err := fromUS.Apply(ctx, batch); err == nil || !postgres.IsRetryable(err) {
		t.Fatalf("apply while row 1 is held: %v, want a lock timeout", err)
	}
	if _, err := hold.Exec(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	// Retried as the follower does: the parts before row 5's go in, and
	// row 5's insert finds eu's row. The next attempt must read it.
	var failures []string
	for attempt := 1; ; attempt++ {
		seq, err := fromUS.Apply(ctx, batch)
		if err == nil {
			if seq != 8 {
				t.Fatalf("applied up to %d, want 8", seq)
			}
			break
		}
		if !postgres.IsRetryable(err) {
			t.Fatal(err)
		}
		failures = append(failures, err.Error())
		if attempt == 5 {
			t.Fatalf("the batch failed %d times in a row after the lock wait; last: %v", attempt, err)
		}
	}
	t.Logf("retries after the lock wait: %d %q", len(failures), failures)
	if len(failures) > 1 {
		t.Errorf("the batch failed %d times after the lock wait, want at most once (the optimistic attempt): %q", len(failures), failures)
	}
	// Row 5 went to the later write (us's), and every other row is there.
	if got := queryString(t, ctx, ap, `SELECT string_agg(id || '=' || v, ' ' ORDER BY id) FROM public.kv`); got != "1=us 5=us 12=us 13=us 14=us 16=us 17=us 18=us" {
		t.Errorf("rows = %q", got)
	}
}
