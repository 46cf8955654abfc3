package integration

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReseedARegionPastTheOutboxCap: ap is away while us writes past the
// outbox cap, so us's stream to ap is refused as too far behind. ap also
// wrote while its replicator was stopped. reseed refuses while that write
// has not reached every peer, naming it; once ap's replicator ran long
// enough to ship it (its peers confirmed), reseed empties ap, and run --join
// loads it again from us. At the end the three regions are identical, every
// row ap wrote (before, while away, after) is there once everywhere, and
// ap's next transaction after the re-seed reaches its peers (it goes on
// numbering after what it shipped, which they applied). reseed also refuses
// while ap's replicator runs and while a local table references a
// replicated one; started without --join after the reseed, ap refuses.
func TestReseedARegionPastTheOutboxCap(t *testing.T) {
	tables := []TableSpec{{Name: "public.kv"}}
	h := startRegions(t, Spec{SchemaSQL: kvSchema, Tables: tables, Configure: func(region string, c *RegionConfig) {
		c.OutboxMaxTransactions = 20
	}})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	for i := 1; i <= 5; i++ {
		mustExec(t, ctx, ap, `INSERT INTO public.kv (id, val) VALUES ($1, 'ap')`, i)
	}
	waitRow(t, ctx, us, `SELECT count(*) FROM public.kv WHERE val = 'ap'`, 5)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv WHERE val = 'ap'`, 5)
	if err := ap.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i := 100; i < 200; i++ {
		mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES ($1, 'us')`, i)
	}
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv WHERE val = 'us'`, 100)
	mustExec(t, ctx, ap, `INSERT INTO public.kv (id, val) VALUES (500, 'ap while away')`)

	reseed := func(args ...string) (string, error) {
		out, err := exec.Command(binary, append([]string{"reseed", "--config", ap.ConfigPath}, args...)...).CombinedOutput()
		return string(out), err
	}
	out, err := reseed("--yes")
	if err == nil || !strings.Contains(out, "1 local transactions in the WAL are not versioned (not shipped) yet") {
		t.Fatalf("reseed with a local write not shipped: %v\n%s", err, out)
	}
	if n := queryInt(t, ctx, ap, `SELECT count(*) FROM public.kv`); n != 6 {
		t.Fatalf("a refused reseed changed ap: %d rows, want 6", n)
	}

	// ap's replicator ships the write (its stream from us is refused as too
	// far behind; eu's works) and its peers confirm it.
	if err := ap.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitRow(t, ctx, us, `SELECT count(*) FROM public.kv WHERE id = 500`, 1)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv WHERE id = 500`, 1)
	waitRow(t, ctx, ap, `SELECT count(*) FROM polyregion.peer_ack a, polyregion.reader_state r WHERE a.seq >= r.next_seq - 1`, 2)
	if out, err := reseed("--yes"); err == nil || !strings.Contains(out, "stop region ap's replicator first") {
		t.Fatalf("reseed while ap's replicator runs: %v\n%s", err, out)
	}
	for start := time.Now(); !strings.Contains(ap.Logs(1<<22), "re-seed ap"); time.Sleep(100 * time.Millisecond) {
		if time.Since(start) > time.Minute {
			t.Fatalf("ap was not told it must be re-seeded:\n%s", ap.Logs(4000))
		}
	}
	if err := ap.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// A local table referencing a replicated one would be changed by the
	// deletes: refused, naming it.
	mustExec(t, ctx, ap, `CREATE TABLE public.notes (id integer PRIMARY KEY, kv integer REFERENCES public.kv (id) ON DELETE CASCADE)`)
	if out, err := reseed("--yes"); err == nil || !strings.Contains(out, "tables that are not replicated reference replicated ones") || !strings.Contains(out, "public.notes") {
		t.Fatalf("reseed with a local table referencing a replicated one: %v\n%s", err, out)
	}
	mustExec(t, ctx, ap, `DROP TABLE public.notes`)
	if out, err := reseed(); err == nil || !strings.Contains(out, "every one of its 6 transactions reached every peer") {
		t.Fatalf("reseed without --yes: %v\n%s", err, out)
	}
	if n := queryInt(t, ctx, ap, `SELECT count(*) FROM public.kv`); n != 6 {
		t.Fatalf("reseed without --yes changed ap: %d rows", n)
	}
	if out, err := reseed("--yes"); err != nil || !strings.Contains(out, "deleted 6 rows of public.kv") {
		t.Fatalf("reseed --yes: %v\n%s", err, out)
	}
	if n := queryInt(t, ctx, ap, `SELECT count(*) FROM public.kv`); n != 0 {
		t.Fatalf("ap holds %d rows after reseed, want none", n)
	}
	// Started without --join it refuses: streams alone would fill it only
	// partly (us no longer holds what it would need).
	if err := ap.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitExited(t, ap, time.Minute)
	if err := ap.StopReplicator(syscall.SIGTERM); err != nil { // reaps it
		t.Fatal(err)
	}
	if logs := ap.Logs(1 << 22); !strings.Contains(logs, "region ap was emptied to be re-seeded: start it with --join PEER") {
		t.Fatalf("ap started without --join after reseed does not refuse:\n%s", ap.Logs(4000))
	}
	if n := queryInt(t, ctx, ap, `SELECT count(*) FROM public.kv`) + queryInt(t, ctx, ap, `SELECT count(*) FROM polyregion.applied`); n != 0 {
		t.Fatalf("ap started without --join applied %d rows and positions", n)
	}
	joinFrom(t, ctx, ap, "us", 2*time.Minute)
	mustExec(t, ctx, ap, `INSERT INTO public.kv (id, val) VALUES (600, 'ap after the re-seed')`)
	mustExec(t, ctx, us, `UPDATE public.kv SET val = 'us later' WHERE id = 1`)
	if err := h.WaitConverged(ctx, tableNames(tables), 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.kv`); n != 107 {
			t.Errorf("region %s holds %d rows, want 107", r.Name, n)
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.kv WHERE id IN (500, 600)`); n != 2 {
			t.Errorf("region %s lacks ap's writes from while it was away or after the re-seed (%d of 2)", r.Name, n)
		}
	}
	if logs := ap.Logs(1 << 22); strings.Count(logs, "re-seed ap") == 0 {
		t.Errorf("ap's log never said it must be re-seeded")
	}
}
