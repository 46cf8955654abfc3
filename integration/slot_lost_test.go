package integration

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestALostSlotIsReportedUntilTheRegionIsReseeded: ap's slot is dropped
// while its replicator is stopped (as after a failover to a standby that
// had no copy of it), and ap takes a write meanwhile. Started again, ap
// creates its slot anew: its new writes ship, the write from the gap never
// does, and /health (degraded), the log and polyregion_slot_lost say so
// with the WAL range, until region reseed ap makes it identical again.
func TestALostSlotIsReportedUntilTheRegionIsReseeded(t *testing.T) {
	tables := []TableSpec{{Name: "public.kv"}}
	ctx := ctxFor(t, 5*time.Minute)
	h := startFounded(t, ctx, tables, func(c *RegionConfig) {
		c.Health = map[string]string{"hold": "200ms", "probe_interval": "100ms"}
	})
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	pg17 := queryInt(t, ctx, ap, `SELECT (pg_catalog.current_setting('server_version_num')::int >= 170000)::int`) == 1
	if pg17 {
		// A slot as an earlier release created it (no failover) is made a
		// failover slot when the reader starts.
		if err := ap.StopReplicator(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		c, err := ap.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{`SELECT pg_catalog.pg_drop_replication_slot('polyregion_ap')`, `SELECT pg_catalog.pg_create_logical_replication_slot('polyregion_ap', 'pgoutput')`} {
			if _, err := c.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		c.Close(ctx)
		if n := queryInt(t, ctx, ap, `SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'polyregion_ap' AND NOT failover`); n != 1 {
			t.Fatal("the slot as an earlier release made it should not be a failover slot")
		}
		if err := ap.StartReplicator(); err != nil {
			t.Fatal(err)
		}
		waitRow(t, ctx, ap, `SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'polyregion_ap' AND failover`, 1)
	}
	mustExec(t, ctx, ap, `INSERT INTO public.kv (id, val) VALUES (1, 'ap before')`)
	waitRow(t, ctx, us, `SELECT count(*) FROM public.kv WHERE id = 1`, 1)

	if err := ap.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, ap, `INSERT INTO public.kv (id, val) VALUES (700, 'ap in the gap')`)
	conn, err := ap.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_drop_replication_slot('polyregion_ap')`); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if err := ap.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, ap, time.Minute, "the lost slot on /health", func(st opsStatus) bool {
		return st.Status == "degraded" && strings.Contains(strings.Join(st.Reasons, "; "), "the replication slot polyregion_ap was lost")
	})
	if _, body := opsGet(t, ap, "/metrics"); !strings.Contains(body, `polyregion_slot_lost{region="ap"} 1`) {
		t.Fatalf("polyregion_slot_lost is not 1 in ap:\n%s", grepLines(body, "slot_lost"))
	}
	if !strings.Contains(ap.Logs(1<<22), "replication slot lost") {
		t.Fatalf("ap's log does not say its slot was lost:\n%s", ap.Logs(4000))
	}
	// From PostgreSQL 17 the slot is a failover slot (a standby that syncs
	// slots keeps it through a promotion); earlier ones have none.
	for _, r := range h.Regions {
		if pg17 {
			if got := queryInt(t, ctx, r, `SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = 'polyregion_`+r.Name+`' AND failover`); got != 1 {
				t.Errorf("%s: its slot is not a failover slot on PostgreSQL 17", r.Name)
			}
		}
	}
	// New writes ship; the one from the gap never does (it was committed
	// before the new write, which arrives after it would have).
	mustExec(t, ctx, ap, `INSERT INTO public.kv (id, val) VALUES (701, 'ap after')`)
	waitRow(t, ctx, us, `SELECT count(*) FROM public.kv WHERE id = 701`, 1)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv WHERE id = 701`, 1)
	for _, r := range []*Region{us, eu} {
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.kv WHERE id = 700`); n != 0 {
			t.Fatalf("%s holds the write from the gap: the slot was not lost after all", r.Name)
		}
	}

	out := mustPolyregion(t, ctx, "region", "reseed", "ap", "--from", "us", "--config", eu.ConfigPath, "--wait", "50s")
	if !strings.Contains(out, "region ap reseeding") || !strings.Contains(out, "region ap active") {
		t.Fatalf("region reseed --wait did not follow ap to active:\n%s", out)
	}
	waitControl(t, us, time.Minute, "ap active again", func(c controlStatus) bool { return c.state("ap") == "active" })
	waitJoined(t, ctx, ap, 2*time.Minute)
	waitStatus(t, ap, time.Minute, "no lost slot on /health", func(st opsStatus) bool {
		return !strings.Contains(strings.Join(st.Reasons, "; "), "was lost")
	})
	if _, body := opsGet(t, ap, "/metrics"); !strings.Contains(body, `polyregion_slot_lost{region="ap"} 0`) {
		t.Fatalf("polyregion_slot_lost is not 0 in ap after the reseed:\n%s", grepLines(body, "slot_lost"))
	}
	if err := h.WaitConverged(ctx, tableNames(tables), 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		if got := queryInt(t, ctx, r, `SELECT count(*) FROM public.kv WHERE id IN (1, 701)`) + 10*queryInt(t, ctx, r, `SELECT count(*) FROM public.kv WHERE id = 700`); got != 2 {
			t.Errorf("%s: rows 1 and 701 once each and no 700 expected (got code %d)", r.Name, got)
		}
	}

	// Invalidated past max_slot_wal_keep_size while the replicator is
	// stopped: the slot stays, unusable. Started again, ap drops it,
	// creates it anew and records the loss; clearing the record by hand
	// (a loss known to have cost nothing) ends the report.
	if err := ap.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	conn, err = ap.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, q := range []string{`ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'`, `SELECT pg_catalog.pg_reload_conf()`} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; ; i++ {
		var status string
		if err := conn.QueryRow(ctx, `SELECT wal_status FROM pg_catalog.pg_replication_slots WHERE slot_name = 'polyregion_ap'`).Scan(&status); err != nil {
			t.Fatal(err)
		}
		if status == "lost" {
			break
		}
		if i == 10 {
			t.Fatalf("ap's slot was not invalidated (wal_status %s)", status)
		}
		for _, q := range []string{`INSERT INTO public.kv (id, val) VALUES (800 + $1::int, 'ap while the slot is invalidated')`, `SELECT pg_catalog.pg_switch_wal()`, `CHECKPOINT`} {
			var err error
			if strings.Contains(q, "$1") {
				_, err = conn.Exec(ctx, q, i)
			} else {
				_, err = conn.Exec(ctx, q)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, q := range []string{`ALTER SYSTEM RESET max_slot_wal_keep_size`, `SELECT pg_catalog.pg_reload_conf()`} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if err := ap.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, ap, time.Minute, "the invalidated slot on /health", func(st opsStatus) bool {
		return st.Status == "degraded" && strings.Contains(strings.Join(st.Reasons, "; "), "the replication slot polyregion_ap was lost")
	})
	mustExec(t, ctx, ap, `INSERT INTO public.kv (id, val) VALUES (702, 'ap after the invalidation')`)
	waitRow(t, ctx, us, `SELECT count(*) FROM public.kv WHERE id = 702`, 1)
	if _, err := conn.Exec(ctx, `DELETE FROM polyregion.slot_lost`); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, ap, time.Minute, "serving once the record is cleared", func(st opsStatus) bool { return st.Status == "serving" })
}
