package integration

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// TestCounterRowsFromBeforeReplicationTakeIncrementsInPlace: a deployment
// starts from data it already holds, and its hottest rows (request
// counters) are among those rows, written before any replicator ran, so
// no version is recorded for them. Peers' increments of such rows must go
// in as those of any counter row do: no batch fails and is applied again,
// and every increment is kept, also where the row is incremented locally
// at the same moment (its version not recorded yet either).
func TestCounterRowsFromBeforeReplicationTakeIncrementsInPlace(t *testing.T) {
	const rows = 600
	schema := []string{
		`CREATE TABLE public.quota (client bigint PRIMARY KEY, hits bigint NOT NULL DEFAULT 0)`,
		`ALTER TABLE public.quota REPLICA IDENTITY FULL`,
		fmt.Sprintf(`INSERT INTO public.quota (client, hits) SELECT g, 100 FROM generate_series(1, %d) g`, rows),
	}
	tables := []TableSpec{{Name: "public.quota", Counters: []string{"hits"}}}
	h := startRegions(t, Spec{SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 5*time.Minute)

	// Every region increments every row once, in its own order, one row a
	// transaction (so that applications and appliers wait for one another
	// on single rows only, never in a cycle): each row is first
	// incremented in some region while the others still hold it
	// unversioned, and often incremented here while a peer's increment of
	// it is being applied.
	var issued atomic.Int64
	err := h.EachRegion(ctx, func(ctx context.Context, r *Region, pool *pgxpool.Pool) error {
		off := map[string]int{"us": 0, "eu": rows / 3, "ap": 2 * rows / 3}[r.Name]
		for i := 0; i < rows; i++ {
			if _, err := pool.Exec(ctx, `UPDATE public.quota SET hits = hits + 1 WHERE client = $1`, 1+(off+i)%rows); err != nil {
				return err
			}
			issued.Add(1)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, []string{"public.quota"}, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	var errs []error
	for _, r := range h.Regions {
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.quota WHERE hits <> 103`); n != 0 {
			errs = append(errs, fmt.Errorf("region %s: %d rows do not hold 100 + one increment from each region", r.Name, n))
		}
		retried, ok := metricValue(scrapeMetrics(ctx, r), "polyregion_errors_total", `kind="apply_retry"`)
		if ok && retried > 0 {
			errs = append(errs, fmt.Errorf("region %s retried %v batches", r.Name, retried))
		}
	}
	if n := issued.Load(); n != 3*rows {
		errs = append(errs, fmt.Errorf("%d increments issued, want %d", n, 3*rows))
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}
