package integration

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

var kvSchema = []string{
	`CREATE TABLE public.kv (id integer PRIMARY KEY, val text NOT NULL, prev text, updated_at timestamptz NOT NULL DEFAULT now())`,
}

// writeLog records what a workload wrote and what each write overwrote.
type writeLog struct {
	mu          sync.Mutex
	written     []string
	overwritten map[string]bool
}

func (w *writeLog) add(val string, prev *string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.written = append(w.written, val)
	if w.overwritten == nil {
		w.overwritten = map[string]bool{}
	}
	if prev != nil {
		w.overwritten[*prev] = true
	}
}

// overlappingWrites makes every region read-modify-write random keys of
// public.kv for d; each write's value is unique and records what it saw.
func overlappingWrites(ctx context.Context, h *Harness, keys int, d time.Duration, log *writeLog) error {
	deadline := time.Now().Add(d)
	return h.EachRegion(ctx, func(ctx context.Context, r *Region, pool *pgxpool.Pool) error {
		rng := rand.New(rand.NewSource(time.Now().UnixNano() + int64(len(r.Name))))
		for n := 0; time.Now().Before(deadline); n++ {
			id := 1 + rng.Intn(keys)
			val := fmt.Sprintf("%s-%d", r.Name, n)
			var prev *string
			err := Retry(ctx, pool, func(tx pgx.Tx) error {
				prev = nil
				var cur string
				err := tx.QueryRow(ctx, `SELECT val FROM public.kv WHERE id = $1 FOR UPDATE`, id).Scan(&cur)
				switch {
				case errors.Is(err, pgx.ErrNoRows):
					tag, err := tx.Exec(ctx, `INSERT INTO public.kv (id, val) VALUES ($1, $2) ON CONFLICT DO NOTHING`, id, val)
					if err != nil {
						return err
					}
					if tag.RowsAffected() == 0 {
						return fmt.Errorf("insert raced: %w", errRetry)
					}
					return nil
				case err != nil:
					return err
				}
				prev = &cur
				_, err = tx.Exec(ctx, `UPDATE public.kv SET val = $2, prev = $3, updated_at = now() WHERE id = $1`, id, val, cur)
				return err
			})
			if errors.Is(err, errRetry) {
				continue
			}
			if err != nil {
				return err
			}
			log.add(val, prev)
		}
		return nil
	})
}

var errRetry = errors.New("retry")

func TestConcurrentOverlappingWritesConverge(t *testing.T) {
	tables := []TableSpec{{Name: "public.kv"}}
	h := startRegions(t, Spec{SchemaSQL: kvSchema, Tables: tables})
	ctx := ctxFor(t, 5*time.Minute)

	var log writeLog
	if err := overlappingWrites(ctx, h, 30, 5*time.Second, &log); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, []string{"public.kv"}, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	lost, err := UnaccountedWrites(ctx, h, "public.kv", "val", log.written, log.overwritten)
	if err != nil {
		t.Fatal(err)
	}
	if len(lost) > 0 {
		t.Fatalf("%d of %d writes vanished without a conflict record, e.g. %v", len(lost), len(log.written), lost[:min(5, len(lost))])
	}
	var conflicts int64
	for _, r := range h.Regions {
		conflicts += queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl = 'public.kv'`)
	}
	if conflicts == 0 {
		t.Fatalf("%d overlapping writes on 30 keys in 3 regions produced no conflict at all; the workload did not exercise conflicts", len(log.written))
	}
	t.Logf("%d writes, %d conflicts logged across regions, all writes accounted for", len(log.written), conflicts)
}

func TestCountersKeepEveryIncrement(t *testing.T) {
	// Rows 1-4 exist in every region before replication starts (identical
	// data, as a deployment starts from); REPLICA IDENTITY FULL gives the
	// reader their old values. Rows 5-6 are created through replication.
	schema := []string{
		`CREATE TABLE public.counters (id integer PRIMARY KEY, hits bigint NOT NULL DEFAULT 0, amount numeric(12,2) NOT NULL DEFAULT 0, label text)`,
		`ALTER TABLE public.counters REPLICA IDENTITY FULL`,
		`INSERT INTO public.counters (id, hits, amount) SELECT g, 10, 1.5 FROM generate_series(1, 4) g`,
	}
	tables := []TableSpec{{Name: "public.counters", Counters: []string{"hits", "amount"}}}
	h := startRegions(t, Spec{SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 5*time.Minute)

	mustExec(t, ctx, h.Regions[0], `INSERT INTO public.counters (id) SELECT g FROM generate_series(5, 6) g`)
	if err := h.WaitConverged(ctx, []string{"public.counters"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	const perRegion = 1500
	var mu sync.Mutex
	issued := map[int]int64{}
	err := h.EachRegion(ctx, func(ctx context.Context, r *Region, pool *pgxpool.Pool) error {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for w := 0; w < 2; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewSource(time.Now().UnixNano() + int64(w)))
				for i := 0; i < perRegion/2; i++ {
					id := 1 + rng.Intn(6)
					err := Retry(ctx, pool, func(tx pgx.Tx) error {
						_, err := tx.Exec(ctx, `UPDATE public.counters SET hits = hits + 1, amount = amount + 0.25, label = $2 WHERE id = $1`, id, r.Name)
						return err
					})
					if err != nil {
						errs[w] = err
						return
					}
					mu.Lock()
					issued[id]++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return errors.Join(errs...)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, []string{"public.counters"}, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		for id, n := range issued {
			var base, baseAmt int64 // pre-existing rows start at 10 and 1.50
			if id <= 4 {
				base, baseAmt = 10, 150
			}
			got := queryInt(t, ctx, r, `SELECT hits FROM public.counters WHERE id = $1`, id)
			if got != base+n {
				t.Errorf("region %s row %d: hits = %d, want %d (increments issued in all regions)", r.Name, id, got, base+n)
			}
			amt := queryString(t, ctx, r, `SELECT amount::text FROM public.counters WHERE id = $1`, id)
			if want := fmt.Sprintf("%.2f", float64(baseAmt+25*n)/100); amt != want {
				t.Errorf("region %s row %d: amount = %s, want %s", r.Name, id, amt, want)
			}
		}
	}
	if total := queryInt(t, ctx, h.Regions[1], `SELECT sum(hits) FROM public.counters`); total != 3*perRegion+40 {
		t.Errorf("total hits %d, want %d", total, 3*perRegion+40)
	}
}

func TestCausalOverwriteIsNotAConflict(t *testing.T) {
	tables := []TableSpec{{Name: "public.kv"}}
	h := startRegions(t, Spec{SchemaSQL: kvSchema, Tables: tables})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]

	waitFor := func(r *Region, id int, val string) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) {
			if queryString(t, ctx, r, `SELECT (SELECT val FROM public.kv WHERE id = $1)`, id) == val {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("%s never saw id %d = %s", r.Name, id, val)
	}
	for id := 1; id <= 20; id++ {
		mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES ($1, 'us-1')`, id)
	}
	for id := 1; id <= 20; id++ {
		waitFor(eu, id, "us-1")
		mustExec(t, ctx, eu, `UPDATE public.kv SET val = 'eu-2' WHERE id = $1`, id)
	}
	for id := 1; id <= 20; id++ {
		waitFor(ap, id, "eu-2")
		mustExec(t, ctx, ap, `UPDATE public.kv SET val = 'ap-3' WHERE id = $1`, id)
		if id%2 == 0 {
			waitFor(us, id, "ap-3")
			mustExec(t, ctx, us, `DELETE FROM public.kv WHERE id = $1`, id)
		}
	}
	if err := h.WaitConverged(ctx, []string{"public.kv"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log`); n != 0 {
			t.Errorf("region %s logged %d conflicts for causally ordered writes", r.Name, n)
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.kv WHERE val = 'ap-3'`); n != 10 {
			t.Errorf("region %s: %d rows hold the last write, want 10", r.Name, n)
		}
	}
}
