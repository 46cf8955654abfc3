package integration

import (
	"context"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestKeysDeletedAndWrittenAgainConverge: three regions (the first with
// data, the others joined from it) delete keys and write them again, all
// at once, while tombstones are collected. A region that collected a key's
// tombstone writes the key again with a version that knows nothing of the
// delete; the regions still holding the tombstone must take that write as
// following the delete. Before, they took it as concurrent with the
// delete, or as already seen, and the regions ended with different rows
// (about a dozen keys of 2,000 in 40 s). Once the writers stop, every
// tombstone is collected everywhere.
func TestKeysDeletedAndWrittenAgainConverge(t *testing.T) {
	const notes = 2000
	schema := []string{`CREATE TABLE public.notes (id bigint PRIMARY KEY, v text NOT NULL)`}
	h := startClusters(t, Spec{Regions: []string{"us", "eu", "ap"}, SchemaSQL: schema, Tables: []TableSpec{{Name: "public.notes"}}})
	ctx := ctxFor(t, 6*time.Minute)
	us := h.Regions[0]
	mustExec(t, ctx, us, `INSERT INTO public.notes SELECT g, 'first' FROM pg_catalog.generate_series(1, $1::int) g`, notes)
	startReady(t, ctx, us)
	for _, r := range h.Regions[1:] {
		joinFrom(t, ctx, r, "us", 4*time.Minute)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	deleted, written := 0, 0
	for i, r := range h.Regions {
		wg.Add(1)
		go func(r *Region, seed int64) {
			defer wg.Done()
			conn, err := r.Conn(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close(context.Background())
			rng := rand.New(rand.NewSource(seed))
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				id := rng.Int63n(notes) + 1
				del := rng.Intn(3) == 0
				if del {
					_, err = conn.Exec(ctx, `DELETE FROM public.notes WHERE id = $1`, id)
				} else {
					_, err = conn.Exec(ctx, `INSERT INTO public.notes VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = excluded.v`, id, fmt.Sprintf("%s %d", r.Name, n))
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if del {
					deleted++
				} else {
					written++
				}
				mu.Unlock()
				time.Sleep(4 * time.Millisecond)
			}
		}(r, int64(i)+1)
	}
	time.Sleep(40 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d deletes and %d writes over three regions", deleted, written)
	if err := h.WaitConverged(ctx, []string{"public.notes"}, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		waitRow(t, ctx, r, `SELECT count(*) FROM polyregion.row_version WHERE deleted`, 0)
	}
	var retries []string
	for _, r := range h.Regions {
		n, _ := metricValue(scrapeMetrics(ctx, r), "polyregion_errors_total", `kind="apply_retry"`)
		retries = append(retries, fmt.Sprintf("%s %.0f", r.Name, n))
	}
	t.Logf("batches retried: %s", strings.Join(retries, ", "))
}
