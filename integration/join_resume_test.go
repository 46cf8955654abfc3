package integration

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestACutJoinKeepsEveryIncrement: us holds 450,000 counter rows (three
// chunks of a join's load) and 200 last-writer-wins notes; eu and ap join
// from us, and then all three write at once: each transaction increments
// a random counter row, and every fourth also deletes a random note or
// writes one, again after a delete or over another region's (conflicts
// last-writer-wins decides, while tombstones are collected), until sa
// has caught up. sa joins from eu meanwhile. Its replicator is killed
// (-9) once the first chunk is in, and eu's (the source's) as the next
// attempt begins loading (when eu was still sending, the attempt after it
// comes from a third snapshot). Each attempt goes on from a later
// snapshot, so an increment made between two snapshots reaches sa twice,
// in the rows of a later chunk and again in a stream that sa resumes from
// an earlier snapshot's position. It must count once. At the end the four regions hold the same
// rows, and every row's counter equals the increments the writers of all
// three regions made to it. The rows are keyed by a text and a number,
// the text in letters a collation orders otherwise than their bytes ('Ä'
// among the a's, or after 'z'), so chunks end inside a text's rows and the
// key ranges are compared in the database's collation (make test runs it
// in C, ICU's en-US and C.UTF-8).
func TestACutJoinKeepsEveryIncrement(t *testing.T) {
	shards := []string{"a", "Ä", "B", "é", "z"}
	const perShard, notes = 90_000, 200
	schema := []string{
		`CREATE TABLE public.hits (shard text, id bigint, n bigint NOT NULL DEFAULT 0, PRIMARY KEY (shard, id))`,
		`ALTER TABLE public.hits REPLICA IDENTITY FULL`,
		`CREATE TABLE public.notes (id bigint PRIMARY KEY, v text NOT NULL)`,
	}
	tables := []TableSpec{{Name: "public.hits", Counters: []string{"n"}}, {Name: "public.notes"}}
	names := []string{"public.hits", "public.notes"}
	h := startClusters(t, Spec{Regions: []string{"us", "eu", "ap", "sa"}, SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 10*time.Minute)
	us, eu, ap, sa := h.Regions[0], h.Regions[1], h.Regions[2], h.Regions[3]
	mustExec(t, ctx, us, `INSERT INTO public.hits (shard, id) SELECT s, g FROM pg_catalog.unnest($1::text[]) s, pg_catalog.generate_series(1, $2::int) g`, shards, perShard)
	mustExec(t, ctx, us, `INSERT INTO public.notes SELECT g, 'first' FROM pg_catalog.generate_series(1, $1::int) g`, notes)
	startReady(t, ctx, us)
	for _, r := range []*Region{eu, ap} {
		joinFrom(t, ctx, r, "us", 4*time.Minute)
	}

	// Writers, one per region: each transaction increments one random row
	// by one; every fourth also deletes a random note or writes one (again).
	var made sync.Map // hitKey -> *atomic.Int64, committed increments
	var total atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var werr atomic.Value
	for i, r := range []*Region{us, eu, ap} {
		wg.Add(1)
		go func(r *Region, seed int64) {
			defer wg.Done()
			conn, err := r.Conn(ctx)
			if err != nil {
				werr.Store(err.Error())
				return
			}
			defer conn.Close(context.Background())
			rng := rand.New(rand.NewSource(seed))
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				k := hitKey{shards[rng.Intn(len(shards))], rng.Int63n(perShard) + 1}
				tx, err := conn.Begin(ctx)
				if err == nil {
					_, err = tx.Exec(ctx, `UPDATE public.hits SET n = n + 1 WHERE shard = $1 AND id = $2`, k.shard, k.id)
				}
				switch {
				case err != nil || n%4 != 0:
				case n%12 == 0:
					_, err = tx.Exec(ctx, `DELETE FROM public.notes WHERE id = $1`, rng.Int63n(notes)+1)
				default:
					_, err = tx.Exec(ctx, `INSERT INTO public.notes VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = excluded.v`, rng.Int63n(notes)+1, fmt.Sprintf("%s %d", r.Name, n))
				}
				if err == nil {
					err = tx.Commit(ctx)
				}
				if err != nil {
					werr.Store(r.Name + ": " + err.Error())
					return
				}
				c, _ := made.LoadOrStore(k, new(atomic.Int64))
				c.(*atomic.Int64).Add(1)
				total.Add(1)
				time.Sleep(2 * time.Millisecond)
			}
		}(r, int64(i)+1)
	}
	time.Sleep(time.Second)

	// sa's load of each chunk takes 3 s more (a trigger of sa's alone),
	// so the kills land between two chunks' commits.
	mustExec(t, ctx, sa, `CREATE FUNCTION public.slow_load() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_catalog.pg_sleep(3); RETURN NULL; END $$`)
	mustExec(t, ctx, sa, `CREATE TRIGGER slow_load AFTER INSERT ON public.hits FOR EACH STATEMENT EXECUTE FUNCTION public.slow_load()`)
	if err := sa.StartReplicatorWith("--join", "eu"); err != nil {
		t.Fatal(err)
	}
	waitLoading(t, ctx, sa, "public.hits", 3*time.Minute)
	waitChunksOf(t, ctx, sa, "public.hits", 1, 3*time.Minute)
	if err := sa.StopReplicator(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, ctx, sa, `SELECT count(*) FROM polyregion.join_units`); n != 1 {
		t.Fatalf("sa committed %d chunks before the kill, want 1", n)
	}
	// Started without --join, sa refuses to run on a part of a load and
	// names where to finish it.
	if err := sa.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitExited(t, sa, time.Minute)
	if logs := sa.Logs(1 << 20); !strings.Contains(logs, "before its load was cut short: start it with --join eu to finish that load") {
		t.Fatalf("sa started without --join on a cut load did not refuse naming eu:\n%s", sa.Logs(3000))
	}
	if err := sa.StopReplicator(syscall.SIGTERM); err != nil { // reaps it
		t.Fatal(err)
	}
	// The next snapshot is a later one: increments made meanwhile are in
	// its chunks and in the stream both.
	before := total.Load()
	for total.Load() < before+500 {
		time.Sleep(50 * time.Millisecond)
	}
	if err := sa.StartReplicatorWith("--join", "eu"); err != nil {
		t.Fatal(err)
	}
	// The source's replicator is killed as this attempt begins loading.
	waitLoading(t, ctx, sa, "public.hits", 3*time.Minute)
	if err := eu.StopReplicator(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	kept := queryInt(t, ctx, sa, `SELECT count(*) FROM polyregion.join_units`)
	if err := eu.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	// The trigger would slow sa's applier too (its counters go in by
	// INSERT ... ON CONFLICT): gone once the load is in.
	waitLoaded(t, ctx, sa, 4*time.Minute)
	mustExec(t, ctx, sa, `DROP TRIGGER slow_load ON public.hits`)
	// The writers go on until sa has caught up with all three: it applies
	// them all, and its appliers of different sources share rows (before
	// they claimed their rows, they failed each other's batches on their
	// lock timeouts, and sa trailed three writers like these past 4
	// minutes on a 2-core machine).
	waitJoined(t, ctx, sa, 4*time.Minute)
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	if e := werr.Load(); e != nil {
		t.Fatalf("writer failed: %v", e)
	}
	if err := h.WaitConverged(ctx, names, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	// After its own kill sa goes on with its load; after the source's, too
	// when the source was still sending (it may have sent the rest
	// already: sa reads a chunk at once and then waits in its trigger).
	cuts := strings.Count(sa.Logs(1<<24), "joining: going on with a load cut short")
	if cuts < 1 {
		t.Fatalf("sa's load did not go on after its kill:\n%s", sa.Logs(4000))
	}
	want := map[hitKey]int64{}
	var sum int64
	made.Range(func(k, v any) bool {
		want[k.(hitKey)] = v.(*atomic.Int64).Load()
		sum += want[k.(hitKey)]
		return true
	})
	for _, r := range h.Regions {
		got := counters(t, ctx, r)
		wrong := 0
		for k, n := range want {
			if got[k] != n {
				if wrong++; wrong <= 5 {
					t.Errorf("%s: row %v counts %d increments, the writers made %d", r.Name, k, got[k], n)
				}
			}
		}
		for k, n := range got {
			if _, ok := want[k]; !ok {
				t.Errorf("%s: row %v counts %d increments, the writers made none", r.Name, k, n)
			}
		}
		if wrong > 0 {
			t.Errorf("%s: %d rows count otherwise than their increments", r.Name, wrong)
		}
	}
	retried, _ := metricValue(scrapeMetrics(ctx, sa), "polyregion_errors_total", `kind="apply_retry"`)
	t.Logf("%d increments to %d rows from three regions, %d of them after sa's first load was cut; sa's load went on after a cut %d times (%d chunks kept when the source was killed); notes: %d in every region; sa retried %.0f batches since its last start",
		sum, len(shards)*perShard, sum-before, cuts, kept, queryInt(t, ctx, sa, `SELECT count(*) FROM public.notes`), retried)
}

// waitChunksOf waits until r's load has committed at least n chunks of
// table.
func waitChunksOf(t *testing.T, ctx context.Context, r *Region, table string, n int64, within time.Duration) {
	t.Helper()
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		if queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.join_units WHERE $1 = ANY (tables)`, table) >= n {
			return
		}
		if time.Since(start) > within {
			t.Fatalf("%s committed fewer than %d chunks of %s in %s", r.Name, n, table, within)
		}
	}
}

// hitKey is a row of public.hits.
type hitKey struct {
	shard string
	id    int64
}

// counters reads the rows of public.hits incremented at least once.
func counters(t *testing.T, ctx context.Context, r *Region) map[hitKey]int64 {
	t.Helper()
	conn, err := r.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT shard, id, n FROM public.hits WHERE n <> 0`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[hitKey]int64{}
	for rows.Next() {
		var k hitKey
		var n int64
		if err := rows.Scan(&k.shard, &k.id, &n); err != nil {
			t.Fatal(err)
		}
		out[k] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
