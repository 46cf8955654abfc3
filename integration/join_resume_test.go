package integration

import (
	"context"
	"math/rand"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestACutJoinKeepsEveryIncrement: us holds 450,000 counter rows (three
// chunks of a join's load) and its writers increment them at random; eu
// joins from us, and its replicator is killed (-9) once the first chunk is
// in. The load then goes on from a later snapshot, so an increment us made
// between the two snapshots reaches eu twice: in the rows of a later chunk,
// and again in us's stream, which eu resumes from the first snapshot's
// position. It must count once. At the end both regions hold the same
// rows, and every row's counter equals the increments us's writers made
// to it. The rows are keyed by a text and a number, the text in letters a
// collation orders otherwise than their bytes ('Ä' among the a's, or after
// 'z'), so chunks end inside a text's rows and the key ranges are compared
// in the database's collation (make test runs it in C, ICU's en-US and
// C.UTF-8).
func TestACutJoinKeepsEveryIncrement(t *testing.T) {
	shards := []string{"a", "Ä", "B", "é", "z"}
	const perShard = 90_000
	schema := []string{
		`CREATE TABLE public.hits (shard text, id bigint, n bigint NOT NULL DEFAULT 0, PRIMARY KEY (shard, id))`,
		`ALTER TABLE public.hits REPLICA IDENTITY FULL`,
	}
	tables := []TableSpec{{Name: "public.hits", Counters: []string{"n"}}}
	h := startClusters(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 8*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, us, `INSERT INTO public.hits (shard, id) SELECT s, g FROM pg_catalog.unnest($1::text[]) s, pg_catalog.generate_series(1, $2::int) g`, shards, perShard)
	if err := us.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	if err := us.WaitReady(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}

	// Writers: each transaction increments one random row by one.
	var made sync.Map // hitKey -> *atomic.Int64, committed increments
	var total atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var werr atomic.Value
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			conn, err := us.Conn(ctx)
			if err != nil {
				werr.Store(err.Error())
				return
			}
			defer conn.Close(context.Background())
			rng := rand.New(rand.NewSource(seed))
			for {
				select {
				case <-stop:
					return
				default:
				}
				k := hitKey{shards[rng.Intn(len(shards))], rng.Int63n(perShard) + 1}
				if _, err := conn.Exec(ctx, `UPDATE public.hits SET n = n + 1 WHERE shard = $1 AND id = $2`, k.shard, k.id); err != nil {
					werr.Store(err.Error())
					return
				}
				c, _ := made.LoadOrStore(k, new(atomic.Int64))
				c.(*atomic.Int64).Add(1)
				total.Add(1)
				time.Sleep(time.Millisecond)
			}
		}(int64(w) + 1)
	}
	time.Sleep(time.Second)

	// eu's load of each chunk takes 3 s more (a trigger of eu's alone),
	// so the kill lands between two chunks' commits.
	mustExec(t, ctx, eu, `CREATE FUNCTION public.slow_load() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_catalog.pg_sleep(3); RETURN NULL; END $$`)
	mustExec(t, ctx, eu, `CREATE TRIGGER slow_load AFTER INSERT ON public.hits FOR EACH STATEMENT EXECUTE FUNCTION public.slow_load()`)
	if err := eu.StartReplicatorWith("--join", "us"); err != nil {
		t.Fatal(err)
	}
	waitLoading(t, ctx, eu, "public.hits", 3*time.Minute)
	waitChunksOf(t, ctx, eu, "public.hits", 1, 3*time.Minute)
	if err := eu.StopReplicator(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, ctx, eu, `SELECT count(*) FROM polyregion.join_units`); n != 1 {
		t.Fatalf("eu committed %d chunks before the kill, want 1", n)
	}
	mustExec(t, ctx, eu, `DROP TRIGGER slow_load ON public.hits`)
	// Started without --join, eu refuses to run on a part of a load and
	// names where to finish it.
	if err := eu.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitExited(t, eu, time.Minute)
	if logs := eu.Logs(1 << 20); !strings.Contains(logs, "before its load was cut short: start it with --join us to finish that load") {
		t.Fatalf("eu started without --join on a cut load did not refuse naming us:\n%s", eu.Logs(3000))
	}
	if err := eu.StopReplicator(syscall.SIGTERM); err != nil { // reaps it
		t.Fatal(err)
	}
	before := total.Load()
	// The next snapshot is a later one: increments made meanwhile are in
	// its chunks and in the stream both.
	for total.Load() < before+500 {
		time.Sleep(50 * time.Millisecond)
	}
	if err := eu.StartReplicatorWith("--join", "us"); err != nil {
		t.Fatal(err)
	}
	waitJoined(t, ctx, eu, 4*time.Minute)
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	if e := werr.Load(); e != nil {
		t.Fatalf("writer failed: %v", e)
	}
	if err := h.WaitConverged(ctx, []string{"public.hits"}, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(eu.Logs(1<<24), "joining: going on with a load cut short") {
		t.Fatalf("eu's second load did not go on after its first:\n%s", eu.Logs(4000))
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
					t.Errorf("%s: row %v counts %d increments, us's writers made %d", r.Name, k, got[k], n)
				}
			}
		}
		for k, n := range got {
			if _, ok := want[k]; !ok {
				t.Errorf("%s: row %v counts %d increments, us's writers made none", r.Name, k, n)
			}
		}
		if wrong > 0 {
			t.Errorf("%s: %d rows count otherwise than their increments", r.Name, wrong)
		}
	}
	want0 := sum
	t.Logf("%d increments to %d rows, %d of them after the first load was cut", want0, len(shards)*perShard, want0-before)
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
