package integration

import (
	"syscall"
	"testing"
	"time"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestAReplicatorWaitsOutASlotStillHeld: a replicator killed while its
// walsender is busy leaves that walsender holding the region's slot until
// the server notices the connection gone. The replicator started again
// meanwhile must wait for the slot, not exit (it did: "replication slot is
// active for PID", and the region stopped replicating). Here a session of
// the test holds the slot for a few seconds after the restart.
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
	if err := eu.StartReplicator(); err != nil {
		holder.Close()
		t.Fatal(err)
	}
	mustExec(t, ctx, eu, `INSERT INTO public.kv (id, val) VALUES (2, 'while held')`)
	time.Sleep(4 * time.Second)
	running := eu.Running()
	holder.Close()
	if !running {
		t.Fatalf("eu's replicator exited while its slot was held:\n%s", eu.Logs(2000))
	}
	mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES (3, 'after')`)
	waitRow(t, ctx, us, `SELECT count(*) FROM public.kv`, 3)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv`, 3)
}
