package integration

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestAReaderBarrierWithNothingToVersionWritesNothing: an applier waits for
// the local reader at every batch that inserts new keys, so at a light rate
// the reader passes a barrier for nearly every applied transaction. With
// no local write to version before it, passing one must cost no write
// transaction (before: the reader recorded each barrier's position in
// reader_state, one transaction per barrier, though the appliers wait in
// the reader's own process). A recorded barrier, for a waiter in another
// session, still moves reader_state past it. Local writes around the
// barriers are still versioned, once, and a reader started again resumes
// where the first stopped.
func TestAReaderBarrierWithNothingToVersionWritesNothing(t *testing.T) {
	b, conn := startBarrierBench(t)
	ctx := b.ctx
	state := func() string {
		t.Helper()
		var s string
		if err := conn.QueryRow(ctx, `SELECT coalesce((SELECT xmin::text || ' ' || lsn::text || ' ' || next_seq FROM polyregion.reader_state WHERE slot = $1), 'none')`,
			postgres.SlotName("ap")).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	barrier := func(reader *postgres.Reader) {
		t.Helper()
		l, err := postgres.EmitBarrier(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := reader.WaitVersioned(wctx, l); err != nil {
			t.Fatal(err)
		}
	}
	insert := func(id int) {
		t.Helper()
		if err := b.ap.Cluster.Exec(ctx, AppDB, `INSERT INTO public.t VALUES (`+strconv.Itoa(id)+`, 'local')`); err != nil {
			t.Fatal(err)
		}
	}
	versions := func() int64 {
		t.Helper()
		var n int64
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM polyregion.row_version WHERE tbl = 'public.t'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	runCtx, stop := context.WithCancel(ctx)
	reader := postgres.NewReader(postgres.ReaderConfig{Region: "ap", ConnString: b.url, Tables: b.cluster.Tables})
	done := make(chan error, 1)
	go func() { done <- reader.Run(runCtx) }()
	insert(1)
	barrier(reader)
	if got := versions(); got != 1 {
		t.Fatalf("after a local insert and a barrier: %d versions, want 1", got)
	}
	before := state()
	for range 20 {
		barrier(reader)
	}
	if after := state(); after != before {
		t.Fatalf("20 barriers with nothing to version changed the reader's state: %s, then %s", before, after)
	}
	at, err := postgres.EmitRecordedBarrier(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	for passed := false; !passed; {
		if err := conn.QueryRow(ctx, `SELECT lsn >= $1::pg_lsn FROM polyregion.reader_state WHERE slot = $2`, at.String(), postgres.SlotName("ap")).Scan(&passed); err != nil {
			t.Fatal(err)
		}
		if !passed {
			select {
			case <-ctx.Done():
				t.Fatalf("reader_state did not pass the recorded barrier at %s", at)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	insert(2)
	barrier(reader)
	if got := versions(); got != 2 {
		t.Fatalf("after a second local insert and a barrier: %d versions, want 2", got)
	}
	for range 5 {
		barrier(reader)
	}
	reader.Stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	stop()

	// Started again, the reader versions what came after, and nothing twice.
	insert(3)
	reader = postgres.NewReader(postgres.ReaderConfig{Region: "ap", ConnString: b.url, Tables: b.cluster.Tables})
	runCtx, stop = context.WithCancel(ctx)
	defer stop()
	done = make(chan error, 1)
	go func() { done <- reader.Run(runCtx) }()
	barrier(reader)
	if got := versions(); got != 3 {
		t.Fatalf("after a restart and a third local insert: %d versions, want 3", got)
	}
	var shipped int64
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM polyregion.outbox`).Scan(&shipped); err != nil {
		t.Fatal(err)
	}
	if shipped != 3 {
		t.Fatalf("outbox holds %d transactions, want the 3 local inserts once each", shipped)
	}
	reader.Stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestAKeyBarrierWaitsOnlyForItsKeys: an applier that inserts a key absent
// here waits for the local reader to version local writes to that key; it
// names the key in its barrier, and the reader passes the barrier without
// versioning the local transactions it holds when none of them writes the
// key (before: every barrier made the reader version all it held, a
// transaction and an outbox entry per applied batch at a light rate).
// When one does, the reader versions it first. The reader here holds what
// it decodes for a minute unless a barrier needs it.
func TestAKeyBarrierWaitsOnlyForItsKeys(t *testing.T) {
	b, conn := startBarrierBench(t)
	ctx := b.ctx
	reader := postgres.NewReader(postgres.ReaderConfig{Region: "ap", ConnString: b.url, Tables: b.cluster.Tables, FlushInterval: time.Minute})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- reader.Run(runCtx) }()
	defer func() { stop(); <-done }()

	versioned := func(id int) bool {
		t.Helper()
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM polyregion.row_version WHERE tbl = 'public.t' AND key = $1)`, `["`+strconv.Itoa(id)+`"]`).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	wait := func(ids ...int) time.Duration {
		t.Helper()
		started := time.Now()
		token, forget := reader.ExpectBarrier()
		defer forget()
		keys := make([]string, len(ids))
		for i, id := range ids {
			keys[i] = `["` + strconv.Itoa(id) + `"]`
		}
		l, err := postgres.EmitKeyBarrier(ctx, conn, token, "public.t", keys...)
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := reader.WaitBarrier(wctx, l, token); err != nil {
			t.Fatal(err)
		}
		return time.Since(started)
	}
	// The reader is running once a plain barrier passes.
	l, err := postgres.EmitBarrier(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if err := reader.WaitVersioned(ctx, l); err != nil {
		t.Fatal(err)
	}
	if err := b.ap.Cluster.Exec(ctx, AppDB, `INSERT INTO public.t VALUES (1, 'local')`); err != nil {
		t.Fatal(err)
	}
	if took := wait(2, 3); took > 10*time.Second {
		t.Fatalf("a barrier for keys 2 and 3 took %s", took)
	}
	if versioned(1) {
		t.Fatal("a barrier for keys 2 and 3 made the reader version the local insert of key 1")
	}
	wait(1)
	if !versioned(1) {
		t.Fatal("a barrier for key 1 passed before the local insert of key 1 was versioned")
	}
	// Deleted locally, key 1 is held unversioned again: a barrier for it
	// waits for the delete's version.
	if err := b.ap.Cluster.Exec(ctx, AppDB, `DELETE FROM public.t WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	wait(3, 1)
	var deleted bool
	if err := conn.QueryRow(ctx, `SELECT deleted FROM polyregion.row_version WHERE tbl = 'public.t' AND key = '["1"]'`).Scan(&deleted); err != nil {
		t.Fatal(err)
	}
	if !deleted {
		t.Fatal("a barrier for key 1 passed before the local delete of key 1 was versioned")
	}
}

// startBarrierBench starts ap with one table, public.t, and opens a
// replicator session to it (closed when the test ends).
func startBarrierBench(t *testing.T) (*applierBench, *pgx.Conn) {
	t.Helper()
	b := startApplierBench(t, []string{`CREATE TABLE public.t (id integer PRIMARY KEY, v text)`}, regions.Table{Name: "public.t"})
	conn, err := postgres.Connect(b.ctx, b.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return b, conn
}
