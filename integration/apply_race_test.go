package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestConcurrentAppliersOnADeletedRow: two appliers (one per source) decide
// changes of the same deleted row at once. Neither can lock the absent row,
// so the one that commits second must not write its version from what it
// read before the first committed: us re-inserts the row, eu's concurrent
// (and later) delete finds the tombstone it read replaced and decides again,
// on top of us's insert. Before the fix, eu overwrote us's live version
// with its tombstone and left us's row in place: a row recorded as deleted,
// which the tombstone collector then forgot, so the region kept a row every
// other region deleted.
func TestConcurrentAppliersOnADeletedRow(t *testing.T) {
	b := startApplierBench(t, []string{`CREATE TABLE public.kv (id integer PRIMARY KEY, v text)`}, regions.Table{Name: "public.kv"})
	ctx, ap, sh := b.ctx, b.ap, b.shapes["public.kv"]
	fromUS, fromEU := b.applier(t, "us", postgres.ApplierConfig{}), b.applier(t, "eu", postgres.ApplierConfig{})
	const key = `["1"]`
	row := func(v string) []replicator.Value { return []replicator.Value{{Text: "1"}, {Text: v}} }
	ts := func(ms int64) conflict.Timestamp { return conflict.MakeTimestamp(1_700_000_000_000+ms, 0) }
	txn := func(src conflict.RegionID, seq replicator.Seq, c replicator.Change) []*replicator.Txn {
		return []*replicator.Txn{{Origin: src, Seq: seq, LSN: "0/1", Shapes: []replicator.Shape{sh}, Changes: []replicator.Change{c}}}
	}
	ver := func(vec conflict.Vector, hlc conflict.Timestamp, origin conflict.RegionID, deleted bool) conflict.Version {
		return conflict.Version{Vector: vec, HLC: hlc, Origin: origin, Deleted: deleted}
	}
	// us inserts the row, then deletes it: ap holds us's tombstone.
	if _, err := fromUS.Apply(ctx, txn("us", 1, replicator.Change{Op: conflict.OpInsert, Key: key, Row: row("us 1"),
		Version: ver(conflict.Vector{"us": 1}, ts(1), "us", false)})); err != nil {
		t.Fatal(err)
	}
	if _, err := fromUS.Apply(ctx, txn("us", 2, replicator.Change{Op: conflict.OpDelete, Key: key,
		Version: ver(conflict.Vector{"us": 2}, ts(2), "us", true)})); err != nil {
		t.Fatal(err)
	}
	// A session holds the tombstone's version so both appliers reach it
	// before either commits.
	hold := holdLocks(t, ctx, ap, `SELECT FROM polyregion.row_version WHERE tbl = 'public.kv' AND key = $1 FOR UPDATE`, key)
	waiting := func(n int64) { t.Helper(); waitLockWaiters(t, ctx, hold, n) }
	// us re-inserts it (after its delete); eu, which saw only the first
	// insert, deletes it later by the clock: concurrent with both, and the
	// last writer.
	usErr := make(chan error, 1)
	go func() {
		_, err := fromUS.Apply(ctx, txn("us", 3, replicator.Change{Op: conflict.OpInsert, Key: key, Row: row("us 3"),
			Version: ver(conflict.Vector{"us": 3}, ts(3), "us", false)}))
		usErr <- err
	}()
	waiting(1)
	euErr := make(chan error, 1)
	euDelete := txn("eu", 1, replicator.Change{Op: conflict.OpDelete, Key: key,
		Version: ver(conflict.Vector{"us": 1, "eu": 1}, ts(4), "eu", true)})
	go func() {
		_, err := fromEU.Apply(ctx, euDelete)
		euErr <- err
	}()
	waiting(2)
	if _, err := hold.Exec(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	if err := <-usErr; err != nil {
		t.Fatal(err)
	}
	// As the follower does: a retryable error applies the batch again.
	err := <-euErr
	for attempt := 1; err != nil; attempt++ {
		if !postgres.IsRetryable(err) || attempt > 5 {
			t.Fatal(err)
		}
		t.Logf("eu batch retried: %v", err)
		_, err = fromEU.Apply(ctx, euDelete)
	}
	var rows, tombstones int64
	if err := hold.QueryRow(ctx, `SELECT (SELECT count(*) FROM public.kv WHERE id = 1),
		(SELECT count(*) FROM polyregion.row_version WHERE tbl = 'public.kv' AND key = $1 AND deleted)`, key).Scan(&rows, &tombstones); err != nil {
		t.Fatal(err)
	}
	// eu's delete is the last writer: the row is gone, its version a tombstone.
	if rows != 0 || tombstones != 1 {
		t.Fatalf("after us's re-insert and eu's later concurrent delete: %d rows and %d tombstones, want 0 and 1 (a row recorded as deleted survives)", rows, tombstones)
	}
}

// holdLocks opens a session of r that begins a transaction and runs sql
// in it (taking the locks sql takes); closed when the test ends.
func holdLocks(t *testing.T, ctx context.Context, r *Region, sql string, args ...any) *pgx.Conn {
	t.Helper()
	hold, err := r.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hold.Close(context.Background()) })
	if _, err := hold.Exec(ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	if _, err := hold.Exec(ctx, sql, args...); err != nil {
		t.Fatal(err)
	}
	return hold
}

// waitLockWaiters waits until n sessions of the application database wait
// for a lock.
func waitLockWaiters(t *testing.T, ctx context.Context, conn *pgx.Conn, n int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var got int64
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'`, AppDB).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions wait for a lock, want %d", got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAppliersOfTwoSourcesWriteAnAbsentKeyInTurn: us and eu both write
// again a row deleted here, at once. The row is absent: neither applier
// can lock it. Before key locks, eu read it absent while us's insert was
// not committed, inserted it too, and its batch failed ("affected 0 rows,
// a local write raced the apply") to be tried again; under a steady stream
// of such keys from several sources, a region's batches kept failing
// against each other (a region catching up from three sources did not
// catch up). Now eu waits for us's commit and decides on top of us's row:
// both batches commit at their first attempt, and the last writer's row
// is the one kept. us's batch writes again 1 key (locked alone) or 300
// (past the 256 a transaction locks one by one: it takes the wide lock).
func TestAppliersOfTwoSourcesWriteAnAbsentKeyInTurn(t *testing.T) {
	t.Run("one key", func(t *testing.T) { appliersWriteAnAbsentKeyInTurn(t, 1) })
	t.Run("300 keys", func(t *testing.T) { appliersWriteAnAbsentKeyInTurn(t, 300) })
}

func appliersWriteAnAbsentKeyInTurn(t *testing.T, n int) {
	b := startApplierBench(t, []string{`CREATE TABLE public.kv (id integer PRIMARY KEY, v text)`}, regions.Table{Name: "public.kv"})
	ctx, ap, sh := b.ctx, b.ap, b.shapes["public.kv"]
	fromUS, fromEU := b.applier(t, "us", postgres.ApplierConfig{}), b.applier(t, "eu", postgres.ApplierConfig{})
	ts := func(ms int64) conflict.Timestamp { return conflict.MakeTimestamp(1_700_000_000_000+ms, 0) }
	// us's transaction seq writes every key; its version is {us: seq}.
	usTxn := func(seq int, op conflict.Op) []*replicator.Txn {
		t := &replicator.Txn{Origin: "us", Seq: replicator.Seq(seq), LSN: "0/1", Shapes: []replicator.Shape{sh}}
		for id := 1; id <= n; id++ {
			c := replicator.Change{Op: op, Key: fmt.Sprintf(`["%d"]`, id),
				Version: conflict.Version{Vector: conflict.Vector{"us": uint64(seq)}, HLC: ts(int64(seq)), Origin: "us", Deleted: op == conflict.OpDelete}}
			if op != conflict.OpDelete {
				c.Row = []replicator.Value{{Text: fmt.Sprint(id)}, {Text: fmt.Sprintf("us %d", seq)}}
			}
			t.Changes = append(t.Changes, c)
		}
		return []*replicator.Txn{t}
	}
	// us inserts the rows and deletes them; eu has seen both.
	for seq, op := range []conflict.Op{conflict.OpInsert, conflict.OpDelete} {
		if _, err := fromUS.Apply(ctx, usTxn(seq+1, op)); err != nil {
			t.Fatal(err)
		}
	}
	// A session holds row 1's tombstone: us's applier has inserted the
	// rows again and waits to write their versions when eu's starts.
	const key = `["1"]`
	hold := holdLocks(t, ctx, ap, `SELECT FROM polyregion.row_version WHERE tbl = 'public.kv' AND key = $1 FOR UPDATE`, key)
	usErr := make(chan error, 1)
	go func() {
		_, err := fromUS.Apply(ctx, usTxn(3, conflict.OpInsert))
		usErr <- err
	}()
	waitLockWaiters(t, ctx, hold, 1)
	// eu writes row 1 again after us's delete, concurrently with us's
	// second insert and later by the clock: the last writer.
	euErr := make(chan error, 1)
	go func() {
		_, err := fromEU.Apply(ctx, []*replicator.Txn{{Origin: "eu", Seq: 1, LSN: "0/1", Shapes: []replicator.Shape{sh},
			Changes: []replicator.Change{{Op: conflict.OpInsert, Key: key, Row: []replicator.Value{{Text: "1"}, {Text: "eu 1"}},
				Version: conflict.Version{Vector: conflict.Vector{"us": 2, "eu": 1}, HLC: ts(4), Origin: "eu"}}}}})
		euErr <- err
	}()
	waitLockWaiters(t, ctx, hold, 2)
	if _, err := hold.Exec(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	if err := <-usErr; err != nil {
		t.Fatalf("us's batch: %v", err)
	}
	if err := <-euErr; err != nil {
		t.Fatalf("eu's batch failed at its first attempt: %v", err)
	}
	var v, vv string
	var others, live int64
	if err := hold.QueryRow(ctx, `SELECT k.v, m.vv, (SELECT count(*) FROM public.kv WHERE id > 1 AND v = 'us 3'),
		(SELECT count(*) FROM polyregion.row_version WHERE tbl = 'public.kv' AND NOT deleted)
		FROM public.kv k, polyregion.row_version m WHERE k.id = 1 AND m.tbl = 'public.kv' AND m.key = $1 AND NOT m.deleted`, key).Scan(&v, &vv, &others, &live); err != nil {
		t.Fatal(err)
	}
	if v != "eu 1" {
		t.Fatalf("row 1 holds %q, want eu's (the last writer's) %q", v, "eu 1")
	}
	if others != int64(n-1) || live != int64(n) {
		t.Fatalf("%d of the other %d rows hold us's second insert and %d live versions, want all and %d", others, n-1, live, n)
	}
	t.Logf("row 1 kept %q with version %s", v, vv)
}

// TestAppliedInsertAfterUnversionedLocalDelete: a row inserted and deleted
// locally a moment ago looks, to the applier, like the tombstone before it
// (the row is absent either way) until the reader versions the two writes.
// An applied insert of the row must not commit its version before those
// writes are versioned: the reader would then version them on top of it and
// record the applied row as deleted.
func TestAppliedInsertAfterUnversionedLocalDelete(t *testing.T) {
	b := startApplierBench(t, []string{`CREATE TABLE public.kv (id integer PRIMARY KEY, v text)`}, regions.Table{Name: "public.kv"})
	ctx, ap, sh := b.ctx, b.ap, b.shapes["public.kv"]
	reader := b.reader(t)
	fromUS := b.applier(t, "us", postgres.ApplierConfig{Versioner: reader, BarrierTimeout: 30 * time.Second})
	local, err := ap.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close(context.Background())
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := local.Exec(ctx, sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	versioned := func() {
		t.Helper()
		l, err := postgres.EmitBarrier(ctx, local)
		if err != nil {
			t.Fatal(err)
		}
		if err := reader.WaitVersioned(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	row := func(v string) []replicator.Value { return []replicator.Value{{Text: "1"}, {Text: v}} }
	ts := func(ms int64) conflict.Timestamp { return conflict.MakeTimestamp(1_700_000_000_000+ms, 0) }
	txn := func(seq replicator.Seq, c replicator.Change) []*replicator.Txn {
		return []*replicator.Txn{{Origin: "us", Seq: seq, LSN: "0/1", Shapes: []replicator.Shape{sh}, Changes: []replicator.Change{c}}}
	}
	const key = `["1"]`
	// A local row (2) and an applied one (1), inserted and deleted by us.
	exec(`INSERT INTO public.kv VALUES (2, 'local')`)
	if _, err := fromUS.Apply(ctx, txn(1, replicator.Change{Op: conflict.OpInsert, Key: key, Row: row("us 1"),
		Version: conflict.Version{Vector: conflict.Vector{"us": 1}, HLC: ts(1), Origin: "us"}})); err != nil {
		t.Fatal(err)
	}
	if _, err := fromUS.Apply(ctx, txn(2, replicator.Change{Op: conflict.OpDelete, Key: key,
		Version: conflict.Version{Vector: conflict.Vector{"us": 2}, HLC: ts(2), Origin: "us", Deleted: true}})); err != nil {
		t.Fatal(err)
	}
	versioned()
	// The reader is held up versioning an update of row 2 ...
	hold, err := ap.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close(context.Background())
	if _, err := hold.Exec(ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	if _, err := hold.Exec(ctx, `SELECT FROM polyregion.row_version WHERE tbl = 'public.kv' AND key = '["2"]' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	exec(`UPDATE public.kv SET v = 'local again' WHERE id = 2`)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int64
		if err := hold.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'`, AppDB).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the reader never waited for row 2's version")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// ... while row 1 is inserted and deleted here, and us's re-insert of it
	// is applied.
	exec(`INSERT INTO public.kv VALUES (1, 'local')`)
	exec(`DELETE FROM public.kv WHERE id = 1`)
	applied := make(chan error, 1)
	go func() {
		_, err := fromUS.Apply(ctx, txn(3, replicator.Change{Op: conflict.OpInsert, Key: key, Row: row("us 3"),
			Version: conflict.Version{Vector: conflict.Vector{"us": 3}, HLC: ts(3), Origin: "us"}}))
		applied <- err
	}()
	select {
	case err := <-applied:
		applied <- err
	case <-time.After(time.Second):
	}
	if _, err := hold.Exec(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	err = <-applied
	for attempt := 1; err != nil; attempt++ {
		if !postgres.IsRetryable(err) || attempt > 5 {
			t.Fatal(err)
		}
		t.Logf("us batch retried: %v", err)
		_, err = fromUS.Apply(ctx, txn(3, replicator.Change{Op: conflict.OpInsert, Key: key, Row: row("us 3"),
			Version: conflict.Version{Vector: conflict.Vector{"us": 3}, HLC: ts(3), Origin: "us"}}))
	}
	versioned()
	var rows int64
	var deleted bool
	var vv string
	if err := local.QueryRow(ctx, `SELECT (SELECT count(*) FROM public.kv WHERE id = 1), deleted, vv
		FROM polyregion.row_version WHERE tbl = 'public.kv' AND key = $1`, key).Scan(&rows, &deleted, &vv); err != nil {
		t.Fatal(err)
	}
	if (rows == 1) == deleted {
		t.Fatalf("row 1: %d rows here, its version %s deleted=%v: the row and its version disagree", rows, vv, deleted)
	}
	t.Logf("row 1: %d rows, version %s deleted=%v", rows, vv, deleted)
}

// TestEmitBarrierFlushesTheWAL: a barrier is decoded only once the WAL holding
// it is flushed; EmitBarrier flushes it itself (even in a session with
// synchronous_commit off) instead of leaving it to the WAL writer, which
// made every wait for the reader last up to its delay.
func TestEmitBarrierFlushesTheWAL(t *testing.T) {
	h := startClusters(t, Spec{Regions: []string{"ap"}, SchemaSQL: []string{`CREATE TABLE public.kv (id integer PRIMARY KEY, v text)`}})
	ctx := ctxFor(t, time.Minute)
	conn, err := h.Regions[0].Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `SET synchronous_commit = off`); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		l, err := postgres.EmitBarrier(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		var flushed string
		if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_current_wal_flush_lsn()::text`).Scan(&flushed); err != nil {
			t.Fatal(err)
		}
		f, err := pglogrepl.ParseLSN(flushed)
		if err != nil {
			t.Fatal(err)
		}
		if f < l {
			t.Fatalf("barrier %d at %s, WAL flushed only to %s: the reader cannot see it until the WAL writer runs", i, l, f)
		}
	}
}
