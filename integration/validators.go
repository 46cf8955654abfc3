package integration

// Validators for runs under faults. Each workload here leaves evidence in
// the rows themselves, so that a lost, doubled, reordered or silently
// overwritten transaction can be told apart from a correct run after the
// fact, whatever faults hit the run:
//
//   - Ledger: every transaction of a writer inserts a ledger row numbered n
//     (1, 2, 3, ... with no gap at its origin), sets the writer's row in
//     writer_seq to n, and adds its amount to a shared counter bucket. A lost
//     transaction is a gap, a doubled one a counter above the sum of the
//     ledger rows (ExactlyOnce, CounterTotals); the origin region's own rows
//     are the truth, so transactions whose commit outcome the client never
//     learnt (a server crash during COMMIT) are still judged right.
//   - OrderSampler: while the run goes on, samples every region: a writer's
//     sequence never goes backwards in any region, and a region that shows
//     writer_seq = n holds exactly that writer's ledger rows 1..n (source
//     transactions applied whole and in order). It also checks that no
//     source region holds an acknowledgement from a peer ahead of what that
//     peer durably applied.
//   - TaggedWrites: read-modify-write of shared rows from every region, each
//     write with a unique tag that also records the tag it overwrote. After
//     convergence every write is the final value, was overwritten by a write
//     that had seen it, or is named as the loser of a logged conflict
//     (LosersLogged), and no logged conflict is between causally ordered
//     writes or resolved differently in two regions.
//
// Convergence itself is package harness's WaitConverged / Compare.

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ---- ledger: exactly-once, counters, order ----

// LedgerBuckets is the number of shared counter rows the ledger adds to.
const LedgerBuckets = 8

// LedgerSchema creates the ledger workload's tables.
var LedgerSchema = []string{
	`CREATE TABLE public.ledger (id text PRIMARY KEY, writer text NOT NULL, n bigint NOT NULL, amount integer NOT NULL, bucket integer NOT NULL)`,
	`CREATE TABLE public.writer_seq (writer text PRIMARY KEY, n bigint NOT NULL)`,
	`CREATE TABLE public.buckets (id integer PRIMARY KEY, total bigint NOT NULL DEFAULT 0, txns bigint NOT NULL DEFAULT 0)`,
	`ALTER TABLE public.buckets REPLICA IDENTITY FULL`,
}

// LedgerTables are the ledger tables' replication settings.
var LedgerTables = []TableSpec{
	{Name: "public.ledger"},
	{Name: "public.writer_seq"},
	{Name: "public.buckets", Counters: []string{"total", "txns"}},
}

// Ledger runs ledger writers and remembers what they know was committed.
type Ledger struct {
	mu      sync.Mutex
	writers map[string]*ledgerWriter
	// Errors counts failed transactions (all were resolved against the
	// origin region's rows).
	Errors int
}

type ledgerWriter struct {
	region string
	acked  int64 // last n whose COMMIT returned success
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger { return &Ledger{writers: map[string]*ledgerWriter{}} }

// SeedLedger creates the counter buckets in the first region; wait for
// convergence before writing.
func SeedLedger(ctx context.Context, h *Harness) error {
	return h.Regions[0].Cluster.Exec(ctx, AppDB, fmt.Sprintf(`INSERT INTO public.buckets (id) SELECT g FROM generate_series(1, %d) g`, LedgerBuckets))
}

// Run starts perRegion writers in every region, each committing about rate
// transactions per second (0: as fast as it can), until stop is closed or
// ctx ends. A failed transaction (the region's server may be down or
// frozen) is retried once the origin tells what was committed.
func (l *Ledger) Run(ctx context.Context, h *Harness, perRegion int, rate float64, stop <-chan struct{}) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for _, r := range h.Regions {
		pool, err := r.Pool(ctx)
		if err != nil {
			return err
		}
		for i := 0; i < perRegion; i++ {
			name := fmt.Sprintf("%s-w%d", r.Name, i)
			l.mu.Lock()
			w := l.writers[name]
			if w == nil {
				w = &ledgerWriter{region: r.Name}
				l.writers[name] = w
			}
			l.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := l.write(ctx, pool, name, w, rate, stop); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("ledger writer %s: %w", name, err))
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	return errors.Join(errs...)
}

func stopped(ctx context.Context, stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	case <-ctx.Done():
		return true
	default:
		return false
	}
}

func (l *Ledger) write(ctx context.Context, pool *pgxpool.Pool, name string, w *ledgerWriter, rate float64, stop <-chan struct{}) error {
	rng := rand.New(rand.NewSource(time.Now().UnixNano() + int64(len(name))*7919))
	var interval time.Duration
	if rate > 0 {
		interval = time.Duration(float64(time.Second) / rate)
	}
	next := time.Now()
	last, err := l.committed(ctx, pool, name, stop)
	if err != nil {
		return err
	}
	for !stopped(ctx, stop) {
		if interval > 0 {
			next = next.Add(interval)
			if d := time.Until(next); d > 0 {
				select {
				case <-time.After(d):
				case <-stop:
					return nil
				case <-ctx.Done():
					return nil
				}
			} else if d < -2*time.Second {
				next = time.Now() // do not burst after a stall
			}
		}
		n := last + 1
		amount, bucket := 1+rng.Intn(9), 1+rng.Intn(LedgerBuckets)
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := pgx.BeginFunc(tctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(tctx, `INSERT INTO public.ledger (id, writer, n, amount, bucket) VALUES ($1, $2, $3, $4, $5)`,
				fmt.Sprintf("%s:%d", name, n), name, n, amount, bucket); err != nil {
				return err
			}
			if _, err := tx.Exec(tctx, `INSERT INTO public.writer_seq (writer, n) VALUES ($1, $2)
				ON CONFLICT (writer) DO UPDATE SET n = excluded.n`, name, n); err != nil {
				return err
			}
			_, err := tx.Exec(tctx, `UPDATE public.buckets SET total = total + $2, txns = txns + 1 WHERE id = $1`, bucket, amount)
			return err
		})
		cancel()
		if err == nil {
			last = n
			l.mu.Lock()
			w.acked = n
			l.mu.Unlock()
			continue
		}
		l.mu.Lock()
		l.Errors++
		l.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
		// Outcome unknown (or a retryable error): ask the origin.
		last, err = l.committed(ctx, pool, name, stop)
		if err != nil {
			return err
		}
	}
	return nil
}

// committed returns the writer's last committed n at its origin, waiting
// (up to two minutes) for the region's server to answer.
func (l *Ledger) committed(ctx context.Context, pool *pgxpool.Pool, name string, stop <-chan struct{}) (int64, error) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var n int64
		err := pool.QueryRow(qctx, `SELECT coalesce((SELECT n FROM public.writer_seq WHERE writer = $1), 0)`, name).Scan(&n)
		cancel()
		if err == nil {
			return n, nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("origin unreachable for 2 minutes: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Transactions returns how many transactions the writers know committed.
func (l *Ledger) Transactions() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n int64
	for _, w := range l.writers {
		n += w.acked
	}
	return n
}

// TransactionsIn returns how many transactions the writers in region know
// committed.
func (l *Ledger) TransactionsIn(region string) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n int64
	for _, w := range l.writers {
		if w.region == region {
			n += w.acked
		}
	}
	return n
}

type ledgerTruth struct {
	n      int64           // last n at the origin
	amount int64           // sum of amounts
	bucket map[int64]int64 // bucket -> amount
}

// truth reads every writer's transactions from its origin region, checking
// that the origin itself is gap-free and holds every acknowledged commit.
func (l *Ledger) truth(ctx context.Context, h *Harness) (map[string]*ledgerTruth, []string, error) {
	l.mu.Lock()
	writers := map[string]ledgerWriter{}
	for name, w := range l.writers {
		writers[name] = *w
	}
	l.mu.Unlock()
	out := map[string]*ledgerTruth{}
	var problems []string
	for name, w := range writers {
		conn, err := h.Region(w.region).Conn(ctx)
		if err != nil {
			return nil, nil, err
		}
		t := &ledgerTruth{bucket: map[int64]int64{}}
		var cnt, maxN, seqN int64
		err = conn.QueryRow(ctx, `SELECT count(*), coalesce(max(n), 0), coalesce(sum(amount), 0),
			coalesce((SELECT n FROM public.writer_seq WHERE writer = $1), 0)
			FROM public.ledger WHERE writer = $1`, name).Scan(&cnt, &maxN, &t.amount, &seqN)
		if err == nil {
			var rows pgx.Rows
			rows, err = conn.Query(ctx, `SELECT bucket, sum(amount) FROM public.ledger WHERE writer = $1 GROUP BY bucket`, name)
			if err == nil {
				for rows.Next() {
					var b, a int64
					if err = rows.Scan(&b, &a); err != nil {
						break
					}
					t.bucket[b] = a
				}
				rows.Close()
				if err == nil {
					err = rows.Err()
				}
			}
		}
		conn.Close(context.Background())
		if err != nil {
			return nil, nil, err
		}
		t.n = seqN
		if cnt != maxN || seqN != maxN {
			problems = append(problems, fmt.Sprintf("origin %s of writer %s holds %d ledger rows, max n %d, writer_seq %d (the origin itself lost or doubled a transaction)", w.region, name, cnt, maxN, seqN))
		}
		if seqN < w.acked {
			problems = append(problems, fmt.Sprintf("origin %s of writer %s holds n up to %d, but commit of n=%d was acknowledged to the client", w.region, name, seqN, w.acked))
		}
		out[name] = t
	}
	return out, problems, nil
}

// ExactlyOnce checks, in every region, that each writer's transactions are
// all there exactly once: ledger rows 1..N with N the origin's last, the
// writer's sequence at N, and its amounts summing to the origin's; then that
// the counter buckets hold exactly the ledger's amounts (CounterTotals).
// Call it after WaitConverged.
func (l *Ledger) ExactlyOnce(ctx context.Context, h *Harness) error {
	return l.ExactlyOnceIn(ctx, h, h.Regions)
}

// ExactlyOnceIn is ExactlyOnce checked in some regions of h only (the
// others, removed from the cluster, say, still tell what their writers
// committed).
func (l *Ledger) ExactlyOnceIn(ctx context.Context, h *Harness, in []*Region) error {
	truth, problems, err := l.truth(ctx, h)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(truth))
	for n := range truth {
		names = append(names, n)
	}
	sort.Strings(names)
	wantBucket := map[string]int64{}
	var wantTotal, wantTxns int64
	for _, name := range names {
		t := truth[name]
		wantTxns += t.n
		wantTotal += t.amount
		for b, a := range t.bucket {
			wantBucket[fmt.Sprint(b)] += a
		}
	}
	for i := 1; i <= LedgerBuckets; i++ {
		wantBucket[fmt.Sprint(i)] += 0
	}
	for _, r := range in {
		conn, err := r.Conn(ctx)
		if err != nil {
			return err
		}
		for _, name := range names {
			t := truth[name]
			var cnt, minN, maxN, sum, seqN int64
			err := conn.QueryRow(ctx, `SELECT count(*), coalesce(min(n), 0), coalesce(max(n), 0), coalesce(sum(amount), 0),
				coalesce((SELECT n FROM public.writer_seq WHERE writer = $1), 0)
				FROM public.ledger WHERE writer = $1`, name).Scan(&cnt, &minN, &maxN, &sum, &seqN)
			if err != nil {
				conn.Close(context.Background())
				return err
			}
			if cnt != t.n || maxN != t.n || (t.n > 0 && minN != 1) || seqN != t.n || sum != t.amount {
				var gaps []int64
				if cnt != t.n {
					gaps, _ = ledgerGaps(ctx, conn, name, t.n)
				}
				problems = append(problems, fmt.Sprintf("region %s, writer %s: %d ledger rows (n %d..%d, sum %d), writer_seq %d; origin has %d rows summing to %d; missing n: %v",
					r.Name, name, cnt, minN, maxN, sum, seqN, t.n, t.amount, gaps))
			}
		}
		conn.Close(context.Background())
	}
	if err := CounterTotals(ctx, &Harness{Spec: h.Spec, Regions: in}, `SELECT id::text, total FROM public.buckets`, wantBucket); err != nil {
		problems = append(problems, err.Error())
	}
	if err := CounterTotals(ctx, &Harness{Spec: h.Spec, Regions: in}, `SELECT 'all', coalesce(sum(txns), 0)::bigint FROM public.buckets`, map[string]int64{"all": wantTxns}); err != nil {
		problems = append(problems, "transaction count: "+err.Error())
	}
	if len(problems) > 0 {
		return fmt.Errorf("exactly-once violated:\n  %s", strings.Join(problems[:min(len(problems), 20)], "\n  "))
	}
	return nil
}

func ledgerGaps(ctx context.Context, conn *pgx.Conn, writer string, upTo int64) ([]int64, error) {
	rows, err := conn.Query(ctx, `SELECT g FROM generate_series(1, $2::bigint) g
		WHERE NOT EXISTS (SELECT 1 FROM public.ledger WHERE writer = $1 AND n = g) ORDER BY g LIMIT 10`, writer, upTo)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// CounterTotals checks counter conservation: query returns (key text,
// value bigint) rows in each region, and every key's value must equal
// want[key] (the increments issued for it in all regions) in every region.
func CounterTotals(ctx context.Context, h *Harness, query string, want map[string]int64) error {
	var problems []string
	for _, r := range h.Regions {
		conn, err := r.Conn(ctx)
		if err != nil {
			return err
		}
		rows, err := conn.Query(ctx, query)
		if err != nil {
			conn.Close(context.Background())
			return err
		}
		got := map[string]int64{}
		for rows.Next() {
			var k string
			var v int64
			if err := rows.Scan(&k, &v); err != nil {
				rows.Close()
				conn.Close(context.Background())
				return err
			}
			got[k] = v
		}
		rows.Close()
		conn.Close(context.Background())
		keys := make([]string, 0, len(want))
		for k := range want {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if got[k] != want[k] {
				problems = append(problems, fmt.Sprintf("region %s key %s: counter %d, increments issued %d (diff %+d)", r.Name, k, got[k], want[k], got[k]-want[k]))
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("counters not conserved: %s", strings.Join(problems, "; "))
	}
	return nil
}

// ---- sampling during the run: order, atomicity, acknowledgements ----

// OrderSampler samples every region while a ledger run goes on.
//
// Appliers commit asynchronously, as PostgreSQL's own apply workers do: a
// region whose server is killed may lose the last transactions it applied
// (never one it acknowledged; the peer sends them again). So what a region
// showed before its server was killed is not compared with what it shows
// after: a scenario calls Crashing before it kills a server.
type OrderSampler struct {
	h    *Harness
	mu   sync.Mutex
	last map[[2]string]seen // (region, writer) -> last seen n
	// crashes counts, per region, the kills of its server so far.
	crashes    map[string]int
	samples    int
	violations []string
	stop       chan struct{}
	done       chan struct{}
}

// seen is a writer's n as a region showed it, between two kills of its
// server (crash: how many kills came before).
type seen struct {
	n     int64
	crash int
}

// Crashing tells the sampler that region's server is about to be killed.
func (s *OrderSampler) Crashing(region string) {
	s.mu.Lock()
	s.crashes[region]++
	s.mu.Unlock()
}

// StartOrderSampler samples every interval until Stop.
func StartOrderSampler(ctx context.Context, h *Harness, interval time.Duration) *OrderSampler {
	s := &OrderSampler{h: h, last: map[[2]string]seen{}, crashes: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			s.sample(ctx)
			select {
			case <-s.stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *OrderSampler) violate(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.violations) < 50 {
		s.violations = append(s.violations, fmt.Sprintf(format, args...))
	}
}

// sample reads each region in one snapshot; a region that does not answer
// (server down or frozen) is skipped.
func (s *OrderSampler) sample(ctx context.Context) {
	for _, r := range s.h.Regions {
		s.mu.Lock()
		crash := s.crashes[r.Name]
		s.mu.Unlock()
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := r.Cluster.Connect(qctx, AppDB)
		if err != nil {
			cancel()
			continue
		}
		rows, err := conn.Query(qctx, `SELECT w.writer, w.n, (SELECT count(*) FROM public.ledger l WHERE l.writer = w.writer),
			(SELECT coalesce(max(n), 0) FROM public.ledger l WHERE l.writer = w.writer) FROM public.writer_seq w`)
		ok := err == nil
		type obs struct {
			writer         string
			n, count, maxN int64
		}
		var got []obs
		if ok {
			for rows.Next() {
				var o obs
				if err := rows.Scan(&o.writer, &o.n, &o.count, &o.maxN); err != nil {
					ok = false
					break
				}
				got = append(got, o)
			}
			rows.Close()
			ok = ok && rows.Err() == nil
		}
		// Acknowledgements this region holds from its peers.
		acks := map[string]int64{}
		if ok {
			ar, err := conn.Query(qctx, `SELECT peer, seq FROM polyregion.peer_ack`)
			if err == nil {
				for ar.Next() {
					var p string
					var q int64
					if ar.Scan(&p, &q) == nil {
						acks[p] = q
					}
				}
				ar.Close()
			}
		}
		conn.Close(context.Background())
		cancel()
		if !ok {
			continue
		}
		s.mu.Lock()
		s.samples++
		killed := s.crashes[r.Name] != crash // while it was read
		s.mu.Unlock()
		for _, o := range got {
			k := [2]string{r.Name, o.writer}
			s.mu.Lock()
			prev := s.last[k]
			if prev.crash != crash {
				prev = seen{crash: crash} // shown before a kill of the server since
			}
			if !killed {
				s.last[k] = seen{n: max(prev.n, o.n), crash: crash}
			}
			s.mu.Unlock()
			if o.n < prev.n {
				s.violate("ordering: region %s saw writer %s at n=%d after n=%d", r.Name, o.writer, o.n, prev.n)
			}
			if o.count != o.n || o.maxN != o.n {
				s.violate("atomicity/order: region %s shows writer %s at n=%d but holds %d of its ledger rows (max n %d)", r.Name, o.writer, o.n, o.count, o.maxN)
			}
		}
		// The peer's applied position is read after the ack: it only grows.
		for peer, ack := range acks {
			p := s.h.Region(peer)
			if p == nil {
				continue
			}
			qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			var applied int64
			err := func() error {
				pc, err := p.Cluster.Connect(qctx, AppDB)
				if err != nil {
					return err
				}
				defer pc.Close(context.Background())
				return pc.QueryRow(qctx, `SELECT coalesce((SELECT seq FROM polyregion.applied WHERE source = $1), 0)`, r.Name).Scan(&applied)
			}()
			cancel()
			if err == nil && ack > applied {
				s.violate("acknowledgement ahead: %s holds an ack from %s for seq %d, but %s has applied only %d from %s", r.Name, peer, ack, peer, applied, r.Name)
			}
		}
	}
}

// Stop ends sampling (after one last sample) and returns the violations
// seen; it is an error too if not a single sample succeeded.
func (s *OrderSampler) Stop(ctx context.Context) error {
	close(s.stop)
	<-s.done
	s.sample(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.violations) > 0 {
		return fmt.Errorf("%d violations seen while sampling, e.g.:\n  %s", len(s.violations), strings.Join(s.violations[:min(10, len(s.violations))], "\n  "))
	}
	if s.samples == 0 {
		return errors.New("order sampler: no region ever answered")
	}
	return nil
}

// Samples returns how many region samples succeeded.
func (s *OrderSampler) Samples() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples
}

// ---- replication lag ----

// Lag returns, for every (target, source) pair, how many of source's
// transactions target has not applied yet (the source's reader position
// minus the target's applied position).
func Lag(ctx context.Context, h *Harness) (map[[2]string]int64, error) {
	shipped := map[string]int64{}
	applied := map[[2]string]int64{}
	for _, r := range h.Regions {
		conn, err := r.Conn(ctx)
		if err != nil {
			return nil, err
		}
		var next int64
		err = conn.QueryRow(ctx, `SELECT coalesce((SELECT next_seq FROM polyregion.reader_state LIMIT 1), 1)`).Scan(&next)
		if err == nil {
			var rows pgx.Rows
			rows, err = conn.Query(ctx, `SELECT source, seq FROM polyregion.applied`)
			if err == nil {
				for rows.Next() {
					var s string
					var q int64
					if err = rows.Scan(&s, &q); err != nil {
						break
					}
					applied[[2]string{r.Name, s}] = q
				}
				rows.Close()
			}
		}
		conn.Close(context.Background())
		if err != nil {
			return nil, err
		}
		shipped[r.Name] = next - 1
	}
	out := map[[2]string]int64{}
	for _, t := range h.Regions {
		for _, s := range h.Regions {
			if s != t {
				out[[2]string{t.Name, s.Name}] = max(0, shipped[s.Name]-applied[[2]string{t.Name, s.Name}])
			}
		}
	}
	return out, nil
}

// ---- tagged writes: conflict-log completeness ----

// TaggedSchema is the table for tagged read-modify-write.
var TaggedSchema = []string{
	`CREATE TABLE public.tagged (id integer PRIMARY KEY, tag text NOT NULL, prev text, region text NOT NULL)`,
}

// TaggedTables is its replication setting (last writer wins).
var TaggedTables = []TableSpec{{Name: "public.tagged"}}

// TaggedWrites records tagged writes: which committed, which the client is
// unsure of, and what each overwrote.
type TaggedWrites struct {
	mu        sync.Mutex
	Committed []string
	Maybe     map[string]bool   // commit outcome unknown
	Prev      map[string]string // tag -> tag it overwrote (read in the same transaction)
	Key       map[string]int
	XID       map[string]uint32 // tag -> the transaction that committed it
	n         map[string]int
}

// NewTaggedWrites returns an empty record.
func NewTaggedWrites() *TaggedWrites {
	return &TaggedWrites{Maybe: map[string]bool{}, Prev: map[string]string{}, Key: map[string]int{}, XID: map[string]uint32{}, n: map[string]int{}}
}

// XIDOf returns the transaction that committed tag (0 when none did).
func (tw *TaggedWrites) XIDOf(tag string) uint32 {
	tw.mu.Lock()
	defer tw.mu.Unlock()
	return tw.XID[tag]
}

// Write makes one tagged read-modify-write of key id in region r. It
// returns the tag written (committed, or recorded as maybe on error).
func (tw *TaggedWrites) Write(ctx context.Context, r *Region, id int) (string, error) {
	pool, err := r.Pool(ctx)
	if err != nil {
		return "", err
	}
	tw.mu.Lock()
	tw.n[r.Name]++
	tag := fmt.Sprintf("%s-%d", r.Name, tw.n[r.Name])
	tw.Key[tag] = id
	tw.mu.Unlock()
	var prev *string
	var xid uint32
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = pgx.BeginFunc(tctx, pool, func(tx pgx.Tx) error {
		prev = nil
		var cur string
		err := tx.QueryRow(tctx, `SELECT tag FROM public.tagged WHERE id = $1 FOR UPDATE`, id).Scan(&cur)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return tx.QueryRow(tctx, `INSERT INTO public.tagged (id, tag, region) VALUES ($1, $2, $3) RETURNING xmin`, id, tag, r.Name).Scan(&xid)
		case err != nil:
			return err
		}
		prev = &cur
		return tx.QueryRow(tctx, `UPDATE public.tagged SET tag = $2, prev = $3, region = $4 WHERE id = $1 RETURNING xmin`, id, tag, cur, r.Name).Scan(&xid)
	})
	tw.mu.Lock()
	defer tw.mu.Unlock()
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			// The server refused it (a duplicate insert raced with an
			// applied one, a deadlock): not committed.
			return tag, err
		}
		tw.Maybe[tag] = true
		return tag, err
	}
	tw.Committed = append(tw.Committed, tag)
	tw.XID[tag] = xid
	if prev != nil {
		tw.Prev[tag] = *prev
	}
	return tag, nil
}

// Run makes every region write random keys in [1, keys] until stop closes,
// about rate writes per second per region (0: as fast as it can). Errors
// are tolerated (faults make them); it returns only ctx errors.
func (tw *TaggedWrites) Run(ctx context.Context, h *Harness, keys int, rate float64, stop <-chan struct{}) error {
	return h.EachRegion(ctx, func(ctx context.Context, r *Region, _ *pgxpool.Pool) error {
		rng := rand.New(rand.NewSource(time.Now().UnixNano() + int64(len(r.Name))*104729))
		for !stopped(ctx, stop) {
			if _, err := tw.Write(ctx, r, 1+rng.Intn(keys)); err != nil {
				time.Sleep(50 * time.Millisecond)
			}
			if rate > 0 {
				select {
				case <-time.After(time.Duration(float64(time.Second) / rate)):
				case <-stop:
				case <-ctx.Done():
				}
			}
		}
		return nil
	})
}

// ConflictRecord is one row of polyregion.conflict_log, as the validators
// read it.
type ConflictRecord struct {
	Region, Key, Kind, Winner   string
	LocalTag, RemoteTag         *string
	LocalVersion, RemoteVersion string
	LocalOrigin, RemoteOrigin   string
	WinnerOrigin                string
	LocalHLC, RemoteHLC         int64
	Outcome                     string // overwritten or merged
}

// LoserTag is the tag of the write that lost (nil for a delete).
func (c ConflictRecord) LoserTag() *string {
	if c.Winner == "local" {
		return c.RemoteTag
	}
	return c.LocalTag
}

// Conflicts reads every region's conflict log for table, with row images'
// column col.
func Conflicts(ctx context.Context, h *Harness, table, col string) ([]ConflictRecord, error) {
	var out []ConflictRecord
	for _, r := range h.Regions {
		conn, err := r.Conn(ctx)
		if err != nil {
			return nil, err
		}
		rows, err := conn.Query(ctx, `SELECT region, key, kind, winner, local_row->>$2, remote_row->>$2, local_version, remote_version,
			local_origin, remote_origin, winner_origin, local_hlc, remote_hlc, coalesce(outcome, '') FROM polyregion.conflict_log WHERE tbl = $1 ORDER BY id`, table, col)
		if err != nil {
			conn.Close(context.Background())
			return nil, err
		}
		for rows.Next() {
			var c ConflictRecord
			if err := rows.Scan(&c.Region, &c.Key, &c.Kind, &c.Winner, &c.LocalTag, &c.RemoteTag, &c.LocalVersion, &c.RemoteVersion,
				&c.LocalOrigin, &c.RemoteOrigin, &c.WinnerOrigin, &c.LocalHLC, &c.RemoteHLC, &c.Outcome); err != nil {
				rows.Close()
				conn.Close(context.Background())
				return nil, err
			}
			out = append(out, c)
		}
		rows.Close()
		conn.Close(context.Background())
	}
	return out, nil
}

// UnaccountedWrites returns the writes (values of col in table) that
// vanished without a trace: not the final value of any row, not overwritten
// by a write that had seen them (overwritten), and not named in any region's
// conflict log. Invariant: the result is empty.
func UnaccountedWrites(ctx context.Context, h *Harness, table, col string, written []string, overwritten map[string]bool) ([]string, error) {
	accounted := map[string]bool{}
	for v := range overwritten {
		accounted[v] = true
	}
	for _, r := range h.Regions {
		conn, err := r.Conn(ctx)
		if err != nil {
			return nil, err
		}
		rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT %s::text FROM %s
			UNION ALL SELECT local_row->>$1 FROM polyregion.conflict_log WHERE tbl = $2 AND local_row IS NOT NULL
			UNION ALL SELECT remote_row->>$1 FROM polyregion.conflict_log WHERE tbl = $2 AND remote_row IS NOT NULL`, col, table), col, table)
		if err != nil {
			conn.Close(context.Background())
			return nil, err
		}
		for rows.Next() {
			var v *string
			if err := rows.Scan(&v); err != nil {
				rows.Close()
				conn.Close(context.Background())
				return nil, err
			}
			if v != nil {
				accounted[*v] = true
			}
		}
		rows.Close()
		conn.Close(context.Background())
	}
	var lost []string
	for _, w := range written {
		if !accounted[w] {
			lost = append(lost, w)
		}
	}
	return lost, nil
}

// ConflictReport sums up LosersLogged's findings.
type ConflictReport struct {
	Writes, Final, Overwritten, LoggedLosers, Maybe int
	Conflicts                                       int
	Losers                                          map[string]bool
}

func (r ConflictReport) String() string {
	return fmt.Sprintf("%d committed writes: %d final, %d overwritten by a write that saw them, %d conflict losers named in the log (%d conflict records); %d with unknown outcome",
		r.Writes, r.Final, r.Overwritten, r.LoggedLosers, r.Conflicts, r.Maybe)
}

// LosersLogged checks conflict-log completeness and soundness for
// public.tagged after convergence:
//   - every committed write is a row's final value, or was overwritten by a
//     write that read it, or is named as the losing side of a logged
//     conflict (no silent loss);
//   - no final value is a logged loser (a loser never comes back);
//   - no logged conflict is between a write and the write that read it
//     (true conflicts only);
//   - every region that logged the same pair of versions picked the same
//     winning version (determinism);
//   - every record says what the conflict cost the losing write: each
//     write carries its own tag, so a live write that lost was overwritten,
//     and only two deletes merge (no merged write is called lost, no lost
//     one merged).
func (tw *TaggedWrites) LosersLogged(ctx context.Context, h *Harness) (ConflictReport, error) {
	rep := ConflictReport{Losers: map[string]bool{}}
	finalTag := map[string]bool{}
	conn, err := h.Regions[0].Conn(ctx)
	if err != nil {
		return rep, err
	}
	rows, err := conn.Query(ctx, `SELECT tag FROM public.tagged`)
	if err == nil {
		var tags []string
		tags, err = pgx.CollectRows(rows, pgx.RowTo[string])
		for _, t := range tags {
			finalTag[t] = true
		}
	}
	conn.Close(context.Background())
	if err != nil {
		return rep, err
	}
	recs, err := Conflicts(ctx, h, "public.tagged", "tag")
	if err != nil {
		return rep, err
	}
	rep.Conflicts = len(recs)
	named := map[string]bool{}
	var problems []string
	winners := map[[3]string]string{} // (key, version, version) -> winning version
	for _, c := range recs {
		if l := c.LoserTag(); l != nil {
			rep.Losers[*l] = true
		}
		for _, t := range []*string{c.LocalTag, c.RemoteTag} {
			if t != nil {
				named[*t] = true
			}
		}
		if c.LocalTag != nil && c.RemoteTag != nil {
			a, b := *c.LocalTag, *c.RemoteTag
			tw.mu.Lock()
			causal := tw.Prev[a] == b || tw.Prev[b] == a
			tw.mu.Unlock()
			if causal {
				problems = append(problems, fmt.Sprintf("false conflict in %s on key %s: %s and %s are causally ordered (one read the other)", c.Region, c.Key, a, b))
			}
		}
		want := "overwritten"
		if c.Kind == "delete_delete" {
			want = "merged"
		}
		if c.Outcome != want {
			problems = append(problems, fmt.Sprintf("%s conflict in %s on key %s logged as %q, want %q", c.Kind, c.Region, c.Key, c.Outcome, want))
		}
		pair := [3]string{c.Key, c.LocalVersion, c.RemoteVersion}
		if pair[1] > pair[2] {
			pair[1], pair[2] = pair[2], pair[1]
		}
		win := c.RemoteVersion
		if c.Winner == "local" {
			win = c.LocalVersion
		}
		if w, ok := winners[pair]; ok && w != win {
			problems = append(problems, fmt.Sprintf("nondeterministic resolution on key %s: versions %s vs %s resolved to %s in one region and %s in %s", c.Key, pair[1], pair[2], w, win, c.Region))
		}
		winners[pair] = win
	}
	tw.mu.Lock()
	committed := append([]string(nil), tw.Committed...)
	overwritten := map[string]bool{}
	for _, p := range tw.Prev {
		overwritten[p] = true
	}
	rep.Maybe = len(tw.Maybe)
	tw.mu.Unlock()
	rep.Writes = len(committed)
	var lost []string
	for _, w := range committed {
		switch {
		case finalTag[w]:
			rep.Final++
			if rep.Losers[w] {
				problems = append(problems, fmt.Sprintf("write %s is a final value but was logged as a conflict loser", w))
			}
		case overwritten[w]:
			rep.Overwritten++
		case rep.Losers[w]:
			rep.LoggedLosers++
		default:
			why := "not named in any conflict log"
			if named[w] {
				why = "named in the conflict log only as a winner"
			}
			lost = append(lost, fmt.Sprintf("%s (key %d, %s)", w, tw.Key[w], why))
		}
	}
	if len(lost) > 0 {
		problems = append(problems, fmt.Sprintf("%d writes vanished without being logged as conflict losers: %s", len(lost), strings.Join(lost[:min(10, len(lost))], ", ")))
	}
	if len(problems) > 0 {
		return rep, fmt.Errorf("conflict log check failed (%s):\n  %s", rep, strings.Join(problems[:min(20, len(problems))], "\n  "))
	}
	return rep, nil
}
