package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ledgerSchema: every transaction inserts three ledger rows and adds their
// sum to its region's total (a counter). A lost transaction shows as missing
// ledger rows; a doubled one as a total above the sum of its rows.
var ledgerSchema = []string{
	`CREATE TABLE public.ledger (id text PRIMARY KEY, region text NOT NULL, amount integer NOT NULL)`,
	`CREATE TABLE public.totals (region text PRIMARY KEY, total bigint NOT NULL DEFAULT 0, txns bigint NOT NULL DEFAULT 0)`,
}

var ledgerTables = []TableSpec{
	{Name: "public.ledger"},
	{Name: "public.totals", Counters: []string{"total", "txns"}},
}

type ledgerIssued struct {
	mu   sync.Mutex
	rows map[string]int64 // region -> rows
	sum  map[string]int64 // region -> amount
	txns map[string]int64 // region -> committed transactions
}

func ledgerWorkload(ctx context.Context, h *Harness, d time.Duration, iss *ledgerIssued) error {
	deadline := time.Now().Add(d)
	return h.EachRegion(ctx, func(ctx context.Context, r *Region, pool *pgxpool.Pool) error {
		rng := rand.New(rand.NewSource(time.Now().UnixNano() + int64(len(r.Name))))
		for n := 0; time.Now().Before(deadline); n++ {
			amounts := []int{1 + rng.Intn(9), 1 + rng.Intn(9), 1 + rng.Intn(9)}
			sum := amounts[0] + amounts[1] + amounts[2]
			err := Retry(ctx, pool, func(tx pgx.Tx) error {
				for i, a := range amounts {
					if _, err := tx.Exec(ctx, `INSERT INTO public.ledger VALUES ($1, $2, $3)`, fmt.Sprintf("%s-%d-%d", r.Name, n, i), r.Name, a); err != nil {
						return err
					}
				}
				_, err := tx.Exec(ctx, `UPDATE public.totals SET total = total + $2, txns = txns + 1 WHERE region = $1`, r.Name, sum)
				return err
			})
			if err != nil {
				return err
			}
			iss.mu.Lock()
			iss.rows[r.Name] += 3
			iss.sum[r.Name] += int64(sum)
			iss.txns[r.Name]++
			iss.mu.Unlock()
			time.Sleep(time.Duration(rng.Intn(2)) * time.Millisecond)
		}
		return nil
	})
}

// TestKillReplicatorsMidStreamExactlyOnce kills replicators with SIGKILL
// while all regions write, restarts them, and checks that every source
// transaction was applied exactly once in every region and that nothing
// applied from a peer was shipped back out.
func TestKillReplicatorsMidStreamExactlyOnce(t *testing.T) {
	h := startRegions(t, Spec{SchemaSQL: ledgerSchema, Tables: ledgerTables})
	ctx := ctxFor(t, 5*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	mustExec(t, ctx, us, `INSERT INTO public.totals (region) VALUES ('us'), ('eu'), ('ap')`)
	if err := h.WaitConverged(ctx, tableNames(ledgerTables), time.Minute); err != nil {
		t.Fatal(err)
	}
	iss := &ledgerIssued{rows: map[string]int64{}, sum: map[string]int64{}, txns: map[string]int64{}}
	iss.txns["us"] = 1 // the totals seed

	chaos := make(chan error, 1)
	go func() {
		defer close(chaos)
		plan := []struct {
			at  time.Duration
			r   *Region
			sig syscall.Signal
		}{
			{1500 * time.Millisecond, eu, syscall.SIGKILL},
			{3000 * time.Millisecond, us, syscall.SIGKILL},
			{4500 * time.Millisecond, ap, syscall.SIGKILL},
			{6000 * time.Millisecond, eu, syscall.SIGKILL},
		}
		start := time.Now()
		for _, p := range plan {
			time.Sleep(time.Until(start.Add(p.at)))
			if err := p.r.StopReplicator(p.sig); err != nil {
				chaos <- err
				return
			}
			time.Sleep(400 * time.Millisecond)
			if err := p.r.StartReplicator(); err != nil {
				chaos <- err
				return
			}
		}
	}()
	if err := ledgerWorkload(ctx, h, 8*time.Second, iss); err != nil {
		t.Fatal(err)
	}
	if err := <-chaos; err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(ledgerTables), 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		for _, src := range h.Regions {
			rows := queryInt(t, ctx, r, `SELECT count(*) FROM public.ledger WHERE region = $1`, src.Name)
			if rows != iss.rows[src.Name] {
				t.Errorf("region %s holds %d ledger rows from %s, want %d (lost transactions)", r.Name, rows, src.Name, iss.rows[src.Name])
			}
			total := queryInt(t, ctx, r, `SELECT total FROM public.totals WHERE region = $1`, src.Name)
			if total != iss.sum[src.Name] {
				t.Errorf("region %s: total of %s = %d, want %d (a transaction applied twice or lost)", r.Name, src.Name, total, iss.sum[src.Name])
			}
		}
		// No echo: a region's outbox holds exactly its own transactions.
		shipped := queryInt(t, ctx, r, `SELECT next_seq - 1 FROM polyregion.reader_state`)
		if shipped != iss.txns[r.Name] {
			t.Errorf("region %s shipped %d transactions, but %d were written there (applied changes were shipped back out, or local ones lost)", r.Name, shipped, iss.txns[r.Name])
		}
		for _, src := range h.Regions {
			if src == r {
				continue
			}
			applied := queryInt(t, ctx, r, `SELECT seq FROM polyregion.applied WHERE source = $1`, src.Name)
			if applied != iss.txns[src.Name] {
				t.Errorf("region %s applied %d transactions from %s, want %d", r.Name, applied, src.Name, iss.txns[src.Name])
			}
		}
	}
	// The status command reports the same positions, and the backlogs drain
	// once peers confirm.
	for _, r := range h.Regions {
		deadline := time.Now().Add(20 * time.Second)
		for {
			st := regionStatus(t, ctx, r)
			ok := st.Shipped == iss.txns[r.Name]
			for _, src := range h.Regions {
				if src != r && (st.Applied[src.Name].Seq != iss.txns[src.Name] || st.Backlog[src.Name] != 0) {
					ok = false
				}
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("region %s: status %+v does not match the %v transactions written", r.Name, st, iss.txns)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	t.Logf("transactions written: %v", iss.txns)
}

type statusJSON struct {
	Shipped int64 `json:"shipped"`
	Applied map[string]struct {
		Seq int64 `json:"seq"`
	} `json:"applied"`
	Backlog    map[string]int64 `json:"backlog"`
	OutboxRows int64            `json:"outbox_rows"`
}

func regionStatus(t *testing.T, ctx context.Context, r *Region) statusJSON {
	t.Helper()
	out, err := exec.CommandContext(ctx, binary, "status", "--json", "--config", r.ConfigPath).Output()
	if err != nil {
		t.Fatalf("status %s: %v", r.Name, err)
	}
	var st statusJSON
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status %s: %v\n%s", r.Name, err, out)
	}
	return st
}
