package node

// A follower: one peer's stream received, collected into batches, applied
// and acknowledged.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/semaphore"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
	"github.com/polyregion/polyregion/replicator/link"
	"github.com/polyregion/polyregion/replicator/obs"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// follower applies one peer's stream.
type follower struct {
	cfg    Config
	peer   Peer
	reader *postgres.Reader
	client *link.Client
	log    *slog.Logger
	mon    *obs.Monitor
	stop   <-chan struct{} // closed: finish the batch in flight, acknowledge it, return
	// readerWaitsEnd closes half the stop's deadline after stop: a batch
	// still waiting for the local reader then is rolled back (see
	// postgres.ApplierConfig.ReaderWaitsEnd).
	readerWaitsEnd <-chan struct{}
	// applied is the last transaction committed here (maybe not yet
	// durable: see durable.go); acknowledgements wait for durable.
	applied atomic.Uint64
	pool    *pgxpool.Pool
	// carefulSeq is a large transaction to apply change by change (it hit a
	// data error in the fast path); retrySeq one whose last attempt failed
	// (retryably), whose next reads every row: it is retried on a new
	// stream, by a new Applier, which would otherwise assume again what
	// failed (an inserted key absent here).
	carefulSeq replicator.Seq
	retrySeq   replicator.Seq
	shared     appliersShare
	arrivals   arrivalRate
	// removed reports whether the cluster removed a region.
	removed func(conflict.RegionID) bool
}

// appliersShare is what every applier of the process shares: the order in
// which they lock the rows of different tables (the one applications
// write them in), and their claims on rows (see replicator.Claims).
type appliersShare struct {
	order  *replicator.TableOrder
	claims *replicator.Claims
}

func newFollower(cfg Config, p Peer, reader *postgres.Reader, pool *pgxpool.Pool, shared appliersShare, graves *tombstones, mon *obs.Monitor, stop stopSignals, log *slog.Logger,
	onEpochs func([]regions.Epoch)) (*follower, error) {
	tlsCfg, err := link.ClientTLS(p.TLS)
	if err != nil {
		return nil, fmt.Errorf("peer %s: %w", p.ID, err)
	}
	client, err := link.NewClient(link.ClientConfig{
		Region: cfg.Region, Peer: p.ID, URL: p.URL, Token: p.Token, TLS: tlsCfg, Cluster: cfg.Cluster,
		OnAdvert: func(b []byte) {
			if w, ok := graves.heard(p.ID, b); ok {
				mon.PeerHead(p.ID, uint64(max(w.Versioned, 0)))
			}
		},
		OnConnected: func() { mon.LinkUp(p.ID) },
		OnEpochs:    onEpochs,
		Encoding:    cfg.encoding,
	})
	if err != nil {
		return nil, err
	}
	return &follower{cfg: cfg, peer: p, reader: reader, shared: shared, client: client, log: log.With("peer", string(p.ID)), mon: mon, stop: stop.begun,
		readerWaitsEnd: stop.readerWaitsEnd, pool: pool}, nil
}

// stopSignals tell followers that the data plane stops: begun closes as the
// stop begins, readerWaitsEnd half its deadline later.
type stopSignals struct{ begun, readerWaitsEnd <-chan struct{} }

// A retry round of parked changes takes up to parkedRetryBatch of them; a
// round that resolved that many is followed by another after
// parkedRetrySoon rather than the configured interval.
const (
	parkedRetryBatch = 500
	parkedRetrySoon  = 20 * time.Millisecond
)

// errStopping ends a follower's stream between batches on a graceful stop.
var errStopping = errors.New("stopping")

// errStoppedBeforeSetup: a graceful stop came while the applier's session
// was being set up (waiting for its replication origin).
var errStoppedBeforeSetup = errors.New("stopped before the applier's session was set up")

// stopped reports whether a graceful stop has begun.
func (f *follower) stopped() bool {
	select {
	case <-f.stop:
		return true
	default:
		return false
	}
}

// errPeerRemoved ends a follower's stream once the cluster removed its
// peer: nothing more of it is applied.
var errPeerRemoved = errors.New("the cluster removed the peer")

// applyFailed marks an error of the local apply (not of the link).
type applyFailed struct{ err error }

func (e applyFailed) Error() string { return e.err.Error() }
func (e applyFailed) Unwrap() error { return e.err }

func (f *follower) run(ctx context.Context) {
	defer f.client.Close()
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		if f.removed(f.peer.ID) {
			f.mon.PeerRemoved(f.peer.ID)
			f.log.Info("the cluster removed this peer: no longer following it")
			return
		}
		start := time.Now()
		err := f.once(ctx)
		f.mon.LinkDown(f.peer.ID, err)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errPeerRemoved) {
			continue
		}
		if errors.Is(err, errStoppedBeforeSetup) {
			f.log.Info("follower stopped before its session was set up: nothing was in flight")
			return
		}
		if errors.Is(err, errStopping) || errors.Is(err, postgres.ErrApplyStopped) {
			seq := f.applied.Load()
			actx, cancel := context.WithTimeout(ctx, 3*time.Second)
			aerr := f.durable(actx)
			if aerr == nil {
				aerr = f.client.Ack(actx, replicator.Seq(seq))
			}
			cancel()
			if errors.Is(err, errStopping) {
				f.log.Info("follower stopped: batch in flight committed", "applied_seq", seq, "acknowledged", aerr == nil)
			} else {
				// Still waiting for the reader half the deadline in: the
				// chunk waiting is rolled back (chunks before it may have
				// committed; the next start reads where it stands).
				f.log.Info("follower stopped: the part of the batch in flight still waiting for the local reader was rolled back; it comes again at the next start", "acknowledged_seq", seq, "acknowledged", aerr == nil)
			}
			return
		}
		var mm *link.MismatchError
		var af applyFailed
		switch {
		case errors.As(err, &mm):
			f.mon.Metrics().Error(obs.ErrConfigMismatch)
			f.log.Error("refusing to replicate with peer: its configuration differs", "differences", mm.Differences)
			backoff = 10 * time.Second
		case errors.Is(err, link.ErrTooFarBehind):
			f.mon.Metrics().Error(obs.ErrTooFarBehind)
			f.log.Error("this region fell behind the peer's outbox retention and must be re-seeded", "err", err)
			backoff = 30 * time.Second
		case errors.Is(err, link.ErrUnauthorized):
			f.mon.Metrics().Error(obs.ErrUnauthorized)
			f.log.Error("peer refused this region's token", "err", err)
			backoff = 10 * time.Second
		case errors.Is(err, link.ErrRemoved):
			f.mon.Metrics().Error(obs.ErrUnauthorized)
			f.log.Error("peer refuses this region: the cluster removed it", "err", err)
			backoff = 30 * time.Second
		default:
			if errors.As(err, &af) {
				f.mon.Metrics().Error(obs.ErrApply)
			} else {
				f.mon.Metrics().Error(obs.ErrLink)
			}
			f.log.Warn("link interrupted; reconnecting", "err", err)
			if time.Since(start) > 10*time.Second {
				backoff = 200 * time.Millisecond
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-f.stop:
			f.log.Info("follower stopped")
			return
		case <-time.After(backoff):
		}
		if backoff < 5*time.Second {
			backoff *= 2
		}
	}
}

func (f *follower) once(ctx context.Context) error {
	// Setting up may wait for a session of an earlier run to let go of
	// the replication origin; a graceful stop ends that wait.
	setup, setUp := postgres.WithStop(ctx, f.stop)
	defer setUp()
	applier, err := postgres.NewApplier(setup, postgres.ApplierConfig{
		Region: f.cfg.Region, Source: f.peer.ID, ConnString: f.cfg.Database, Cluster: f.cfg.Cluster,
		Versioner: f.reader, Logger: f.log, Order: f.shared.order, Claims: f.shared.claims, Waiting: f.cfg.waiting, ReaderWaitsEnd: f.readerWaitsEnd,
		OnCommit: func(s postgres.CommitStats) {
			cs := make([]obs.Conflict, len(s.Conflicts))
			for i, c := range s.Conflicts {
				cs[i] = obs.Conflict{Table: c.Table, Kind: c.Kind, Policy: c.Policy, Outcome: string(c.Outcome)}
			}
			f.mon.Metrics().Applied(string(f.peer.ID), s.Txns, s.Changes, s.Parked, cs, s.Merged, s.Duration)
			f.mon.PeerApplied(f.peer.ID, uint64(s.LastSeq), s.LastCommitUnix)
		},
		OnReaderWait: func(d time.Duration, holdingRows bool) { f.mon.Metrics().ReaderWait(string(f.peer.ID), d, holdingRows) },
		OnClaimWait:  func(d time.Duration) { f.mon.Metrics().ClaimWait(string(f.peer.ID), d) },
	})
	setUp()
	if err != nil {
		if f.stopped() && ctx.Err() == nil {
			return errStoppedBeforeSetup
		}
		return applyFailed{err}
	}
	defer applier.Close()
	after, err := applier.Applied(ctx)
	if err != nil {
		return applyFailed{err}
	}
	// Resuming after a position acknowledges it: make it durable first.
	if err := f.durable(ctx); err != nil {
		return applyFailed{err}
	}
	f.applied.Store(uint64(after))
	f.mon.PeerApplied(f.peer.ID, uint64(after), 0)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Received transactions wait here; the budget bounds the changes held
	// in memory (a large transaction's parts included).
	ch := make(chan *replicator.Txn, 4*f.cfg.ApplyBatchTxns)
	budget := semaphore.NewWeighted(rowBudget)
	weight := func(t *replicator.Txn) int64 { return min(rowBudget, int64(len(t.Changes))+1) }
	streamErr := make(chan error, 1)
	go func() {
		err := f.client.Stream(ctx, after, func(t *replicator.Txn) error {
			if f.removed(f.peer.ID) && t.Part == 0 {
				return errPeerRemoved
			}
			if err := budget.Acquire(ctx, weight(t)); err != nil {
				return err
			}
			select {
			case ch <- t:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
		streamErr <- err
		close(ch)
	}()
	ackDone := make(chan struct{})
	go func() {
		defer close(ackDone)
		f.ackLoop(ctx)
	}()
	defer func() { cancel(); <-ackDone }()

	large := func(t *replicator.Txn) bool { return t.More || t.Part > 0 }
	applyLarge := func(first *replicator.Txn) error {
		careful := f.carefulSeq == first.Seq
		prev := first
		next := func() (*replicator.Txn, error) {
			budget.Release(weight(prev))
			prev = nil
			t, ok := <-ch
			if !ok {
				return nil, fmt.Errorf("stream ended inside large transaction %d: %w", first.Seq, <-streamErr)
			}
			prev = t
			return t, nil
		}
		if f.retrySeq == first.Seq {
			applier.ReadEveryRow()
		}
		seq, err := applier.ApplyLarge(ctx, first, next, careful)
		if prev != nil {
			budget.Release(weight(prev))
		}
		if postgres.IsRetryable(err) {
			f.retrySeq = first.Seq
		}
		if errors.Is(err, postgres.ErrNeedsCareful) {
			// Stream it again and apply it change by change.
			f.carefulSeq = first.Seq
			return applyFailed{err}
		}
		if err != nil {
			return applyFailed{fmt.Errorf("apply large transaction %d from %s: %w", first.Seq, f.peer.ID, err)}
		}
		f.applied.Store(uint64(seq))
		return nil
	}

	// The first round at once: changes parked before this start may be
	// due now (a table seeded since, a shape fixed while the link was down).
	retry := time.NewTicker(parkedRetrySoon)
	defer retry.Stop()
	var held *replicator.Txn
	for {
		select {
		case <-f.stop:
			return errStopping
		default:
		}
		var t *replicator.Txn
		ok := true
		if held != nil {
			t, held = held, nil
		} else {
			select {
			case <-f.stop:
				return errStopping
			case t, ok = <-ch:
			case <-retry.C:
				n, err := applier.RetryParked(ctx, parkedRetryBatch)
				if err != nil {
					return applyFailed{fmt.Errorf("retry parked changes: %w", err)}
				}
				if n > 0 {
					f.log.Info("parked changes applied on retry", "count", n)
				}
				if n == parkedRetryBatch {
					// More may be due (a table seeded here since, a shape
					// that matches again): the next round soon, between
					// the stream's batches.
					retry.Reset(parkedRetrySoon)
				} else {
					retry.Reset(f.cfg.ParkedRetryInterval)
				}
				continue
			}
		}
		if !ok {
			return <-streamErr
		}
		if large(t) {
			if err := applyLarge(t); err != nil {
				return err
			}
			continue
		}
		var batch []*replicator.Txn
		batch, held = f.collect(ch, t)
		seq, err := f.applyWithRetry(ctx, applier, batch)
		for _, t := range batch {
			budget.Release(weight(t))
		}
		if err != nil {
			return applyFailed{err}
		}
		f.applied.Store(uint64(seq))
	}
}

// rowBudget bounds the changes a follower holds received but not applied.
const rowBudget = 40_000

// batchRows bounds the changes of one apply batch.
const batchRows = 20_000

// gatherAbove is the arrival rate (source transactions per second) above
// which a follower waits ApplyGather for more before applying a small
// batch. Below it each transaction is applied as it comes, adding nothing
// to the lag.
const gatherAbove = 200

// arrivalRate counts source transactions a follower takes in, per second.
type arrivalRate struct {
	second   time.Time // start of the current one-second window
	n, prior int       // this window's count, the last full window's
}

func (r *arrivalRate) add(now time.Time, n int) {
	if now.Sub(r.second) >= time.Second {
		r.prior = r.n
		if now.Sub(r.second) >= 2*time.Second {
			r.prior = 0
		}
		r.second, r.n = now, 0
	}
	r.n += n
}

// busy reports whether transactions arrive faster than gatherAbove.
func (r *arrivalRate) busy(now time.Time) bool {
	return max(r.prior, r.n) > gatherAbove && now.Sub(r.second) < 2*time.Second
}

// collect makes an apply batch: first, then the transactions received
// meanwhile or, while more than gatherAbove arrive per second, within
// ApplyGather of now, up to ApplyBatchTxns and batchRows. One local transaction, one set of row locks and at most one
// wait for the reader then serve all of them: under a steady stream of
// small transactions, applying each alone costs several times the CPU
// (statements, commits, barriers), and holds the rows every region writes
// most (counters) locked more often. A large transaction (in parts) is
// returned as held, to be applied on its own next.
func (f *follower) collect(ch <-chan *replicator.Txn, first *replicator.Txn) (batch []*replicator.Txn, held *replicator.Txn) {
	batch = []*replicator.Txn{first}
	rows := len(first.Changes)
	defer func() { f.arrivals.add(time.Now(), len(batch)) }()
	gather := time.Duration(0)
	if f.arrivals.busy(time.Now()) {
		gather = f.cfg.ApplyGather
	}
	deadline := time.Now().Add(gather)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for len(batch) < f.cfg.ApplyBatchTxns && rows < batchRows {
		var t *replicator.Txn
		ok := true
		select {
		case t, ok = <-ch:
		default:
			wait := time.Until(deadline)
			if wait <= 0 {
				return batch, nil
			}
			if timer == nil {
				timer = time.NewTimer(wait)
			}
			select {
			case t, ok = <-ch:
			case <-timer.C:
				return batch, nil
			case <-f.stop:
				return batch, nil
			}
		}
		if !ok {
			return batch, nil // the stream ended; the caller finds out next
		}
		if t.More || t.Part > 0 {
			return batch, t
		}
		batch = append(batch, t)
		rows += len(t.Changes)
	}
	return batch, nil
}

func (f *follower) applyWithRetry(ctx context.Context, a *postgres.Applier, batch []*replicator.Txn) (replicator.Seq, error) {
	delay := 20 * time.Millisecond
	for attempt := 1; ; attempt++ {
		seq, err := a.Apply(ctx, batch)
		if err == nil {
			return seq, nil
		}
		if errors.Is(err, postgres.ErrEpochUnknown) {
			// What came before it is applied; the rest waits until the
			// control plane or a peer's stream brings the epoch, which
			// restarts the data plane with it (ending ctx).
			if attempt == 1 {
				f.log.Info("waiting for a configuration epoch", "err", err)
			}
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(time.Second):
			}
			continue
		}
		if !postgres.IsRetryable(err) || attempt >= 20 {
			return 0, fmt.Errorf("apply %d transactions from %s (seq %d..%d): %w", len(batch), f.peer.ID, batch[0].Seq, batch[len(batch)-1].Seq, err)
		}
		f.mon.Metrics().Error(obs.ErrApplyRetry)
		if attempt%5 == 0 {
			// A batch that keeps failing (lock waits, a stalled reader)
			// shows at the default level, not only in the metrics.
			f.log.Warn("apply keeps retrying", "attempt", attempt, "of", 20, "seq_from", batch[0].Seq, "seq_to", batch[len(batch)-1].Seq, "err", err)
		} else {
			f.log.Debug("apply retry", "attempt", attempt, "err", err)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(delay):
		}
		if delay < time.Second {
			delay *= 2
		}
	}
}

func (f *follower) ackLoop(ctx context.Context) {
	var sent uint64
	warned := false
	t := time.NewTicker(f.cfg.AckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur := f.applied.Load()
		if cur == sent {
			continue
		}
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := f.durable(actx); err != nil {
			// Not acknowledged this time: the peer keeps what it has.
			cancel()
			f.log.Debug("flush before acknowledging failed", "err", err)
			continue
		}
		if err := f.client.Ack(actx, replicator.Seq(cur)); err == nil {
			sent = cur
		} else if ctx.Err() == nil {
			if errors.Is(err, link.ErrRefused) && !warned {
				// Not fatal: the peer holds the position it had; the ack is
				// sent again at the next tick, and a stream resuming after
				// the applied position records it too.
				f.log.Warn("peer refused an acknowledgement; retrying later", "seq", cur, "err", err)
				warned = true
			} else {
				f.log.Debug("ack failed", "err", err)
			}
		}
		cancel()
	}
}
