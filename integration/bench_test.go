package integration

import (
	"context"

	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// benchRows is the insert backlog (BENCH_ROWS overrides; default 1M). The
// update backlog is 30% of it (300k rows by default).
func benchRows() int {
	if v, err := strconv.Atoi(os.Getenv("BENCH_ROWS")); err == nil && v > 0 {
		return v
	}
	return 1_000_000
}

func benchUpdateRows(rows int) int { return rows * 3 / 10 }

func benchReps() int {
	if v, err := strconv.Atoi(os.Getenv("BENCH_REPS")); err == nil && v > 0 {
		return v
	}
	return 3
}

// benchLagSeconds is how long the lag measurement writes (BENCH_LAG_SECONDS
// overrides; default 30 s, of which the first 5 s are warm-up).
func benchLagSeconds() time.Duration {
	if v, err := strconv.Atoi(os.Getenv("BENCH_LAG_SECONDS")); err == nil && v > 5 {
		return time.Duration(v) * time.Second
	}
	return 30 * time.Second
}

var benchSchema = []string{`CREATE TABLE public.bench (id bigint PRIMARY KEY, payload text NOT NULL, n integer NOT NULL)`}

const benchTxnRows = 1000

func fillBacklog(ctx context.Context, r *Region, from, rows int) error {
	pool, err := r.Pool(ctx)
	if err != nil {
		return err
	}
	for lo := from; lo < from+rows; lo += benchTxnRows {
		hi := min(lo+benchTxnRows, from+rows) - 1
		if _, err := pool.Exec(ctx, `INSERT INTO public.bench SELECT g, md5(g::text) || md5((g+1)::text), g % 1000 FROM generate_series($1::bigint, $2::bigint) g`, lo, hi); err != nil {
			return err
		}
	}
	return nil
}

func updateBacklog(ctx context.Context, r *Region, rows int) error {
	pool, err := r.Pool(ctx)
	if err != nil {
		return err
	}
	for lo := 1; lo <= rows; lo += benchTxnRows {
		hi := min(lo+benchTxnRows, rows+1) - 1
		if _, err := pool.Exec(ctx, `UPDATE public.bench SET n = n + 1, payload = md5(payload) WHERE id BETWEEN $1 AND $2`, lo, hi); err != nil {
			return err
		}
	}
	return nil
}

func waitCount(ctx context.Context, r *Region, sql string, want int64, timeout time.Duration) error {
	conn, err := r.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	// The polled table grows from nothing during the measurement, faster
	// than it is analyzed: planned from stale statistics, a range count
	// scanned the whole table every 100 ms (about 50 ms of a core each
	// time, taken from the system being measured). A poll that has to scan
	// anyway (the reader's position: one row) is then costed past the JIT
	// thresholds and was compiled every time (120-240 ms of a core per
	// poll, about a quarter of the machine while the origin's reader was
	// measured): no JIT.
	if _, err := conn.Exec(ctx, `SET enable_seqscan = off`); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `SET jit = off`); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		var n int64
		if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
			return err
		}
		if n >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s = %d after %s, want %d", r.Name, sql, n, timeout, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// backlogDone is how a backlog's arrival is checked on the receiving
// region. Every system compared applies source transactions whole and in
// commit order, so the backlog is in once its last transaction's rows are:
// that is what is polled (cheaply: counting the whole table every 100 ms
// would load the machine being measured); the whole count is verified once
// after the clock stops.
type backlogDone struct {
	last, all         string
	wantLast, wantAll int64
}

func lastTxnFirstID(rows int) int { return (rows-1)/benchTxnRows*benchTxnRows + 1 }

func insertedDone(rows int) backlogDone {
	lo := lastTxnFirstID(rows)
	return backlogDone{
		last: fmt.Sprintf(`SELECT count(*) FROM public.bench WHERE id >= %d`, lo), wantLast: int64(rows - lo + 1),
		all: `SELECT count(*) FROM public.bench`, wantAll: int64(rows),
	}
}

func updatedDone(updRows int) backlogDone {
	lo := lastTxnFirstID(updRows)
	return backlogDone{
		last:     fmt.Sprintf(`SELECT count(*) FROM public.bench WHERE id BETWEEN %d AND %d AND n = (id %% 1000) + 1`, lo, updRows),
		wantLast: int64(updRows - lo + 1),
		all:      fmt.Sprintf(`SELECT count(*) FROM public.bench WHERE id <= %d AND n = (id %% 1000) + 1`, updRows), wantAll: int64(updRows),
	}
}

// wait returns once the backlog is in (the time to quote) and then checks
// that all of it is.
func (d backlogDone) wait(ctx context.Context, r *Region) (time.Time, error) {
	if err := waitCount(ctx, r, d.last, d.wantLast, 30*time.Minute); err != nil {
		return time.Time{}, err
	}
	done := time.Now()
	return done, waitCount(ctx, r, d.all, d.wantAll, 0)
}

// polyregionBacklog measures rows/s for the replicator catching up a
// backlog of inserts and then of updates written while it was stopped.
// readerRate is the rows/s the origin's reader versioned the insert
// backlog at (while the receiver applied it).
func polyregionBacklog(b *testing.B, rows int) (insertRate, updateRate, readerRate float64, peakRSS int64) {
	dir := benchDir(b)
	ctx := context.Background()
	prof := newBenchProfile()
	h, err := Start(ctx, Spec{Regions: []string{"us", "eu"}, SchemaSQL: benchSchema, Tables: []TableSpec{{Name: "public.bench"}}, Dir: dir, Binary: binary,
		ClusterOptions: prof.clusterOptions()})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	us, eu := h.Regions[0], h.Regions[1]
	if err := prof.startReplicators(h); err != nil {
		b.Fatal(err)
	}
	if err := h.WaitReady(ctx, time.Minute); err != nil {
		b.Fatal(err)
	}
	measure := func(phase string, fill func() error, done backlogDone, n int) (float64, float64) {
		for _, r := range h.Regions {
			if err := r.StopReplicator(syscall.SIGTERM); err != nil {
				b.Fatal(err)
			}
		}
		// The reader's position: its next sequence number, saved with each
		// batch it versions (the outbox's newest entry would do until the
		// outbox is trimmed empty, as it is once the peer acknowledged all).
		before := queryBench(b, ctx, us, readerVersioned)
		if err := fill(); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := prof.startReplicators(h); err != nil {
			b.Fatal(err)
		}
		profiled := prof.begin(ctx, h, phase)
		defer profiled()
		// The reader's share: until every backlog transaction is versioned.
		txns := int64((n + benchTxnRows - 1) / benchTxnRows)
		if err := waitCount(ctx, us, readerVersioned, before+txns, 30*time.Minute); err != nil {
			b.Fatal(err)
		}
		readerDone := time.Since(start)
		end, err := done.wait(ctx, eu)
		if err != nil {
			b.Fatal(err)
		}
		el := end.Sub(start)
		fmt.Printf("  polyregion: %d rows caught up in %.1fs (the reader had versioned them after %.1fs)\n", n, el.Seconds(), readerDone.Seconds())
		if rss, err := eu.PeakRSS(); err == nil && rss > peakRSS {
			peakRSS = rss
		}
		if rss, err := us.PeakRSS(); err == nil && rss > peakRSS {
			peakRSS = rss
		}
		return float64(n) / el.Seconds(), float64(n) / readerDone.Seconds()
	}
	updRows := benchUpdateRows(rows)
	insertRate, readerRate = measure("insert", func() error { return fillBacklog(ctx, us, 1, rows) }, insertedDone(rows), rows)
	updateRate, _ = measure("update", func() error { return updateBacklog(ctx, us, updRows) }, updatedDone(updRows), updRows)
	return insertRate, updateRate, readerRate, peakRSS
}

// readerVersioned counts the transactions the origin's reader versioned.
const readerVersioned = `SELECT coalesce(max(next_seq) - 1, 0) FROM polyregion.reader_state`

// baseline is a replication system compared against: how to set it up on a
// pair of fresh clusters, and how to stop and resume its apply.
type baseline struct {
	name     string
	settings map[string]string
	setup    func(ctx context.Context, src, dst *Region) error
	pause    func(ctx context.Context, dst *Region) error
	resume   func(ctx context.Context, dst *Region) error
}

func connInfo(r *Region) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s user=postgres", r.Cluster.Port, AppDB)
}

// builtin is PostgreSQL's own logical replication (publication/subscription).
var builtin = baseline{
	name: "built-in",
	// The launcher restarts an enabled subscription's worker no sooner than
	// this after its last start (default 5 s): not apply throughput.
	settings: map[string]string{"wal_retrieve_retry_interval": "'100ms'"},
	setup: func(ctx context.Context, src, dst *Region) error {
		if err := src.Cluster.Exec(ctx, AppDB, `CREATE PUBLICATION bench_pub FOR TABLE public.bench`); err != nil {
			return err
		}
		if err := dst.Cluster.Exec(ctx, AppDB, fmt.Sprintf(`CREATE SUBSCRIPTION bench_sub CONNECTION '%s' PUBLICATION bench_pub WITH (copy_data = false)`, connInfo(src))); err != nil {
			return err
		}
		return waitCount(ctx, dst, `SELECT count(*) FROM pg_catalog.pg_stat_subscription WHERE subname = 'bench_sub' AND pid IS NOT NULL`, 1, time.Minute)
	},
	pause: func(ctx context.Context, dst *Region) error {
		return dst.Cluster.Exec(ctx, AppDB, `ALTER SUBSCRIPTION bench_sub DISABLE`)
	},
	resume: func(ctx context.Context, dst *Region) error {
		return dst.Cluster.Exec(ctx, AppDB, `ALTER SUBSCRIPTION bench_sub ENABLE`)
	},
}

// pglogical is the pglogical extension (2ndQuadrant), provider and
// subscriber nodes with one subscription to the default replication set.
var pglogical = baseline{
	name:     "pglogical",
	settings: map[string]string{"shared_preload_libraries": "'pglogical'"},
	setup: func(ctx context.Context, src, dst *Region) error {
		if err := src.Cluster.Exec(ctx, AppDB, `CREATE EXTENSION pglogical`,
			fmt.Sprintf(`SELECT pglogical.create_node(node_name := 'provider', dsn := '%s')`, connInfo(src)),
			`SELECT pglogical.replication_set_add_table('default', 'public.bench')`); err != nil {
			return err
		}
		if err := dst.Cluster.Exec(ctx, AppDB, `CREATE EXTENSION pglogical`,
			fmt.Sprintf(`SELECT pglogical.create_node(node_name := 'subscriber', dsn := '%s')`, connInfo(dst)),
			fmt.Sprintf(`SELECT pglogical.create_subscription(subscription_name := 'bench_sub', provider_dsn := '%s',
				replication_sets := ARRAY['default'], synchronize_structure := false, synchronize_data := false)`, connInfo(src))); err != nil {
			return err
		}
		return waitCount(ctx, dst, `SELECT count(*) FROM pglogical.show_subscription_status('bench_sub') WHERE status = 'replicating'`, 1, time.Minute)
	},
	pause: func(ctx context.Context, dst *Region) error {
		return dst.Cluster.Exec(ctx, AppDB, `SELECT pglogical.alter_subscription_disable('bench_sub', true)`)
	},
	resume: func(ctx context.Context, dst *Region) error {
		return dst.Cluster.Exec(ctx, AppDB, `SELECT pglogical.alter_subscription_enable('bench_sub', true)`)
	},
}

// pglogicalMissing says why pglogical cannot run here ("" when it can).
func pglogicalMissing() string {
	bin, err := PGBinDir()
	if err != nil {
		return err.Error()
	}
	lib := filepath.Join(filepath.Dir(bin), "lib", "pglogical.so")
	if _, err := os.Stat(lib); err != nil {
		return fmt.Sprintf("%s not found (Debian package postgresql-%s-pglogical; .ci/setup-bench installs it)", lib, filepath.Base(filepath.Dir(bin)))
	}
	return ""
}

// baselineBacklog measures a baseline catching up the same backlogs as
// polyregionBacklog on a fresh pair of clusters.
func baselineBacklog(b *testing.B, bl baseline, rows int) (insertRate, updateRate float64, err error) {
	dir := benchDir(b)
	ctx := context.Background()
	h, err := Start(ctx, Spec{Regions: []string{"src", "dst"}, SchemaSQL: benchSchema, Tables: []TableSpec{{Name: "public.bench"}}, Dir: dir, Binary: binary,
		ClusterOptions: ClusterOptions{Settings: bl.settings}})
	if err != nil {
		return 0, 0, err
	}
	defer h.Close()
	src, dst := h.Regions[0], h.Regions[1]
	if err := bl.setup(ctx, src, dst); err != nil {
		return 0, 0, fmt.Errorf("%s: set up: %w", bl.name, err)
	}
	measure := func(fill func() error, done backlogDone, n int) (float64, error) {
		if err := bl.pause(ctx, dst); err != nil {
			return 0, err
		}
		if err := fill(); err != nil {
			return 0, err
		}
		start := time.Now()
		if err := bl.resume(ctx, dst); err != nil {
			return 0, err
		}
		end, err := done.wait(ctx, dst)
		if err != nil {
			return 0, err
		}
		el := end.Sub(start)
		fmt.Printf("  %s: %d rows caught up in %.1fs\n", bl.name, n, el.Seconds())
		return float64(n) / el.Seconds(), nil
	}
	updRows := benchUpdateRows(rows)
	if insertRate, err = measure(func() error { return fillBacklog(ctx, src, 1, rows) }, insertedDone(rows), rows); err != nil {
		return 0, 0, fmt.Errorf("%s: insert backlog: %w", bl.name, err)
	}
	if updateRate, err = measure(func() error { return updateBacklog(ctx, src, updRows) }, updatedDone(updRows), updRows); err != nil {
		return 0, 0, fmt.Errorf("%s: update backlog: %w", bl.name, err)
	}
	return insertRate, updateRate, nil
}

func queryBench(b *testing.B, ctx context.Context, r *Region, sql string) int64 {
	conn, err := r.Conn(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int64
	if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
		b.Fatal(err)
	}
	return n
}

func benchDir(b *testing.B) string {
	dir, err := os.MkdirTemp("", "polyregion-bench-")
	if err != nil {
		b.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755)
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// benchProfile, when BENCH_PROFILE names a directory, makes the replicator
// benchmark leave diagnostics there: CPU profiles of each region's
// replicator taken during each backlog's catch-up (BENCH_PROFILE_SECONDS
// long, default 10), execution traces of them over the same time (where
// each goroutine waited: go tool trace -pprof=sync or -pprof=net), each
// region's top statements (pg_stat_statements) and its lock waits
// (lockSampler).
type benchProfile struct {
	dir     string
	seconds int
	addrs   map[string]string // region -> pprof address
}

func newBenchProfile() *benchProfile {
	dir := os.Getenv("BENCH_PROFILE")
	if dir == "" {
		return nil
	}
	secs, err := strconv.Atoi(os.Getenv("BENCH_PROFILE_SECONDS"))
	if err != nil || secs <= 0 {
		secs = 10
	}
	_ = os.MkdirAll(dir, 0o755)
	return &benchProfile{dir: dir, seconds: secs, addrs: map[string]string{}}
}

func (p *benchProfile) clusterOptions() ClusterOptions {
	if p == nil {
		return ClusterOptions{}
	}
	return ClusterOptions{Settings: map[string]string{"shared_preload_libraries": "'pg_stat_statements,auto_explain'", "pg_stat_statements.track": "all",
		"auto_explain.log_min_duration": "'5ms'", "auto_explain.log_nested_statements": "on"}}
}

// startReplicators starts every region's replicator, each with its own
// profiling address when profiling.
func (p *benchProfile) startReplicators(h *Harness) error {
	if p == nil {
		return h.StartReplicators()
	}
	defer os.Unsetenv("POLYREGION_PPROF")
	for _, r := range h.Regions {
		if p.addrs[r.Name] == "" {
			port, err := FreePort()
			if err != nil {
				return err
			}
			p.addrs[r.Name] = fmt.Sprintf("127.0.0.1:%d", port)
		}
		os.Setenv("POLYREGION_PPROF", p.addrs[r.Name])
		if err := r.StartReplicator(); err != nil {
			return err
		}
	}
	return nil
}

// begin resets the statement statistics and starts taking CPU profiles
// and sampling lock waits; the returned function waits for them and
// writes the statistics.
func (p *benchProfile) begin(ctx context.Context, h *Harness, phase string) func() {
	if p == nil {
		return func() {}
	}
	for _, r := range h.Regions {
		_ = r.Cluster.Exec(ctx, AppDB, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`, `SELECT pg_stat_statements_reset()`)
	}
	kinds := []struct{ suffix, path string }{{".pprof", "profile"}, {".trace", "trace"}}
	done := make(chan struct{}, len(h.Regions)*len(kinds))
	for _, r := range h.Regions {
		for _, k := range kinds {
			go func() {
				defer func() { done <- struct{}{} }()
				out := filepath.Join(p.dir, phase+"-"+r.Name+k.suffix)
				url := fmt.Sprintf("http://%s/debug/pprof/%s?seconds=%d", p.addrs[r.Name], k.path, p.seconds)
				for i := 0; i < 50; i++ { // the replicator is starting
					if err := exec.Command("curl", "-sf", "-o", out, url).Run(); err == nil {
						return
					}
					time.Sleep(100 * time.Millisecond)
				}
			}()
		}
	}
	var samplers []func()
	for _, r := range h.Regions {
		samplers = append(samplers, lockSampler(ctx, r, filepath.Join(p.dir, phase+"-"+r.Name+"-lockwaits.txt")))
	}
	return func() {
		for range cap(done) {
			<-done
		}
		for _, stop := range samplers {
			stop()
		}
		for _, r := range h.Regions {
			conn, err := r.Conn(ctx)
			if err != nil {
				continue
			}
			rows, err := conn.Query(ctx, `SELECT calls, round(total_exec_time)::bigint, rows, left(regexp_replace(query, '\s+', ' ', 'g'), 300)
				FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 40`)
			if err == nil {
				var b strings.Builder
				var calls, ms, n int64
				var q string
				_, _ = pgx.ForEachRow(rows, []any{&calls, &ms, &n, &q}, func() error {
					fmt.Fprintf(&b, "%8d calls %8d ms %10d rows  %s\n", calls, ms, n, q)
					return nil
				})
				_ = os.WriteFile(filepath.Join(p.dir, phase+"-"+r.Name+"-statements.txt"), []byte(b.String()), 0o644)
			}
			conn.Close(ctx)
			// Plans of slow statements (auto_explain).
			if log, err := os.ReadFile(r.Cluster.LogFile); err == nil {
				_ = os.WriteFile(filepath.Join(p.dir, phase+"-"+r.Name+"-server.log"), log, 0o644)
			}
		}
	}
}

// Lag measurement: a steady writer in one region, a poller in the other.
const (
	lagRate    = 5000                  // rows/s written
	lagTick    = 10 * time.Millisecond // one transaction per tick
	lagWarmup  = 5 * time.Second       // rows written before this are not counted
	lagLatency = 50 * time.Millisecond // injected one-way latency on the link
)

var lagSchema = []string{`CREATE TABLE public.lag (id bigint PRIMARY KEY, ts timestamptz NOT NULL, payload text NOT NULL)`}

type lagResult struct {
	p50, p99, max time.Duration
	rows          int
	writeRate     float64 // rows/s the writer achieved
	// first and last are the p99s of the first and last fifth of the
	// measured window: lag that grows over time shows as last >> first.
	first, last time.Duration
}

// replicationLag writes lagRate rows/s for d in region us (each row carries
// the clock_timestamp() of its insert, just before its commit) and polls
// region eu for new rows, timing each row's arrival: commit in one region
// to visible in the other, with lagLatency injected one way on the link
// that carries us's changes to eu. Both clusters run on this machine, so
// both timestamps come from the same clock.
func replicationLag(b *testing.B, d time.Duration) lagResult {
	dir := benchDir(b)
	ctx := context.Background()
	nf := NewNetFaults()
	defer nf.Close()
	prof := newBenchProfile()
	h, err := Start(ctx, Spec{Regions: []string{"us", "eu"}, SchemaSQL: lagSchema, Tables: []TableSpec{{Name: "public.lag"}},
		Dir: dir, Binary: binary, Configure: nf.Configure(nil), ClusterOptions: prof.clusterOptions()})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	us, eu := h.Regions[0], h.Regions[1]
	if err := nf.Check([]string{"us", "eu"}); err != nil {
		b.Fatal(err)
	}
	if err := prof.startReplicators(h); err != nil {
		b.Fatal(err)
	}
	if err := h.WaitReady(ctx, time.Minute); err != nil {
		b.Fatal(err)
	}
	// eu's follower pulls us's changes over Link{eu, us}; the latency
	// applies each way, so a change reaches eu lagLatency after us sends it.
	for _, l := range []Link{{From: "eu", To: "us"}, {From: "us", To: "eu"}} {
		if _, err := nf.Latency(l, lagLatency, 0); err != nil {
			b.Fatal(err)
		}
	}
	wconn, err := us.Conn(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer wconn.Close(context.Background())
	rconn, err := eu.Conn(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer rconn.Close(context.Background())

	type arrival struct {
		ts, seen time.Time
	}
	profiled := prof.begin(ctx, h, "lag")
	defer profiled()
	arrivals := map[int64]arrival{}
	written := int64(0)
	writerDone := make(chan error, 1)
	start := time.Now()
	go func() {
		// Each tick writes whatever the schedule owes (rate x elapsed), so
		// a slow transaction is made up for and the rate stays steady.
		t := time.NewTicker(lagTick)
		defer t.Stop()
		var n int64
		for now := range t.C {
			el := now.Sub(start)
			if el > d {
				break
			}
			want := int64(el.Seconds() * lagRate)
			if want <= n {
				continue
			}
			if _, err := wconn.Exec(ctx, `INSERT INTO public.lag SELECT g, pg_catalog.clock_timestamp(), pg_catalog.md5(g::text) FROM pg_catalog.generate_series($1::bigint, $2::bigint) g`, n+1, want); err != nil {
				writerDone <- err
				return
			}
			n = want
		}
		written = n
		writerDone <- nil
	}()
	var last int64
	writing := true
	var werr error
	deadline := time.Time{}
	for {
		rows, err := rconn.Query(ctx, `SELECT id, ts FROM public.lag WHERE id > $1 ORDER BY id`, last)
		if err != nil {
			b.Fatal(err)
		}
		seen := time.Now()
		var id int64
		var ts time.Time
		_, err = pgx.ForEachRow(rows, []any{&id, &ts}, func() error {
			arrivals[id] = arrival{ts: ts, seen: seen}
			last = id
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if writing {
			select {
			case werr = <-writerDone:
				writing = false
				deadline = time.Now().Add(2 * time.Minute)
			default:
			}
			if werr != nil {
				b.Fatal(werr)
			}
		}
		if !writing && last >= written {
			break
		}
		if !writing && time.Now().After(deadline) {
			b.Fatalf("lag: %d of %d rows arrived in eu within 2 minutes of the writer stopping", last, written)
		}
		time.Sleep(2 * time.Millisecond)
	}
	var all, first, lastPart []time.Duration
	var t0 time.Time
	for id := int64(1); id <= written; id++ {
		a := arrivals[id]
		if t0.IsZero() {
			t0 = a.ts
		}
		if a.ts.Sub(t0) < lagWarmup {
			continue
		}
		lag := a.seen.Sub(a.ts)
		all = append(all, lag)
		switch pos := a.ts.Sub(t0) - lagWarmup; {
		case pos < (d-lagWarmup)/5:
			first = append(first, lag)
		case pos >= (d-lagWarmup)*4/5:
			lastPart = append(lastPart, lag)
		}
	}
	res := lagResult{rows: len(all), writeRate: float64(written) / d.Seconds(),
		p50: quantile(all, 0.5), p99: quantile(all, 0.99), max: quantile(all, 1), first: quantile(first, 0.99), last: quantile(lastPart, 0.99)}
	fmt.Printf("  lag: %d rows at %.0f rows/s, p50 %s, p99 %s, max %s (p99 of the first fifth %s, of the last fifth %s)\n",
		res.rows, res.writeRate, res.p50.Round(time.Millisecond), res.p99.Round(time.Millisecond), res.max.Round(time.Millisecond),
		res.first.Round(time.Millisecond), res.last.Round(time.Millisecond))
	return res
}

func quantile(xs []time.Duration, q float64) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), xs...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(q*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

var tpsRe = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

// clientTool finds a PostgreSQL client program: next to the server
// binaries, else the system's (server binaries taken from a registry package
// ship without client programs; those of an older major version speak to a
// newer server).
func clientTool(b *testing.B, serverBin, name string) string {
	b.Helper()
	if p := filepath.Join(serverBin, name); fileExists(p) {
		return p
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if p := filepath.Join(strings.TrimSpace(string(out)), name); fileExists(p) {
			return p
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	b.Fatalf("%s not found next to %s, in pg_config --bindir or on PATH (Debian: postgresql-client)", name, serverBin)
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// writeOverhead runs pgbench against one region with and without its
// replicator running (alternating, reps times) and returns the TPS pairs,
// plus pgbench with only a logical decoding consumer (pg_recvlogical over
// test_decoding): the floor any logical-decoding-based replicator pays.
func writeOverhead(b *testing.B, reps int) (without, with, decodingOnly []float64) {
	dir := benchDir(b)
	ctx := context.Background()
	// pgbench_history has no primary key; the other three are replicated.
	h, err := Start(ctx, Spec{Regions: []string{"us", "eu"}, SchemaSQL: nil, Tables: []TableSpec{
		{Name: "public.pgbench_accounts"}, {Name: "public.pgbench_branches"}, {Name: "public.pgbench_tellers"},
	}, Dir: dir, Binary: binary})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	us := h.Regions[0]
	pgbench := clientTool(b, us.Cluster.BinDir, "pgbench")
	for _, r := range h.Regions {
		out, err := exec.Command(pgbench, "-i", "-q", "-s", "10", "-h", "127.0.0.1", "-p", strconv.Itoa(r.Cluster.Port), "-U", "app", AppDB).CombinedOutput()
		if err != nil {
			b.Fatalf("pgbench -i: %v\n%s", err, out)
		}
	}
	run := func() float64 {
		out, err := exec.Command(pgbench, "-n", "-c", "4", "-j", "2", "-T", "15", "-h", "127.0.0.1", "-p", strconv.Itoa(us.Cluster.Port), "-U", "app", AppDB).CombinedOutput()
		if err != nil {
			b.Fatalf("pgbench: %v\n%s", err, out)
		}
		m := tpsRe.FindSubmatch(out)
		if m == nil {
			b.Fatalf("pgbench printed no tps:\n%s", out)
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		return v
	}
	// The peer region's replicator runs throughout (it would be elsewhere in
	// production; here it shares the machine, which only penalises "with").
	recv := clientTool(b, us.Cluster.BinDir, "pg_recvlogical")
	conn := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(us.Cluster.Port), "-U", "postgres", "-d", AppDB}
	if out, err := exec.Command(recv, append(conn, "-S", "bench_decoding", "--create-slot", "-P", "test_decoding")...).CombinedOutput(); err != nil {
		b.Fatalf("pg_recvlogical --create-slot: %v\n%s", err, out)
	}
	for i := 0; i < reps; i++ {
		without = append(without, run())
		dec := exec.Command(recv, append(conn, "-S", "bench_decoding", "--start", "-f", "/dev/null")...)
		if err := dec.Start(); err != nil {
			b.Fatal(err)
		}
		time.Sleep(time.Second)
		decodingOnly = append(decodingOnly, run())
		_ = dec.Process.Kill()
		_ = dec.Wait()
		if err := us.StartReplicator(); err != nil {
			b.Fatal(err)
		}
		if err := us.WaitReady(ctx, time.Minute); err != nil {
			b.Fatal(err)
		}
		with = append(with, run())
		if err := us.StopReplicator(syscall.SIGTERM); err != nil {
			b.Fatal(err)
		}
		fmt.Printf("  pgbench rep %d: %.0f TPS without a replicator, %.0f with logical decoding alone, %.0f with the replicator\n", i+1, without[i], decodingOnly[i], with[i])
	}
	return without, with, decodingOnly
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ratios(a, b []float64) []float64 {
	out := make([]float64, min(len(a), len(b)))
	for i := range out {
		out[i] = a[i] / b[i]
	}
	return out
}

// BenchmarkDataPlane measures, in one run on this machine: apply throughput
// catching up an insert backlog and an update backlog between two local
// regions, next to PostgreSQL's built-in logical replication and (where
// installed) pglogical on identical pairs of clusters; replication lag at a
// steady write rate over a link with latency injected; pgbench TPS with and
// without the replicator; and the replicator's peak memory. Ratios are
// medians of BENCH_REPS repetitions, each taken within one repetition.
func BenchmarkDataPlane(b *testing.B) {
	if testing.Short() {
		b.Skip("needs PostgreSQL clusters")
	}
	rows, reps := benchRows(), benchReps()
	updRows := benchUpdateRows(rows)
	pglMissing := pglogicalMissing()
	if pglMissing != "" {
		fmt.Printf("pglogical baseline skipped: %s\n", pglMissing)
	}
	var ourIns, ourUpd, ourReader, pgIns, pgUpd, plIns, plUpd []float64
	var peak int64
	for i := 0; i < reps; i++ {
		fmt.Printf("rep %d of %d: %d-row insert backlog, %d-row update backlog\n", i+1, reps, rows, updRows)
		pi, pu, err := baselineBacklog(b, builtin, rows)
		if err != nil {
			b.Fatal(err)
		}
		if pglMissing == "" {
			li, lu, err := baselineBacklog(b, pglogical, rows)
			if err != nil {
				fmt.Printf("pglogical baseline failed: %v\n", err)
				pglMissing = "failed: " + err.Error()
			} else {
				plIns, plUpd = append(plIns, li), append(plUpd, lu)
			}
		}
		oi, ou, rd, rss := polyregionBacklog(b, rows)
		pgIns, pgUpd, ourIns, ourUpd = append(pgIns, pi), append(pgUpd, pu), append(ourIns, oi), append(ourUpd, ou)
		ourReader = append(ourReader, rd)
		peak = max(peak, rss)
	}
	if pglMissing != "" {
		plIns, plUpd = nil, nil
	}
	fmt.Println("replication lag")
	lag := replicationLag(b, benchLagSeconds())
	fmt.Println("write overhead")
	without, with, decoding := writeOverhead(b, reps)

	insRatio, updRatio := ratios(ourIns, pgIns), ratios(ourUpd, pgUpd)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	var t strings.Builder
	row := func(name string, ours, base, ratio float64) {
		fmt.Fprintf(&t, "%-52s %12.0f %12.0f %8.2f\n", name, ours, base, ratio)
	}
	fmt.Fprintf(&t, "\n%-52s %12s %12s %8s\n", fmt.Sprintf("data plane (%d reps, medians)", reps), "polyregion", "baseline", "ratio")
	row(fmt.Sprintf("%d-row insert backlog, rows/s vs built-in", rows), median(ourIns), median(pgIns), median(insRatio))
	row(fmt.Sprintf("%d-row update backlog, rows/s vs built-in", updRows), median(ourUpd), median(pgUpd), median(updRatio))
	row(fmt.Sprintf("%d-row insert backlog, reader rows/s vs built-in", rows), median(ourReader), median(pgIns), median(ratios(ourReader, pgIns)))
	if len(plIns) > 0 {
		row(fmt.Sprintf("%d-row insert backlog, rows/s vs pglogical", rows), median(ourIns), median(plIns), median(ratios(ourIns, plIns)))
		row(fmt.Sprintf("%d-row update backlog, rows/s vs pglogical", updRows), median(ourUpd), median(plUpd), median(ratios(ourUpd, plUpd)))
	}
	fmt.Fprintf(&t, "%-52s %12.0f %12.0f\n", fmt.Sprintf("lag p50 / p99 ms (%d rows/s, %s one-way)", lagRate, lagLatency), ms(lag.p50), ms(lag.p99))
	row("pgbench TPS with vs without replicator", median(with), median(without), median(ratios(with, without)))
	row("pgbench TPS logical decoding alone vs none", median(decoding), median(without), median(ratios(decoding, without)))
	fmt.Fprintf(&t, "%-52s %12.1f\n", "replicator peak RSS during the backlog (MB)", float64(peak)/(1<<20))
	fmt.Print(t.String())

	fmt.Printf("bench_rows=%d\n", rows)
	fmt.Printf("bench_update_rows=%d\n", updRows)
	fmt.Printf("bench_reps=%d\n", reps)
	fmt.Printf("apply_insert_rows_per_s=%.0f\n", median(ourIns))
	fmt.Printf("builtin_insert_rows_per_s=%.0f\n", median(pgIns))
	fmt.Printf("apply_update_rows_per_s=%.0f\n", median(ourUpd))
	fmt.Printf("builtin_update_rows_per_s=%.0f\n", median(pgUpd))
	fmt.Printf("apply_insert_ratio_vs_builtin=%.2f\n", median(insRatio))
	fmt.Printf("apply_update_ratio_vs_builtin=%.2f\n", median(updRatio))
	fmt.Printf("reader_rows_per_s=%.0f\n", median(ourReader))
	fmt.Printf("reader_ratio_vs_builtin=%.2f\n", median(ratios(ourReader, pgIns)))
	if len(plIns) > 0 {
		fmt.Printf("pglogical_insert_rows_per_s=%.0f\n", median(plIns))
		fmt.Printf("pglogical_update_rows_per_s=%.0f\n", median(plUpd))
		fmt.Printf("apply_insert_ratio_vs_pglogical=%.2f\n", median(ratios(ourIns, plIns)))
		fmt.Printf("apply_update_ratio_vs_pglogical=%.2f\n", median(ratios(ourUpd, plUpd)))
	} else if strings.HasPrefix(pglMissing, "failed") {
		fmt.Printf("pglogical=failed\n")
	} else {
		fmt.Printf("pglogical=not_installed\n")
	}
	fmt.Printf("lag_write_rows_per_s=%.0f\n", lag.writeRate)
	fmt.Printf("lag_injected_one_way_ms=%.0f\n", ms(lagLatency))
	fmt.Printf("lag_p50_ms=%.0f\n", ms(lag.p50))
	fmt.Printf("lag_p99_ms=%.0f\n", ms(lag.p99))
	fmt.Printf("lag_max_ms=%.0f\n", ms(lag.max))
	fmt.Printf("write_overhead_ratio=%.2f\n", median(ratios(with, without)))
	fmt.Printf("write_overhead_decoding_only_ratio=%.2f\n", median(ratios(decoding, without)))
	fmt.Printf("replicator_peak_rss_mb=%.1f\n", float64(peak)/(1<<20))
}
