// Package node runs one region's replicator: the change-stream reader, the
// link server that ships the region's outbox, and one follower per peer that
// applies the peer's transactions. Each part is owned here; Run returns only
// when all of them have stopped.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/semaphore"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
	"github.com/polyregion/polyregion/replicator/link"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// Peer is one peer region's link settings.
type Peer struct {
	ID  conflict.RegionID
	URL string
	// Token is the secret shared by this region and the peer; each presents
	// it to the other.
	Token string
	TLS   link.TLSFiles
}

// Config is one region's replicator configuration.
type Config struct {
	Region   conflict.RegionID
	Database string // connection string of the local primary
	Listen   string // host:port of the link server
	TLS      link.TLSFiles
	Peers    []Peer
	Cluster  regions.Cluster
	// ApplyBatchTxns bounds how many source transactions one local apply
	// transaction covers.
	ApplyBatchTxns int
	// AckInterval is how often a follower reports its applied position.
	AckInterval time.Duration
	// OutboxMaxTxns caps the transactions kept for a peer that is away
	// (0: no cap). Past it the peer must be re-seeded; status shows the
	// backlog per peer so operators see it coming.
	OutboxMaxTxns int64
	// ParkedRetryInterval is how often parked changes are retried.
	ParkedRetryInterval time.Duration
	// TombstoneInterval is how often the region refreshes its watermark
	// and collects tombstones every region has seen.
	TombstoneInterval time.Duration
	Logger            *slog.Logger
}

// Validate reports the first configuration problem, naming the setting.
func (c *Config) Validate() error {
	if err := c.Region.Validate(); err != nil {
		return fmt.Errorf("region: %w", err)
	}
	if c.Database == "" {
		return errors.New("database: a connection string is required")
	}
	if c.Listen == "" {
		return errors.New("listen: an address (host:port) is required")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if err := c.Cluster.Validate(); err != nil {
		return err
	}
	inCluster := map[conflict.RegionID]bool{}
	for _, r := range c.Cluster.Regions {
		inCluster[r] = true
	}
	if !inCluster[c.Region] {
		return fmt.Errorf("regions: this region %q is not listed", c.Region)
	}
	seen := map[conflict.RegionID]bool{}
	for i, p := range c.Peers {
		if !inCluster[p.ID] {
			return fmt.Errorf("peers[%d]: region %q is not listed in regions", i, p.ID)
		}
		if p.ID == c.Region {
			return fmt.Errorf("peers[%d]: a region cannot be its own peer", i)
		}
		if seen[p.ID] {
			return fmt.Errorf("peers[%d]: region %q listed twice", i, p.ID)
		}
		seen[p.ID] = true
		if p.URL == "" {
			return fmt.Errorf("peers[%d] (%s): url is required", i, p.ID)
		}
		if p.Token == "" {
			return fmt.Errorf("peers[%d] (%s): token is required (a shared secret, at least 16 characters)", i, p.ID)
		}
		if len(p.Token) < 16 {
			return fmt.Errorf("peers[%d] (%s): token is too short (%d characters, want at least 16)", i, p.ID, len(p.Token))
		}
	}
	for _, r := range c.Cluster.Regions {
		if r != c.Region && !seen[r] {
			return fmt.Errorf("peers: region %q is listed in regions but has no peer entry", r)
		}
	}
	return nil
}

func (c *Config) defaults() {
	if c.ApplyBatchTxns <= 0 {
		c.ApplyBatchTxns = 500
	}
	if c.TombstoneInterval <= 0 {
		c.TombstoneInterval = 3 * time.Second
	}
	if c.ParkedRetryInterval <= 0 {
		c.ParkedRetryInterval = 2 * time.Second
	}
	if c.AckInterval <= 0 {
		c.AckInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// TableNames lists the replicated tables.
func (c *Config) TableNames() []string {
	out := make([]string, len(c.Cluster.Tables))
	for i, t := range c.Cluster.Tables {
		out[i] = t.Name
	}
	return out
}

// Prepare checks the local database and creates what replication needs.
// It changes nothing when the check fails.
func Prepare(ctx context.Context, cfg Config) error {
	conn, err := postgres.Connect(ctx, cfg.Database)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if err := postgres.Preflight(ctx, conn, cfg.TableNames()); err != nil {
		return err
	}
	peers := make([]string, len(cfg.Peers))
	for i, p := range cfg.Peers {
		peers[i] = string(p.ID)
	}
	return postgres.Prepare(ctx, conn, string(cfg.Region), cfg.TableNames(), peers)
}

// Run runs the region's replicator until ctx ends (nil) or a part fails.
func Run(ctx context.Context, cfg Config) error {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	log := cfg.Logger.With("region", string(cfg.Region))
	if err := Prepare(ctx, cfg); err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	reader := postgres.NewReader(postgres.ReaderConfig{
		Region: cfg.Region, ConnString: cfg.Database, Tables: cfg.Cluster.Tables, Logger: log,
	})
	pool, err := pgxpool.New(ctx, cfg.Database)
	if err != nil {
		return fmt.Errorf("outbox pool: %w", err)
	}
	defer pool.Close()
	peerIDs := make([]conflict.RegionID, len(cfg.Peers))
	tokens := map[conflict.RegionID]string{}
	for i, p := range cfg.Peers {
		peerIDs[i] = p.ID
		tokens[p.ID] = p.Token
	}
	srvTLS, err := link.ServerTLS(cfg.TLS)
	if err != nil {
		return err
	}
	outbox := postgres.NewOutbox(pool, reader, cfg.Region, peerIDs, cfg.OutboxMaxTxns)
	graves := newTombstones(cfg, reader, outbox, log)
	server := link.NewServer(link.ServerConfig{
		Region: cfg.Region, Cluster: cfg.Cluster, Tokens: tokens,
		Outbox: outbox, Logger: log,
		Advert: graves.Advert,
	})
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	httpSrv := link.NewHTTPServer(cfg.Listen, server.Handler(), srvTLS)

	var wg sync.WaitGroup
	fail := func(part string, err error) {
		if err != nil && !errors.Is(err, context.Canceled) {
			cancel(fmt.Errorf("%s: %w", part, err))
		}
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		fail("reader", reader.Run(ctx))
	}()
	go func() {
		defer wg.Done()
		fail("link server", link.Serve(httpSrv, ln))
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		graves.run(ctx, cfg.TombstoneInterval)
	}()
	for _, p := range cfg.Peers {
		f, err := newFollower(cfg, p, reader, graves, log)
		if err != nil {
			cancel(err)
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.run(ctx)
		}()
	}
	log.Info("replicator running", "listen", cfg.Listen, "peers", len(cfg.Peers), "tables", len(cfg.Cluster.Tables))
	<-ctx.Done()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = httpSrv.Shutdown(sctx)
	scancel()
	_ = httpSrv.Close()
	wg.Wait()
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return nil
}

// follower applies one peer's stream.
type follower struct {
	cfg     Config
	peer    Peer
	reader  *postgres.Reader
	client  *link.Client
	log     *slog.Logger
	applied atomic.Uint64
	// carefulSeq is a large transaction to apply change by change (it hit a
	// data error in the fast path).
	carefulSeq replicator.Seq
}

func newFollower(cfg Config, p Peer, reader *postgres.Reader, graves *tombstones, log *slog.Logger) (*follower, error) {
	tlsCfg, err := link.ClientTLS(p.TLS)
	if err != nil {
		return nil, fmt.Errorf("peer %s: %w", p.ID, err)
	}
	client, err := link.NewClient(link.ClientConfig{
		Region: cfg.Region, Peer: p.ID, URL: p.URL, Token: p.Token, TLS: tlsCfg, Cluster: cfg.Cluster,
		OnAdvert: func(b []byte) { graves.heard(p.ID, b) },
	})
	if err != nil {
		return nil, err
	}
	return &follower{cfg: cfg, peer: p, reader: reader, client: client, log: log.With("peer", string(p.ID))}, nil
}

func (f *follower) run(ctx context.Context) {
	defer f.client.Close()
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := f.once(ctx)
		if ctx.Err() != nil {
			return
		}
		var mm *link.MismatchError
		switch {
		case errors.As(err, &mm):
			f.log.Error("refusing to replicate with peer: its configuration differs", "differences", mm.Differences)
			backoff = 10 * time.Second
		case errors.Is(err, link.ErrTooFarBehind):
			f.log.Error("this region fell behind the peer's outbox retention and must be re-seeded", "err", err)
			backoff = 30 * time.Second
		case errors.Is(err, link.ErrUnauthorized):
			f.log.Error("peer refused this region's token", "err", err)
			backoff = 10 * time.Second
		default:
			f.log.Warn("link interrupted; reconnecting", "err", err)
			if time.Since(start) > 10*time.Second {
				backoff = 200 * time.Millisecond
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		if backoff < 5*time.Second {
			backoff *= 2
		}
	}
}

func (f *follower) once(ctx context.Context) error {
	applier, err := postgres.NewApplier(ctx, postgres.ApplierConfig{
		Region: f.cfg.Region, Source: f.peer.ID, ConnString: f.cfg.Database, Cluster: f.cfg.Cluster,
		Versioner: f.reader, Logger: f.log,
	})
	if err != nil {
		return err
	}
	defer applier.Close()
	after, err := applier.Applied(ctx)
	if err != nil {
		return err
	}
	f.applied.Store(uint64(after))

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
		seq, err := applier.ApplyLarge(ctx, first, next, careful)
		if prev != nil {
			budget.Release(weight(prev))
		}
		if errors.Is(err, postgres.ErrNeedsCareful) {
			// Stream it again and apply it change by change.
			f.carefulSeq = first.Seq
			return err
		}
		if err != nil {
			return fmt.Errorf("apply large transaction %d from %s: %w", first.Seq, f.peer.ID, err)
		}
		f.applied.Store(uint64(seq))
		return nil
	}

	retry := time.NewTicker(f.cfg.ParkedRetryInterval)
	defer retry.Stop()
	var held *replicator.Txn
	for {
		var t *replicator.Txn
		ok := true
		if held != nil {
			t, held = held, nil
		} else {
			select {
			case t, ok = <-ch:
			case <-retry.C:
				n, err := applier.RetryParked(ctx, 500)
				if err != nil {
					return fmt.Errorf("retry parked changes: %w", err)
				}
				if n > 0 {
					f.log.Info("parked changes applied on retry", "count", n)
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
		batch := []*replicator.Txn{t}
		rows := len(t.Changes)
	drain:
		for len(batch) < f.cfg.ApplyBatchTxns && rows < 20000 {
			select {
			case t, ok := <-ch:
				if !ok {
					break drain
				}
				if large(t) {
					held = t
					break drain
				}
				batch = append(batch, t)
				rows += len(t.Changes)
			default:
				break drain
			}
		}
		seq, err := f.applyWithRetry(ctx, applier, batch)
		for _, t := range batch {
			budget.Release(weight(t))
		}
		if err != nil {
			return err
		}
		f.applied.Store(uint64(seq))
	}
}

// rowBudget bounds the changes a follower holds received but not applied.
const rowBudget = 40_000

func (f *follower) applyWithRetry(ctx context.Context, a *postgres.Applier, batch []*replicator.Txn) (replicator.Seq, error) {
	delay := 20 * time.Millisecond
	for attempt := 1; ; attempt++ {
		seq, err := a.Apply(ctx, batch)
		if err == nil {
			return seq, nil
		}
		if !postgres.IsRetryable(err) || attempt >= 20 {
			return 0, fmt.Errorf("apply %d transactions from %s (seq %d..%d): %w", len(batch), f.peer.ID, batch[0].Seq, batch[len(batch)-1].Seq, err)
		}
		f.log.Debug("apply retry", "attempt", attempt, "err", err)
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
		if err := f.client.Ack(actx, replicator.Seq(cur)); err == nil {
			sent = cur
		} else if ctx.Err() == nil {
			f.log.Debug("ack failed", "err", err)
		}
		cancel()
	}
}
