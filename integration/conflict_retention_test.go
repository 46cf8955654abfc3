package integration

import (
	"context"
	"syscall"
	"testing"
	"time"
)

// TestConflictLogRecordsPastTheRetentionAreDeleted: a region deletes its
// conflict log records older than conflict_log.retention as it runs and
// keeps the newer ones; a region with 0s keeps every record until a reload
// gives it a retention.
func TestConflictLogRecordsPastTheRetentionAreDeleted(t *testing.T) {
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: kvSchema, Tables: []TableSpec{{Name: "public.kv"}},
		Configure: func(region string, c *RegionConfig) {
			retention := map[string]string{"us": "1m", "eu": "0s"}[region]
			c.ConflictLog = map[string]string{"retention": retention}
		}})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	record := func(r *Region, age string) {
		t.Helper()
		conn, err := r.Conn(ctx) // the superuser: the application may not write there
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx, `INSERT INTO polyregion.conflict_log (logged_at, region, tbl, key, kind, policy, winner, winner_origin,
			local_origin, remote_origin, local_version, remote_version, local_hlc, remote_hlc, source_seq, reason)
			VALUES (now() - $1::interval, $2, 'public.kv', '["1"]', 'update_update', 'lww', 'remote', 'eu', 'us', 'eu', '{}', '{}', 1, 2, 1, 'test')`,
			age, r.Name)
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range h.Regions {
		record(r, "2 hours")
		record(r, "2 days")
		record(r, "0 seconds")
	}
	const old = `SELECT count(*) FROM polyregion.conflict_log WHERE logged_at < now() - interval '1 hour'`
	waitRow(t, ctx, us, old, 0)
	if n := queryInt(t, ctx, us, `SELECT count(*) FROM polyregion.conflict_log`); n != 1 {
		t.Fatalf("us keeps %d conflict records, want the 1 inside its retention", n)
	}
	if n := queryInt(t, ctx, eu, `SELECT count(*) FROM polyregion.conflict_log`); n != 3 {
		t.Fatalf("eu (retention 0s) keeps %d conflict records, want all 3", n)
	}

	rewriteConfig(t, eu, func(c *RegionConfig) { c.ConflictLog["retention"] = "1h30m" })
	if err := eu.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitRow(t, ctx, eu, old, 0)
	if n := queryInt(t, ctx, eu, `SELECT count(*) FROM polyregion.conflict_log`); n != 1 {
		t.Fatalf("after the reload eu keeps %d conflict records, want the 1 inside its new retention", n)
	}
}
