package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestPrepareWaitsBrieflyForAHeldTable: preparing a region puts a trigger
// on each replicated table, which takes a lock the applications' writes
// conflict with. An application transaction left open on the table holds
// that lock request, and PostgreSQL queues every later write behind the
// request. So Prepare waits at most a few seconds, in short waits (the
// other writers get through between them), then refuses with an error
// naming the session that held the table; once the trigger is in place,
// preparing again takes no lock at all. Setting up a key's sequence waits
// as briefly for transactions that took numbers from it; a trigger left on
// a table no longer replicated stays there while the table is held.
func TestPrepareWaitsBrieflyForAHeldTable(t *testing.T) {
	h := startClusters(t, Spec{Regions: []string{"ap"}, SchemaSQL: []string{
		`CREATE TABLE public.items (id integer PRIMARY KEY, n bigint NOT NULL DEFAULT 0)`,
		`INSERT INTO public.items (id) SELECT g FROM pg_catalog.generate_series(1, 100) g`,
		`CREATE TABLE public.events (id bigserial PRIMARY KEY, note text)`,
	}})
	ap := h.Regions[0]
	ctx := ctxFor(t, 3*time.Minute)
	conn, err := postgres.Connect(ctx, ap.Cluster.URL("polyregion", AppDB))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	// The region's slot first: creating a logical slot waits for every
	// transaction in progress to end (PostgreSQL's own rule).
	if _, err := postgres.Prepare(ctx, conn, "ap", nil, nil, []string{"us"}); err != nil {
		t.Fatal(err)
	}
	held, heldPid := holdRow(t, ctx, ap, `UPDATE public.items SET n = n + 1 WHERE id = 1`)

	// Another writer goes on meanwhile; its slowest write is what the
	// replicator's lock requests cost the applications.
	wctx, stopWriter := context.WithCancel(ctx)
	var slowest atomic.Int64
	writerDone := make(chan error, 1)
	go func() {
		writerDone <- func() error {
			w, err := ap.Conn(ctx)
			if err != nil {
				return err
			}
			defer w.Close(context.Background())
			for i := 0; wctx.Err() == nil; i++ {
				began := time.Now()
				if _, err := w.Exec(ctx, `UPDATE public.items SET n = n + 1 WHERE id = $1`, 2+i%99); err != nil {
					return err
				}
				if d := int64(time.Since(began)); d > slowest.Load() {
					slowest.Store(d)
				}
				time.Sleep(5 * time.Millisecond)
			}
			return nil
		}()
	}()

	began := time.Now()
	_, err = postgres.Prepare(ctx, conn, "ap", []string{"public.items"}, nil, []string{"us"})
	took := time.Since(began)
	stopWriter()
	if werr := <-writerDone; werr != nil {
		t.Fatal(werr)
	}
	var busy *postgres.LockBusy
	if !errors.As(err, &busy) {
		t.Fatalf("prepare with the table held: %v, want a *LockBusy", err)
	}
	if took > 15*time.Second {
		t.Fatalf("prepare gave up after %s, want a few seconds", took)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("pid %d", heldPid)) {
		t.Fatalf("the error does not name the session that held the table (pid %d): %v", heldPid, err)
	}
	if d := time.Duration(slowest.Load()); d > time.Second {
		t.Fatalf("a writer of the table waited %s behind the replicator's lock request, want at most one short wait", d)
	}
	t.Logf("prepare refused after %s; the other writer's slowest write took %s: %v", took.Round(time.Millisecond), time.Duration(slowest.Load()).Round(time.Millisecond), err)

	if err := held.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := postgres.Prepare(ctx, conn, "ap", []string{"public.items"}, nil, []string{"us"}); err != nil {
		t.Fatalf("prepare with the table free: %v", err)
	}
	if n := queryInt(t, ctx, ap, `SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = 'public.items'::regclass AND tgname = $1`, postgres.TruncateTrigger); n != 1 {
		t.Fatalf("the TRUNCATE capture trigger is not on the table after prepare")
	}
	// A trigger disabled by hand is not in place: preparing puts it back.
	mustExec(t, ctx, ap, `ALTER TABLE public.items DISABLE TRIGGER `+postgres.TruncateTrigger)
	if _, err := postgres.Prepare(ctx, conn, "ap", []string{"public.items"}, nil, []string{"us"}); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, ctx, ap, `SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = 'public.items'::regclass AND tgname = $1 AND tgenabled = 'O'`, postgres.TruncateTrigger); n != 1 {
		t.Fatalf("prepare left the disabled TRUNCATE capture trigger disabled")
	}
	// In place: preparing again (every restart does) takes no lock, so a
	// transaction held open does not stop it.
	again, _ := holdRow(t, ctx, ap, `UPDATE public.items SET n = n + 1 WHERE id = 1`)
	defer again.Rollback(context.Background())
	began = time.Now()
	if _, err := postgres.Prepare(ctx, conn, "ap", []string{"public.items"}, nil, []string{"us"}); err != nil {
		t.Fatalf("prepare again with the table held and its trigger in place: %v", err)
	}
	if d := time.Since(began); d > 2*time.Second {
		t.Fatalf("prepare again took %s with everything in place: it waited for a lock", d)
	}

	// Setting a key's sequence up under the cluster's plan (ALTER SEQUENCE)
	// waits for every open transaction that took a number from it: as
	// briefly.
	taken, takerPid := holdRow(t, ctx, ap, `INSERT INTO public.events (note) VALUES ('held')`)
	plan := &regions.SequencePlan{Stride: 16, Offsets: map[conflict.RegionID]int64{"ap": 2, "us": 0}}
	began = time.Now()
	_, err = postgres.PrepareSequences(ctx, conn, []string{"public.events"}, plan, "ap")
	if !errors.As(err, &busy) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", takerPid)) || time.Since(began) > 15*time.Second {
		t.Fatalf("sequence set up with a number taken in an open transaction: %v after %s, want a *LockBusy naming pid %d within seconds", err, time.Since(began), takerPid)
	}
	if err := taken.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	changed, err := postgres.PrepareSequences(ctx, conn, []string{"public.events"}, plan, "ap")
	if err != nil || len(changed) != 1 || changed[0].Next%16 != 2 {
		t.Fatalf("sequence set up once free: %+v %v, want one change to a number of ap's (2 mod 16)", changed, err)
	}

	// The table is no longer replicated: its trigger comes off, but not
	// while the applications hold it (again is still open); that does not
	// stop the start, and a later one takes it off.
	capture := `SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = 'public.items'::regclass AND tgname = $1`
	left, err := postgres.RemoveStaleTriggers(ctx, conn, nil)
	if err != nil || len(left) != 1 || !strings.Contains(left[0].Error(), "public.items") {
		t.Fatalf("stale trigger on a held table: %v %v, want it left, named", left, err)
	}
	if n := queryInt(t, ctx, ap, capture, postgres.TruncateTrigger); n != 1 {
		t.Fatalf("the trigger of the held table is gone")
	}
	if err := again.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if left, err := postgres.RemoveStaleTriggers(ctx, conn, nil); err != nil || len(left) != 0 {
		t.Fatalf("stale trigger on a free table: %v %v", left, err)
	}
	if n := queryInt(t, ctx, ap, capture, postgres.TruncateTrigger); n != 0 {
		t.Fatalf("the trigger of a table no longer replicated stayed on")
	}
}

// holdRow begins a transaction on an application connection of r that
// runs stmt and stays open; it returns it and its backend's pid.
func holdRow(t *testing.T, ctx context.Context, r *Region, stmt string) (pgx.Tx, uint32) {
	t.Helper()
	c := appConn(t, ctx, r)
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, stmt); err != nil {
		t.Fatal(err)
	}
	return tx, c.PgConn().PID()
}
