package integration

import (
	"testing"
	"time"
)

// TestAcknowledgedMeansDurable: appliers commit without waiting for the WAL
// flush (as PostgreSQL's own apply worker does), and a region acknowledges
// a position to its peer, which then trims its outbox, only once the WAL is
// flushed past it. So a crash of the receiving server right after an
// acknowledgement loses nothing: with the WAL writer held back (10 s), eu's
// server is killed as soon as us has recorded eu's acknowledgement of each
// of several rows, and every row is in eu after each restart.
func TestAcknowledgedMeansDurable(t *testing.T) {
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: kvSchema, Tables: []TableSpec{{Name: "public.kv"}},
		ClusterOptions: ClusterOptions{Settings: map[string]string{"wal_writer_delay": "'10s'"}}})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]

	mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES (0, 'first')`)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv`, 1)
	for i := 1; i <= 4; i++ {
		var seq int64
		mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES ($1, 'acked')`, i)
		// Applied in eu; us's newest sequence number covers it.
		waitFor(ctx, t, 30*time.Second, "eu applies the row", func() bool {
			seq = queryInt(t, ctx, us, `SELECT coalesce((SELECT next_seq - 1 FROM polyregion.reader_state), 0)`)
			return queryInt(t, ctx, eu, `SELECT count(*) FROM public.kv WHERE id = $1`, i) == 1
		})
		waitFor(ctx, t, 30*time.Second, "eu acknowledges the row", func() bool {
			return queryInt(t, ctx, us, `SELECT coalesce((SELECT seq FROM polyregion.peer_ack WHERE peer = 'eu'), 0)`) >= seq
		})
		if err := CrashServer(ctx, eu.Cluster, 0); err != nil {
			t.Fatal(err)
		}
		if n := queryInt(t, ctx, eu, `SELECT count(*) FROM public.kv WHERE id = $1`, i); n != 1 {
			t.Fatalf("round %d: eu acknowledged seq %d to us, then lost its row in a crash (us may have trimmed it already)", i, seq)
		}
	}
	if err := h.WaitConverged(ctx, []string{"public.kv"}, time.Minute); err != nil {
		t.Fatal(err)
	}
}
