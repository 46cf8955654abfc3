package integration

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// steadySeconds is how long each phase of the steady-load benchmark writes
// (BENCH_STEADY_SECONDS overrides; default 15).
func steadySeconds() time.Duration {
	if n, err := strconv.Atoi(os.Getenv("BENCH_STEADY_SECONDS")); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	return 15 * time.Second
}

// machineBusy reads the machine's busy time (every CPU's time not idle or
// waiting for the disk) from /proc/stat.
func machineBusy(b *testing.B) time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatalf("steady load: %v", err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	fields := strings.Fields(line)
	if len(fields) < 6 || fields[0] != "cpu" {
		b.Fatalf("steady load: /proc/stat begins %q", line)
	}
	var busy int64
	for i, f := range fields[1:] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			b.Fatalf("steady load: /proc/stat field %q: %v", f, err)
		}
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	// USER_HZ is 100 on every Linux architecture Go supports.
	return time.Duration(busy) * 10 * time.Millisecond
}

// steadyPhase runs one writer per region (a one-row transaction every
// joinLagTick) for d and returns the machine's busy time over it and the
// transactions written.
func steadyPhase(b *testing.B, ctx context.Context, regions []*Region, d time.Duration) (time.Duration, int) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, len(regions))
	before := machineBusy(b)
	for _, r := range regions {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- writeLagRows(ctx, r, stop) }()
	}
	time.Sleep(d)
	close(stop)
	wg.Wait()
	busy := machineBusy(b) - before
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	var n int64
	for _, r := range regions {
		n += queryBench(b, ctx, r, fmt.Sprintf(`SELECT count(*) FROM public.lag WHERE origin = '%s'`, r.Name))
	}
	return busy, int(n)
}

// BenchmarkSteadyLoad measures what replication costs a deployment at a
// steady, light rate: three regions, each taking a one-row insert every
// 10 ms (about 100 transactions/s), first without replicators, then with
// them, on the same clusters. It prints the machine's CPU time per
// transaction written in each phase and their ratio, after checking that
// every region holds every row. BENCH_PROFILE leaves the replicators' CPU
// profiles, top statements and lock waits of the second phase there.
func BenchmarkSteadyLoad(b *testing.B) {
	ctx := context.Background()
	prof := newBenchProfile()
	h, err := Start(ctx, Spec{Regions: []string{"us", "eu", "ap"}, SchemaSQL: joinBenchSchema,
		Tables: []TableSpec{{Name: "public.bulk"}, {Name: "public.lag"}}, Dir: benchDir(b), Binary: binary,
		ClusterOptions: prof.clusterOptions()})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	d := steadySeconds()

	time.Sleep(2 * time.Second) // the new clusters' startup work settles
	without, nWithout := steadyPhase(b, ctx, h.Regions, d)
	// No replicator has run: the rows written are forgotten, and each
	// writer starts again from 1.
	for _, r := range h.Regions {
		if err := r.Cluster.Exec(ctx, AppDB, `TRUNCATE public.lag`); err != nil {
			b.Fatal(err)
		}
	}

	if err := prof.startReplicators(h); err != nil {
		b.Fatal(err)
	}
	for _, r := range h.Regions {
		if err := r.WaitReady(ctx, 2*time.Minute); err != nil {
			b.Fatal(err)
		}
	}
	time.Sleep(2 * time.Second) // the replicators' startup work settles
	profiled := prof.begin(ctx, h, "steady")
	with, nWith := steadyPhase(b, ctx, h.Regions, d)
	profiled()

	// Every region ends with every row written in the second phase.
	deadline := time.Now().Add(time.Minute)
	for _, r := range h.Regions {
		for {
			got := queryBench(b, ctx, r, `SELECT count(*) FROM public.lag`)
			if got == int64(nWith) {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s holds %d rows of the %d written", r.Name, got, nWith)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	perTxn := func(busy time.Duration, n int) float64 { return float64(busy.Microseconds()) / 1000 / float64(n) }
	fmt.Printf("  without replicators: %d transactions, %.1fs of CPU; with: %d transactions, %.1fs of CPU (%s per phase)\n",
		nWithout, without.Seconds(), nWith, with.Seconds(), d)
	fmt.Printf("steady_txns_per_s=%.0f\n", float64(nWith)/d.Seconds())
	fmt.Printf("steady_cpu_ms_per_txn_without=%.2f\n", perTxn(without, nWithout))
	fmt.Printf("steady_cpu_ms_per_txn_with=%.2f\n", perTxn(with, nWith))
	fmt.Printf("steady_cpu_ratio=%.1f\n", perTxn(with, nWith)/perTxn(without, nWithout))
}
