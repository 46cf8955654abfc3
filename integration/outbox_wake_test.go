package integration

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestLinksReadTheOutboxWhenItGrows: a link server reads the outbox again
// when the reader has appended to it, not every time the reader moves on.
// For 3 s us writes a row every 30 ms and eu and ap one every 10 ms each,
// so us's reader decodes six applied transactions for each of its own (up
// to PostgreSQL 15; from 16 on they are left out of its stream). A link
// server reads at most twice per batch the reader appends (the read that
// finds it, and one more if the wake came after that read: a read that
// returned everything there was is not followed by one that finds
// nothing), once per keepalive and a few times when it (re)connects: us's
// outbox reads (pg_stat_statements) stay within that for its transactions
// (about 100) and two peers. Woken by every move of the reader, they read
// more than twice as often.
func TestLinksReadTheOutboxWhenItGrows(t *testing.T) {
	h := startRegions(t, Spec{Regions: []string{"us", "eu", "ap"}, SchemaSQL: kvSchema, Tables: []TableSpec{{Name: "public.kv"}},
		ClusterOptions: ClusterOptions{Settings: map[string]string{"shared_preload_libraries": "'pg_stat_statements'"}}})
	ctx := ctxFor(t, 3*time.Minute)
	us := h.Regions[0]
	if err := us.Cluster.Exec(ctx, AppDB, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`, `SELECT pg_stat_statements_reset()`); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	var all []*writers
	for i, r := range h.Regions {
		every := 10 * time.Millisecond
		if r == us {
			every = 30 * time.Millisecond
		}
		all = append(all, startWriters(ctx, r, 1, 0, func(c *pgx.Conn, _ *rand.Rand, _, n int) error {
			_, err := c.Exec(ctx, `INSERT INTO public.kv (id, val) VALUES ($1, $2)`, i*1_000_000+n, r.Name)
			time.Sleep(every)
			return err
		}))
	}
	time.Sleep(3 * time.Second)
	var rows int64
	for _, w := range all {
		w.stop(t)
		rows += w.commits.Load()
	}
	ownTxns := all[0].commits.Load()
	waitFor(ctx, t, time.Minute, "every region holds every row", func() bool {
		for _, r := range h.Regions {
			if queryInt(t, ctx, r, `SELECT count(*) FROM public.kv`) != rows {
				return false
			}
		}
		return true
	})
	took := time.Since(began)
	// As the superuser: the statements' texts are hidden from others.
	su, err := pgx.Connect(ctx, us.Cluster.URL("postgres", AppDB))
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(context.Background())
	var reads int64
	if err := su.QueryRow(ctx, `SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements
		WHERE query LIKE '%FROM polyregion.outbox%WHERE (seq, part) >%'`).Scan(&reads); err != nil {
		t.Fatal(err)
	}
	peers := int64(len(h.Regions) - 1)
	// Each peer's stream: two reads per batch appended (at most one batch
	// per transaction), one per keepalive (2 s), and a few for
	// (re)connecting.
	bound := peers * (2*ownTxns + int64(took/(2*time.Second)) + 10)
	t.Logf("us's link servers read its outbox %d times in %s for %d transactions to %d peers (bound %d)", reads, took.Round(time.Millisecond), ownTxns, peers, bound)
	if reads == 0 {
		t.Fatal("no outbox read counted: the statement was not found in pg_stat_statements")
	}
	if reads > bound {
		t.Fatalf("us's link servers read its outbox %d times for %d transactions to %d peers: more than %d (they wake for more than new entries)", reads, ownTxns, peers, bound)
	}
}
