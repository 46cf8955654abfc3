package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// benchJoinRows is the size of the table a joining region is seeded with
// (BENCH_JOIN_ROWS overrides; default 1M).
func benchJoinRows() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_JOIN_ROWS")); err == nil && n > 0 {
		return n
	}
	return 1_000_000
}

const (
	joinLagTick   = 10 * time.Millisecond // each writing region writes one row per tick
	joinLagPoll   = 10 * time.Millisecond // each writing region looks for the others' rows this often
	joinLagSteady = 10 * time.Second      // lag measured before the join, for comparison
)

var joinBenchSchema = joinBenchSchemaKeyed("bigint")

// joinBenchSchemaKeyed is the join benchmark's tables, bulk keyed by key
// (bigint or uuid).
func joinBenchSchemaKeyed(key string) []string {
	return []string{
		`CREATE TABLE public.bulk (id ` + key + ` PRIMARY KEY, payload text NOT NULL, n integer NOT NULL DEFAULT 0)`,
		`CREATE TABLE public.lag (origin text NOT NULL, n bigint NOT NULL, ts timestamptz NOT NULL, PRIMARY KEY (origin, n))`,
	}
}

// benchJoinKey is the key of the table a joining region is seeded with
// (BENCH_JOIN_KEY): bigint (default), numbered in the order the rows are
// written, or uuid, the same rows keyed by their number's MD5 (random
// order on disk, the same in every region).
func benchJoinKey(b *testing.B) (typ, expr string) {
	switch k := os.Getenv("BENCH_JOIN_KEY"); k {
	case "", "bigint":
		return "bigint", "g"
	case "uuid":
		return "uuid", "pg_catalog.md5(g::text)::uuid"
	default:
		b.Fatalf("BENCH_JOIN_KEY=%q: bigint or uuid", k)
	}
	return "", ""
}

// lagRecorder keeps, for every row a writing region wrote, when another
// writing region first saw it.
type lagRecorder struct {
	mu   sync.Mutex
	seen []lagSample
}

type lagSample struct {
	written time.Time
	lag     time.Duration
}

func (l *lagRecorder) add(written, seen time.Time) {
	l.mu.Lock()
	l.seen = append(l.seen, lagSample{written, seen.Sub(written)})
	l.mu.Unlock()
}

// within returns the lags of rows written in [from, to).
func (l *lagRecorder) within(from, to time.Time) []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []time.Duration
	for _, s := range l.seen {
		if !s.written.Before(from) && s.written.Before(to) {
			out = append(out, s.lag)
		}
	}
	return out
}

// writeLagRows writes one row per tick in r, stamped with the time it was
// written, until stop.
func writeLagRows(ctx context.Context, r *Region, stop <-chan struct{}) error {
	conn, err := r.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	t := time.NewTicker(joinLagTick)
	defer t.Stop()
	for n := int64(1); ; n++ {
		select {
		case <-stop:
			return nil
		case <-t.C:
		}
		if _, err := conn.Exec(ctx, `INSERT INTO public.lag VALUES ($1, $2, pg_catalog.clock_timestamp())`, r.Name, n); err != nil {
			return fmt.Errorf("%s: lag row %d: %w", r.Name, n, err)
		}
	}
}

// watchLagRows records when r first sees each row the other writing
// regions wrote, until stop.
func watchLagRows(ctx context.Context, r *Region, others []string, rec *lagRecorder, stop <-chan struct{}) error {
	conn, err := r.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	last := map[string]int64{}
	for {
		select {
		case <-stop:
			return nil
		case <-time.After(joinLagPoll):
		}
		for _, o := range others {
			rows, err := conn.Query(ctx, `SELECT n, ts FROM public.lag WHERE origin = $1 AND n > $2 ORDER BY n`, o, last[o])
			if err != nil {
				return fmt.Errorf("%s: watch %s's rows: %w", r.Name, o, err)
			}
			now := time.Now()
			for rows.Next() {
				var n int64
				var ts time.Time
				if err := rows.Scan(&n, &ts); err != nil {
					rows.Close()
					return err
				}
				rec.add(ts, now)
				last[o] = n
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
		}
	}
}

var (
	loadedLineRe = regexp.MustCompile(`joined: snapshot loaded.*`)
	tookRe       = regexp.MustCompile(`"took":"([^"]+)"`)
	rowsRe       = regexp.MustCompile(`"rows":([0-9]+)`)
)

// benchJoinPairs is how many times BenchmarkJoinSeed copies the table with
// pg_dump | psql and seeds a new region from it (BENCH_JOIN_PAIRS
// overrides; default 3): one pair's ratio spreads with the machine's load
// (0.55-1.18 in single pairs on one day), the median of a few less.
func benchJoinPairs() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_JOIN_PAIRS")); err == nil && n > 0 {
		return n
	}
	return 3
}

// joinPair is one pg_dump | psql of the table and one join's load, each
// into the same new region, back to back under the same load.
type joinPair struct {
	dumpRate, joinRate float64
	from, to           time.Time // the join, from starting the replicator to its load logged
}

// BenchmarkJoinSeed seeds new regions from one holding BENCH_JOIN_ROWS
// rows (keyed as BENCH_JOIN_KEY says) while three regions write (each a
// row every 10 ms, each watching the others'): for each of BENCH_JOIN_PAIRS new regions, pg_dump | psql
// of the table into it, then the table emptied and the region joined;
// rows/s of the join's load next to pg_dump | psql's, the median of the
// pairs' ratios, and the replication lag among the writing regions during
// the joins next to before them. A joined region's replicator is stopped
// before the next pair, so every pair runs under the same load.
func BenchmarkJoinSeed(b *testing.B) {
	rows := benchJoinRows()
	pairs := benchJoinPairs()
	ctx := context.Background()
	names := []string{"us", "eu", "ap"}
	for i := range pairs {
		names = append(names, fmt.Sprintf("s%d", i+1))
	}
	keyType, keyExpr := benchJoinKey(b)
	h, err := Start(ctx, Spec{Regions: names, SchemaSQL: joinBenchSchemaKeyed(keyType),
		Tables: []TableSpec{{Name: "public.bulk"}, {Name: "public.lag"}}, Dir: benchDir(b), Binary: binary})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	writers, joiners := h.Regions[:3], h.Regions[3:]
	// The three writing regions start identical, each holding the rows.
	for _, r := range writers {
		if err := r.Cluster.Exec(ctx, AppDB, fmt.Sprintf(`INSERT INTO public.bulk (id, payload) SELECT %s, pg_catalog.md5(g::text) FROM pg_catalog.generate_series(1, %d) g`, keyExpr, rows),
			`VACUUM ANALYZE public.bulk`); err != nil {
			b.Fatal(err)
		}
	}
	us := writers[0]

	for _, r := range writers {
		if err := r.StartReplicator(); err != nil {
			b.Fatal(err)
		}
	}
	for _, r := range writers {
		if err := r.WaitReady(ctx, 2*time.Minute); err != nil {
			b.Fatal(err)
		}
	}
	rec := &lagRecorder{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 2*len(writers))
	for _, r := range writers {
		var others []string
		for _, o := range writers {
			if o != r {
				others = append(others, o.Name)
			}
		}
		wg.Add(2)
		go func() { defer wg.Done(); errs <- writeLagRows(ctx, r, stop) }()
		go func() { defer wg.Done(); errs <- watchLagRows(ctx, r, others, rec, stop) }()
	}
	steadyFrom := time.Now()
	time.Sleep(joinLagSteady)
	steadyTo := time.Now()

	var done []joinPair
	for _, j := range joiners {
		p := joinSeedPair(b, ctx, us, j, rows)
		fmt.Printf("  %s: pg_dump | psql %.0f rows/s, join %.0f rows/s, ratio %.2f\n", j.Name, p.dumpRate, p.joinRate, p.joinRate/p.dumpRate)
		done = append(done, p)
		// Stopped, the joined region adds no load to the next pair (its
		// peers keep its share of their outboxes meanwhile).
		if err := j.StopReplicator(syscall.SIGTERM); err != nil {
			b.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}

	steady := rec.within(steadyFrom, steadyTo)
	var during []time.Duration
	for _, p := range done {
		during = append(during, rec.within(p.from, p.to)...)
	}
	if len(steady) == 0 || len(during) == 0 {
		b.Fatalf("no lag samples (%d before the joins, %d during)", len(steady), len(during))
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	fmt.Printf("  lag among the writing regions: before the joins p50 %.0f / p99 %.0f ms (%d rows); during them p50 %.0f / p99 %.0f / max %.0f ms (%d rows)\n",
		ms(quantile(steady, 0.5)), ms(quantile(steady, 0.99)), len(steady),
		ms(quantile(during, 0.5)), ms(quantile(during, 0.99)), ms(quantile(during, 1)), len(during))
	ratios := make([]float64, len(done))
	dumps := make([]float64, len(done))
	joins := make([]float64, len(done))
	list := make([]string, len(done))
	for i, p := range done {
		ratios[i], dumps[i], joins[i] = p.joinRate/p.dumpRate, p.dumpRate, p.joinRate
		list[i] = fmt.Sprintf("%.2f", ratios[i])
	}
	var t strings.Builder
	fmt.Fprintf(&t, "%-44s %14s\n", fmt.Sprintf("join seed (%d pairs, medians)", len(done)), "")
	fmt.Fprintf(&t, "%-44s %14.0f\n", "pg_dump | psql rows/s", median(dumps))
	fmt.Fprintf(&t, "%-44s %14.0f\n", "join load rows/s", median(joins))
	fmt.Fprintf(&t, "%-44s %14.2f\n", "join / pg_dump | psql, each pair", median(ratios))
	fmt.Print(t.String())
	fmt.Printf("join_seed_rows=%d\n", rows)
	fmt.Printf("join_seed_key=%s\n", keyType)
	fmt.Printf("join_seed_pairs=%d\n", len(done))
	fmt.Printf("pg_dump_rows_per_s=%.0f\n", median(dumps))
	fmt.Printf("join_seed_rows_per_s=%.0f\n", median(joins))
	fmt.Printf("join_seed_ratios=%s\n", strings.Join(list, ","))
	fmt.Printf("join_seed_ratio_vs_pg_dump=%.2f\n", median(ratios))
	fmt.Printf("join_lag_p99_ms=%.0f\n", ms(quantile(during, 0.99)))
	fmt.Printf("steady_lag_p99_ms=%.0f\n", ms(quantile(steady, 0.99)))
}

// joinSeedPair copies the table from us into j (a region that never ran a
// replicator) with pg_dump | psql, empties it there, and joins j from us.
func joinSeedPair(b *testing.B, ctx context.Context, us, j *Region, rows int) joinPair {
	bin := us.Cluster.BinDir
	dump, psql := clientTool(b, bin, "pg_dump"), clientTool(b, bin, "psql")
	began := time.Now()
	pipe := fmt.Sprintf("%s --data-only -t public.bulk -h 127.0.0.1 -p %d -U postgres %s | %s -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p %d -U postgres -d %s",
		dump, us.Cluster.Port, AppDB, psql, j.Cluster.Port, AppDB)
	if out, err := exec.Command("bash", "-o", "pipefail", "-c", pipe).CombinedOutput(); err != nil {
		b.Fatalf("pg_dump | psql: %v\n%s", err, out)
	}
	dumpTook := time.Since(began)
	if copied := queryBench(b, ctx, j, `SELECT count(*) FROM public.bulk`); copied != int64(rows) {
		b.Fatalf("pg_dump | psql copied %d rows of %d", copied, rows)
	}
	// Emptied, the region is new again.
	if err := j.Cluster.Exec(ctx, AppDB, `TRUNCATE public.bulk`, `VACUUM public.bulk`); err != nil {
		b.Fatal(err)
	}

	from := time.Now()
	if err := j.StartReplicatorWith("--join", "us"); err != nil {
		b.Fatal(err)
	}
	var line string
	for line == "" {
		if time.Since(from) > 15*time.Minute {
			b.Fatalf("%s did not load its snapshot within 15 minutes:\n%s", j.Name, j.Logs(4000))
		}
		if !j.Running() {
			b.Fatalf("%s's replicator exited while joining:\n%s", j.Name, j.Logs(4000))
		}
		time.Sleep(50 * time.Millisecond)
		line = loadedLineRe.FindString(j.Logs(1 << 22))
	}
	to := time.Now()
	// A second after the load, for the writers' lag to show its tail.
	time.Sleep(time.Second)
	tm, rm := tookRe.FindStringSubmatch(line), rowsRe.FindStringSubmatch(line)
	if tm == nil || rm == nil {
		b.Fatalf("%s's load log line names no took or rows: %s", j.Name, line)
	}
	took, err := time.ParseDuration(tm[1])
	if err != nil {
		b.Fatal(err)
	}
	loaded, _ := strconv.ParseInt(rm[1], 10, 64)
	if loaded < int64(rows) {
		b.Fatalf("%s loaded %d rows, fewer than the %d of public.bulk", j.Name, loaded, rows)
	}
	return joinPair{dumpRate: float64(rows) / dumpTook.Seconds(), joinRate: float64(loaded) / took.Seconds(), from: from, to: to}
}
