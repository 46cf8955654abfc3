package integration

import (
	"context"
	"testing"
	"time"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestReaderDecodesOnlyWhatItShips: from PostgreSQL 16 on, a region's
// walsender decodes neither the rows its appliers wrote nor the reader's
// own writes (row versions, outbox entries): the reader asks pgoutput for
// origin 'none' and its writing session carries an origin. Up to
// PostgreSQL 15 pgoutput cannot filter, and the test checks that the
// measurement sees the difference: there the receiving slot decodes the
// applied rows.
func TestReaderDecodesOnlyWhatItShips(t *testing.T) {
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: kvSchema, Tables: []TableSpec{{Name: "public.kv"}}})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	conn, err := us.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var major int
	if err := conn.QueryRow(ctx, `SELECT current_setting('server_version_num')::int / 10000`).Scan(&major); err != nil {
		t.Fatal(err)
	}
	filters := major >= 16
	t.Logf("PostgreSQL %d: pgoutput filters by origin: %v", major, filters)

	decoded := func(r *Region) int64 {
		t.Helper()
		pool, err := r.Pool(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var n int64
		if err := pool.QueryRow(ctx, `SELECT coalesce((SELECT total_bytes FROM pg_stat_replication_slots WHERE slot_name = $1), 0)`, postgres.SlotName(r.Name)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	us0, eu0 := decoded(us), decoded(eu)
	const txns, rows = 10, 500
	for i := 0; i < txns; i++ {
		mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) SELECT g, repeat('x', 200) FROM generate_series($1::int, $2::int) g`, i*rows+1, (i+1)*rows)
	}
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv`, txns*rows)
	payload := int64(txns * rows * 200)
	var usBytes, euBytes int64
	waitFor(ctx, t, 30*time.Second, "the origin's slot statistics count its decoded rows", func() bool {
		usBytes = decoded(us) - us0
		return usBytes >= payload
	})
	// Let the receiving walsender finish whatever the applier's commits
	// gave it, then read its count.
	time.Sleep(2 * time.Second)
	euBytes = decoded(eu) - eu0
	t.Logf("decoded bytes while %d rows (%d payload bytes) went us -> eu: us slot %d, eu slot %d", txns*rows, payload, usBytes, euBytes)
	if filters && euBytes >= payload/10 {
		t.Fatalf("the receiving region's slot decoded %d bytes for %d applied rows (payload %d): applied changes are not filtered", euBytes, txns*rows, payload)
	}
	if !filters && euBytes < payload {
		t.Fatalf("the receiving region's slot decoded only %d bytes for %d applied rows (payload %d): the measurement does not see decoded applied rows", euBytes, txns*rows, payload)
	}

	// The reader's own writes carry its origin exactly when the server can
	// filter by it.
	var marked, all int64
	if err := conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE o.roname = $1), count(*)
		FROM polyregion.row_version v
		LEFT JOIN LATERAL pg_xact_commit_timestamp_origin(v.xmin) c ON true
		LEFT JOIN pg_replication_origin o ON o.roident = c.roident
		WHERE v.tbl = 'public.kv'`, postgres.VersionsOrigin).Scan(&marked, &all); err != nil {
		t.Fatal(err)
	}
	if all != txns*rows {
		t.Fatalf("%d row versions in us, want %d", all, txns*rows)
	}
	if filters && marked != all {
		t.Fatalf("%d of %d row versions written by the reader carry origin %s: its writes are decoded by its walsender", marked, all, postgres.VersionsOrigin)
	}
	if !filters && marked != 0 {
		t.Fatalf("%d row versions carry origin %s on a server that cannot filter by it", marked, postgres.VersionsOrigin)
	}
}
