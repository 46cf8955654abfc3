package integration

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Scenario tests: the regions run under injected faults (faults.go) while
// workloads that leave evidence in their rows run, and the validators
// (validators.go) then decide: converged, nothing lost, nothing doubled,
// every overwritten concurrent write logged, order kept.

var scenarioTables = append(append([]TableSpec{}, LedgerTables...), TaggedTables...)

func scenarioSchema() []string {
	return append(append([]string{}, LedgerSchema...), TaggedSchema...)
}

type scenario struct {
	h      *Harness
	nf     *NetFaults
	ledger *Ledger
	tw     *TaggedWrites
	ctx    context.Context
	start  time.Time
}

type scenarioOptions struct {
	cluster ClusterOptions
	// before runs after the clusters exist and before the replicators start.
	before func(ctx context.Context, h *Harness) error
}

// startScenario starts three regions with a proxy on every link, seeds the
// ledger and waits for convergence.
func startScenario(t *testing.T, opt scenarioOptions, timeout time.Duration) *scenario {
	t.Helper()
	nf := NewNetFaults()
	t.Cleanup(nf.Close) // runs after the harness is closed
	spec := Spec{SchemaSQL: scenarioSchema(), Tables: scenarioTables, ClusterOptions: opt.cluster}
	spec.Configure = nf.Configure(nil)
	h := startClusters(t, spec)
	ctx := ctxFor(t, timeout)
	if err := nf.Check(spec.Regions); err != nil {
		t.Fatal(err)
	}
	if opt.before != nil {
		if err := opt.before(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitReady(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := SeedLedger(ctx, h); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(scenarioTables), time.Minute); err != nil {
		t.Fatalf("regions did not converge before the faults: %v", err)
	}
	return &scenario{h: h, nf: nf, ledger: NewLedger(), tw: NewTaggedWrites(), ctx: ctx, start: time.Now()}
}

func (s *scenario) logf(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Logf("[%5.1fs] %s", time.Since(s.start).Seconds(), fmt.Sprintf(format, args...))
}

// load runs the ledger (and, with keys > 0, tagged writes on that many
// keys) until the returned stop is called; stop returns their errors.
func (s *scenario) load(ledgerRate float64, keys int, taggedRate float64) func() error {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.ledger.Run(s.ctx, s.h, 1, ledgerRate, stop); err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	}()
	if keys > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.tw.Run(s.ctx, s.h, keys, taggedRate, stop); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	var once sync.Once
	return func() error {
		once.Do(func() { close(stop) })
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return errors.Join(errs...)
	}
}

func stopLoad(t *testing.T, stop func() error) {
	t.Helper()
	if err := stop(); err != nil {
		t.Fatalf("workload: %v", err)
	}
}

// verify waits for convergence and runs every validator.
func (s *scenario) verify(t *testing.T, sampler *OrderSampler, tagged bool) {
	t.Helper()
	for _, r := range s.h.Regions {
		if restarted, err := EnsureReplicator(r); err != nil {
			t.Fatal(err)
		} else if restarted {
			s.logf(t, "replicator %s had exited; started again", r.Name)
		}
	}
	if err := s.h.WaitConverged(s.ctx, tableNames(scenarioTables), 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	s.logf(t, "converged")
	if sampler != nil {
		if err := sampler.Stop(s.ctx); err != nil {
			t.Error(err)
		}
		s.logf(t, "order sampler: %d region samples, no violation", sampler.Samples())
	}
	if err := s.ledger.ExactlyOnce(s.ctx, s.h); err != nil {
		t.Error(err)
	}
	s.logf(t, "ledger: %d transactions acknowledged to clients (%d failed attempts resolved at the origin), each applied exactly once everywhere; counters conserved", s.ledger.Transactions(), s.ledger.Errors)
	if tagged {
		rep, err := s.tw.LosersLogged(s.ctx, s.h)
		if err != nil {
			t.Error(err)
		}
		s.logf(t, "tagged writes: %s", rep)
	}
}

func appliedSeq(t *testing.T, ctx context.Context, r *Region, source string) int64 {
	t.Helper()
	return queryInt(t, ctx, r, `SELECT coalesce((SELECT seq FROM polyregion.applied WHERE source = $1), 0)`, source)
}

func shippedSeq(t *testing.T, ctx context.Context, r *Region) int64 {
	t.Helper()
	return queryInt(t, ctx, r, `SELECT coalesce((SELECT next_seq FROM polyregion.reader_state LIMIT 1), 1) - 1`)
}

// TestScenarioPartitionHeal: us and eu are partitioned (both ways, then one
// way) during concurrent overlapping writes from all three regions, then
// healed: the regions converge, no transaction is lost or doubled, and every
// overwritten concurrent write is in a conflict log.
func TestScenarioPartitionHeal(t *testing.T) {
	s := startScenario(t, scenarioOptions{}, 5*time.Minute)
	h, nf, ctx := s.h, s.nf, s.ctx
	us, eu := h.Region("us"), h.Region("eu")
	sampler := StartOrderSampler(ctx, h, 300*time.Millisecond)
	stop := s.load(20, 20, 15)

	time.Sleep(2 * time.Second)
	if err := nf.Partition("us", "eu"); err != nil {
		t.Fatal(err)
	}
	s.logf(t, "partitioned us <-> eu")
	time.Sleep(time.Second) // in-flight transactions land
	euFromUS, usFromEU := appliedSeq(t, ctx, eu, "us"), appliedSeq(t, ctx, us, "eu")
	time.Sleep(5 * time.Second)
	// The partition is real: neither side took anything from the other.
	if n := appliedSeq(t, ctx, eu, "us"); n != euFromUS {
		t.Fatalf("partition leaked: eu applied us's transactions %d..%d while cut off", euFromUS, n)
	}
	if n := appliedSeq(t, ctx, us, "eu"); n != usFromEU {
		t.Fatalf("partition leaked: us applied eu's transactions %d..%d while cut off", usFromEU, n)
	}
	if shippedSeq(t, ctx, us) <= euFromUS {
		t.Fatal("us wrote nothing during the partition; the scenario tested nothing")
	}
	// One way: us cannot reach eu (so us stops receiving eu's changes),
	// eu reaches us again (and receives us's).
	if err := nf.Heal(Link{"eu", "us"}); err != nil {
		t.Fatal(err)
	}
	s.logf(t, "one-way: eu reaches us again, us still cannot reach eu")
	usFromEU = appliedSeq(t, ctx, us, "eu")
	deadline := time.Now().Add(30 * time.Second)
	for appliedSeq(t, ctx, eu, "us") <= euFromUS {
		if time.Now().After(deadline) {
			t.Fatal("eu took nothing from us within 30s after its link to us healed")
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(4 * time.Second)
	if n := appliedSeq(t, ctx, us, "eu"); n != usFromEU {
		t.Fatalf("one-way partition leaked: us applied eu's transactions %d..%d while it could not reach eu", usFromEU, n)
	}
	if err := nf.HealAll(); err != nil {
		t.Fatal(err)
	}
	s.logf(t, "healed")
	time.Sleep(3 * time.Second)
	stopLoad(t, stop)
	s.verify(t, sampler, true)
	rep, _ := s.tw.LosersLogged(ctx, h)
	if rep.Conflicts == 0 {
		t.Errorf("no conflict at all during a partition with overlapping writes; the workload did not exercise conflicts")
	}
}

// TestScenarioThreeWayConflict: the same rows are updated in all three
// regions at once. Round 1 with every link cut (so the writes are certainly
// concurrent): each row's three writes are classified concurrent, the same
// winner (the latest hybrid timestamp) ends everywhere and both losers are
// logged. Round 2 with the links up, writers released together.
func TestScenarioThreeWayConflict(t *testing.T) {
	s := startScenario(t, scenarioOptions{}, 4*time.Minute)
	h, nf, ctx := s.h, s.nf, s.ctx
	const keys = 40
	for id := 1; id <= keys; id++ {
		if _, err := s.tw.Write(ctx, h.Regions[0], id); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.WaitConverged(ctx, []string{"public.tagged"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, l := range nf.Links() {
		if err := nf.Cut(l); err != nil {
			t.Fatal(err)
		}
	}
	type write struct {
		tag    string
		region string
		commit time.Time
	}
	var mu sync.Mutex
	byKey := map[int][]write{}
	round := func() {
		t.Helper()
		release := make(chan struct{})
		var wg sync.WaitGroup
		for _, r := range h.Regions {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-release
				for id := 1; id <= keys; id++ {
					tag, err := s.tw.Write(ctx, r, id)
					if err != nil {
						t.Errorf("%s: write key %d: %v", r.Name, id, err)
						return
					}
					// Its commit time, by its transaction: the row may
					// hold a peer's write already.
					var ts time.Time
					conn, err := r.Conn(ctx)
					if err == nil {
						err = conn.QueryRow(ctx, `SELECT pg_xact_commit_timestamp($1::text::xid)`, strconv.FormatUint(uint64(s.tw.XIDOf(tag)), 10)).Scan(&ts)
						conn.Close(context.Background())
					}
					if err != nil {
						t.Errorf("%s: commit time of %s: %v", r.Name, tag, err)
						return
					}
					mu.Lock()
					byKey[id] = append(byKey[id], write{tag, r.Name, ts})
					mu.Unlock()
				}
			}()
		}
		close(release)
		wg.Wait()
	}
	round()
	if t.Failed() {
		t.FailNow()
	}
	s.logf(t, "round 1: %d keys written in all three regions while isolated", keys)
	if err := nf.HealAll(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, []string{"public.tagged"}, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	rep, err := s.tw.LosersLogged(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	s.logf(t, "round 1: %s", rep)
	final := map[int]string{}
	for _, r := range h.Regions {
		for id := 1; id <= keys; id++ {
			v := queryString(t, ctx, r, `SELECT tag FROM public.tagged WHERE id = $1`, id)
			if r == h.Regions[0] {
				final[id] = v
			} else if final[id] != v {
				t.Errorf("key %d: %s holds %s, %s holds %s", id, h.Regions[0].Name, final[id], r.Name, v)
			}
		}
	}
	for id := 1; id <= keys; id++ {
		ws := byKey[id]
		if len(ws) != 3 {
			t.Fatalf("key %d: %d writes recorded, want 3", id, len(ws))
		}
		var latest write
		tie := false
		for _, w := range ws {
			if w.tag == final[id] {
				continue
			}
			if !rep.Losers[w.tag] {
				t.Errorf("key %d: concurrent write %s lost to %s but no region logged it as a conflict loser", id, w.tag, final[id])
			}
		}
		for _, w := range ws {
			switch {
			case w.commit.UnixMilli() > latest.commit.UnixMilli():
				latest, tie = w, false
			case w.commit.UnixMilli() == latest.commit.UnixMilli():
				tie = true
			}
		}
		if !tie && final[id] != latest.tag {
			t.Errorf("key %d: %s won, but %s committed last (%s) under last-writer-wins", id, final[id], latest.tag, latest.commit.Format(time.RFC3339Nano))
		}
	}
	for _, r := range h.Regions {
		n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl = 'public.tagged' AND kind <> 'update_update'`)
		if n != 0 {
			t.Errorf("region %s logged %d conflicts of a kind other than update_update", r.Name, n)
		}
	}

	// Round 2: links up, all regions released at once on the same rows.
	clear(byKey)
	round()
	s.logf(t, "round 2: %d keys written in all three regions at once, links up", keys)
	s.verify(t, nil, true)
}

// TestScenarioClockAhead: ap's PostgreSQL clock runs five minutes ahead.
// Causally later writes in other regions still win over ap's (no conflict
// is logged for them and their hybrid timestamps move past ap's); only a
// truly concurrent write is decided by the (skewed) clock.
func TestScenarioClockAhead(t *testing.T) {
	if _, err := FaketimeLib(); err != nil {
		t.Fatal(err)
	}
	const skew = 5 * time.Minute
	s := startScenario(t, scenarioOptions{before: func(ctx context.Context, h *Harness) error {
		return SetClockOffset(ctx, h.Region("ap").Cluster, skew)
	}}, 4*time.Minute)
	h, nf, ctx := s.h, s.nf, s.ctx
	us, eu, ap := h.Region("us"), h.Region("eu"), h.Region("ap")
	apNow := queryString(t, ctx, ap, `SELECT (extract(epoch FROM now()) * 1000)::bigint::text`)
	apMs, _ := strconv.ParseInt(apNow, 10, 64)
	if ahead := time.Duration(apMs-time.Now().UnixMilli()) * time.Millisecond; ahead < skew-30*time.Second {
		t.Fatalf("ap's clock is only %s ahead; libfaketime did not take", ahead)
	} else {
		s.logf(t, "ap's PostgreSQL clock is %s ahead", ahead.Round(time.Second))
	}
	sampler := StartOrderSampler(ctx, h, 500*time.Millisecond)
	stop := s.load(10, 0, 0)

	waitTag := func(r *Region, id int, tag string) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for queryString(t, ctx, r, `SELECT (SELECT tag FROM public.tagged WHERE id = $1)`, id) != tag {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not receive %s on key %d within a minute", r.Name, tag, id)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	write := func(r *Region, id int) string {
		t.Helper()
		tag, err := s.tw.Write(ctx, r, id)
		if err != nil {
			t.Fatal(err)
		}
		return tag
	}
	hlc := func(r *Region, id int) int64 {
		t.Helper()
		// The reader versions local writes asynchronously: wait until it
		// has passed every write committed so far.
		if err := r.WaitReady(ctx, 30*time.Second); err != nil {
			t.Fatal(err)
		}
		return queryInt(t, ctx, r, `SELECT hlc FROM polyregion.row_version WHERE tbl = 'public.tagged' AND key = $1`, fmt.Sprintf(`["%d"]`, id))
	}
	// (a) ap writes, us overwrites after seeing it.
	want := map[int]string{}
	for id := 1; id <= 5; id++ {
		tag := write(ap, id)
		waitTag(us, id, tag)
		apHLC := hlc(us, id)
		want[id] = write(us, id)
		if usHLC := hlc(us, id); usHLC <= apHLC {
			t.Errorf("key %d: us's causally later write has hybrid timestamp %d, not past ap's %d", id, usHLC, apHLC)
		}
	}
	// (b) a chain: eu writes, ap overwrites it, us overwrites ap's.
	for id := 6; id <= 10; id++ {
		tag := write(eu, id)
		waitTag(ap, id, tag)
		tag = write(ap, id)
		waitTag(us, id, tag)
		want[id] = write(us, id)
	}
	// (c) truly concurrent: us writes after ap in real time, but ap's clock
	// is ahead, so ap's write wins (wall clocks break true ties).
	for _, l := range nf.Links() {
		if err := nf.Cut(l); err != nil {
			t.Fatal(err)
		}
	}
	apTag := write(ap, 11)
	time.Sleep(100 * time.Millisecond)
	usTag := write(us, 11)
	want[11] = apTag
	if err := nf.HealAll(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	stopLoad(t, stop)
	s.verify(t, sampler, true)
	for _, r := range h.Regions {
		for id, tag := range want {
			if got := queryString(t, ctx, r, `SELECT (SELECT tag FROM public.tagged WHERE id = $1)`, id); got != tag {
				t.Errorf("region %s key %d: %s, want %s", r.Name, id, got, tag)
			}
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl = 'public.tagged' AND key <> '["11"]'`); n != 0 {
			t.Errorf("region %s logged %d conflicts between causally ordered writes", r.Name, n)
		}
	}
	var c11 int64
	for _, r := range h.Regions {
		c11 += queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl = 'public.tagged' AND key = '["11"]'`)
	}
	if c11 == 0 {
		t.Errorf("the concurrent writes %s and %s on key 11 were not logged as a conflict", apTag, usTag)
	}
}

// TestScenarioCrashExactlyOnce: kill -9 of replicators exactly between a
// commit of applied transactions and its acknowledgement to the source, and
// kill -9 of PostgreSQL servers, while every region writes: no gap, no
// duplicate, and no source ever holds an acknowledgement ahead of what the
// peer durably applied.
func TestScenarioCrashExactlyOnce(t *testing.T) {
	s := startScenario(t, scenarioOptions{}, 6*time.Minute)
	h, ctx := s.h, s.ctx
	sampler := StartOrderSampler(ctx, h, 200*time.Millisecond)
	stop := s.load(40, 10, 10)
	time.Sleep(2 * time.Second)

	// Kill a replicator when it has applied (and committed) transactions
	// from a source that the source has not yet been told about.
	caught := 0
	pairs := [][2]*Region{{h.Region("eu"), h.Region("us")}, {h.Region("us"), h.Region("ap")}, {h.Region("ap"), h.Region("eu")}, {h.Region("eu"), h.Region("ap")}}
	for _, p := range pairs {
		target, source := p[0], p[1]
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			ack := queryInt(t, ctx, source, `SELECT coalesce((SELECT seq FROM polyregion.peer_ack WHERE peer = $1), 0)`, target.Name)
			applied := appliedSeq(t, ctx, target, source.Name)
			if applied > ack {
				if err := target.StopReplicator(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				caught++
				s.logf(t, "kill -9 replicator %s: it had applied %s's transactions up to %d, %s held its ack for %d", target.Name, source.Name, applied, source.Name, ack)
				time.Sleep(500 * time.Millisecond)
				if err := target.StartReplicator(); err != nil {
					t.Fatal(err)
				}
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(2 * time.Second)
	}
	if caught == 0 {
		t.Fatal("never caught a replicator between apply and acknowledgement")
	}
	// kill -9 of PostgreSQL primaries, one after the other.
	for _, name := range []string{"ap", "us"} {
		r := h.Region(name)
		sampler.Crashing(name)
		if err := CrashServer(ctx, r.Cluster, time.Second); err != nil {
			t.Fatal(err)
		}
		s.logf(t, "kill -9 PostgreSQL of %s, restarted after 1s", name)
		time.Sleep(3 * time.Second)
		if restarted, err := EnsureReplicator(r); err != nil {
			t.Fatal(err)
		} else if restarted {
			s.logf(t, "replicator %s had exited with its database gone; started again", name)
		}
		time.Sleep(3 * time.Second)
	}
	// Both at once: the replicator and the PostgreSQL server of eu.
	eu := h.Region("eu")
	if err := eu.StopReplicator(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	sampler.Crashing("eu")
	if err := CrashServer(ctx, eu.Cluster, 500*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := eu.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	s.logf(t, "kill -9 of eu's replicator and PostgreSQL together")
	time.Sleep(4 * time.Second)
	stopLoad(t, stop)
	s.verify(t, sampler, true)
}

// TestScenarioStopLongerThanWalSenderTimeout: eu's replicator is frozen
// (SIGSTOP) for longer than wal_sender_timeout and the link idle timeout,
// then resumed: it recovers by itself, without exiting, and nothing is
// applied twice or lost.
func TestScenarioStopLongerThanWalSenderTimeout(t *testing.T) {
	s := startScenario(t, scenarioOptions{cluster: ClusterOptions{Settings: map[string]string{"wal_sender_timeout": "'5s'"}}}, 5*time.Minute)
	h, ctx := s.h, s.ctx
	eu := h.Region("eu")
	sampler := StartOrderSampler(ctx, h, 300*time.Millisecond)
	stop := s.load(20, 10, 5)
	time.Sleep(3 * time.Second)
	pid := eu.PID()
	if err := PauseReplicator(eu); err != nil {
		t.Fatal(err)
	}
	s.logf(t, "SIGSTOP replicator eu (pid %d)", pid)
	time.Sleep(18 * time.Second)
	if err := ResumeReplicator(eu); err != nil {
		t.Fatal(err)
	}
	s.logf(t, "SIGCONT replicator eu")
	time.Sleep(8 * time.Second)
	stopLoad(t, stop)
	if !eu.Running() || eu.PID() != pid {
		t.Errorf("eu's replicator exited after SIGCONT instead of recovering:\n%s", eu.Logs(3000))
	}
	pglog, _ := os.ReadFile(eu.Cluster.LogFile)
	if !strings.Contains(string(pglog), "replication timeout") {
		t.Errorf("eu's walsender never hit wal_sender_timeout; the freeze did not outlast it")
	}
	s.verify(t, sampler, true)
	if !eu.Running() || eu.PID() != pid {
		t.Errorf("eu's replicator did not survive")
	}
}

// TestScenarioSlowWAN: every link has 100 ms ± 30 ms latency each way and a
// bandwidth cap, and loss-like faults (connection resets, stalls, dribbled
// data) hit random links, at a steady write rate for 60 s: replication lag
// stays bounded (the last third's lag does not grow past the first third's,
// with a generous margin), and the regions converge with nothing lost.
func TestScenarioSlowWAN(t *testing.T) {
	s := startScenario(t, scenarioOptions{}, 6*time.Minute)
	h, nf, ctx := s.h, s.nf, s.ctx
	for _, l := range nf.Links() {
		if _, err := nf.Latency(l, 100*time.Millisecond, 30*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if _, err := nf.Bandwidth(l, 512); err != nil {
			t.Fatal(err)
		}
	}
	const rate = 25.0 // ledger transactions per second per region
	const run = 60 * time.Second
	sampler := StartOrderSampler(ctx, h, time.Second)
	stop := s.load(rate, 0, 0)
	rng := rand.New(rand.NewSource(1))
	type sample struct {
		at  time.Duration
		lag int64
	}
	var lags []sample
	begin := time.Now()
	nextFault := 5 * time.Second
	for time.Since(begin) < run {
		time.Sleep(time.Second)
		lag, err := Lag(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		var worst int64
		for _, v := range lag {
			worst = max(worst, v)
		}
		lags = append(lags, sample{time.Since(begin), worst})
		if el := time.Since(begin); el >= nextFault && el < run-5*time.Second {
			nextFault = el + 7*time.Second
			l := nf.Links()[rng.Intn(len(nf.Links()))]
			var names []string
			var what string
			switch rng.Intn(3) {
			case 0:
				names, err = nf.ResetAfter(l, 300*time.Millisecond)
				what = "connection resets"
			case 1:
				names, err = nf.Stall(l, 2*time.Second)
				what = "stall (all data dropped, connection closed after 2s)"
			case 2:
				names, err = nf.Dribble(l, 200, 2*time.Millisecond)
				what = "dribble (200-byte slices, 2ms apart)"
			}
			if err != nil {
				t.Fatal(err)
			}
			s.logf(t, "link %s: %s for 1.5s", l, what)
			go func() {
				time.Sleep(1500 * time.Millisecond)
				_ = nf.RemoveToxic(l, names...)
			}()
		}
	}
	stopLoad(t, stop)
	var series []string
	for _, x := range lags {
		series = append(series, fmt.Sprintf("%.0fs:%d", x.at.Seconds(), x.lag))
	}
	s.logf(t, "worst lag (transactions) per second: %s", strings.Join(series, " "))
	third := len(lags) / 3
	median := func(xs []sample) int64 {
		v := make([]int64, len(xs))
		for i, x := range xs {
			v[i] = x.lag
		}
		sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
		return v[len(v)/2]
	}
	first, last := median(lags[:third]), median(lags[len(lags)-third:])
	// Generous: a replicator that cannot keep up falls behind by the write
	// rate every second, i.e. hundreds of transactions over the run; a
	// healthy one under these faults stays within a few seconds' worth.
	bound := 2*first + int64(5*rate)
	s.logf(t, "median worst lag: first third %d, last third %d transactions (bound %d)", first, last, bound)
	if last > bound {
		t.Errorf("replication lag grows under a slow WAN: median %d transactions in the first third, %d in the last (bound %d)", first, last, bound)
	}
	catchup := time.Now()
	if err := nf.HealAll(); err != nil {
		t.Fatal(err)
	}
	s.verify(t, sampler, false)
	s.logf(t, "caught up and verified %s after the writes stopped", time.Since(catchup).Round(time.Second))
}

// TestScenarioRandomFaults: a seeded random schedule of the faults above
// (partitions both ways and one way, latency, stalls, connection resets,
// kill -9 and SIGSTOP of replicators and of PostgreSQL servers, one region's
// clock ahead) during writes from every region. The seed is printed;
// POLYREGION_FAULT_SEED=<seed> replays the same schedule.
func TestScenarioRandomFaults(t *testing.T) {
	seed := time.Now().UnixNano()
	if v := os.Getenv("POLYREGION_FAULT_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseInt(v, 10, 64); err != nil {
			t.Fatalf("POLYREGION_FAULT_SEED=%q: %v", v, err)
		}
	}
	t.Logf("fault schedule seed %d (replay: POLYREGION_FAULT_SEED=%d go test -run 'TestScenarioRandomFaults' ./integration/)", seed, seed)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("FAILED with fault schedule seed %d: replay with POLYREGION_FAULT_SEED=%d", seed, seed)
		}
	})
	rng := rand.New(rand.NewSource(seed))
	names := []string{"us", "eu", "ap"}
	skewed := names[rng.Intn(len(names))]
	skew := time.Duration(1+rng.Intn(5)) * time.Minute
	s := startScenario(t, scenarioOptions{
		cluster: ClusterOptions{Settings: map[string]string{"wal_sender_timeout": "'5s'"}},
		before: func(ctx context.Context, h *Harness) error {
			if _, err := FaketimeLib(); err != nil {
				return err
			}
			return SetClockOffset(ctx, h.Region(skewed).Cluster, skew)
		},
	}, 7*time.Minute)
	h, nf, ctx := s.h, s.nf, s.ctx
	s.logf(t, "%s's clock runs %s ahead", skewed, skew)
	sampler := StartOrderSampler(ctx, h, 300*time.Millisecond)
	stop := s.load(20, 15, 10)
	pick := func() *Region { return h.Region(names[rng.Intn(len(names))]) }
	pickLink := func() Link {
		ls := nf.Links()
		return ls[rng.Intn(len(ls))]
	}
	dur := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(rng.Int63n(int64(hi-lo))) }
	begin := time.Now()
	for i := 0; time.Since(begin) < 60*time.Second; i++ {
		time.Sleep(dur(500*time.Millisecond, 2*time.Second))
		d := dur(time.Second, 6*time.Second)
		var undo func() error
		var what string
		switch k := rng.Intn(9); k {
		case 0:
			a, b := pick(), pick()
			if a == b {
				continue
			}
			what = fmt.Sprintf("partition %s <-> %s", a.Name, b.Name)
			if err := nf.Partition(a.Name, b.Name); err != nil {
				t.Fatal(err)
			}
			undo = func() error { return errors.Join(nf.Heal(Link{a.Name, b.Name}), nf.Heal(Link{b.Name, a.Name})) }
		case 1:
			l := pickLink()
			what = fmt.Sprintf("one-way cut: %s cannot reach %s", l.From, l.To)
			if err := nf.Cut(l); err != nil {
				t.Fatal(err)
			}
			undo = func() error { return nf.Heal(l) }
		case 2:
			l := pickLink()
			lat := dur(50*time.Millisecond, 400*time.Millisecond)
			what = fmt.Sprintf("latency %s ± %s on %s", lat, lat/3, l)
			tox, err := nf.Latency(l, lat, lat/3)
			if err != nil {
				t.Fatal(err)
			}
			undo = func() error { return nf.RemoveToxic(l, tox...) }
		case 3:
			l := pickLink()
			what = fmt.Sprintf("stall on %s", l)
			tox, err := nf.Stall(l, 0)
			if err != nil {
				t.Fatal(err)
			}
			undo = func() error { return nf.RemoveToxic(l, tox...) }
		case 4:
			l := pickLink()
			what = fmt.Sprintf("connection resets on %s", l)
			if err := nf.ResetConnections(l); err != nil {
				t.Fatal(err)
			}
			tox, err := nf.ResetAfter(l, 200*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			undo = func() error { return nf.RemoveToxic(l, tox...) }
		case 5:
			r := pick()
			what = fmt.Sprintf("kill -9 replicator %s", r.Name)
			if err := r.StopReplicator(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			d = dur(200*time.Millisecond, 2*time.Second)
			undo = r.StartReplicator
		case 6:
			r := pick()
			what = fmt.Sprintf("SIGSTOP replicator %s", r.Name)
			if err := PauseReplicator(r); err != nil {
				t.Fatal(err)
			}
			d = dur(2*time.Second, 10*time.Second)
			undo = func() error { return ResumeReplicator(r) }
		case 7:
			r := pick()
			what = fmt.Sprintf("kill -9 PostgreSQL %s", r.Name)
			sampler.Crashing(r.Name)
			if err := KillServer(ctx, r.Cluster); err != nil {
				t.Fatal(err)
			}
			d = dur(200*time.Millisecond, 2*time.Second)
			undo = func() error {
				if err := r.Cluster.Start(ctx); err != nil {
					return err
				}
				time.Sleep(2 * time.Second)
				if restarted, err := EnsureReplicator(r); err != nil {
					return err
				} else if restarted {
					s.logf(t, "replicator %s had exited with its database gone; started again", r.Name)
				}
				return nil
			}
		case 8:
			r := pick()
			what = fmt.Sprintf("SIGSTOP PostgreSQL %s", r.Name)
			if err := PauseServer(r.Cluster); err != nil {
				t.Fatal(err)
			}
			d = dur(time.Second, 4*time.Second)
			undo = func() error { return ResumeServer(r.Cluster) }
		}
		s.logf(t, "fault %d: %s for %s", i, what, d.Round(100*time.Millisecond))
		time.Sleep(d)
		if err := undo(); err != nil {
			t.Fatalf("undo %s: %v", what, err)
		}
	}
	if err := nf.HealAll(); err != nil {
		t.Fatal(err)
	}
	s.logf(t, "faults over")
	time.Sleep(2 * time.Second)
	stopLoad(t, stop)
	s.verify(t, sampler, true)
}
