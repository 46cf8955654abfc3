package integration

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// lockSampler, part of BENCH_PROFILE, samples one region's lock waits every
// 20 ms while a phase is measured: each sample lists every session waiting
// for a lock with the session it waits for (application name, state, wait
// event and the start of each one's statement). The file counts the pairs
// seen, most frequent first: who holds the rows the others queue for, and
// doing what.
func lockSampler(ctx context.Context, r *Region, out string) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan map[string]int, 1)
	go func() {
		counts := map[string]int{}
		defer func() { done <- counts }()
		conn, err := r.Conn(ctx)
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		const sample = `SELECT a.application_name || ': ' || left(regexp_replace(a.query, '\s+', ' ', 'g'), 60)
				|| '  waits for  ' || b.application_name || ' (' || b.state || coalesce(', ' || b.wait_event, '') || '): '
				|| left(regexp_replace(b.query, '\s+', ' ', 'g'), 60)
			FROM pg_stat_activity a CROSS JOIN LATERAL pg_catalog.unnest(pg_catalog.pg_blocking_pids(a.pid)) AS bp(pid)
			JOIN pg_stat_activity b ON b.pid = bp.pid
			WHERE a.wait_event_type = 'Lock'`
		for ctx.Err() == nil {
			rows, err := conn.Query(ctx, sample)
			if err == nil {
				var s string
				_, _ = pgx.ForEachRow(rows, []any{&s}, func() error { counts[s]++; return nil })
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return func() {
		cancel()
		counts := <-done
		pairs := make([]string, 0, len(counts))
		for k := range counts {
			pairs = append(pairs, k)
		}
		slices.SortFunc(pairs, func(a, b string) int { return counts[b] - counts[a] })
		var b strings.Builder
		fmt.Fprintf(&b, "lock waits seen in samples every 20ms (count, waiter, holder)\n")
		for _, k := range pairs[:min(len(pairs), 40)] {
			fmt.Fprintf(&b, "%6d  %s\n", counts[k], k)
		}
		_ = os.WriteFile(out, []byte(b.String()), 0o644)
	}
}
