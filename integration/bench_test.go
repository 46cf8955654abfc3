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
)

// benchRows is the backlog size (BENCH_ROWS overrides; default 1M).
func benchRows() int {
	if v, err := strconv.Atoi(os.Getenv("BENCH_ROWS")); err == nil && v > 0 {
		return v
	}
	return 1_000_000
}

func benchReps() int {
	if v, err := strconv.Atoi(os.Getenv("BENCH_REPS")); err == nil && v > 0 {
		return v
	}
	return 3
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

// polyregionBacklog measures rows/s for the replicator catching up a
// backlog of inserts and then of updates written while it was stopped.
func polyregionBacklog(b *testing.B, rows int) (insertRate, updateRate float64, peakRSS int64) {
	dir := benchDir(b)
	ctx := context.Background()
	h, err := Start(ctx, Spec{Regions: []string{"us", "eu"}, SchemaSQL: benchSchema, Tables: []TableSpec{{Name: "public.bench"}}, Dir: dir, Binary: binary})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	us, eu := h.Regions[0], h.Regions[1]
	if err := h.StartReplicators(); err != nil {
		b.Fatal(err)
	}
	if err := h.WaitReady(ctx, time.Minute); err != nil {
		b.Fatal(err)
	}
	measure := func(fill func() error, done string) float64 {
		for _, r := range h.Regions {
			if err := r.StopReplicator(syscall.SIGTERM); err != nil {
				b.Fatal(err)
			}
		}
		before := queryBench(b, ctx, us, `SELECT coalesce(max(seq), 0) FROM polyregion.outbox`)
		if err := fill(); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := h.StartReplicators(); err != nil {
			b.Fatal(err)
		}
		// The reader's share: until every backlog transaction is versioned.
		txns := int64((rows + benchTxnRows - 1) / benchTxnRows)
		if strings.Contains(done, "n = ") {
			txns = int64((rows*3/10 + benchTxnRows - 1) / benchTxnRows)
		}
		if err := waitCount(ctx, us, `SELECT coalesce(max(seq), 0) FROM polyregion.outbox`, before+txns, 30*time.Minute); err != nil {
			b.Fatal(err)
		}
		readerDone := time.Since(start)
		if err := waitCount(ctx, eu, done, int64(rows), 30*time.Minute); err != nil {
			b.Fatal(err)
		}
		el := time.Since(start)
		fmt.Printf("  backlog caught up in %.1fs (the reader had versioned it after %.1fs)\n", el.Seconds(), readerDone.Seconds())
		if rss, err := eu.PeakRSS(); err == nil && rss > peakRSS {
			peakRSS = rss
		}
		if rss, err := us.PeakRSS(); err == nil && rss > peakRSS {
			peakRSS = rss
		}
		return float64(rows) / el.Seconds()
	}
	insertRate = measure(func() error { return fillBacklog(ctx, us, 1, rows) }, `SELECT count(*) FROM public.bench`)
	updRows := rows * 3 / 10
	updateRate = float64(updRows) / (float64(rows) / measure(func() error { return updateBacklog(ctx, us, updRows) }, fmt.Sprintf(`SELECT count(*) * %d / %d FROM public.bench WHERE id <= %d AND n = (id %% 1000) + 1`, rows, updRows, updRows)))
	return insertRate, updateRate, peakRSS
}

// builtinBacklog measures PostgreSQL's own logical replication
// (publication/subscription) catching up the same backlogs.
func builtinBacklog(b *testing.B, rows int) (insertRate, updateRate float64) {
	dir := benchDir(b)
	ctx := context.Background()
	h, err := Start(ctx, Spec{Regions: []string{"src", "dst"}, SchemaSQL: benchSchema, Tables: []TableSpec{{Name: "public.bench"}}, Dir: dir, Binary: binary})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	src, dst := h.Regions[0], h.Regions[1]
	if err := src.Cluster.Exec(ctx, AppDB, `CREATE PUBLICATION bench_pub FOR TABLE public.bench`); err != nil {
		b.Fatal(err)
	}
	if err := dst.Cluster.Exec(ctx, AppDB, fmt.Sprintf(`CREATE SUBSCRIPTION bench_sub CONNECTION 'host=127.0.0.1 port=%d dbname=app user=postgres' PUBLICATION bench_pub WITH (copy_data = false)`, src.Cluster.Port)); err != nil {
		b.Fatal(err)
	}
	time.Sleep(time.Second)
	measure := func(fill func() error, done string) float64 {
		if err := dst.Cluster.Exec(ctx, AppDB, `ALTER SUBSCRIPTION bench_sub DISABLE`); err != nil {
			b.Fatal(err)
		}
		if err := fill(); err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if err := dst.Cluster.Exec(ctx, AppDB, `ALTER SUBSCRIPTION bench_sub ENABLE`); err != nil {
			b.Fatal(err)
		}
		if err := waitCount(ctx, dst, done, int64(rows), 30*time.Minute); err != nil {
			b.Fatal(err)
		}
		return float64(rows) / time.Since(start).Seconds()
	}
	insertRate = measure(func() error { return fillBacklog(ctx, src, 1, rows) }, `SELECT count(*) FROM public.bench`)
	updRows := rows * 3 / 10
	updateRate = float64(updRows) / (float64(rows) / measure(func() error { return updateBacklog(ctx, src, updRows) }, fmt.Sprintf(`SELECT count(*) * %d / %d FROM public.bench WHERE id <= %d AND n = (id %% 1000) + 1`, rows, updRows, updRows)))
	return insertRate, updateRate
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

var tpsRe = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

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
	pgbench := filepath.Join(us.Cluster.BinDir, "pgbench")
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
	recv := filepath.Join(us.Cluster.BinDir, "pg_recvlogical")
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

// BenchmarkDataPlane measures, in one run on this machine: apply throughput
// catching up an insert backlog and an update backlog between two local
// regions, next to PostgreSQL's built-in logical replication on an identical
// pair of clusters; pgbench TPS with and without the replicator; and the
// replicator's peak memory. Ratios are medians of BENCH_REPS repetitions.
func BenchmarkDataPlane(b *testing.B) {
	if testing.Short() {
		b.Skip("needs PostgreSQL clusters")
	}
	rows, reps := benchRows(), benchReps()
	var ourIns, ourUpd, pgIns, pgUpd, insRatio, updRatio []float64
	var peak int64
	for i := 0; i < reps; i++ {
		pi, pu := builtinBacklog(b, rows)
		oi, ou, rss := polyregionBacklog(b, rows)
		pgIns, pgUpd, ourIns, ourUpd = append(pgIns, pi), append(pgUpd, pu), append(ourIns, oi), append(ourUpd, ou)
		insRatio, updRatio = append(insRatio, oi/pi), append(updRatio, ou/pu)
		peak = max(peak, rss)
		fmt.Printf("rep %d: inserts polyregion %.0f rows/s, built-in %.0f rows/s; updates polyregion %.0f rows/s, built-in %.0f rows/s\n", i+1, oi, pi, ou, pu)
	}
	without, with, decoding := writeOverhead(b, reps)
	ratios := make([]float64, len(with))
	decRatios := make([]float64, len(with))
	for i := range with {
		ratios[i] = with[i] / without[i]
		decRatios[i] = decoding[i] / without[i]
	}
	var t strings.Builder
	fmt.Fprintf(&t, "\n%-44s %14s %14s %8s\n", fmt.Sprintf("data plane, %d-row backlog, %d reps", rows, reps), "polyregion", "baseline", "ratio")
	fmt.Fprintf(&t, "%-44s %14.0f %14.0f %8.2f\n", "insert backlog apply (rows/s, vs built-in)", median(ourIns), median(pgIns), median(insRatio))
	fmt.Fprintf(&t, "%-44s %14.0f %14.0f %8.2f\n", "update backlog apply (rows/s, vs built-in)", median(ourUpd), median(pgUpd), median(updRatio))
	fmt.Fprintf(&t, "%-44s %14.0f %14.0f %8.2f\n", "pgbench TPS (with vs without replicator)", median(with), median(without), median(ratios))
	fmt.Fprintf(&t, "%-44s %14.0f %14.0f %8.2f\n", "pgbench TPS (logical decoding alone vs none)", median(decoding), median(without), median(decRatios))
	fmt.Fprintf(&t, "%-44s %14.1f\n", "replicator peak RSS (MB)", float64(peak)/(1<<20))
	fmt.Print(t.String())
	fmt.Printf("apply_insert_rows_per_s=%.0f\n", median(ourIns))
	fmt.Printf("builtin_insert_rows_per_s=%.0f\n", median(pgIns))
	fmt.Printf("apply_update_rows_per_s=%.0f\n", median(ourUpd))
	fmt.Printf("builtin_update_rows_per_s=%.0f\n", median(pgUpd))
	fmt.Printf("apply_insert_ratio_vs_builtin=%.2f\n", median(insRatio))
	fmt.Printf("apply_update_ratio_vs_builtin=%.2f\n", median(updRatio))
	fmt.Printf("write_overhead_ratio=%.2f\n", median(ratios))
	fmt.Printf("write_overhead_decoding_only_ratio=%.2f\n", median(decRatios))
	fmt.Printf("replicator_peak_rss_mb=%.1f\n", float64(peak)/(1<<20))
}
