package integration

import (
	"context"
	"slices"
	"strconv"
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
	// eu inserted rows 1 and 5 first; they are here. us's eight
	// transactions: the first updates row 1, the fifth inserts row 5
	// (concurrently with eu's insert), the others insert rows of their own.
	batch := usAfterEU(t, ctx, sh, fromEU, 5)
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
	failures := retryUntilIn(t, ctx, fromUS, batch)
	t.Logf("retries after the lock wait: %d %q", len(failures), failures)
	if len(failures) > 1 {
		t.Errorf("the batch failed %d times after the lock wait, want at most once (the optimistic attempt): %q", len(failures), failures)
	}
	// Row 5 went to the later write (us's), and every other row is there.
	if got := queryString(t, ctx, ap, `SELECT string_agg(id || '=' || v, ' ' ORDER BY id) FROM public.kv`); got != "1=us 5=us 12=us 13=us 14=us 16=us 17=us 18=us" {
		t.Errorf("rows = %q", got)
	}
}

// TestARetryReadsEveryRowUntilTheBatchIsIn: a batch retried after a
// failure reads every row in all the local transactions it goes in, not
// only in the one that failed. Lock contention splits the retry into
// transactions of two source transactions each; two of them insert a key
// another region inserted here first. Before the fix each of those failed
// in turn (the transactions after the one that failed assumed new keys
// absent again), so the batch failed once per such transaction: in a
// region catching up with several sources, up to 20 attempts in a row.
func TestARetryReadsEveryRowUntilTheBatchIsIn(t *testing.T) {
	b := startApplierBench(t, []string{`CREATE TABLE public.kv (id integer PRIMARY KEY, v text)`}, regions.Table{Name: "public.kv"})
	ctx, ap, sh := b.ctx, b.ap, b.shapes["public.kv"]
	// With the local reader, inserts of new keys into a table that stands
	// alone go in before anything is read (insertEarly).
	fromUS := b.applier(t, "us", postgres.ApplierConfig{LockTimeout: 50 * time.Millisecond, Versioner: b.reader(t)})
	fromEU := b.applier(t, "eu", postgres.ApplierConfig{LockTimeout: 50 * time.Millisecond})
	// eu inserted rows 1, 5 and 7 first; they are here. us's eight
	// transactions: the first updates row 1, the fifth and the seventh
	// insert rows 5 and 7 (concurrently with eu's inserts), the others
	// insert rows of their own.
	batch := usAfterEU(t, ctx, sh, fromEU, 5, 7)
	// An application holds row 1: the lock wait times out, and the
	// applier goes on two source transactions at a time.
	hold := holdLocks(t, ctx, ap, `SELECT FROM public.kv WHERE id = 1 FOR UPDATE`)
	if _, err := fromUS.Apply(ctx, batch); err == nil || !postgres.IsRetryable(err) {
		t.Fatalf("apply while row 1 is held: %v, want a lock timeout", err)
	}
	if _, err := hold.Exec(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	if failures := retryUntilIn(t, ctx, fromUS, batch); len(failures) > 0 {
		t.Errorf("the retried batch failed %d more times, want none (it reads every row): %q", len(failures), failures)
	}
	if got := queryString(t, ctx, ap, `SELECT string_agg(id || '=' || v, ' ' ORDER BY id) FROM public.kv`); got != "1=us 5=us 7=us 12=us 13=us 14=us 16=us 18=us" {
		t.Errorf("rows = %q", got)
	}
	// Once the batch is in, the next one assumes new keys absent again:
	// an insert of a key that is here fails it once more.
	next := []*replicator.Txn{{Origin: "us", Seq: 9, LSN: "0/1", Shapes: []replicator.Shape{sh}, Changes: []replicator.Change{
		kvChange(conflict.OpInsert, "20", "us", conflict.Vector{"us": 9}, "us", 19)}}}
	mustExec(t, ctx, ap, `INSERT INTO public.kv VALUES (20, 'here')`)
	if _, err := fromUS.Apply(ctx, next); err == nil || !postgres.IsRetryable(err) {
		t.Errorf("apply of a new key that is here after the batch went in: %v, want a retryable failure (the key assumed absent)", err)
	}
}

// retryUntilIn applies batch again, as the follower does after a failure,
// until it is all in (at most five attempts), and returns the errors of the
// attempts that failed.
func retryUntilIn(t *testing.T, ctx context.Context, a *postgres.Applier, batch []*replicator.Txn) []string {
	t.Helper()
	var failures []string
	for attempt := 1; ; attempt++ {
		seq, err := a.Apply(ctx, batch)
		if err == nil {
			if want := batch[len(batch)-1].Seq; seq != want {
				t.Fatalf("applied up to %d, want %d", seq, want)
			}
			return failures
		}
		if !postgres.IsRetryable(err) {
			t.Fatal(err)
		}
		failures = append(failures, err.Error())
		if attempt == 5 {
			t.Fatalf("the batch failed %d times in a row after the lock wait; last: %v", attempt, err)
		}
	}
}

// kvChange is a change of row id of public.kv (id, v) that origin wrote ms
// after a fixed time.
func kvChange(op conflict.Op, id, v string, vec conflict.Vector, origin conflict.RegionID, ms int64) replicator.Change {
	return replicator.Change{Op: op, Key: `["` + id + `"]`, Row: []replicator.Value{{Text: id}, {Text: v}},
		Version: conflict.Version{Vector: vec, HLC: conflict.MakeTimestamp(1_700_000_000_000+ms, 0), Origin: origin}}
}

// usAfterEU applies eu's insert of row 1 and of the rows numbered in
// concurrent, and returns us's eight transactions of public.kv: the first
// updates row 1, those numbered in concurrent insert the row of their
// number (concurrently with eu's), the others insert rows 12 to 18.
func usAfterEU(t *testing.T, ctx context.Context, sh replicator.Shape, fromEU *postgres.Applier, concurrent ...int) []*replicator.Txn {
	t.Helper()
	euRows := []replicator.Change{kvChange(conflict.OpInsert, "1", "eu", conflict.Vector{"eu": 1}, "eu", 1)}
	for _, n := range concurrent {
		euRows = append(euRows, kvChange(conflict.OpInsert, strconv.Itoa(n), "eu", conflict.Vector{"eu": 1}, "eu", 1))
	}
	if _, err := fromEU.Apply(ctx, []*replicator.Txn{{Origin: "eu", Seq: 1, LSN: "0/1", Shapes: []replicator.Shape{sh}, Changes: euRows}}); err != nil {
		t.Fatal(err)
	}
	var batch []*replicator.Txn
	for seq := 1; seq <= 8; seq++ {
		vec := conflict.Vector{"us": uint64(seq)}
		c := kvChange(conflict.OpInsert, strconv.Itoa(10+seq), "us", vec, "us", int64(10+seq))
		switch {
		case seq == 1:
			c = kvChange(conflict.OpUpdate, "1", "us", vec, "us", 11)
		case slices.Contains(concurrent, seq):
			c = kvChange(conflict.OpInsert, strconv.Itoa(seq), "us", vec, "us", int64(10+seq))
		}
		batch = append(batch, &replicator.Txn{Origin: "us", Seq: replicator.Seq(seq), LSN: "0/1", Shapes: []replicator.Shape{sh}, Changes: []replicator.Change{c}})
	}
	return batch
}
