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

var joinBenchSchema = []string{
	`CREATE TABLE public.bulk (id bigint PRIMARY KEY, payload text NOT NULL, n integer NOT NULL DEFAULT 0)`,
	`CREATE TABLE public.lag (origin text NOT NULL, n bigint NOT NULL, ts timestamptz NOT NULL, PRIMARY KEY (origin, n))`,
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

// BenchmarkJoinSeed seeds a new region from one holding BENCH_JOIN_ROWS
// rows while three regions write (each a row every 10 ms, each watching
// the others'): rows/s of the join's load next to pg_dump | psql of the
// same table between the same two clusters, and the replication lag among
// the writing regions during the join next to before it.
func BenchmarkJoinSeed(b *testing.B) {
	rows := benchJoinRows()
	ctx := context.Background()
	h, err := Start(ctx, Spec{Regions: []string{"us", "eu", "ap", "sa"}, SchemaSQL: joinBenchSchema,
		Tables: []TableSpec{{Name: "public.bulk"}, {Name: "public.lag"}}, Dir: benchDir(b), Binary: binary})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	writers, sa := h.Regions[:3], h.Regions[3]
	// The three writing regions start identical, each holding the rows.
	for _, r := range writers {
		if err := r.Cluster.Exec(ctx, AppDB, fmt.Sprintf(`INSERT INTO public.bulk (id, payload) SELECT g, pg_catalog.md5(g::text) FROM pg_catalog.generate_series(1, %d) g`, rows),
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

	// pg_dump | psql of the table, us to sa (which has never run a
	// replicator), under the same load as the join.
	bin := us.Cluster.BinDir
	dump, psql := clientTool(b, bin, "pg_dump"), clientTool(b, bin, "psql")
	began := time.Now()
	pipe := fmt.Sprintf("%s --data-only -t public.bulk -h 127.0.0.1 -p %d -U postgres %s | %s -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p %d -U postgres -d %s",
		dump, us.Cluster.Port, AppDB, psql, sa.Cluster.Port, AppDB)
	if out, err := exec.Command("bash", "-o", "pipefail", "-c", pipe).CombinedOutput(); err != nil {
		b.Fatalf("pg_dump | psql: %v\n%s", err, out)
	}
	dumpTook := time.Since(began)
	if copied := queryBench(b, ctx, sa, `SELECT count(*) FROM public.bulk`); copied != int64(rows) {
		b.Fatalf("pg_dump | psql copied %d rows of %d", copied, rows)
	}
	dumpRate := float64(rows) / dumpTook.Seconds()
	fmt.Printf("  pg_dump | psql: %d rows in %.1fs (%.0f rows/s)\n", rows, dumpTook.Seconds(), dumpRate)
	// Emptied, sa is a new region again.
	if err := sa.Cluster.Exec(ctx, AppDB, `TRUNCATE public.bulk`, `VACUUM public.bulk`); err != nil {
		b.Fatal(err)
	}

	joinFrom := time.Now()
	if err := sa.StartReplicatorWith("--join", "us"); err != nil {
		b.Fatal(err)
	}
	var line string
	for line == "" {
		if time.Since(joinFrom) > 15*time.Minute {
			b.Fatalf("sa did not load its snapshot within 15 minutes:\n%s", sa.Logs(4000))
		}
		if !sa.Running() {
			b.Fatalf("sa's replicator exited while joining:\n%s", sa.Logs(4000))
		}
		time.Sleep(50 * time.Millisecond)
		line = loadedLineRe.FindString(sa.Logs(1 << 22))
	}
	joinTo := time.Now()
	// A second after the load, for the writers' lag to show its tail.
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	tm, rm := tookRe.FindStringSubmatch(line), rowsRe.FindStringSubmatch(line)
	if tm == nil || rm == nil {
		b.Fatalf("sa's load log line names no took or rows: %s", line)
	}
	took, err := time.ParseDuration(tm[1])
	if err != nil {
		b.Fatal(err)
	}
	loadedRows, _ := strconv.ParseInt(rm[1], 10, 64)
	if loadedRows < int64(rows) {
		b.Fatalf("sa loaded %d rows, fewer than the %d of public.bulk", loadedRows, rows)
	}
	joinRate := float64(loadedRows) / took.Seconds()
	fmt.Printf("  join: %d rows loaded in %.1fs (%.0f rows/s); %.1fs from starting sa's replicator to loaded\n",
		loadedRows, took.Seconds(), joinRate, joinTo.Sub(joinFrom).Seconds())

	steady, during := rec.within(steadyFrom, steadyTo), rec.within(joinFrom, joinTo)
	if len(steady) == 0 || len(during) == 0 {
		b.Fatalf("no lag samples (%d before the join, %d during)", len(steady), len(during))
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	fmt.Printf("  lag among the writing regions: before the join p50 %.0f / p99 %.0f ms (%d rows); during it p50 %.0f / p99 %.0f / max %.0f ms (%d rows)\n",
		ms(quantile(steady, 0.5)), ms(quantile(steady, 0.99)), len(steady),
		ms(quantile(during, 0.5)), ms(quantile(during, 0.99)), ms(quantile(during, 1)), len(during))
	var t strings.Builder
	fmt.Fprintf(&t, "%-44s %14s\n", "join seed", "")
	fmt.Fprintf(&t, "%-44s %14.0f\n", "pg_dump | psql rows/s", dumpRate)
	fmt.Fprintf(&t, "%-44s %14.0f\n", "join load rows/s", joinRate)
	fmt.Print(t.String())
	fmt.Printf("join_seed_rows=%d\n", rows)
	fmt.Printf("pg_dump_rows_per_s=%.0f\n", dumpRate)
	fmt.Printf("join_seed_rows_per_s=%.0f\n", joinRate)
	fmt.Printf("join_seed_ratio_vs_pg_dump=%.2f\n", joinRate/dumpRate)
	fmt.Printf("join_lag_p99_ms=%.0f\n", ms(quantile(during, 0.99)))
	fmt.Printf("steady_lag_p99_ms=%.0f\n", ms(quantile(steady, 0.99)))
}
