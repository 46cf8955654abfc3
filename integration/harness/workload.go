package harness

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// EachRegion runs fn concurrently in every region with that region's pool
// and returns the first error.
func (h *Harness) EachRegion(ctx context.Context, fn func(ctx context.Context, r *Region, pool *pgxpool.Pool) error) error {
	var wg sync.WaitGroup
	errs := make([]error, len(h.Regions))
	for i, r := range h.Regions {
		pool, err := r.Pool(ctx)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx, r, pool); err != nil {
				errs[i] = fmt.Errorf("region %s: %w", r.Name, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Retry runs fn in a transaction, retrying serialization failures and
// deadlocks (a replicator's apply may hold the same rows).
func Retry(ctx context.Context, pool *pgxpool.Pool, fn func(tx pgx.Tx) error) error {
	for attempt := 0; ; attempt++ {
		err := pgx.BeginFunc(ctx, pool, fn)
		if err == nil {
			return nil
		}
		var pe *pgconn.PgError
		if attempt < 20 && errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01" || pe.Code == "55P03") {
			time.Sleep(time.Duration(5+rand.Intn(20)) * time.Millisecond)
			continue
		}
		return err
	}
}

// CounterSchema is the shape of the demo's request counters: per client, a
// daily and a monthly window, incremented in every region at once.
var CounterSchema = []string{
	`CREATE TABLE public.usage_counters (
		client_id text NOT NULL,
		window_kind text NOT NULL,
		period text NOT NULL,
		requests bigint NOT NULL DEFAULT 0,
		updated_at timestamptz NOT NULL DEFAULT now(),
		PRIMARY KEY (client_id, window_kind, period))`,
	`CREATE TABLE public.profiles (
		user_id integer PRIMARY KEY,
		display_name text NOT NULL,
		email text NOT NULL,
		bio text,
		edited_in text NOT NULL,
		updated_at timestamptz NOT NULL DEFAULT now())`,
}

// CounterTables are the demo tables' replication settings.
var CounterTables = []TableSpec{
	{Name: "public.usage_counters", Counters: []string{"requests"}, Max: []string{"updated_at"}, Deletes: "delete_wins"},
	{Name: "public.profiles"},
}

// DemoWorkload is the quickstart's workload: every region counts requests
// for a few clients (daily and monthly windows) and edits a few user
// profiles, all at once, for the given duration. It returns the number of
// requests counted per (client, window, period) across all regions.
func (h *Harness) DemoWorkload(ctx context.Context, d time.Duration, progress func(string)) (map[[3]string]int64, error) {
	clients := []string{"acme", "globex", "initech", "umbrella", "hooli"}
	now := time.Now().UTC()
	day, month := now.Format("2006-01-02"), now.Format("2006-01")
	var mu sync.Mutex
	issued := map[[3]string]int64{}
	deadline := time.Now().Add(d)
	err := h.EachRegion(ctx, func(ctx context.Context, r *Region, pool *pgxpool.Pool) error {
		rng := rand.New(rand.NewSource(int64(len(r.Name)) * time.Now().UnixNano()))
		n := 0
		for time.Now().Before(deadline) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			client := clients[rng.Intn(len(clients))]
			if rng.Intn(10) < 8 {
				err := Retry(ctx, pool, func(tx pgx.Tx) error {
					for _, w := range [][2]string{{"daily", day}, {"monthly", month}} {
						if _, err := tx.Exec(ctx, `INSERT INTO public.usage_counters (client_id, window_kind, period, requests) VALUES ($1, $2, $3, 1)
							ON CONFLICT (client_id, window_kind, period) DO UPDATE SET requests = usage_counters.requests + 1, updated_at = now()`, client, w[0], w[1]); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					return err
				}
				mu.Lock()
				issued[[3]string{client, "daily", day}]++
				issued[[3]string{client, "monthly", month}]++
				mu.Unlock()
			} else {
				user := 1 + rng.Intn(8)
				err := Retry(ctx, pool, func(tx pgx.Tx) error {
					_, err := tx.Exec(ctx, `INSERT INTO public.profiles (user_id, display_name, email, bio, edited_in) VALUES ($1, $2, $3, $4, $5)
						ON CONFLICT (user_id) DO UPDATE SET display_name = excluded.display_name, bio = excluded.bio, edited_in = excluded.edited_in, updated_at = now()`,
						user, fmt.Sprintf("user %d (%s #%d)", user, r.Name, n), fmt.Sprintf("user%d@example.com", user), fmt.Sprintf("edited in %s", r.Name), r.Name)
					return err
				})
				if err != nil {
					return err
				}
			}
			n++
			if n%200 == 0 && progress != nil {
				progress(fmt.Sprintf("%s: %d requests written", r.Name, n))
			}
			time.Sleep(time.Duration(rng.Intn(3)) * time.Millisecond)
		}
		return nil
	})
	return issued, err
}
