package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// joinBulkRows is how many rows the first region holds before the others
// join (POLYREGION_JOIN_ROWS overrides it).
func joinBulkRows() int {
	if n, err := strconv.Atoi(os.Getenv("POLYREGION_JOIN_ROWS")); err == nil && n > 0 {
		return n
	}
	return 1_000_000
}

// TestRegionsJoinOnlineFromOneRegionWithData: us holds a million rows and
// takes writes (ledger transactions with counter columns, updates and
// deletes of its rows); eu joins from us while us writes, then ap joins
// from eu while both write. ap's replicator is killed (-9) during its load
// and eu's (the source) during the next one: a cut load keeps the parts it
// committed (and no position), the next goes on after them from a new
// snapshot, and the join completes. At the end the three regions are identical, every
// ledger transaction is there exactly once in each, the counters hold every
// increment, every region's updates and deletes of the bulk rows are there
// once, and the loaded rows were never shipped back out.
func TestRegionsJoinOnlineFromOneRegionWithData(t *testing.T) {
	schema := append(append([]string(nil), LedgerSchema...),
		`CREATE TABLE public.bulk (id bigint PRIMARY KEY, payload text NOT NULL, n integer NOT NULL DEFAULT 0)`)
	tables := append(append([]TableSpec(nil), LedgerTables...), TableSpec{Name: "public.bulk"})
	h := startClusters(t, Spec{SchemaSQL: schema, Tables: tables, Configure: func(region string, c *RegionConfig) {
		c.Health = map[string]string{"hold": "200ms", "probe_interval": "100ms"}
	}})
	ctx := ctxFor(t, 12*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	rows := joinBulkRows()
	mustExec(t, ctx, us, `INSERT INTO public.bulk (id, payload) SELECT g, md5(g::text) FROM generate_series(1, $1::int) g`, rows)
	if err := SeedLedger(ctx, h); err != nil {
		t.Fatal(err)
	}
	startReady(t, ctx, us)

	ledger := NewLedger()
	churn := newBulkChurn(rows)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var werrs []string
	write := func(r *Region) {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := ledger.Run(ctx, &Harness{Spec: h.Spec, Regions: []*Region{r}}, 2, 40, stop); err != nil {
				errMu.Lock()
				werrs = append(werrs, err.Error())
				errMu.Unlock()
			}
		}()
		go func() {
			defer wg.Done()
			if err := churn.run(ctx, r, 40, stop); err != nil {
				errMu.Lock()
				werrs = append(werrs, err.Error())
				errMu.Unlock()
			}
		}()
	}
	write(us)
	time.Sleep(2 * time.Second)

	// eu joins from us while us writes; it answers 503 until it has caught up.
	if err := eu.StartReplicatorWith("--join", "us"); err != nil {
		t.Fatal(err)
	}
	// Killed once loaded, before it caught up (ap is not there yet: eu
	// waits JoinPeerGrace for it), eu still reports joining after a restart.
	waitLoaded(t, ctx, eu, 4*time.Minute)
	if err := eu.StopReplicator(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := eu.StartReplicatorWith("--join", "us"); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		if st, ok := statusOf(eu); ok && strings.Contains(st.Joining, "snapshot from us loaded; catching up") {
			break
		}
		if time.Since(start) > 10*time.Second {
			st, _ := statusOf(eu)
			t.Fatalf("eu restarted before it caught up does not report joining: %+v", st)
		}
	}
	waitJoined(t, ctx, eu, 4*time.Minute)
	waitHealth(t, eu, time.Minute, "200 once joined", func(code int, _ string) bool { return code == 200 })
	write(eu)
	time.Sleep(2 * time.Second)

	// ap joins from eu (which joined itself) while both write; its own
	// replicator is killed during the load, then the source's.
	if err := ap.StartReplicatorWith("--join", "eu"); err != nil {
		t.Fatal(err)
	}
	waitLoading(t, ctx, ap, "public.bulk", 3*time.Minute)
	waitChunksOf(t, ctx, ap, "public.bulk", 1, 3*time.Minute)
	if err := ap.StopReplicator(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	kept := keptOfCutLoad(t, ctx, ap, 0)
	if err := ap.StartReplicatorWith("--join", "eu"); err != nil {
		t.Fatal(err)
	}
	// ap stops reading (frozen) so the source cannot finish sending, and
	// the source is killed mid-stream.
	waitLoading(t, ctx, ap, "public.bulk", 3*time.Minute)
	waitChunksOf(t, ctx, ap, "public.bulk", kept.chunks+1, 3*time.Minute)
	failedBefore := strings.Count(ap.Logs(1<<24), "the snapshot could not be loaded")
	if err := ap.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if err := eu.StopReplicator(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := ap.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); strings.Count(ap.Logs(1<<24), "the snapshot could not be loaded") == failedBefore; time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > time.Minute {
			t.Fatalf("ap did not report the load cut short by its source's kill:\n%s", ap.Logs(4000))
		}
	}
	keptOfCutLoad(t, ctx, ap, kept.rows)
	if err := eu.StartReplicatorWith("--join", "us"); err != nil {
		t.Fatal(err)
	}
	waitJoined(t, ctx, ap, 4*time.Minute)
	waitHealth(t, ap, time.Minute, "200 once joined", func(code int, _ string) bool { return code == 200 })
	write(ap)
	time.Sleep(4 * time.Second)
	close(stop)
	wg.Wait()
	if len(werrs) > 0 {
		t.Fatalf("writers failed: %s", strings.Join(werrs, "; "))
	}

	if err := h.WaitConverged(ctx, tableNames(tables), 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := ledger.ExactlyOnce(ctx, h); err != nil {
		t.Fatal(err)
	}
	if ledger.Transactions() < 100 {
		t.Fatalf("only %d ledger transactions committed; the workload did not run", ledger.Transactions())
	}
	churn.verify(t, ctx, h)
	// The loaded rows were never shipped out again: each joined region
	// shipped only its writers' transactions.
	for _, r := range []*Region{eu, ap} {
		shipped := queryInt(t, ctx, r, `SELECT next_seq - 1 FROM polyregion.reader_state`)
		if wrote := ledger.TransactionsIn(r.Name) + churn.transactions(r.Name); shipped > wrote {
			t.Errorf("region %s shipped %d transactions, its writers committed %d: loaded or applied rows went out again", r.Name, shipped, wrote)
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.joined WHERE caught_up_at IS NOT NULL`); n != 1 {
			t.Errorf("region %s did not record that it caught up", r.Name)
		}
		src := map[string]string{"eu": "us", "ap": "eu"}[r.Name]
		out, err := exec.Command(binary, "status", "--config", r.ConfigPath).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "from "+src+"'s snapshot at ") {
			t.Errorf("region %s: status does not say it joined from %s: %v\n%s", r.Name, src, err, out)
		}
	}
	// Each load after a cut went on after what the cut one had committed.
	if n := strings.Count(ap.Logs(1<<24), "joining: going on with a load cut short"); n < 2 {
		t.Errorf("ap went on with its cut load %d times, want 2 (after each cut)", n)
	}
	for _, r := range []*Region{eu, ap} {
		for _, line := range strings.Split(r.Logs(1<<24), "\n") {
			if strings.Contains(line, "joined: snapshot loaded") || strings.Contains(line, "could not be loaded") || strings.Contains(line, "going on with a load") {
				t.Logf("%s: %s", r.Name, line)
			}
		}
	}
	t.Logf("%d bulk rows; %d ledger transactions, %d bulk updates and deletes; writers failed %d transactions",
		rows, ledger.Transactions(), churn.total(), ledger.Errors)
}

// waitJoined waits until the region has loaded its snapshot and its
// /status no longer says it is joining.
func waitJoined(t *testing.T, ctx context.Context, r *Region, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if st, ok := statusOf(r); ok && st.Joining == "" && loaded(t, ctx, r) {
			return
		}
		if !r.Running() {
			t.Fatalf("replicator %s exited while joining:\n%s", r.Name, r.Logs(4000))
		}
		time.Sleep(50 * time.Millisecond)
	}
	st, _ := statusOf(r)
	t.Fatalf("region %s did not join within %s: %+v\n%s", r.Name, within, st, r.Logs(4000))
}

// startReady starts the region's replicator and waits until it is ready.
func startReady(t *testing.T, ctx context.Context, r *Region) {
	t.Helper()
	if err := r.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	if err := r.WaitReady(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
}

// joinFrom starts the region's replicator with --join from and waits until
// it has joined (see waitJoined).
func joinFrom(t *testing.T, ctx context.Context, r *Region, from string, within time.Duration) {
	t.Helper()
	if err := r.StartReplicatorWith("--join", from); err != nil {
		t.Fatal(err)
	}
	waitJoined(t, ctx, r, within)
}

// loaded reports whether the region has loaded a snapshot (its schema may
// not be installed yet).
func loaded(t *testing.T, ctx context.Context, r *Region) bool {
	t.Helper()
	return queryString(t, ctx, r, `SELECT coalesce(pg_catalog.to_regclass('polyregion.joined')::text, '')`) != "" &&
		queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.joined`) == 1
}

// waitLoaded waits until the region has loaded its snapshot.
func waitLoaded(t *testing.T, ctx context.Context, r *Region, within time.Duration) {
	t.Helper()
	for start := time.Now(); time.Since(start) < within && ctx.Err() == nil; time.Sleep(20 * time.Millisecond) {
		if loaded(t, ctx, r) {
			return
		}
	}
	t.Fatalf("region %s did not load its snapshot within %s:\n%s", r.Name, within, r.Logs(4000))
}

// waitLoading waits until the region's /status says it is loading table.
func waitLoading(t *testing.T, ctx context.Context, r *Region, table string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if st, ok := statusOf(r); ok && strings.Contains(st.Joining, "(loading "+table+")") {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	st, _ := statusOf(r)
	t.Fatalf("region %s was not seen loading %s within %s: %+v\n%s", r.Name, table, within, st, r.Logs(4000))
}

// statusOf reads the region's /status (false when it does not answer).
func statusOf(r *Region) (opsStatus, bool) {
	var st opsStatus
	resp, err := httpClient.Get("http://" + r.HTTPListen + "/status")
	if err != nil {
		return st, false
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st) == nil
}

var httpClient = &http.Client{Timeout: 2 * time.Second}

// bulkChurn updates and deletes the bulk rows, each region its own share of
// keys (id modulo 3), so no two regions' writes conflict and every effect
// must be there exactly once: each update adds one to n.
type bulkChurn struct {
	rows    int
	mu      sync.Mutex
	updates map[int64]int64 // id -> updates committed
	deleted map[int64]bool
	txns    map[string]int64
}

func newBulkChurn(rows int) *bulkChurn {
	return &bulkChurn{rows: rows, updates: map[int64]int64{}, deleted: map[int64]bool{}, txns: map[string]int64{}}
}

func (c *bulkChurn) share(region string) int64 {
	return map[string]int64{"us": 0, "eu": 1, "ap": 2}[region]
}

func (c *bulkChurn) run(ctx context.Context, r *Region, rate float64, stop <-chan struct{}) error {
	pool, err := r.Pool(ctx)
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewSource(time.Now().UnixNano() + c.share(r.Name)))
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	for !stopped(ctx, stop) {
		select {
		case <-tick.C:
		case <-stop:
			return nil
		case <-ctx.Done():
			return nil
		}
		id := int64(rng.Intn(c.rows/3))*3 + c.share(r.Name) + 1
		if id > int64(c.rows) {
			continue
		}
		c.mu.Lock()
		gone := c.deleted[id]
		c.mu.Unlock()
		if gone {
			continue
		}
		del := rng.Intn(5) == 0
		if err := c.apply(ctx, pool, id, del); err != nil {
			return fmt.Errorf("bulk churn in %s: %w", r.Name, err)
		}
		c.mu.Lock()
		if del {
			c.deleted[id] = true
		} else {
			c.updates[id]++
		}
		c.txns[r.Name]++
		c.mu.Unlock()
	}
	return nil
}

func (c *bulkChurn) apply(ctx context.Context, pool *pgxpool.Pool, id int64, del bool) error {
	q := `UPDATE public.bulk SET n = n + 1 WHERE id = $1`
	if del {
		q = `DELETE FROM public.bulk WHERE id = $1`
	}
	tag, err := pool.Exec(ctx, q, id)
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("%s of bulk row %d changed %d rows", q, id, tag.RowsAffected())
	}
	return nil
}

func (c *bulkChurn) transactions(region string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.txns[region]
}

func (c *bulkChurn) total() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, v := range c.txns {
		n += v
	}
	return n
}

// verify checks, in every region, that the bulk rows hold every update
// once and none deleted is there.
func (c *bulkChurn) verify(t *testing.T, ctx context.Context, h *Harness) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range h.Regions {
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.bulk`); n != int64(c.rows-len(c.deleted)) {
			t.Errorf("region %s holds %d bulk rows, want %d (%d deleted)", r.Name, n, c.rows-len(c.deleted), len(c.deleted))
		}
		var sum int64
		for id, v := range c.updates {
			if !c.deleted[id] {
				sum += v
			}
		}
		if n := queryInt(t, ctx, r, `SELECT coalesce(sum(n), 0) FROM public.bulk`); n != sum {
			t.Errorf("region %s's bulk rows hold %d updates, %d were committed", r.Name, n, sum)
		}
	}
}

// A region that is not new cannot join: one whose replicated table holds a
// row, or whose table differs from the source's, is refused with an error
// naming what to fix, and nothing is loaded. A region that another region
// does not accept yet (its configuration differs) waits, naming that region.
// Once all is fixed it joins; the writes it took before (removed since) are
// never shipped, where they would act on the loaded rows everywhere; an
// array of an enum whose type has another oid here than at the source loads.
func TestJoinRefusesARegionThatIsNotNew(t *testing.T) {
	schema := []string{
		`CREATE TYPE public.mood AS ENUM ('ok', 'sad')`,
		`CREATE TABLE public.notes (id bigint PRIMARY KEY, body text NOT NULL, moods public.mood[])`,
	}
	tables := []TableSpec{{Name: "public.notes"}}
	h := startClusters(t, Spec{SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	mustExec(t, ctx, us, `INSERT INTO public.notes SELECT g, 'n' || g, ARRAY['ok', 'sad']::public.mood[] FROM generate_series(1, 100) g`)
	if err := us.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, eu, `INSERT INTO public.notes VALUES (5, 'written in eu before it joined')`)
	if err := eu.StartReplicatorWith("--join", "us"); err != nil {
		t.Fatal(err)
	}
	waitExited(t, eu, time.Minute)
	if logs := eu.Logs(1 << 20); !strings.Contains(logs, "table public.notes in region eu already holds rows: a region joins with its replicated tables empty") {
		t.Fatalf("eu's log does not say why it cannot join:\n%s", logs)
	}
	if n := queryInt(t, ctx, eu, `SELECT count(*) FROM public.notes`); n != 1 {
		t.Fatalf("eu holds %d notes after a refused join, want its own 1", n)
	}

	if err := eu.StopReplicator(syscall.SIGTERM); err != nil { // reaps it
		t.Fatal(err)
	}
	mustExec(t, ctx, eu, `DELETE FROM public.notes`)
	mustExec(t, ctx, eu, `ALTER TABLE public.notes ADD COLUMN tag text`)
	if err := eu.StartReplicatorWith("--join", "us"); err != nil {
		t.Fatal(err)
	}
	waitExited(t, eu, time.Minute)
	if logs := eu.Logs(1 << 20); !strings.Contains(logs, "table public.notes differs between us and eu: column tag (text) exists only here") {
		t.Fatalf("eu's log does not name the differing column:\n%s", logs)
	}
	if n := queryInt(t, ctx, eu, `SELECT count(*) FROM public.notes`) + queryInt(t, ctx, eu, `SELECT count(*) FROM polyregion.applied`); n != 0 {
		t.Fatalf("eu kept %d rows and positions of a refused join", n)
	}
	if err := eu.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The same columns again, the enum recreated under another oid.
	for _, q := range []string{`ALTER TABLE public.notes DROP COLUMN tag`, `ALTER TABLE public.notes DROP COLUMN moods`, `DROP TYPE public.mood`,
		`CREATE TYPE public.mood AS ENUM ('ok', 'sad')`, `ALTER TABLE public.notes ADD COLUMN moods public.mood[]`} {
		mustExec(t, ctx, eu, q)
	}
	if a, b := queryInt(t, ctx, us, `SELECT 'public.mood'::regtype::oid::int8`), queryInt(t, ctx, eu, `SELECT 'public.mood'::regtype::oid::int8`); a == b {
		t.Fatalf("the enum has the same oid (%d) in us and eu", a)
	}

	// ap runs a configuration that differs (another policy): eu waits,
	// naming it, and loads nothing.
	good, err := os.ReadFile(ap.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	rewriteConfig(t, ap, func(c *RegionConfig) { c.Tables[0].Deletes = "delete_wins" })
	if err := ap.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); !strings.Contains(ap.Logs(1<<20), "replicator running"); time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > time.Minute {
			t.Fatalf("ap did not start:\n%s", ap.Logs(4000))
		}
	}
	if err := eu.StartReplicatorWith("--join", "us"); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); !strings.Contains(eu.Logs(1<<20), "peer ap runs another configuration"); time.Sleep(100 * time.Millisecond) {
		if time.Since(start) > time.Minute {
			t.Fatalf("eu does not say ap refuses it:\n%s", eu.Logs(4000))
		}
	}
	if n := queryInt(t, ctx, eu, `SELECT count(*) FROM public.notes`); n != 0 || !eu.Running() {
		t.Fatalf("eu loaded %d notes (running: %v) while ap refuses it", n, eu.Running())
	}
	if err := ap.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ap.ConfigPath, good, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ap.StartReplicatorWith("--join", "us"); err != nil {
		t.Fatal(err)
	}
	waitJoined(t, ctx, eu, 2*time.Minute)
	waitJoined(t, ctx, ap, 2*time.Minute)
	mustExec(t, ctx, us, `UPDATE public.notes SET body = 'after the join' WHERE id = 7`)
	mustExec(t, ctx, eu, `UPDATE public.notes SET moods = ARRAY['sad']::public.mood[] WHERE id = 8`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.notes WHERE moods = ARRAY['ok', 'sad']::public.mood[]`); n != 99 {
			t.Errorf("region %s holds %d notes with both moods, want 99", r.Name, n)
		}
		if b := queryString(t, ctx, r, `SELECT body FROM public.notes WHERE id = 5`); b != "n5" {
			t.Errorf("region %s: note 5 is %q, want us's n5", r.Name, b)
		}
	}
	if n := queryInt(t, ctx, eu, `SELECT coalesce((SELECT next_seq - 1 FROM polyregion.reader_state), 0)`); n != 1 {
		t.Errorf("eu shipped %d transactions; it wrote one since it joined", n)
	}
}

// A joined region's search index ends with the rows it loaded and those
// applied since: us holds profiles of every column type the index tests
// use (enum, arrays, jsonb, numeric, timestamps, bytea, a large TOASTed
// text) and memberships; eu, with an embedded index, joins from it; both
// then write. The rows read the same in both regions (COPY's text form
// keeps every value) and eu's index equals its tables.
func TestJoinedRegionIndexesWhatItLoaded(t *testing.T) {
	dir := testDir(t)
	specs := indexSpecs("")
	h := startClusters(t, Spec{Dir: dir, Regions: []string{"us", "eu"}, SchemaSQL: indexSchema, Tables: indexTables,
		Configure: func(region string, c *RegionConfig) {
			c.Search = searchSection("embedded", "", filepath.Join(dir, region+"-index"), specs)
		}})
	ctx := ctxFor(t, 5*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, us, `INSERT INTO public.profiles (id, name, bio, tags, meta, plan, score, seen, avatar, secret)
		SELECT g, 'user ' || g, CASE WHEN g % 50 = 0 THEN repeat(md5(g::text), 300) ELSE 'bio ' || g END,
			ARRAY['t' || (g % 7), 'with space', 'quote"d'], jsonb_build_object('n', g, 'nested', jsonb_build_object('ok', g % 2 = 0)),
			(ARRAY['free', 'pro', 'team']::public.plan[])[1 + g % 3], (g % 1000) + 0.25, now() - g * interval '1 minute',
			decode(lpad(to_hex(g), 8, '0'), 'hex'), 'x'
		FROM generate_series(1, 3000) g`)
	mustExec(t, ctx, us, `INSERT INTO public.memberships (org, member, role, since) SELECT 'org|' || (g % 4), g, 'member', date '2026-01-01' + g FROM generate_series(1, 500) g`)
	if err := us.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	joinFrom(t, ctx, eu, "us", 2*time.Minute)
	mustExec(t, ctx, us, `UPDATE public.profiles SET score = score + 1, name = 'renamed in us' WHERE id % 10 = 0`)
	mustExec(t, ctx, eu, `UPDATE public.profiles SET tags = ARRAY['eu'] WHERE id % 10 = 5`)
	mustExec(t, ctx, eu, `DELETE FROM public.memberships WHERE member % 5 = 0`)
	if err := h.WaitConverged(ctx, []string{"public.profiles", "public.memberships"}, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		diffs := waitIndexed(ctx, t, r, searchAPI{"http://" + r.HTTPListen}, specs, 2*time.Minute)
		if diffs[0].Rows != 3000 || diffs[1].Rows != 400 {
			t.Fatalf("region %s indexed %v, want 3000 profiles and 400 memberships", r.Name, diffs)
		}
	}
}

// cutLoad is what a load cut short kept.
type cutLoad struct{ chunks, rows int64 }

// keptOfCutLoad checks what a load cut short kept in r: the rows of the
// chunks it committed, no fewer than atLeast and exactly as many as its
// parts record, and no position (it streams nothing until the load ends).
func keptOfCutLoad(t *testing.T, ctx context.Context, r *Region, atLeast int64) cutLoad {
	t.Helper()
	if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.applied`) + queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.joined`); n != 0 {
		t.Fatalf("%s recorded positions or its join (%d rows) for a load that did not finish", r.Name, n)
	}
	var c cutLoad
	c.chunks = int64(queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.join_units WHERE 'public.bulk' = ANY (tables)`))
	recorded := int64(queryInt(t, ctx, r, `SELECT coalesce(sum(rows), 0) FROM polyregion.join_units WHERE 'public.bulk' = ANY (tables)`))
	c.rows = int64(queryInt(t, ctx, r, `SELECT count(*) FROM public.bulk`))
	if c.rows != recorded || c.rows <= atLeast || c.chunks == 0 {
		t.Fatalf("%s kept %d bulk rows in %d chunks recorded as %d rows, want as many as recorded and more than %d", r.Name, c.rows, c.chunks, recorded, atLeast)
	}
	t.Logf("%s: a cut load kept %d bulk rows in %d chunks", r.Name, c.rows, c.chunks)
	return c
}
