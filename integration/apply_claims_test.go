package integration

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestAppliersWaitForEachOthersRowsOffTheServer: an applier whose batch
// shares a row with another source's apply transaction in progress waits
// for that transaction to end, however long it runs, before it begins; it
// does not wait in the server, where its lock timeout (there to give way
// to applications) would fail the batch. us's transaction holds row 1 and
// waits for row 2, which an application holds past eu's lock timeout; eu's
// batch changes row 1. Before the appliers claimed their rows, eu's batch
// failed on its lock timeout and was applied again; now it goes in on its
// first attempt, decided on top of us's change.
func TestAppliersWaitForEachOthersRowsOffTheServer(t *testing.T) {
	b := startApplierBench(t, []string{`CREATE TABLE public.kv (id integer PRIMARY KEY, v text)`}, regions.Table{Name: "public.kv"})
	ctx, ap, sh := b.ctx, b.ap, b.shapes["public.kv"]
	claims := replicator.NewClaims()
	fromUS := b.applier(t, "us", postgres.ApplierConfig{Claims: claims, LockTimeout: 700 * time.Millisecond})
	fromEU := b.applier(t, "eu", postgres.ApplierConfig{Claims: claims, LockTimeout: 50 * time.Millisecond})
	txn := func(src conflict.RegionID, seq replicator.Seq, c replicator.Change) *replicator.Txn {
		return &replicator.Txn{Origin: src, Seq: seq, LSN: "0/1", Shapes: []replicator.Shape{sh}, Changes: []replicator.Change{c}}
	}
	if _, err := fromEU.Apply(ctx, []*replicator.Txn{{Origin: "eu", Seq: 1, LSN: "0/1", Shapes: []replicator.Shape{sh}, Changes: []replicator.Change{
		kvChange(conflict.OpInsert, "1", "eu 1", conflict.Vector{"eu": 1}, "eu", 1),
		kvChange(conflict.OpInsert, "2", "eu 1", conflict.Vector{"eu": 1}, "eu", 1),
	}}}); err != nil {
		t.Fatal(err)
	}
	hold := holdLocks(t, ctx, ap, `SELECT FROM public.kv WHERE id = 2 FOR UPDATE`)
	usErr := make(chan error, 1)
	go func() {
		_, err := fromUS.Apply(ctx, []*replicator.Txn{
			txn("us", 1, kvChange(conflict.OpUpdate, "1", "us 1", conflict.Vector{"eu": 1, "us": 1}, "us", 10)),
			txn("us", 2, kvChange(conflict.OpUpdate, "2", "us 2", conflict.Vector{"eu": 1, "us": 2}, "us", 11)),
		})
		usErr <- err
	}()
	waitLockWaiters(t, ctx, hold, 1)
	// us's transaction holds row 1 by now.
	probe, err := ap.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close(context.Background())
	var pe *pgconn.PgError
	if _, err := probe.Exec(ctx, `SELECT FROM public.kv WHERE id = 1 FOR UPDATE NOWAIT`); !errors.As(err, &pe) || pe.Code != "55P03" {
		t.Fatalf("row 1 is not locked while us's transaction waits for row 2 (got %v): the test shows nothing", err)
	}
	// eu's later change of row 1, concurrent with us's.
	euErr := make(chan error, 1)
	go func() {
		_, err := fromEU.Apply(ctx, []*replicator.Txn{txn("eu", 2, kvChange(conflict.OpUpdate, "1", "eu 2", conflict.Vector{"eu": 2}, "eu", 20))})
		euErr <- err
	}()
	// Well past eu's lock timeout.
	time.Sleep(400 * time.Millisecond)
	select {
	case err := <-euErr:
		t.Fatalf("eu's batch ended while us's transaction held row 1 (its lock timeout is 50ms): %v", err)
	default:
	}
	if w := claims.Waiting(); w != 1 {
		t.Fatalf("%d claims wait, want eu's", w)
	}
	if _, err := hold.Exec(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	if err := <-usErr; err != nil {
		t.Fatal(err)
	}
	if err := <-euErr; err != nil {
		t.Fatalf("eu's batch failed instead of waiting for us's: %v", err)
	}
	var v1, v2 string
	if err := probe.QueryRow(ctx, `SELECT (SELECT v FROM public.kv WHERE id = 1), (SELECT v FROM public.kv WHERE id = 2)`).Scan(&v1, &v2); err != nil {
		t.Fatal(err)
	}
	if v1 != "eu 2" || v2 != "us 2" {
		t.Fatalf("rows 1 and 2 hold %q and %q, want eu's later write and us's", v1, v2)
	}
	if claims.Held() != 0 || claims.Waiting() != 0 {
		t.Fatalf("%d rows claimed and %d claims waiting after both batches", claims.Held(), claims.Waiting())
	}
}
