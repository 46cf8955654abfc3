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
// the restart. A graceful stop during that wait exits at once, with 0.
func TestAReplicatorWaitsOutASlotStillHeld(t *testing.T) {
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: kvSchema, Tables: []TableSpec{{Name: "public.kv"}}})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, eu, `INSERT INTO public.kv (id, val) VALUES (1, 'before')`)
	waitRow(t, ctx, us, `SELECT count(*) FROM public.kv`, 1)

	// eu killed; sessions of the test hold its slot and the origin its
	// applier of us's changes takes, as a killed run's sessions would.
	hold := func() (release func()) {
		t.Helper()
		if err := eu.StopReplicator(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		holder, err := postgres.StartChangeStream(ctx, eu.Cluster.URL("postgres", AppDB), "test-slot-holder", "holder",
			postgres.SlotName(eu.Name), 0, postgres.PublicationName(eu.Name), true, false)
		if err != nil {
			t.Fatal(err)
		}
		origin, err := eu.Conn(ctx)
		if err != nil {
			holder.Close()
			t.Fatal(err)
		}
		if _, err := origin.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_session_setup($1)`, postgres.OriginName(us.Name)); err != nil {
			t.Fatal(err)
		}
		return func() {
			holder.Close()
			origin.Close(context.Background())
		}
	}

	// A graceful stop while it waits ends the wait: it exits 0 at once
	// (before, it waited on until shutdown_timeout and exited 1).
	release := hold()
	if err := eu.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	began := time.Now()
	if err := eu.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if took, code := time.Since(began), eu.LastExit().ExitCode(); code != 0 || took > 5*time.Second {
		t.Fatalf("SIGTERM while waiting for the slot and origin held: exit %d after %s, want 0 at once:\n%s", code, took, eu.Logs(2000))
	}
	release()
	if err := eu.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES (10, 'between')`)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv`, 2)

	release = hold()
	defer release()
	if err := eu.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, eu, `INSERT INTO public.kv (id, val) VALUES (2, 'while held')`)
	time.Sleep(4 * time.Second)
	running := eu.Running()
	release() // both let go; the deferred release then does nothing
	if !running {
		t.Fatalf("eu's replicator exited while its slot was held:\n%s", eu.Logs(2000))
	}
	mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES (3, 'after')`)
	waitRow(t, ctx, us, `SELECT count(*) FROM public.kv`, 4)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv`, 4)
	if logs := eu.Logs(1 << 20); strings.Contains(logs, "already active") {
		t.Fatalf("eu's applier failed on the origin held, rather than waiting for it:\n%s", logs)
	}
}
