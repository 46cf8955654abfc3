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
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/semaphore"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
	"github.com/polyregion/polyregion/replicator/link"
	"github.com/polyregion/polyregion/replicator/obs"
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
	// ApplyGather is how long a follower receiving more than gatherAbove
	// source transactions per second waits for more before it applies a
	// small batch (default 20ms; see follower.collect). It adds at most
	// that much to replication lag, and only at such rates.
	ApplyGather time.Duration
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

	// HTTPListen, when set, is the host:port of the operations server:
	// GET /health (for DNS failover), /live (for process supervisors),
	// /status (JSON) and /metrics (Prometheus). Plain HTTP: bind it to a
	// private address.
	HTTPListen string
	// Health tunes the health check (zero values take the defaults).
	Health obs.HealthConfig
	// Search, when set, feeds the region's search index from every local
	// commit (local writes and applied changes alike).
	Search *SearchConfig
	// IndexLag, when set, reports how far the regional search index is
	// behind; health and metrics use it. nil: no index.
	IndexLag IndexLag
	// ShutdownTimeout bounds a graceful stop (default 30s): past it, work in
	// flight is abandoned (it is redone after a restart) and Run returns
	// ErrShutdownDeadline.
	ShutdownTimeout time.Duration
	// JoinFrom, when set, names the peer a new region loads its first
	// state from (see join.go); a region that joined, or applies peers'
	// transactions already, ignores it.
	JoinFrom conflict.RegionID
	// Control, when set, runs the control plane.
	Control *ControlConfig
	// Witnesses are control-plane voters with no database (polyregion
	// witness): reached for the control plane only, never replicated with.
	Witnesses []Peer
	// Reload, when set, delivers a re-read configuration (on SIGHUP, say):
	// settings that can change while running are applied, the others are
	// kept and the refusal is logged.
	Reload <-chan Config

	// waiting: the tables the cluster added that this run of the data
	// plane leaves out, and the reason their changes are parked with.
	waiting map[string]string
}

// Secrets returns every secret the configuration holds (the database
// password, link tokens, search credentials): no log line, error or HTTP
// body may show them.
func (c *Config) Secrets() []string {
	out := postgres.ConnSecrets(c.Database)
	for _, p := range c.Peers {
		out = append(out, p.Token)
	}
	for _, w := range c.Witnesses {
		out = append(out, w.Token)
	}
	if c.Control != nil {
		out = append(out, c.Control.AdminToken)
	}
	if c.Search != nil {
		out = append(out, c.Search.Backend.Password, c.Search.Backend.APIKey)
	}
	return out
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
	if c.HTTPListen != "" {
		if _, _, err := net.SplitHostPort(c.HTTPListen); err != nil {
			return fmt.Errorf("http.listen: %w", err)
		}
		if c.HTTPListen == c.Listen {
			return errors.New("http.listen: must differ from listen (the link server's address)")
		}
	}
	h := c.Health
	h.Defaults()
	if err := h.Validate(); err != nil {
		return err
	}
	if c.ShutdownTimeout < 0 {
		return fmt.Errorf("shutdown_timeout: must be positive, got %s", c.ShutdownTimeout)
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
	if err := validateWitnesses(c.Witnesses, inCluster, c.Control != nil); err != nil {
		return err
	}
	if c.JoinFrom != "" && !seen[c.JoinFrom] {
		return fmt.Errorf("join: region %q is not one of this region's peers", c.JoinFrom)
	}
	// Last, so the structure is reported first whatever the string.
	if _, err := postgres.ParseConnString(c.Database); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	return nil
}

func (c *Config) defaults() {
	if c.ApplyBatchTxns <= 0 {
		c.ApplyBatchTxns = 500
	}
	if c.ApplyGather <= 0 {
		c.ApplyGather = 20 * time.Millisecond
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
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	c.Health.Defaults()
}

// PeerNames lists the peers' region ids.
func (c *Config) PeerNames() []string {
	out := make([]string, len(c.Peers))
	for i, p := range c.Peers {
		out[i] = string(p.ID)
	}
	return out
}

// addedTables lists the founding tables and maps each table added by a
// change to the epoch that added it.
func (c *Config) addedTables() ([]string, map[string]uint64) {
	var founding []string
	added := map[string]uint64{}
	for _, t := range c.Cluster.Tables {
		if t.Added > 0 {
			added[t.Name] = t.Added
		} else {
			founding = append(founding, t.Name)
		}
	}
	return founding, added
}

// tablesPending: a table the cluster added cannot be replicated here yet
// (missing, without a primary key or privileges, or locked by the
// applications for longer than the seed waits): the data plane starts
// again after a while, as for an unavailable database.
type tablesPending struct{ err error }

func (e *tablesPending) Error() string {
	return fmt.Sprintf("a table the cluster added cannot be replicated here yet (create it as in the other regions; replication here waits until then): %v", e.err)
}
func (e *tablesPending) Unwrap() error { return e.err }

// tableToSeed is the table named t that the cluster added at epoch, to
// seed.
func (c *Config) tableToSeed(t string, epoch uint64) regions.Table {
	tbl, _ := c.Cluster.Table(t)
	tbl.Name, tbl.Added = t, epoch
	return tbl
}

// withoutTables is the configuration with the tables of w left out of the
// replicated ones.
func (c Config) withoutTables(w tablesWaiting) Config {
	if len(w) == 0 {
		return c
	}
	c.Cluster.Tables = slices.DeleteFunc(slices.Clone(c.Cluster.Tables), func(t regions.Table) bool {
		_, ok := w[t.Name]
		return ok
	})
	return c
}

// TableNames lists the replicated tables.
func (c *Config) TableNames() []string {
	out := make([]string, len(c.Cluster.Tables))
	for i, t := range c.Cluster.Tables {
		out[i] = t.Name
	}
	return out
}

// Prepare checks the local database and creates what replication needs,
// seeds the tables the cluster added that are to be seeded here, and
// returns the tables the cluster added that cannot be replicated here yet
// (see waiting.go): the rest is prepared without them. It changes nothing
// when the check fails.
func Prepare(ctx context.Context, cfg Config) (tablesWaiting, error) {
	waiting, _, err := prepare(ctx, cfg, false)
	return waiting, err
}

// prepare is Prepare; with seedLater the tables to seed are not seeded
// but returned (table -> the epoch that added it) and among the waiting
// ones, for the data plane to seed while it runs (see seedWhileRunning).
func prepare(ctx context.Context, cfg Config, seedLater bool) (tablesWaiting, map[string]uint64, error) {
	conn, err := postgres.Connect(ctx, cfg.Database)
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close(context.Background())
	founding, added := cfg.addedTables()
	if err := postgres.Preflight(ctx, conn, founding); err != nil {
		return nil, nil, err
	}
	waiting := tablesWaiting{}
	for _, t := range slices.Sorted(maps.Keys(added)) {
		err := postgres.CheckTables(ctx, conn, []string{t})
		var probs postgres.Problems
		switch {
		case errors.As(err, &probs):
			waiting[t] = waitingTable{reason: strings.Join(probs, "; ")}
			delete(added, t)
		case err != nil:
			return nil, nil, err
		}
	}
	cfg = cfg.withoutTables(waiting)
	pending, err := postgres.Prepare(ctx, conn, string(cfg.Region), cfg.TableNames(), added, cfg.PeerNames())
	if err != nil {
		return nil, nil, err
	}
	seeds := map[string]uint64{}
	for _, t := range pending {
		if seedLater {
			waiting[t] = waitingTable{reason: seedProgress(postgres.SeedStats{}, false), seedNow: true}
			seeds[t] = added[t]
			continue
		}
		began := time.Now()
		st, err := postgres.SeedTable(ctx, conn, string(cfg.Region), cfg.tableToSeed(t, added[t]), nil)
		var unfinished *postgres.SeedUnfinished
		switch {
		case errors.As(err, &unfinished):
			// Published already: nothing replicates here without it.
			return nil, nil, &tablesPending{err: err}
		case postgres.IsUnavailable(err):
			return nil, nil, err
		case err != nil:
			waiting[t] = waitingTable{reason: "seed: " + err.Error()}
			continue
		}
		if cfg.Logger != nil {
			cfg.Logger.Info("replicating a table added by the cluster: its rows here are shipped as this region's", "table", t, "epoch", added[t], "rows", st.Rows,
				"chunks", st.Chunks, "resumed", st.Resumed, "took_ms", time.Since(began).Milliseconds(), "writes_held_longest_ms", st.LongestHold.Milliseconds())
		}
	}
	if loss, err := postgres.ReadSlotLoss(ctx, conn, string(cfg.Region)); err != nil {
		return nil, nil, err
	} else if loss != nil && cfg.Logger != nil {
		cfg.Logger.Error("replication slot lost: " + loss.Describe(string(cfg.Region)))
	}
	// A table to seed gets its triggers from its seed, under the seed's
	// lock (it ran above, or runs with the data plane).
	if err := postgres.PrepareColumnMerges(ctx, conn, cfg.Cluster.Tables, pending); err != nil {
		return nil, nil, err
	}
	left, err := postgres.RemoveStaleTriggers(ctx, conn, cfg.Cluster.Tables)
	if err != nil {
		return nil, nil, err
	}
	for _, busy := range left {
		if cfg.Logger != nil {
			cfg.Logger.Warn("a trigger stays on a table that no longer needs it until a later start (the applications held the table)", "err", busy.Error())
		}
	}
	if err := postgres.CheckColumnStamps(ctx, conn, cfg.Cluster.Tables); err != nil {
		return nil, nil, err
	}
	if err := prepareSequences(ctx, conn, cfg); err != nil {
		return nil, nil, err
	}
	open, err := postgres.UnconfinedTables(ctx, conn, cfg.TableNames())
	if err != nil {
		return nil, nil, err
	}
	if len(open) > 0 && cfg.Logger != nil {
		cfg.Logger.Warn("peers' changes to these tables are applied with the privileges of their owner, which is not an application role: "+
			"triggers and defaults on them run with those privileges; give them an application role as owner (and GRANT it to the replicator's role)",
			"tables", strings.Join(open, "; "))
	}
	return waiting, seeds, nil
}

// runDataPlane runs the reader, the link server and the followers until a
// part fails (its error) or stop ends: then it lets each follower commit
// the batch in flight and acknowledge it, and the reader version what it
// decoded and confirm it, within the shutdown deadline (nil when they made
// it).
func runDataPlane(stop context.Context, cfg Config, rt *runtime) error {
	log := rt.log
	// A seed runs with the data plane (a load takes every table anyway).
	waiting, seeds, err := prepare(stop, cfg, cfg.JoinFrom == "")
	if err != nil {
		return err
	}
	if len(waiting) > 0 && cfg.JoinFrom != "" {
		// A load takes every table the source replicates.
		return &tablesPending{err: errors.New(waiting.describe())}
	}
	seedAfter := seedRetry(rt.seedFailures) // after the runs before this one whose seed failed
	for _, t := range slices.Sorted(maps.Keys(waiting)) {
		log.Error("a table the cluster added is not replicated here yet: peers' changes to it are parked until it is; every other table replicates", "table", t, "reason", waiting[t].reason)
	}
	rt.mon.TablesWaiting(waiting.healthReasons())
	cfg.waiting = waiting.parkReasons(string(cfg.Region))
	// A waiting table that can be prepared now ends this run (gracefully,
	// as stop would) so that the next one seeds it.
	stop, tablesReady := context.WithCancel(stop)
	defer tablesReady()
	var ready atomic.Bool
	if err := join(stop, cfg, rt); err != nil {
		return err
	}
	// Parts run under ctx, which outlives stop by the shutdown deadline.
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(stop))
	defer cancel(nil)

	reader := postgres.NewReader(postgres.ReaderConfig{
		Region: cfg.Region, ConnString: cfg.Database, Tables: cfg.Cluster.Tables, Logger: log,
		Known: cfg.Cluster.KnownEpoch(), InEffect: cfg.Cluster.InEffect(), Learned: learnedIn(cfg.Cluster.Changes),
	})
	rt.reader.Store(reader)
	pool, err := pgxpool.New(ctx, cfg.Database)
	if err != nil {
		return fmt.Errorf("outbox pool: %w", err)
	}
	defer pool.Close()
	// The outbox is kept for every other region, configured here or not
	// (a member this region cannot follow still needs what it wrote).
	var peerIDs []conflict.RegionID
	for _, r := range cfg.Cluster.Regions {
		if r != cfg.Region {
			peerIDs = append(peerIDs, r)
		}
	}
	outbox := postgres.NewOutbox(pool, reader, cfg.Region, peerIDs, cfg.OutboxMaxTxns)
	outbox.Removed = rt.removed
	graves := newTombstones(cfg, reader, outbox, log)
	graves.removed = rt.removed
	graves.confirm = rt.confirmMembers(cfg.Cluster.Regions)
	graves.onConfirm = rt.mon.Metrics().MembershipConfirmed
	graves.onError = func() { rt.mon.Metrics().Error(obs.ErrTombstones) }
	if err := outbox.RepairAcks(ctx, log); err != nil {
		return err
	}
	// Every applier locks rows of different tables in one order, the one
	// applications write them in (and so does a snapshot's pause).
	order := replicator.NewTableOrder()
	var ctrl link.Control
	if rt.control != nil {
		ctrl = rt.control
	}
	// Every configured peer is known by its token, followed or not: one the
	// cluster removed is told so (403) rather than refused as a stranger.
	server := link.NewServer(link.ServerConfig{
		Region: cfg.Region, Cluster: cfg.Cluster, Tokens: tokensOf(rt.currentPeers()), Control: ctrl,
		Outbox: outbox, Logger: log, Snapshot: snapshotUnlessWaiting(snapshotFor(cfg, order, log), waiting),
		Advert: graves.Advert,
		Shipped: func(peer conflict.RegionID, e link.Entry) {
			rt.mon.Metrics().Shipped(string(peer), e.Rows, len(e.Payload), !e.More)
		},
		Refused: func(peer conflict.RegionID, reason string) {
			rt.mon.Metrics().LinkRefused(string(peer), reason)
		},
	})
	closeLinks := rt.links.serve(server.Handler())

	var wg, followers sync.WaitGroup
	fail := func(part string, err error) {
		if err != nil && !errors.Is(err, context.Canceled) {
			cancel(fmt.Errorf("%s: %w", part, err))
		}
	}
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		fail("reader", reader.Run(ctx))
	}()
	gctx, gcancel := context.WithCancel(ctx)
	defer gcancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		graves.run(gctx, cfg.TombstoneInterval)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		rt.reportFence(gctx, cfg)
	}()
	stopping := make(chan struct{})
	for _, p := range cfg.Peers {
		var onEpochs func([]regions.Epoch)
		if rt.control != nil {
			onEpochs = func(es []regions.Epoch) { rt.learnEpochs(cfg.Cluster, p.ID, es) }
		}
		f, err := newFollower(cfg, p, reader, pool, order, graves, rt.mon, stopping, log, onEpochs)
		if err != nil {
			cancel(err)
			break
		}
		f.removed = rt.removed
		followers.Add(1)
		go func() {
			defer followers.Done()
			f.run(ctx)
		}()
	}
	if settled := cfg.Cluster.DroppedSettled(); len(settled) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			purgeDropped(gctx, cfg, settled, log)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		rt.watchWaiting(gctx, cfg, waiting, func() {
			ready.Store(true)
			tablesReady()
		})
	}()
	var seedFailed atomic.Bool
	defer func() { rt.seedFailures = nextSeedFailures(rt.seedFailures, len(seeds) > 0, seedFailed.Load()) }()
	if len(seeds) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !rt.seedWhileRunning(gctx, cfg, seeds, waiting) {
				seedFailed.Store(true)
				select {
				case <-gctx.Done():
					return
				case <-time.After(seedAfter):
				}
			}
			// Seeded (or to be tried again): the next run replicates
			// the tables, and the parked changes become due.
			ready.Store(true)
			tablesReady()
		}()
	}
	rt.mon.DataPlane(nil)
	log.Info("replicator running", "listen", cfg.Listen, "http", cfg.HTTPListen, "peers", len(cfg.Peers), "tables", len(cfg.Cluster.Tables)-len(waiting))
	select {
	case <-stop.Done():
	case <-ctx.Done():
	}
	if ctx.Err() != nil {
		// A part failed: stop the others now.
		closeLinks(time.Second)
		followers.Wait()
		<-readerDone
		wg.Wait()
		return context.Cause(ctx)
	}
	// Graceful stop: followers commit the batch in flight and acknowledge
	// it; then the reader versions what it decoded and confirms it (the
	// followers may need it until they are done); links to peers close.
	began := time.Now()
	deadline := rt.shutdownTimeout()
	log.Info("stopping: finishing the work in flight", "deadline", deadline.String())
	timer := time.AfterFunc(deadline, func() { cancel(ErrShutdownDeadline) })
	defer timer.Stop()
	close(stopping)
	gcancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		closeLinks(200 * time.Millisecond) // acknowledgements in flight may land
	}()
	followers.Wait()
	reader.Stop()
	<-readerDone
	wg.Wait()
	if cause := context.Cause(ctx); cause != nil {
		return cause
	}
	log.Info("stopped cleanly: progress of every source and of the reader is saved", "took", time.Since(began).Round(time.Millisecond).String())
	if ready.Load() {
		return errTablesReady
	}
	return nil
}

// purgeDropped deletes the recorded versions of the tables the cluster
// dropped for good (see regions.Cluster.DroppedSettled); a run that fails
// leaves the rest to the next run of the data plane.
func purgeDropped(ctx context.Context, cfg Config, tables []string, log *slog.Logger) {
	conn, err := postgres.Connect(ctx, cfg.Database)
	if err != nil {
		return
	}
	defer conn.Close(context.Background())
	n, err := postgres.PurgeVersions(ctx, conn, tables)
	switch {
	case err != nil && ctx.Err() == nil:
		log.Warn("the versions of dropped tables are not all deleted yet (the next start goes on)", "tables", tables, "deleted", n, "err", err)
	case n > 0:
		log.Info("deleted the row versions of tables the cluster dropped", "tables", tables, "versions", n)
	}
}

// errTablesReady ends a run of the data plane that left out a table the
// cluster added, once the table can be prepared: the next run seeds it.
var errTablesReady = errors.New("a table the cluster added can be replicated now")

// follower applies one peer's stream.
type follower struct {
	cfg    Config
	peer   Peer
	reader *postgres.Reader
	client *link.Client
	log    *slog.Logger
	mon    *obs.Monitor
	stop   <-chan struct{} // closed: finish the batch in flight, acknowledge it, return
	// applied is the last transaction committed here (maybe not yet
	// durable: see durable.go); acknowledgements wait for durable.
	applied atomic.Uint64
	pool    *pgxpool.Pool
	// carefulSeq is a large transaction to apply change by change (it hit a
	// data error in the fast path).
	carefulSeq replicator.Seq
	order      *replicator.TableOrder // shared by the process's appliers
	arrivals   arrivalRate
	// removed reports whether the cluster removed a region.
	removed func(conflict.RegionID) bool
}

func newFollower(cfg Config, p Peer, reader *postgres.Reader, pool *pgxpool.Pool, order *replicator.TableOrder, graves *tombstones, mon *obs.Monitor, stop <-chan struct{}, log *slog.Logger,
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
	})
	if err != nil {
		return nil, err
	}
	return &follower{cfg: cfg, peer: p, reader: reader, order: order, client: client, log: log.With("peer", string(p.ID)), mon: mon, stop: stop,
		pool: pool}, nil
}

// A retry round of parked changes takes up to parkedRetryBatch of them; a
// round that resolved that many is followed by another after
// parkedRetrySoon rather than the configured interval.
const (
	parkedRetryBatch = 500
	parkedRetrySoon  = 20 * time.Millisecond
)

// errStopping ends a follower's stream between batches on a graceful stop.
var errStopping = errors.New("stopping")

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
		if errors.Is(err, errStopping) {
			seq := f.applied.Load()
			actx, cancel := context.WithTimeout(ctx, 3*time.Second)
			aerr := f.durable(actx)
			if aerr == nil {
				aerr = f.client.Ack(actx, replicator.Seq(seq))
			}
			cancel()
			f.log.Info("follower stopped: batch in flight committed", "applied_seq", seq, "acknowledged", aerr == nil)
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
	applier, err := postgres.NewApplier(ctx, postgres.ApplierConfig{
		Region: f.cfg.Region, Source: f.peer.ID, ConnString: f.cfg.Database, Cluster: f.cfg.Cluster,
		Versioner: f.reader, Logger: f.log, Order: f.order, Waiting: f.cfg.waiting,
		OnCommit: func(s postgres.CommitStats) {
			cs := make([]obs.Conflict, len(s.Conflicts))
			for i, c := range s.Conflicts {
				cs[i] = obs.Conflict{Table: c.Table, Kind: c.Kind, Policy: c.Policy, Outcome: string(c.Outcome)}
			}
			f.mon.Metrics().Applied(string(f.peer.ID), s.Txns, s.Changes, s.Parked, cs, s.Merged, s.Duration)
			f.mon.PeerApplied(f.peer.ID, uint64(s.LastSeq), s.LastCommitUnix)
		},
		OnReaderWait: func(d time.Duration, holdingRows bool) { f.mon.Metrics().ReaderWait(string(f.peer.ID), d, holdingRows) },
	})
	if err != nil {
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
		seq, err := applier.ApplyLarge(ctx, first, next, careful)
		if prev != nil {
			budget.Release(weight(prev))
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

// prepareSequences sets up the sequences that fill replicated tables' keys
// under the cluster's plan, or, without one, warns about them: every region
// then hands out the same numbers, and each collision is an insert/insert
// conflict in which a row is lost.
func prepareSequences(ctx context.Context, conn *pgx.Conn, cfg Config) error {
	if cfg.Cluster.Sequences == nil {
		seqs, err := postgres.KeySequences(ctx, conn, cfg.TableNames())
		if err != nil {
			return err
		}
		if len(seqs) > 0 && cfg.Logger != nil {
			cfg.Logger.Warn("these replicated tables take keys from sequences, which hand out the same numbers in every region: "+
				"rows inserted in two regions under one key conflict and one is lost; set sequences: (stride and one offset per region) in the configuration",
				"keys", describeKeySequences(seqs))
		}
		return nil
	}
	changed, err := postgres.PrepareSequences(ctx, conn, cfg.TableNames(), cfg.Cluster.Sequences, cfg.Region)
	for _, c := range changed {
		if cfg.Logger != nil {
			cfg.Logger.Info("sequence set to hand out this region's numbers only", "table", c.Table, "column", c.Column,
				"sequence", c.Sequence, "stride", cfg.Cluster.Sequences.Stride, "next", c.Next)
		}
	}
	return err
}

// describeKeySequences is "public.orders.id (public.orders_id_seq); ...".
func describeKeySequences(seqs []postgres.KeySequence) string {
	parts := make([]string, len(seqs))
	for i, k := range seqs {
		parts[i] = fmt.Sprintf("%s.%s (%s)", k.Table, k.Column, k.Sequence)
	}
	return strings.Join(parts, "; ")
}
