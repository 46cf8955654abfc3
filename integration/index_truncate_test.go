package integration

import (
	"bytes"
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/indexer"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// A TRUNCATE empties a table's index in Elasticsearch and OpenSearch as a
// delete of every document at the truncating transaction's version: rows
// written just before it in the same transaction (not yet searchable) go
// too, and when the feed replays the transaction and the ones after it
// (its slot put back to before them, as after a crash before the slot was
// confirmed), the rows the transaction wrote after its TRUNCATE and the
// rows later transactions wrote are all still in the index.
func TestIndexTruncateIsAVersionedDelete(t *testing.T) {
	for _, kind := range []SearchKind{SearchElasticsearch, SearchOpenSearch} {
		t.Run(string(kind), func(t *testing.T) { testIndexTruncate(t, kind) })
	}
}

func testIndexTruncate(t *testing.T, kind SearchKind) {
	ctx := ctxFor(t, 5*time.Minute)
	node := startSearchNodeT(t, ctx, kind)
	h := startClusters(t, Spec{Regions: []string{"us"},
		SchemaSQL: []string{`CREATE TABLE public.docs (id bigint PRIMARY KEY, body text NOT NULL)`},
		Tables:    []TableSpec{{Name: "public.docs"}}})
	r := h.Regions[0]
	conn, err := postgres.Connect(ctx, r.Cluster.URL("polyregion", AppDB))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := postgres.Install(ctx, conn); err != nil {
		t.Fatal(err)
	}
	admin, err := r.Conn(ctx) // superuser: slots
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	pool, err := r.Pool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	be, err := indexer.Open(ctx, indexer.BackendConfig{Kind: string(kind), URLs: []string{node.URL}})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	var logs lockedBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("feed log:\n%s", logs.String())
		}
	})
	specs := []indexer.IndexSpec{{Table: "public.docs", Index: "docs"}}
	cfg := indexer.Config{Region: "us", Database: r.Cluster.URL("polyregion", AppDB), BackendKind: string(kind),
		Indices: specs, FlushInterval: 50 * time.Millisecond, PollInterval: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	if _, err := indexer.Rebuild(ctx, cfg, be); err != nil {
		t.Fatal(err)
	}
	var slot string
	if err := conn.QueryRow(ctx, `SELECT slot FROM polyregion.index_generation ORDER BY gen DESC LIMIT 1`).Scan(&slot); err != nil {
		t.Fatal(err)
	}

	startFeed := func() (stop func()) { return startFeed(t, ctx, cfg, be) }
	// caughtUp waits until the feed confirmed everything written so far
	// (it confirms only what the engine took), then compares the index
	// with the table.
	caughtUp := func(stage string) {
		t.Helper()
		var target string
		if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_current_wal_lsn()::text`).Scan(&target); err != nil {
			t.Fatal(err)
		}
		waitFor(ctx, t, time.Minute, stage+": the feed confirms "+target, func() bool {
			var caught bool
			err := conn.QueryRow(ctx, `SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_catalog.pg_replication_slots
				WHERE slot_name = $1`, slot, target).Scan(&caught)
			return err == nil && caught
		})
		diffs, err := indexer.Verify(ctx, conn, be, specs)
		if err != nil {
			t.Fatal(err)
		}
		if !diffs[0].Equal() {
			t.Fatalf("%s: the index differs from its table: %v", stage, diffs[0])
		}
		t.Logf("%s: %v", stage, diffs[0])
	}
	inTx := func(stmts ...string) {
		t.Helper()
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			for _, s := range stmts {
				if _, err := tx.Exec(ctx, s); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	stop := startFeed()
	inTx(`INSERT INTO public.docs SELECT g, 'first ' || g FROM generate_series(1, 20) g`)
	caughtUp("rows written")

	// Rows written just before the TRUNCATE, in its transaction, reach the
	// engine in the batch written right before it, not yet searchable:
	// the TRUNCATE removes them all the same.
	inTx(`INSERT INTO public.docs SELECT g, 'doomed ' || g FROM generate_series(21, 40) g`,
		`TRUNCATE public.docs`,
		`INSERT INTO public.docs SELECT g, 'after ' || g FROM generate_series(1, 5) g`)
	caughtUp("rows written and truncated in one transaction")

	// Keep the slot's position from before the next transactions, so as
	// to replay them.
	stop()
	if _, err := admin.Exec(ctx, `SELECT pg_catalog.pg_copy_logical_replication_slot($1::name, ($1 || '_saved')::name)`, slot); err != nil {
		t.Fatal(err)
	}
	var before string
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_current_wal_lsn()::text`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	stop = startFeed()
	inTx(`TRUNCATE public.docs`,
		`INSERT INTO public.docs SELECT g, 'truncating ' || g FROM generate_series(1, 10) g`)
	inTx(`INSERT INTO public.docs SELECT g, 'later ' || g FROM generate_series(11, 15) g`)
	inTx(`UPDATE public.docs SET body = 'updated later' WHERE id IN (1, 2, 11)`)
	caughtUp("a TRUNCATE and later transactions")

	// The feed replays them, as after a crash before it confirmed them.
	stop()
	// The feed closed its stream; its walsender lets go of the slot a
	// moment later.
	waitFor(ctx, t, 10*time.Second, "the feed's walsender to let go of its slot", func() bool {
		var active bool
		return admin.QueryRow(ctx, `SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active) == nil && !active
	})
	for _, q := range []string{`SELECT pg_catalog.pg_drop_replication_slot($1)`,
		`SELECT pg_catalog.pg_copy_logical_replication_slot(($1 || '_saved')::name, $1::name)`,
		`SELECT pg_catalog.pg_drop_replication_slot(($1 || '_saved')::name)`} {
		if _, err := admin.Exec(ctx, q, slot); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	var replays bool
	if err := conn.QueryRow(ctx, `SELECT confirmed_flush_lsn <= $2::pg_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`,
		slot, before).Scan(&replays); err != nil || !replays {
		t.Fatalf("the slot was not put back to before the TRUNCATE (%s): %v", before, err)
	}
	stop = startFeed()
	defer stop()
	caughtUp("the TRUNCATE and later transactions replayed")
	if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.docs`); n != 15 {
		t.Fatalf("the table holds %d rows, want 15", n)
	}
}

// lockedBuffer collects a feed's log.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
