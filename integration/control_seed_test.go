package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestATableSeededWhileWrittenEndsTheSameEverywhere: us holds two tables
// that eu and ap hold empty, and keeps writing them while the cluster adds
// them; its seed reads them in chunks, so writes land between the chunks,
// on rows the seed has reached and on rows it has not:
//
//   - public.tally (REPLICA IDENTITY FULL, hits a counter): increments of
//     rows peers do not have yet. The stream carries each such row's old
//     value, which peers never had: the write ships the whole value, not
//     the step from it.
//   - public.docs (last writer wins): title updates of rows (in the
//     seed's last chunk) whose body is a TOASTed value the update leaves
//     out of the stream. A peer without the row parks the update until the
//     row's chunk brings the body.
//   - deletes and inserts of both.
//
// One writer only retitles docs, so it waits on each of docs's chunks and
// an update of a row of the last chunk lands between the first two.
//
// Every region ends with us's rows as us holds them (every increment
// counted once, every body there), and no change stays parked.
func TestATableSeededWhileWrittenEndsTheSameEverywhere(t *testing.T) {
	const tallyRows, docRows = 40000, 20000
	schema := append(append([]string(nil), kvSchema...),
		`CREATE TABLE public.tally (id integer PRIMARY KEY, note text, hits bigint NOT NULL DEFAULT 0)`,
		`ALTER TABLE public.tally REPLICA IDENTITY FULL`,
		`CREATE TABLE public.docs (id integer PRIMARY KEY, title text NOT NULL, body text)`)
	ctx := ctxFor(t, 6*time.Minute)
	h := startFoundedThrough(t, ctx, schema, []TableSpec{{Name: "public.kv"}}, func(*RegionConfig) {}, nil)
	us := h.Regions[0]
	mustExec(t, ctx, us, fmt.Sprintf(`INSERT INTO public.tally (id, note, hits) SELECT g, 'row ' || g, g %% 7 + 1 FROM pg_catalog.generate_series(1, %d) g`, tallyRows))
	// Every tenth body is about 6 kB of random hex: stored out of line.
	mustExec(t, ctx, us, fmt.Sprintf(`INSERT INTO public.docs (id, title, body) SELECT g, 'title ' || g,
		CASE WHEN g %% 10 = 0 THEN (SELECT pg_catalog.string_agg(pg_catalog.md5(pg_catalog.random()::text || g || s), '') FROM pg_catalog.generate_series(1, 200) s) ELSE 'short ' || g END
		FROM pg_catalog.generate_series(1, %d) g`, docRows))
	if n := queryInt(t, ctx, us, `SELECT count(*) FROM public.docs WHERE pg_catalog.pg_column_size(body) > 2000`); n < docRows/10 {
		t.Fatalf("only %d bodies are stored out of line", n)
	}

	var mu sync.Mutex
	increments, writes := 0, 0
	ws := startWriters(ctx, us, 2, 11, func(conn *pgx.Conn, rng *rand.Rand, w, i int) error {
		var sql string
		var args []any
		inc := 0
		op := i % 20
		if w == 0 {
			// One writer only retitles: it waits on each of docs's seed
			// chunks, so between two of them it writes a row of the last.
			op = 4
		}
		switch op {
		case 0:
			sql, args = `DELETE FROM public.tally WHERE id = $1`, []any{1 + rng.IntN(tallyRows)}
		case 1:
			sql, args = `DELETE FROM public.docs WHERE id = $1 AND id % 10 <> 0`, []any{1 + rng.IntN(docRows)}
		case 2:
			sql, args = `INSERT INTO public.docs (id, title, body) VALUES ($1, 'new', 'new body')`, []any{100000*(w+1) + i}
		case 3:
			sql, args = `INSERT INTO public.tally (id, note, hits) VALUES ($1, 'new', 1)`, []any{100000*(w+1) + i}
		case 4, 5, 6, 7, 8, 9:
			sql, args = `UPDATE public.docs SET title = 'retitled ' || $2::int WHERE id = $1`, []any{docRows - 10*rng.IntN(docRows/100), i} // the last chunk's
		default:
			sql, args, inc = `UPDATE public.tally SET hits = hits + 1 WHERE id = $1`, []any{1 + rng.IntN(tallyRows)}, 1
		}
		tag, err := conn.Exec(ctx, sql, args...)
		if err != nil {
			return fmt.Errorf("%s: %w", sql, err)
		}
		mu.Lock()
		writes++
		if tag.RowsAffected() == 1 {
			increments += inc
		}
		mu.Unlock()
		return nil
	})
	time.Sleep(500 * time.Millisecond)
	out := mustPolyregion(t, ctx, "cluster", "configure", "--config",
		withTables(t, us, "seeded", []TableSpec{{Name: "public.kv"}, {Name: "public.tally", Counters: []string{"hits"}}, {Name: "public.docs"}}), "--wait", "2m")
	if !strings.Contains(out, "epoch 2 in effect") {
		t.Fatalf("cluster configure:\n%s", out)
	}
	time.Sleep(time.Second)
	ws.stop(t)
	if err := h.WaitConverged(ctx, []string{"public.kv", "public.tally", "public.docs"}, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{}
	for _, q := range []string{
		`SELECT coalesce(sum(hits), 0) FROM public.tally`,
		`SELECT count(*) FROM public.tally`,
		`SELECT count(*) FROM public.docs`,
		`SELECT count(*) FROM public.docs WHERE pg_catalog.pg_column_size(body) > 2000`,
		`SELECT count(*) FROM public.docs WHERE title LIKE 'retitled %'`,
	} {
		want[q] = queryInt(t, ctx, us, q)
	}
	for _, r := range h.Regions {
		for q, n := range want {
			if got := queryInt(t, ctx, r, q); got != n {
				t.Fatalf("%s: %s = %d, us has %d", r.Name, q, got, n)
			}
		}
		waitRow(t, ctx, r, `SELECT count(*) FROM polyregion.parked WHERE resolved_at IS NULL`, 0)
		if r != us && queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.parked WHERE tbl = 'public.docs' AND reason LIKE '%unchanged TOAST value%'`) == 0 {
			t.Fatalf("%s parked no update of a row the seed had not brought yet: the test missed what it is for", r.Name)
		}
	}
	seedLog := ""
	for _, l := range strings.Split(us.Logs(1<<24), "\n") {
		if strings.Contains(l, "replicating a table added by the cluster") {
			seedLog += "\n" + l
		}
	}
	t.Logf("us wrote %d times while the tables were added (%d counted increments); parked in eu: %d, in ap: %d; us's seeds:%s",
		writes, increments, queryInt(t, ctx, h.Regions[1], `SELECT count(*) FROM polyregion.parked`), queryInt(t, ctx, h.Regions[2], `SELECT count(*) FROM polyregion.parked`), seedLog)
}

// TestASeedCutByAKillGoesOnWhenTheReplicatorRestarts: us's replicator is
// killed (-9) while it seeds a 300,000-row counter table the cluster
// added, with increments going on. The table stays published (its writes
// since are in the stream) and the seed recorded as begun; the restarted
// replicator seeds it again from the first key (waiting first for an
// application holding the table, with /health saying how far the cut seed
// had come) and every region ends with us's sums, every increment counted
// once.
func TestASeedCutByAKillGoesOnWhenTheReplicatorRestarts(t *testing.T) {
	const rows = 300000
	ctx := ctxFor(t, 6*time.Minute)
	h := startTallyToAdd(t, ctx, rows)
	us := h.Regions[0]

	ws := startWriters(ctx, us, 1, 5, func(conn *pgx.Conn, rng *rand.Rand, _, _ int) error {
		_, err := conn.Exec(ctx, `UPDATE public.tally SET hits = hits + 1 WHERE id = $1`, 1+rng.IntN(rows))
		return err
	})
	mustPolyregion(t, ctx, "cluster", "configure", "--config",
		withTables(t, us, "tally", []TableSpec{{Name: "public.kv"}, {Name: "public.tally", Counters: []string{"hits"}}}))
	watch, err := us.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close(context.Background())
	for seeding := false; !seeding; time.Sleep(5 * time.Millisecond) {
		if err := watch.QueryRow(ctx, `SELECT EXISTS (SELECT FROM polyregion.seeding WHERE tbl = 'public.tally' AND rows > 0)`).Scan(&seeding); err != nil {
			t.Fatal(err)
		}
	}
	if err := us.StopReplicator(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cut := queryInt(t, ctx, us, `SELECT coalesce(max(rows), 0) FROM polyregion.seeding WHERE tbl = 'public.tally'`)
	if cut == 0 {
		t.Fatal("the seed ended before the replicator was killed: nothing tested")
	}
	if n := queryInt(t, ctx, us, `SELECT count(*) FROM pg_catalog.pg_publication_tables WHERE tablename = 'tally'`); n != 1 {
		t.Fatalf("the table of the cut seed is not published: the writes since would be lost")
	}
	time.Sleep(500 * time.Millisecond) // increments while the replicator is down
	// An application holds the table across the restart: the resumed
	// seed waits for its first chunk's lock, and /health says how far the
	// cut one had come.
	held, _ := holdRow(t, ctx, us, `UPDATE public.tally SET hits = hits + 1 WHERE id = 1`)
	defer held.Rollback(context.Background())
	if err := us.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, us, 20*time.Second, "saying the seed goes on from the first key", func(_ int, body string) bool {
		return strings.Contains(body, fmt.Sprintf("its rows here are being seeded into this region's change stream, again from the first key: an earlier run had seeded %d rows when it stopped", cut))
	})
	_, metrics := opsGet(t, us, "/metrics")
	if v, ok := metricValue(metrics, "polyregion_seed_rows"); !ok || v != 0 {
		t.Fatalf("/metrics: polyregion_seed_rows %v (%v) before the resumed seed's first chunk, want 0", v, ok)
	}
	if err := held.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		waitControl(t, r, 2*time.Minute, "epoch 2 in effect", func(c controlStatus) bool { return c.Epoch.Number == 2 && c.Epoch.Effective > 0 })
	}
	ws.stop(t)
	if err := h.WaitConverged(ctx, []string{"public.kv", "public.tally"}, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	sum := queryInt(t, ctx, us, `SELECT sum(hits) FROM public.tally`)
	for _, r := range h.Regions {
		if got := queryInt(t, ctx, r, `SELECT sum(hits) FROM public.tally`); got != sum {
			t.Fatalf("%s: sum(hits) = %d, us has %d", r.Name, got, sum)
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.seeding`); n != 0 {
			t.Fatalf("%s still records a seed under way", r.Name)
		}
	}
	if !strings.Contains(us.Logs(1<<24), `"table":"public.tally","epoch":2,"rows":`+fmt.Sprint(rows)) || !strings.Contains(us.Logs(1<<24), `"resumed":true`) {
		t.Fatalf("us did not log the seed going on:\n%s", us.Logs(3000))
	}
	t.Logf("the seed was cut after %d rows; %d increments in all, the same sum everywhere", cut, sum-rows)
}

// TestOtherTablesReplicateWhileATableSeeds: us seeds a table the cluster
// added, and an application takes a write lock on it once the seed has
// begun, so the seed waits for its next chunk's lock. Meanwhile the other
// tables replicate both ways (the seed runs beside the data plane, not
// before it). Once the application commits, the seed goes on and every
// region ends with us's rows.
func TestOtherTablesReplicateWhileATableSeeds(t *testing.T) {
	const rows = 200000
	ctx := ctxFor(t, 5*time.Minute)
	h := startTallyToAdd(t, ctx, rows)
	us, eu := h.Regions[0], h.Regions[1]
	app, err := us.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(context.Background())

	mustPolyregion(t, ctx, "cluster", "configure", "--config",
		withTables(t, us, "tally", []TableSpec{{Name: "public.kv"}, {Name: "public.tally", Counters: []string{"hits"}}}))
	// Once the seed's first chunk is in, the application holds the table
	// (an update left open): the seed waits for the next chunk's lock.
	for seeding := false; !seeding; time.Sleep(2 * time.Millisecond) {
		if err := app.QueryRow(ctx, `SELECT EXISTS (SELECT FROM polyregion.seeding WHERE tbl = 'public.tally' AND rows > 0)`).Scan(&seeding); err != nil {
			t.Fatal(err)
		}
	}
	held, err := app.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := held.Exec(ctx, `UPDATE public.tally SET hits = hits + 1 WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, ctx, us, `SELECT count(*) FROM polyregion.seeded WHERE tbl = 'public.tally'`); n != 0 {
		t.Fatal("the seed ended before the application took the table: nothing tested")
	}
	crossed := kvCrosses(t, ctx, us, eu, "while us seeds public.tally: replication waits for the seed")
	seeded := queryInt(t, ctx, us, `SELECT coalesce(max(rows), 0) FROM polyregion.seeding WHERE tbl = 'public.tally'`)
	if seeded == 0 || seeded >= rows {
		t.Fatalf("the seed is not under way (%d of %d rows): nothing tested", seeded, rows)
	}
	// /health and /metrics show how far the seed is. The epoch coming into
	// effect restarts the data plane; when that cut the seed after the
	// application took the table, the next run's seed goes on from the
	// first key and waits for its first chunk's lock, saying how far the
	// earlier run had come.
	const waitingTally = "table public.tally added by the cluster is not replicated here yet (peers' changes to it are parked; every other table replicates): its rows here are being seeded into this region's change stream"
	soFar := fmt.Sprintf("%s: %d rows so far", waitingTally, seeded)
	again := fmt.Sprintf("%s, again from the first key: an earlier run had seeded %d rows when it stopped", waitingTally, seeded)
	var resumed bool
	waitHealth(t, us, 10*time.Second, "showing the seed's progress", func(_ int, body string) bool {
		resumed = strings.Contains(body, again)
		return resumed || strings.Contains(body, soFar)
	})
	_, metrics := opsGet(t, us, "/metrics")
	want := seeded
	if resumed {
		want = 0 // the rows this run's seed emitted
	}
	if v, ok := metricValue(metrics, "polyregion_seed_rows"); !ok || v != float64(want) {
		t.Fatalf("/metrics: polyregion_seed_rows %v (%v), want %d (the seed resumed: %v)", v, ok, want, resumed)
	}
	if err := held.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	tallyEndsEverywhere(t, ctx, h, rows+1, "the seeded rows and the held increment")
	t.Logf("kv rows written in us and eu crossed in %s while us's seed waited for the table (%d of %d rows seeded; cut by the epoch's restart and resumed: %v)", crossed.Round(time.Millisecond), seeded, rows, resumed)
}

// TestAHeldTableDoesNotHoldReplication: an application transaction is
// left open on a replicated table (kv) and on the table the cluster adds
// (tally) in us. The epoch's restart takes no lock on kv (its triggers are
// in place) and does not wait for tally's (the seed tries it in short
// waits while the data plane runs): kv replicates both ways meanwhile, the
// application's other writes to tally go on, and once the transaction
// commits tally is seeded and ends the same everywhere.
func TestAHeldTableDoesNotHoldReplication(t *testing.T) {
	const rows = 1000
	ctx := ctxFor(t, 5*time.Minute)
	h := startTallyToAdd(t, ctx, rows)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES (1000, 'held')`)
	if err := h.WaitConverged(ctx, []string{"public.kv"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	held, _ := holdRow(t, ctx, us, `UPDATE public.kv SET val = 'held and changed' WHERE id = 1000`)
	defer held.Rollback(context.Background())
	if _, err := held.Exec(ctx, `UPDATE public.tally SET hits = hits + 1 WHERE id = 1`); err != nil {
		t.Fatal(err)
	}

	mustPolyregion(t, ctx, "cluster", "configure", "--config",
		withTables(t, us, "tally", []TableSpec{{Name: "public.kv"}, {Name: "public.tally", Counters: []string{"hits"}}}))
	// us's data plane runs at epoch 2, tally waiting for its seed.
	waitHealth(t, us, 30*time.Second, "naming public.tally as waiting", func(_ int, body string) bool {
		return strings.Contains(body, "table public.tally added by the cluster is not replicated here yet")
	})
	began := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := appConn(t, ctx, us).Exec(wctx, `UPDATE public.tally SET hits = hits + 1 WHERE id = 2`); err != nil {
		t.Fatalf("an application's write to public.tally while the seed waits for the table: %v (it queued behind the replicator's lock request)", err)
	}
	wrote := time.Since(began)
	crossed := kvCrosses(t, ctx, us, eu, "while an application holds kv and tally in us")
	if n := queryInt(t, ctx, us, `SELECT count(*) FROM polyregion.seeded WHERE tbl = 'public.tally'`); n != 0 {
		t.Fatal("us seeded public.tally while the application held it: nothing tested")
	}
	if err := held.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	tallyEndsEverywhere(t, ctx, h, rows+2, "the seeded rows, the held increment and the one made while the seed waited")
	t.Logf("while an application held kv and tally in us: a write to tally took %s, kv rows crossed in %s", wrote.Round(time.Millisecond), crossed.Round(time.Millisecond))
}

// kvCrosses writes a kv row in eu and one in us and waits until each has
// reached the other region, failing the test (saying while what) after
// 10 s; it returns how long they took.
func kvCrosses(t *testing.T, ctx context.Context, us, eu *Region, while string) time.Duration {
	t.Helper()
	began := time.Now()
	mustExec(t, ctx, eu, `INSERT INTO public.kv (id, val) VALUES (1001, 'from eu')`)
	mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES (1002, 'from us')`)
	for _, c := range []struct {
		r  *Region
		id int
	}{{us, 1001}, {eu, 1002}} {
		for queryInt(t, ctx, c.r, `SELECT count(*) FROM public.kv WHERE id = $1`, c.id) == 0 {
			if time.Since(began) > 10*time.Second {
				t.Fatalf("%s has not received kv %d 10 s after it was written, %s", c.r.Name, c.id, while)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return time.Since(began)
}

// tallyEndsEverywhere waits for epoch 2 in effect and kv and tally
// converged in every region of h, and fails the test unless each holds
// hits increments (what they are) and no parked change.
func tallyEndsEverywhere(t *testing.T, ctx context.Context, h *Harness, hits int64, what string) {
	t.Helper()
	for _, r := range h.Regions {
		waitControl(t, r, 2*time.Minute, "epoch 2 in effect", func(c controlStatus) bool { return c.Epoch.Number == 2 && c.Epoch.Effective > 0 })
	}
	if err := h.WaitConverged(ctx, []string{"public.kv", "public.tally"}, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		if got := queryInt(t, ctx, r, `SELECT sum(hits) FROM public.tally`); got != hits {
			t.Fatalf("%s: sum(hits) = %d, want %d (%s)", r.Name, got, hits, what)
		}
		waitRow(t, ctx, r, `SELECT count(*) FROM polyregion.parked WHERE resolved_at IS NULL`, 0)
	}
}

// appConn opens an application connection to r, closed when the test ends.
func appConn(t *testing.T, ctx context.Context, r *Region) *pgx.Conn {
	t.Helper()
	c, err := r.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// startTallyToAdd starts three regions founded through the control plane
// that replicate kv, us holding rows rows of public.tally (hits, a counter,
// 1 in each; REPLICA IDENTITY FULL), which the cluster does not replicate
// yet.
func startTallyToAdd(t *testing.T, ctx context.Context, rows int) *Harness {
	t.Helper()
	schema := append(append([]string(nil), kvSchema...),
		`CREATE TABLE public.tally (id integer PRIMARY KEY, note text, hits bigint NOT NULL DEFAULT 0)`,
		`ALTER TABLE public.tally REPLICA IDENTITY FULL`)
	h := startFoundedThrough(t, ctx, schema, []TableSpec{{Name: "public.kv"}}, func(*RegionConfig) {}, nil)
	mustExec(t, ctx, h.Regions[0], fmt.Sprintf(`INSERT INTO public.tally (id, note, hits) SELECT g, 'row ' || g, 1 FROM pg_catalog.generate_series(1, %d) g`, rows))
	return h
}
