package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestASeedHoldsWritesOneChunkAtATime: the seed of a table added at an
// epoch reads it in chunks, one transaction each, and the applications'
// writes to the table go on between them. Two writers update, insert and
// delete rows of a 23,456-row table (two key columns, one of them text)
// while it is seeded. What the WAL holds from the seed's first
// transaction on (the seed's rows, then every write, in commit order,
// decoded by a test_decoding slot made before the seed) rebuilds the table
// exactly as it ends: no row missed, none left stale. Writers' transactions
// committed between the seed's first and last chunks, and the table is
// published from the first chunk on.
func TestASeedHoldsWritesOneChunkAtATime(t *testing.T) {
	const rows = 23456
	ap, conn, ctx := seedCheckRegion(t, rows)
	ws := startItemWriters(ctx, ap, rows)
	for ws.commits.Load() < 50 {
		time.Sleep(10 * time.Millisecond)
	}
	began := time.Now()
	st, err := postgres.SeedTable(ctx, conn, "ap", itemsToSeed, nil)
	took := time.Since(began)
	during := ws.commits.Load()
	time.Sleep(200 * time.Millisecond)
	ws.stop(t)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("seeded %d rows in %d chunks in %s, writes held at most %s at a time; %d writes before the seed ended",
		st.Rows, st.Chunks, took.Round(time.Millisecond), st.LongestHold.Round(time.Millisecond), during)
	if st.Chunks < 4 {
		t.Fatalf("%d chunks for %d rows, want one per %d rows at most", st.Chunks, st.Rows, postgres.SeedChunkRows)
	}
	if again, err := postgres.SeedTable(ctx, conn, "ap", itemsToSeed, nil); err != nil || again.Rows != 0 || again.Chunks != 0 {
		t.Fatalf("seeding again: %+v %v, want nothing done", again, err)
	}
	seedTxns, between := checkSeededStream(t, ctx, ap, conn)
	if seedTxns != withRows(st) {
		t.Fatalf("%d seed transactions in the stream, the seed says %d chunks", seedTxns, st.Chunks)
	}
	if between == 0 {
		t.Fatalf("no writer's transaction committed between the seed's first and last chunks: the seed held writes for all of it")
	}
}

// TestASeedCutShortGoesOn: a seed stopped after some of its chunks (its
// context canceled, as when the process stops) leaves its table published
// (Prepare keeps it so) and goes on from the first key the next time,
// from where it began in the WAL. What the stream holds from the first
// attempt's first chunk on rebuilds the table, while writers never
// stopped.
func TestASeedCutShortGoesOn(t *testing.T) {
	const rows = 100000
	ap, conn, ctx := seedCheckRegion(t, rows)
	ws := startItemWriters(ctx, ap, rows)
	watch, err := ap.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close(context.Background())
	sctx, cut := context.WithCancel(ctx)
	go func() {
		// Cut the seed once some chunks are in.
		for sctx.Err() == nil {
			var n int64
			if err := watch.QueryRow(sctx, `SELECT coalesce(max(rows), 0) FROM polyregion.seeding`).Scan(&n); err == nil && n >= 10000 {
				cut()
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	st, err := postgres.SeedTable(sctx, conn, "ap", itemsToSeed, nil)
	cut()
	if err == nil {
		t.Fatalf("the seed ended (%+v) before it was cut: nothing tested", st)
	}
	conn.Close(context.Background())
	t.Logf("cut after %d rows in %d chunks: %v", st.Rows, st.Chunks, err)
	if n := queryInt(t, ctx, ap, `SELECT count(*) FROM polyregion.seeding WHERE tbl = 'public.items'`); n != 1 {
		t.Fatalf("the cut seed is not recorded as begun")
	}
	conn, err = postgres.Connect(ctx, ap.Cluster.URL("polyregion", AppDB))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	pending, err := postgres.Prepare(ctx, conn, "ap", []string{"public.items"}, map[string]uint64{"public.items": 2}, []string{"us"})
	if err != nil || len(pending) != 1 {
		t.Fatalf("prepare again: %v %v, want public.items pending", pending, err)
	}
	if n := queryInt(t, ctx, ap, `SELECT count(*) FROM pg_catalog.pg_publication_tables WHERE pubname = $1 AND tablename = 'items'`, postgres.PublicationName("ap")); n != 1 {
		t.Fatalf("prepare took the table of a begun seed out of the publication: writes since would be lost")
	}
	again, err := postgres.SeedTable(ctx, conn, "ap", itemsToSeed, nil)
	time.Sleep(200 * time.Millisecond)
	ws.stop(t)
	if err != nil || !again.Resumed {
		t.Fatalf("the seed going on: %+v %v", again, err)
	}
	seedTxns, _ := checkSeededStream(t, ctx, ap, conn)
	// The cut may come while a chunk commits: committed, not counted.
	if want := st.Chunks + withRows(again); seedTxns != want && seedTxns != want+1 {
		t.Fatalf("%d seed transactions in the stream, the two attempts say %d and %d chunks (%d rows)", seedTxns, st.Chunks, again.Chunks, again.Rows)
	}
}

// withRows is how many of a finished seed's chunks emitted rows: all but
// the last when its rows are a multiple of the chunk size (the last read
// none).
func withRows(st postgres.SeedStats) int {
	if st.Rows%postgres.SeedChunkRows == 0 {
		return st.Chunks - 1
	}
	return st.Chunks
}

// itemsToSeed is public.items, added by the cluster at epoch 2.
var itemsToSeed = regions.Table{Name: "public.items", Added: 2}

// seedCheckRegion starts one region whose public.items holds rows and is
// about to be seeded (prepared, pending), with a test_decoding slot made
// before the seed.
func seedCheckRegion(t *testing.T, rows int) (*Region, *pgx.Conn, context.Context) {
	t.Helper()
	h := startClusters(t, Spec{Regions: []string{"ap"}, SchemaSQL: []string{
		`CREATE TABLE public.items (a integer, b text, v text, n bigint NOT NULL DEFAULT 0, PRIMARY KEY (a, b))`,
		fmt.Sprintf(`INSERT INTO public.items (a, b, v) SELECT g / 1000, 'k' || g, 'value ' || g FROM pg_catalog.generate_series(1, %d) g`, rows),
	}})
	ap := h.Regions[0]
	ctx := ctxFor(t, 3*time.Minute)
	conn, err := postgres.Connect(ctx, ap.Cluster.URL("polyregion", AppDB))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	pending, err := postgres.Prepare(ctx, conn, "ap", []string{"public.items"}, map[string]uint64{"public.items": 2}, []string{"us"})
	if err != nil || len(pending) != 1 {
		t.Fatalf("prepare: %v %v, want public.items pending", pending, err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_create_logical_replication_slot('seed_check', 'test_decoding')`); err != nil {
		t.Fatal(err)
	}
	return ap, conn, ctx
}

// writers run step over and over in goroutines of their own, each with
// its own connection to a region, until stopped.
type writers struct {
	commits atomic.Int64 // steps that returned nil
	done    chan struct{}
	wg      sync.WaitGroup
	errs    chan error
}

// startWriters starts n writers on r; step gets writer w's connection,
// random source (seeded with w and seed) and step number i.
func startWriters(ctx context.Context, r *Region, n int, seed uint64, step func(conn *pgx.Conn, rng *rand.Rand, w, i int) error) *writers {
	ws := &writers{done: make(chan struct{}), errs: make(chan error, n)}
	for w := range n {
		ws.wg.Add(1)
		go func() {
			defer ws.wg.Done()
			conn, err := r.Conn(ctx)
			if err != nil {
				ws.errs <- err
				return
			}
			defer conn.Close(context.Background())
			rng := rand.New(rand.NewPCG(uint64(w), seed))
			for i := 0; ; i++ {
				select {
				case <-ws.done:
					return
				default:
				}
				if err := step(conn, rng, w, i); err != nil {
					ws.errs <- err
					return
				}
				ws.commits.Add(1)
			}
		}()
	}
	return ws
}

// stop stops the writers and fails the test if one failed.
func (ws *writers) stop(t *testing.T) {
	t.Helper()
	close(ws.done)
	ws.wg.Wait()
	select {
	case err := <-ws.errs:
		t.Fatalf("writer: %v", err)
	default:
	}
}

// startItemWriters starts two writers that update, insert and delete rows
// of public.items.
func startItemWriters(ctx context.Context, ap *Region, rows int) *writers {
	return startWriters(ctx, ap, 2, 7, func(c *pgx.Conn, rng *rand.Rand, w, i int) error {
		g := 1 + rng.IntN(rows)
		var sql string
		var args []any
		switch i % 10 {
		case 0:
			sql, args = `DELETE FROM public.items WHERE a = $1 AND b = $2`, []any{g / 1000, "k" + strconv.Itoa(g)}
		case 1:
			g = 1000000*(w+1) + i
			sql, args = `INSERT INTO public.items (a, b, v) VALUES ($1, $2, 'new')`, []any{g / 1000, "k" + strconv.Itoa(g)}
		default:
			sql, args = `UPDATE public.items SET n = n + 1 WHERE a = $1 AND b = $2`, []any{g / 1000, "k" + strconv.Itoa(g)}
		}
		_, err := c.Exec(ctx, sql, args...)
		return err
	})
}

// checkSeededStream replays what the slot decoded from the first seed
// transaction on (seed messages, then the writers' changes, in commit
// order) and fails the test unless it rebuilds public.items as it is. It
// returns how many seed transactions there were, and how many writers'
// transactions committed between the first and the last.
func checkSeededStream(t *testing.T, ctx context.Context, ap *Region, conn *pgx.Conn) (seedTxns, between int) {
	t.Helper()
	if n := queryInt(t, ctx, ap, `SELECT count(*) FROM pg_catalog.pg_publication_tables WHERE pubname = $1 AND tablename = 'items'`, postgres.PublicationName("ap")); n != 1 {
		t.Fatalf("the table is not published after its seed")
	}
	if n := queryInt(t, ctx, ap, `SELECT count(*) FROM polyregion.seeded WHERE tbl = 'public.items' AND began_lsn < ended_lsn`); n != 1 {
		t.Fatalf("the seed's WAL bounds are not recorded")
	}
	// Replay the decoded stream from the seed's first transaction on.
	type key struct{ a, b string }
	state := map[key]string{} // key -> n
	var (
		appBefore             int
		lastSeed              = -1
		firstSeed             = -1
		txn                   int
		txnSeeds, txnApp      bool
		appTxnsAfterFirstSeed []int
	)
	change := regexp.MustCompile(`^table public\.items: (INSERT|UPDATE|DELETE): a\[integer\]:(-?\d+) b\[text\]:'([^']*)'(?: v\[text\]:(?:'[^']*'|null) n\[bigint\]:(\d+))?`)
	rs, err := conn.Query(ctx, `SELECT data FROM pg_catalog.pg_logical_slot_get_changes('seed_check', NULL, NULL)`)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := pgx.CollectRows(rs, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range lines {
		switch {
		case strings.HasPrefix(line, "BEGIN"):
			txnSeeds, txnApp = false, false
		case strings.HasPrefix(line, "COMMIT"):
			if txnSeeds {
				seedTxns++
				if firstSeed < 0 {
					firstSeed = txn
				}
				lastSeed = txn
			}
			if txnApp {
				if firstSeed >= 0 {
					appTxnsAfterFirstSeed = append(appTxnsAfterFirstSeed, txn)
				} else {
					appBefore++
				}
			}
			txn++
		case strings.HasPrefix(line, "message: transactional: 1 prefix: "+postgres.SeedPrefix+","):
			txnSeeds = true
			_, body, ok := strings.Cut(line, "content:public.items\n")
			var seeded [][]*string
			if !ok || json.Unmarshal([]byte(body), &seeded) != nil {
				t.Fatalf("seed message not understood: %.200s", line)
			}
			for _, r := range seeded {
				state[key{*r[0], *r[1]}] = *r[3]
			}
		case strings.HasPrefix(line, "table public.items:"):
			txnApp = true
			if firstSeed < 0 && !txnSeeds {
				continue // before the seed: in it
			}
			m := change.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("change not understood: %.200s", line)
			}
			if m[1] == "DELETE" {
				delete(state, key{m[2], m[3]})
			} else {
				state[key{m[2], m[3]}] = m[4]
			}
		}
	}
	for _, a := range appTxnsAfterFirstSeed {
		if a < lastSeed {
			between++
		}
	}
	t.Logf("stream: %d seed transactions, %d writers' transactions between the first and the last, %d before the seed (not published yet), %d after", seedTxns, between, appBefore, len(appTxnsAfterFirstSeed)-between)
	rs, err = conn.Query(ctx, `SELECT a::text, b, n::text FROM public.items`)
	if err != nil {
		t.Fatal(err)
	}
	final := map[key]string{}
	var a, b, n string
	if _, err := pgx.ForEachRow(rs, []any{&a, &b, &n}, func() error {
		final[key{a, b}] = n
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var problems []string
	for k, v := range final {
		if got, ok := state[k]; !ok {
			problems = append(problems, fmt.Sprintf("(%s, %s) missing from the stream", k.a, k.b))
		} else if got != v {
			problems = append(problems, fmt.Sprintf("(%s, %s): the stream leaves n = %s, the table has %s", k.a, k.b, got, v))
		}
	}
	for k := range state {
		if _, ok := final[k]; !ok {
			problems = append(problems, fmt.Sprintf("(%s, %s) in the stream, not in the table", k.a, k.b))
		}
	}
	if len(problems) > 0 {
		t.Fatalf("the stream from the seed on does not rebuild the table (%d rows, %d in the stream): %s", len(final), len(state), strings.Join(problems[:min(10, len(problems))], "; "))
	}
	return seedTxns, between
}
