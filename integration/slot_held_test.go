package integration

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestAReplicatorWaitsOutASlotStillHeld: a replicator killed while its
// walsender is busy leaves that walsender holding the region's slot until
// the server notices the connection gone. The replicator started again
// meanwhile must wait for the slot, not exit (it did: "replication slot is
// active for PID", and the region stopped replicating). Its appliers'
// sessions, in the middle of a statement, hold their replication origins
// the same way: the applier waits too, rather than failing its link. Here
// sessions of the test hold the slot and an origin for a few seconds after
// the restart.
func TestAReplicatorWaitsOutASlotStillHeld(t *testing.T) {
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: kvSchema, Tables: []TableSpec{{Name: "public.kv"}}})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, eu, `INSERT INTO public.kv (id, val) VALUES (1, 'before')`)
	waitRow(t, ctx, us, `SELECT count(*) FROM public.kv`, 1)

	if err := eu.StopReplicator(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	holder, err := postgres.StartChangeStream(ctx, eu.Cluster.URL("postgres", AppDB), "test-slot-holder", "holder",
		postgres.SlotName(eu.Name), 0, postgres.PublicationName(eu.Name), true, false)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	// The origin eu's applier of us's changes takes, held the same way.
	origin, err := eu.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer origin.Close(context.Background())
	if _, err := origin.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_session_setup($1)`, postgres.OriginName(us.Name)); err != nil {
		t.Fatal(err)
	}
	if err := eu.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, eu, `INSERT INTO public.kv (id, val) VALUES (2, 'while held')`)
	time.Sleep(4 * time.Second)
	running := eu.Running()
	holder.Close() // both let go; the deferred closes then do nothing
	origin.Close(context.Background())
	if !running {
		t.Fatalf("eu's replicator exited while its slot was held:\n%s", eu.Logs(2000))
	}
	mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES (3, 'after')`)
	waitRow(t, ctx, us, `SELECT count(*) FROM public.kv`, 3)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv`, 3)
	if logs := eu.Logs(1 << 20); strings.Contains(logs, "already active") {
		t.Fatalf("eu's applier failed on the origin held, rather than waiting for it:\n%s", logs)
	}
}
