package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Hot-row contention: a rate-limit counter workload in which every
// application transaction increments one of many client rows, one of a few
// bucket rows and the single total row, and appends a history row, in every
// region at once. Every transaction of a region queues on the total row's
// lock, and so does the applier of every peer's transactions: this measures
// what replication costs such an application (transactions/s with the
// replicators against without) and whether the applier ever deadlocks with
// it.
//
// The application takes its row locks in one fixed order (client, bucket,
// total, then the history insert, which locks no existing row) and touches
// one row per table, so application transactions can wait for one another
// but never deadlock among themselves: a deadlock in a server log while the
// workload runs involves a replicator session. The log shows which: the
// victim's application_name (log_line_prefix has %a; the clients set
// hotRowAppName, appliers "polyregion-apply-<source>", the replicator's
// other sessions "polyregion...") and the statement of every process in the
// cycle (the clients' statements carry hotRowMarker).

const (
	hotRowClients = 1000 // client rows
	hotRowBuckets = 10   // bucket rows
	hotRowAppName = "hotrow-app"
	hotRowMarker  = "/* hotrow-app */"
)

// hotRowTablesList names the workload's tables.
var hotRowTablesList = []string{"public.hot_client", "public.hot_bucket", "public.hot_total", "public.hot_history"}

// hotRowSchema creates the tables and seeds the counter rows; it runs in
// every region before any replicator starts, so every region starts from
// the same rows. REPLICA IDENTITY FULL: the seeded rows have no recorded
// version, so the reader takes a first increment's delta from the old row
// in the WAL (README, Known limits).
func hotRowSchema() []string {
	return []string{
		`CREATE TABLE public.hot_client (id bigint PRIMARY KEY, hits bigint NOT NULL DEFAULT 0, updated_at timestamptz)`,
		`CREATE TABLE public.hot_bucket (id integer PRIMARY KEY, hits bigint NOT NULL DEFAULT 0)`,
		`CREATE TABLE public.hot_total (id integer PRIMARY KEY, hits bigint NOT NULL DEFAULT 0)`,
		// id is region-client-n: never the same in two regions.
		`CREATE TABLE public.hot_history (id text PRIMARY KEY, region text NOT NULL, client_id bigint NOT NULL, bucket integer NOT NULL, payload text NOT NULL)`,
		`ALTER TABLE public.hot_client REPLICA IDENTITY FULL`,
		`ALTER TABLE public.hot_bucket REPLICA IDENTITY FULL`,
		`ALTER TABLE public.hot_total REPLICA IDENTITY FULL`,
		fmt.Sprintf(`INSERT INTO public.hot_client (id) SELECT g FROM generate_series(1, %d) g`, hotRowClients),
		fmt.Sprintf(`INSERT INTO public.hot_bucket (id) SELECT g FROM generate_series(1, %d) g`, hotRowBuckets),
		`INSERT INTO public.hot_total (id) VALUES (1)`,
	}
}

// hotRowTables are the tables' replication settings: the hits columns are
// counters (every increment from every region is kept); the client rows'
// updated_at goes by last-writer-wins (their updates are read, decided and
// logged as conflicts), or with HOTROW_UPDATED_AT=max keeps the latest time
// (their concurrent updates then merge and are taken in place).
var hotRowTables = hotRowTablesFor(os.Getenv("HOTROW_UPDATED_AT"))

func hotRowTablesFor(updatedAt string) []TableSpec {
	client := TableSpec{Name: "public.hot_client", Counters: []string{"hits"}}
	if updatedAt == "max" {
		client.Max, client.Deletes = []string{"updated_at"}, "delete_wins"
	}
	return []TableSpec{client,
		{Name: "public.hot_bucket", Counters: []string{"hits"}},
		{Name: "public.hot_total", Counters: []string{"hits"}},
		{Name: "public.hot_history"},
	}
}

// hotRowReset puts every region back to the seeded state (counters at
// zero, no history). Only before the replicators first start: nothing
// captures these writes then (no slot, no TRUNCATE trigger), so every
// region holds the same rows afterwards.
func hotRowReset(ctx context.Context, h *Harness) error {
	for _, r := range h.Regions {
		if err := r.Cluster.Exec(ctx, AppDB,
			`UPDATE public.hot_client SET hits = 0, updated_at = NULL`,
			`UPDATE public.hot_bucket SET hits = 0`,
			`UPDATE public.hot_total SET hits = 0`,
			`TRUNCATE public.hot_history`,
			`VACUUM ANALYZE public.hot_client, public.hot_bucket, public.hot_total, public.hot_history`,
		); err != nil {
			return err
		}
	}
	return nil
}

// hotRowStats is one region's side of a workload run.
type hotRowStats struct {
	Region    string
	Committed int64 // COMMIT returned success
	Failed    int64 // any error (not committed, or outcome unknown)
	Deadlocks int64 // of which SQLSTATE 40P01
	Unknown   int64 // of which not a server error: the commit's outcome is unknown
	Elapsed   time.Duration
	Errors    map[string]int64 // error text -> count
}

func (s *hotRowStats) TPS() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Committed) / s.Elapsed.Seconds()
}

const (
	hotSQLClient  = hotRowMarker + ` UPDATE public.hot_client SET hits = hits + 1, updated_at = pg_catalog.now() WHERE id = $1`
	hotSQLBucket  = hotRowMarker + ` UPDATE public.hot_bucket SET hits = hits + 1 WHERE id = $1`
	hotSQLTotal   = hotRowMarker + ` UPDATE public.hot_total SET hits = hits + 1 WHERE id = 1`
	hotSQLHistory = hotRowMarker + ` INSERT INTO public.hot_history (id, region, client_id, bucket, payload) VALUES ($1, $2, $3, $4, $5)`
)

func hotRowConnect(ctx context.Context, r *Region) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(r.Cluster.URL("app", AppDB))
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = hotRowAppName
	return pgx.ConnectConfig(ctx, cfg)
}

// runHotRows runs perRegion clients in every region at once for d, each on
// its own session, one transaction after another with no pause and no
// retry: a failed transaction is counted and the client goes on with the
// next one. tag keeps history ids of different runs apart. measure, when
// set, is called once every client has connected and again once every
// client has finished, their sessions still open.
func runHotRows(ctx context.Context, h *Harness, perRegion int, d time.Duration, tag string, measure func() error) (map[string]*hotRowStats, error) {
	out := map[string]*hotRowStats{}
	type client struct {
		r    *Region
		i    int
		conn *pgx.Conn
	}
	var clients []*client
	closeAll := func() {
		for _, c := range clients {
			if c.conn != nil {
				c.conn.Close(context.Background())
			}
		}
	}
	for _, r := range h.Regions {
		out[r.Name] = &hotRowStats{Region: r.Name, Errors: map[string]int64{}}
		for i := 0; i < perRegion; i++ {
			conn, err := hotRowConnect(ctx, r)
			if err != nil {
				closeAll()
				return nil, fmt.Errorf("region %s: connect: %w", r.Name, err)
			}
			clients = append(clients, &client{r: r, i: i, conn: conn})
		}
	}
	defer closeAll()
	if measure != nil {
		if err := measure(); err != nil {
			return nil, err
		}
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	start := time.Now()
	deadline := start.Add(d)
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := out[c.r.Name]
			rng := rand.New(rand.NewSource(time.Now().UnixNano() + int64(c.i)*7919 + int64(len(c.r.Name))*104729))
			var committed, failed, deadlocks, unknown int64
			errText := map[string]int64{}
			for n := 1; time.Now().Before(deadline) && ctx.Err() == nil; n++ {
				id := fmt.Sprintf("%s-%s-c%d-%d", c.r.Name, tag, c.i, n)
				cl, bucket := 1+rng.Intn(hotRowClients), 1+rng.Intn(hotRowBuckets)
				tctx, cancel := context.WithTimeout(ctx, time.Minute)
				err := pgx.BeginFunc(tctx, c.conn, func(tx pgx.Tx) error {
					if _, err := tx.Exec(tctx, hotSQLClient, cl); err != nil {
						return err
					}
					if _, err := tx.Exec(tctx, hotSQLBucket, bucket); err != nil {
						return err
					}
					if _, err := tx.Exec(tctx, hotSQLTotal); err != nil {
						return err
					}
					_, err := tx.Exec(tctx, hotSQLHistory, id, c.r.Name, cl, bucket, "request "+id)
					return err
				})
				cancel()
				if err == nil {
					committed++
					continue
				}
				if ctx.Err() != nil {
					break
				}
				failed++
				var pe *pgconn.PgError
				if errors.As(err, &pe) {
					if pe.Code == "40P01" {
						deadlocks++
					}
					errText[pe.Code+" "+pe.Message]++
				} else {
					unknown++
					errText[err.Error()]++
				}
				if c.conn.IsClosed() {
					conn, cerr := hotRowConnect(ctx, c.r)
					if cerr != nil {
						mu.Lock()
						errs = append(errs, fmt.Errorf("region %s client %d: reconnect: %w", c.r.Name, c.i, cerr))
						mu.Unlock()
						break
					}
					c.conn = conn
				}
			}
			el := time.Since(start)
			mu.Lock()
			st.Committed += committed
			st.Failed += failed
			st.Deadlocks += deadlocks
			st.Unknown += unknown
			st.Elapsed = max(st.Elapsed, el)
			for k, v := range errText {
				st.Errors[k] += v
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return out, err
	}
	if measure != nil {
		if err := measure(); err != nil {
			errs = append(errs, err)
		}
	}
	return out, errors.Join(errs...)
}

// hotRowCheck checks, after convergence, that every committed transaction
// is in every region exactly once and every counter holds exactly its
// increments: each origin's history rows number its acknowledged commits
// (up to the ones whose outcome is unknown), and in every region each
// client's, bucket's and the total's hits equal the history rows naming
// it. The counters started at zero (seeded, or reset before the
// replicators started). It returns the number of transactions found.
func hotRowCheck(ctx context.Context, h *Harness, stats map[string]*hotRowStats) (int64, error) {
	conn, err := h.Regions[0].Conn(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	group := func(sql string) (map[string]int64, error) {
		rows, err := conn.Query(ctx, sql)
		if err != nil {
			return nil, err
		}
		out := map[string]int64{}
		var k string
		var n int64
		_, err = pgx.ForEachRow(rows, []any{&k, &n}, func() error {
			out[k] = n
			return nil
		})
		return out, err
	}
	byRegion, err := group(`SELECT region, count(*) FROM public.hot_history GROUP BY region`)
	if err != nil {
		return 0, err
	}
	var problems []string
	var total int64
	names := make([]string, 0, len(stats))
	for name := range stats {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		st := stats[name]
		got := byRegion[name]
		total += got
		if got < st.Committed || got > st.Committed+st.Unknown {
			problems = append(problems, fmt.Sprintf("region %s: %d history rows from it, but %d commits acknowledged (%d of unknown outcome)", name, got, st.Committed, st.Unknown))
		}
	}
	for name, n := range byRegion {
		if stats[name] == nil {
			problems = append(problems, fmt.Sprintf("%d history rows from unknown region %q", n, name))
		}
	}
	byClient, err := group(`SELECT client_id::text, count(*) FROM public.hot_history GROUP BY client_id`)
	if err != nil {
		return 0, err
	}
	byBucket, err := group(`SELECT bucket::text, count(*) FROM public.hot_history GROUP BY bucket`)
	if err != nil {
		return 0, err
	}
	wantClient := map[string]int64{}
	for i := 1; i <= hotRowClients; i++ {
		wantClient[strconv.Itoa(i)] = byClient[strconv.Itoa(i)]
	}
	wantBucket := map[string]int64{}
	for i := 1; i <= hotRowBuckets; i++ {
		wantBucket[strconv.Itoa(i)] = byBucket[strconv.Itoa(i)]
	}
	for _, c := range []struct {
		what, sql string
		want      map[string]int64
	}{
		{"hot_total", `SELECT id::text, hits FROM public.hot_total`, map[string]int64{"1": total}},
		{"hot_bucket", `SELECT id::text, hits FROM public.hot_bucket`, wantBucket},
		{"hot_client", `SELECT id::text, hits FROM public.hot_client`, wantClient},
		{"row counts", `SELECT 'clients', count(*) FROM public.hot_client UNION ALL SELECT 'buckets', count(*) FROM public.hot_bucket
			UNION ALL SELECT 'totals', count(*) FROM public.hot_total`, map[string]int64{"clients": hotRowClients, "buckets": hotRowBuckets, "totals": 1}},
	} {
		if err := CounterTotals(ctx, h, c.sql, c.want); err != nil {
			msg := err.Error()
			if len(msg) > 1500 {
				msg = msg[:1500] + "..."
			}
			problems = append(problems, c.what+": "+msg)
		}
	}
	if len(problems) > 0 {
		return total, fmt.Errorf("hot rows: transactions or counters not conserved:\n  %s", strings.Join(problems, "\n  "))
	}
	return total, nil
}

// ---- deadlocks in the server logs ----

// hotRowDeadlocks sums up the "deadlock detected" errors in server logs.
type hotRowDeadlocks struct {
	Total int
	// WithReplicator counts deadlocks in which a replicator session took
	// part (its statement is not the application's, or it was the victim).
	WithReplicator int
	// ReplicatorVictim counts those in which the replicator's session was
	// the one cancelled (the application's transactions went through).
	ReplicatorVictim int
	// AppOnly counts deadlocks among application sessions alone (the
	// workload's lock order rules them out).
	AppOnly int
	// Sample is the first deadlock's report involving a replicator.
	Sample string
}

func (d *hotRowDeadlocks) add(o hotRowDeadlocks) {
	d.Total += o.Total
	d.WithReplicator += o.WithReplicator
	d.ReplicatorVictim += o.ReplicatorVictim
	d.AppOnly += o.AppOnly
	if d.Sample == "" {
		d.Sample = o.Sample
	}
}

// logOffsets returns each region's server log size: where a window of
// hotRowLogDeadlocks starts.
func logOffsets(h *Harness) map[string]int64 {
	out := map[string]int64{}
	for _, r := range h.Regions {
		if fi, err := os.Stat(r.Cluster.LogFile); err == nil {
			out[r.Name] = fi.Size()
		}
	}
	return out
}

// "%m [%p] %a " then the level: log_line_prefix as harness/pgcluster.go sets it.
var (
	logLineRe     = regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \S+ \[(\d+)\] (.*?)\s*(ERROR|DETAIL|HINT|CONTEXT|STATEMENT|LOG|WARNING|FATAL|PANIC):\s`)
	logProcessRe  = regexp.MustCompile(`^\s+Process (\d+): (.*)$`)
	logDeadlockRe = regexp.MustCompile(`deadlock detected`)
)

// hotRowLogDeadlocks counts the deadlocks region r's server logged after
// offset, and whether a replicator session took part in each.
func hotRowLogDeadlocks(r *Region, offset int64) (hotRowDeadlocks, error) {
	var d hotRowDeadlocks
	f, err := os.Open(r.Cluster.LogFile)
	if err != nil {
		return d, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return d, err
	}
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		return d, err
	}
	for i := 0; i < len(lines); i++ {
		if !logDeadlockRe.MatchString(lines[i]) {
			continue
		}
		d.Total++
		m := logLineRe.FindStringSubmatch(lines[i])
		victimPID, victimApp := "", ""
		if m != nil {
			victimPID, victimApp = m[1], m[2]
		}
		// The report: this line, its DETAIL (one line per process in the
		// cycle, then each process's statement) and the rest of the
		// victim's message, up to the next line of another message.
		block := []string{lines[i]}
		for j := i + 1; j < len(lines); j++ {
			if mm := logLineRe.FindStringSubmatch(lines[j]); mm != nil && (mm[1] != victimPID || mm[3] == "ERROR" || mm[3] == "LOG") {
				break
			}
			block = append(block, lines[j])
		}
		i += len(block) - 1
		replicator := strings.HasPrefix(victimApp, "polyregion")
		victimIsReplicator := replicator
		app := 0
		for _, l := range block {
			pm := logProcessRe.FindStringSubmatch(l)
			if pm == nil {
				continue
			}
			if strings.Contains(pm[2], hotRowMarker) {
				app++
			} else {
				replicator = true
				if pm[1] == victimPID && victimApp != hotRowAppName {
					victimIsReplicator = true
				}
			}
		}
		switch {
		case replicator:
			d.WithReplicator++
			if victimIsReplicator {
				d.ReplicatorVictim++
			}
			if d.Sample == "" {
				s := strings.Join(block, "\n")
				if len(s) > 2500 {
					s = s[:2500] + "..."
				}
				d.Sample = r.Name + ":\n" + s
			}
		case app > 0:
			d.AppOnly++
		}
	}
	return d, nil
}

// hotRowAllDeadlocks sums hotRowLogDeadlocks over the regions.
func hotRowAllDeadlocks(h *Harness, offsets map[string]int64) (hotRowDeadlocks, map[string]int, error) {
	var all hotRowDeadlocks
	per := map[string]int{}
	for _, r := range h.Regions {
		d, err := hotRowLogDeadlocks(r, offsets[r.Name])
		if err != nil {
			return all, per, err
		}
		per[r.Name] = d.Total
		all.add(d)
	}
	return all, per, nil
}

// replicatorErrors reads polyregion_errors_total of kind from every
// region's /metrics and sums it (-1 when a region did not answer).
func replicatorErrors(ctx context.Context, h *Harness, kind string) int64 {
	return int64(replicatorMetric(ctx, h, "polyregion_errors_total", `kind="`+kind+`"`))
}

// replicatorMetric sums, over every region's /metrics, the samples of a
// series whose labels contain match; -1 when a region does not answer.
func replicatorMetric(ctx context.Context, h *Harness, name, match string) float64 {
	var sum float64
	for _, r := range h.Regions {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		req, _ := http.NewRequestWithContext(rctx, http.MethodGet, "http://"+r.HTTPListen+"/metrics", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			return -1
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		for _, line := range strings.Split(string(b), "\n") {
			series, value, ok := strings.Cut(line, " ")
			if !ok || !strings.HasPrefix(series, name+"{") || !strings.Contains(series, match) {
				continue
			}
			v, _ := strconv.ParseFloat(value, 64)
			sum += v
		}
	}
	return sum
}

func hotRowSum(stats map[string]*hotRowStats, f func(*hotRowStats) int64) int64 {
	var n int64
	for _, s := range stats {
		n += f(s)
	}
	return n
}

// hotRowErrorSummary lists a run's distinct errors, most frequent first.
func hotRowErrorSummary(stats map[string]*hotRowStats) []string {
	type kv struct {
		k string
		n int64
	}
	var all []kv
	for _, name := range sortedRegionNames(stats) {
		for k, n := range stats[name].Errors {
			all = append(all, kv{name + ": " + k, n})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].n > all[j].n || all[i].n == all[j].n && all[i].k < all[j].k })
	var out []string
	for _, e := range all[:min(10, len(all))] {
		out = append(out, fmt.Sprintf("%d x %s", e.n, e.k))
	}
	return out
}

func sortedRegionNames(stats map[string]*hotRowStats) []string {
	names := make([]string, 0, len(stats))
	for n := range stats {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func hotRowEnv(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkHotRows measures the hot-row workload's transactions/s per
// region on three regions' clusters, first without replicators, then with
// them, HOTROW_CLIENTS clients per region (default 2) writing for
// HOTROW_SECONDS (default 20) each time. Between the two phases the tables
// are reset to the seeded state in every region before the replicators
// first start (phase 1's writes are never replicated, so they would
// otherwise leave the regions different). After phase 2 it waits for
// convergence and checks that every transaction and every increment is in
// every region exactly once (it fails otherwise; the TPS ratio is a figure
// only), and counts deadlocks in the servers' logs during phase 2 and its
// catch-up, and application transactions that failed.
func BenchmarkHotRows(b *testing.B) {
	if testing.Short() {
		b.Skip("needs PostgreSQL clusters")
	}
	clients := hotRowEnv("HOTROW_CLIENTS", 2)
	d := time.Duration(hotRowEnv("HOTROW_SECONDS", 20)) * time.Second
	ctx := context.Background()
	prof := newBenchProfile()
	h, err := Start(ctx, Spec{Regions: []string{"us", "eu", "ap"}, SchemaSQL: hotRowSchema(), Tables: hotRowTables, Dir: benchDir(b), Binary: binary,
		ClusterOptions: prof.clusterOptions()})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	fmt.Printf("hot rows: 3 regions x %d clients, %s per phase; %d client rows, %d buckets, 1 total\n", clients, d, hotRowClients, hotRowBuckets)

	fmt.Println("phase 1: without replicators")
	off1 := logOffsets(h)
	var cpu1 cpuPhase
	without, err := runHotRows(ctx, h, clients, d, "p1", cpu1.measure(ctx, h))
	if err != nil {
		b.Fatal(err)
	}
	for _, name := range sortedRegionNames(without) {
		s := without[name]
		fmt.Printf("  %s: %d transactions in %.1fs, %.0f/s, %d failed\n", name, s.Committed, s.Elapsed.Seconds(), s.TPS(), s.Failed)
	}
	dl1, _, err := hotRowAllDeadlocks(h, off1)
	if err != nil {
		b.Fatal(err)
	}
	if err := hotRowReset(ctx, h); err != nil {
		b.Fatal(err)
	}

	fmt.Println("phase 2: with replicators")
	if err := prof.startReplicators(h); err != nil {
		b.Fatal(err)
	}
	if err := h.WaitConverged(ctx, hotRowTablesList, 2*time.Minute); err != nil {
		b.Fatalf("replicators did not come up: %v", err)
	}
	profiled := prof.begin(ctx, h, "hotrows")
	retries0, failures0 := replicatorErrors(ctx, h, "apply_retry"), replicatorErrors(ctx, h, "apply")
	waits0 := replicatorMetric(ctx, h, "polyregion_apply_reader_waits_total", `holding_rows="true"`)
	waited0 := replicatorMetric(ctx, h, "polyregion_apply_reader_wait_seconds_total", `holding_rows="true"`)
	off2 := logOffsets(h)
	var cpu2 cpuPhase
	with, err := runHotRows(ctx, h, clients, d, "p2", cpu2.measure(ctx, h))
	if err != nil {
		b.Fatal(err)
	}
	profiled()
	for _, name := range sortedRegionNames(with) {
		s := with[name]
		fmt.Printf("  %s: %d transactions in %.1fs, %.0f/s, %d failed (%d deadlocks)\n", name, s.Committed, s.Elapsed.Seconds(), s.TPS(), s.Failed, s.Deadlocks)
	}
	stoppedAt := time.Now()
	if err := h.WaitConverged(ctx, hotRowTablesList, 10*time.Minute); err != nil {
		b.Fatalf("hot rows: %v", err)
	}
	converge := time.Since(stoppedAt)
	fmt.Printf("  converged %.1fs after the last write\n", converge.Seconds())
	txns, err := hotRowCheck(ctx, h, with)
	if err != nil {
		b.Fatal(err)
	}
	fmt.Printf("  every region holds all %d transactions once and counters equal to their increments\n", txns)
	dl, perRegion, err := hotRowAllDeadlocks(h, off2)
	if err != nil {
		b.Fatal(err)
	}
	retries, failures := replicatorErrors(ctx, h, "apply_retry"), replicatorErrors(ctx, h, "apply")
	waits := replicatorMetric(ctx, h, "polyregion_apply_reader_waits_total", `holding_rows="true"`) - waits0
	waited := replicatorMetric(ctx, h, "polyregion_apply_reader_wait_seconds_total", `holding_rows="true"`) - waited0
	if retries >= 0 && retries0 >= 0 {
		retries -= retries0
	}
	if failures >= 0 && failures0 >= 0 {
		failures -= failures0
	}
	if dl.Sample != "" {
		fmt.Printf("  first deadlock involving a replicator session, %s\n", dl.Sample)
	}
	if errs := hotRowErrorSummary(with); len(errs) > 0 {
		fmt.Printf("  application errors with replicators:\n    %s\n", strings.Join(errs, "\n    "))
	}

	var t strings.Builder
	fmt.Fprintf(&t, "\n%-44s %12s %12s %8s\n", fmt.Sprintf("hot rows (%d clients/region, %s)", clients, d), "with", "without", "ratio")
	lowest := -1.0
	for _, r := range h.Regions {
		w, wo := with[r.Name].TPS(), without[r.Name].TPS()
		ratio := 0.0
		if wo > 0 {
			ratio = w / wo
		}
		if lowest < 0 || ratio < lowest {
			lowest = ratio
		}
		fmt.Fprintf(&t, "%-44s %12.0f %12.0f %8.2f\n", "transactions/s in "+r.Name, w, wo, ratio)
	}
	fmt.Fprintf(&t, "%-44s %12d %12d\n", "server log deadlocks (replicator involved)", dl.WithReplicator, dl1.WithReplicator)
	fmt.Fprintf(&t, "%-44s %12d %12d\n", "failed application transactions", hotRowSum(with, func(s *hotRowStats) int64 { return s.Failed }), hotRowSum(without, func(s *hotRowStats) int64 { return s.Failed }))
	fmt.Print(t.String())
	hotRowPrintCPU(cpu1.split(), cpu2.split(),
		hotRowSum(without, func(s *hotRowStats) int64 { return s.Committed }),
		hotRowSum(with, func(s *hotRowStats) int64 { return s.Committed }))

	fmt.Printf("hotrow_clients_per_region=%d\n", clients)
	if len(hotRowTables[0].Max) > 0 {
		fmt.Println("hotrow_updated_at=max")
	} else {
		fmt.Println("hotrow_updated_at=lww")
	}
	fmt.Printf("hotrow_seconds=%.0f\n", d.Seconds())
	for _, r := range h.Regions {
		fmt.Printf("hotrow_tps_without_%s=%.0f\n", r.Name, without[r.Name].TPS())
		fmt.Printf("hotrow_tps_with_%s=%.0f\n", r.Name, with[r.Name].TPS())
	}
	fmt.Printf("contended_tps_ratio=%.2f\n", lowest)
	fmt.Printf("hotrow_txns_with=%d\n", txns)
	fmt.Printf("converge_seconds=%.1f\n", converge.Seconds())
	fmt.Printf("server_deadlocks=%d\n", dl.Total)
	for _, r := range h.Regions {
		fmt.Printf("server_deadlocks_%s=%d\n", r.Name, perRegion[r.Name])
	}
	fmt.Printf("applier_deadlocks=%d\n", dl.WithReplicator)
	fmt.Printf("applier_deadlock_victim=%d\n", dl.ReplicatorVictim)
	fmt.Printf("app_only_deadlocks=%d\n", dl.AppOnly)
	fmt.Printf("server_deadlocks_without=%d\n", dl1.Total)
	fmt.Printf("app_failed_txns=%d\n", hotRowSum(with, func(s *hotRowStats) int64 { return s.Failed }))
	fmt.Printf("app_deadlocked_txns=%d\n", hotRowSum(with, func(s *hotRowStats) int64 { return s.Deadlocks }))
	fmt.Printf("app_unknown_outcome_txns=%d\n", hotRowSum(with, func(s *hotRowStats) int64 { return s.Unknown }))
	fmt.Printf("app_failed_txns_without=%d\n", hotRowSum(without, func(s *hotRowStats) int64 { return s.Failed }))
	fmt.Printf("applier_retries=%d\n", retries)
	fmt.Printf("applier_failures=%d\n", failures)
	fmt.Printf("applier_reader_waits_holding_rows=%.0f\n", waits)
	fmt.Printf("applier_reader_wait_holding_rows_ms=%.0f\n", waited*1000)
}

// hotRowPrintCPU prints where each phase's CPU went, per committed
// transaction (every region's together), the groups side by side.
func hotRowPrintCPU(without, with cpuSplit, txnsWithout, txnsWith int64) {
	var t strings.Builder
	fmt.Fprintf(&t, "\n%-44s %12s %12s\n", "CPU ms per transaction", "with", "without")
	seen := map[string]bool{}
	for _, g := range append(with.groups(), without.groups()...) {
		if seen[g] {
			continue
		}
		seen[g] = true
		fmt.Fprintf(&t, "%-44s %12.3f %12.3f\n", "  "+g, perTxn(with.byGroup[g], txnsWith), perTxn(without.byGroup[g], txnsWithout))
	}
	fmt.Fprintf(&t, "%-44s %12.3f %12.3f\n", "all", perTxn(with.total(), txnsWith), perTxn(without.total(), txnsWithout))
	fmt.Fprintf(&t, "%-44s %11.0f%% %11.0f%%\n", "machine busy", 100*with.busy, 100*without.busy)
	fmt.Print(t.String())
	fmt.Printf("hotrow_cpu_ms_per_txn_with=%.3f\n", perTxn(with.total(), txnsWith))
	fmt.Printf("hotrow_cpu_ms_per_txn_without=%.3f\n", perTxn(without.total(), txnsWithout))
	fmt.Printf("hotrow_replication_cpu_ms_per_txn=%.3f\n", perTxn(with.total(), txnsWith)-perTxn(without.total(), txnsWithout))
	fmt.Printf("hotrow_machine_busy_with=%.2f\n", with.busy)
	fmt.Printf("hotrow_machine_busy_without=%.2f\n", without.busy)
}
