package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/regions/control"
	"github.com/polyregion/polyregion/replicator/audit"
	"github.com/polyregion/polyregion/replicator/obs"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// IndexLag reports how far the regional search index is behind the local
// database: in WAL bytes and in seconds, ok false when it cannot tell. The
// health prober calls it about once a second; it must return at once
// (report a cached value) and be safe for concurrent use. Set it in
// Config.IndexLag, or, for a feed started with the data plane, with
// rt.mon.SetIndexLag inside runDataPlane.
type IndexLag func() (bytesBehind int64, secondsBehind float64, ok bool)

// ErrShutdownDeadline is returned by Run when a graceful stop did not finish
// within Config.ShutdownTimeout. Nothing is lost: the work abandoned was not
// committed and is redone after a restart.
var ErrShutdownDeadline = errors.New("shutdown did not finish within shutdown_timeout; work in flight was abandoned (it is redone on restart)")

// runtime is what outlives one run of the data plane.
type runtime struct {
	log      *slog.Logger
	mon      *obs.Monitor
	reader   atomic.Pointer[postgres.Reader]
	shutdown atomic.Int64 // ShutdownTimeout in force
	// retention is the ConflictRetention in force.
	retention atomic.Int64
	// links serves the link address for the life of the process.
	links *links
	// control is the control plane (nil: not configured); ctx outlives
	// every run of the data plane (its background duties use it).
	control *control.Node
	ctx     context.Context
	// peers are the configured peers, as last reloaded; red redacts the
	// configuration's secrets (reloaded tokens added).
	peers     atomic.Pointer[[]Peer]
	witnesses atomic.Pointer[[]Peer]
	red       *obs.Redactor
	// loading is set while a snapshot loads (membership changes wait for
	// it).
	loading atomic.Bool
	// learned are the policy changes taken from peers (see epochs.go).
	learned learnedEpochs
	// seedFailures counts the runs of the data plane in a row whose seed
	// did not finish (see seeding.go): the next try waits longer.
	seedFailures int
}

func (rt *runtime) shutdownTimeout() time.Duration { return time.Duration(rt.shutdown.Load()) }

func (rt *runtime) conflictRetention() time.Duration { return time.Duration(rt.retention.Load()) }

// Run runs the region's replicator until ctx ends or a part fails.
//
// When ctx ends it stops gracefully: each follower commits the batch it is
// applying and acknowledges it to its peer, the reader versions what it has
// decoded and confirms it to the slot; then Run returns nil, or
// ErrShutdownDeadline when that took longer than cfg.ShutdownTimeout.
//
// When the local database becomes unavailable (unreachable, shutting down,
// in recovery or read-only), the data plane stops and starts again once the
// database is back; the operations server keeps answering meanwhile (its
// /health says unavailable). Any other failure ends Run with its error.
func Run(ctx context.Context, cfg Config) (err error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	// No log line, health reason or returned error shows a secret of the
	// configuration, whatever a driver or library quotes. The redactor is
	// the caller's when its logger has one, so that the tokens a reload
	// adds to it (rt.red) reach every line the process logs.
	red, logger := obs.RedactLogger(cfg.Logger, cfg.Secrets()...)
	cfg.Logger = logger
	defer func() { err = red.Error(err) }()
	rt := &runtime{log: cfg.Logger.With("region", string(cfg.Region)), red: red}
	rt.shutdown.Store(int64(cfg.ShutdownTimeout))
	rt.retention.Store(int64(cfg.ConflictRetention))
	initialPeers := append([]Peer(nil), cfg.Peers...)
	rt.peers.Store(&initialPeers)
	initialWitnesses := append([]Peer(nil), cfg.Witnesses...)
	rt.witnesses.Store(&initialWitnesses)
	peers := cfg.Peers
	ids := make([]string, 0, len(peers))
	mcfg := obs.Config{Region: cfg.Region, Tables: cfg.Cluster.Tables, Health: cfg.Health, Logger: rt.log, Redact: red,
		Probe: func(ctx context.Context) (postgres.Probe, error) {
			return postgres.ProbeLocal(ctx, cfg.Database, string(cfg.Region))
		},
		ReaderPosition: func() (uint64, bool) {
			if r := rt.reader.Load(); r != nil {
				return uint64(r.Versioned()), true
			}
			return 0, false
		},
	}
	for _, p := range peers {
		mcfg.Peers = append(mcfg.Peers, p.ID)
		ids = append(ids, string(p.ID))
	}
	if cfg.IndexLag != nil {
		mcfg.IndexLag = cfg.IndexLag
	}
	// The control plane runs for the life of the process, whatever the
	// data plane does (a region whose database is away keeps its vote).
	progress := func(ctx context.Context) (regions.Progress, error) { return rt.readProgress(ctx, cfg) }
	if rt.control, err = openControl(cfg, rt.controlPeers, progress); err != nil {
		return err
	}
	if rt.control != nil {
		defer func() {
			if cerr := rt.control.Close(); cerr != nil {
				rt.log.Warn("control plane: close", "err", cerr)
			}
		}()
		mcfg.Control = func() *obs.ControlView { return controlView(rt.control, cfg.Region) }
	}
	routes := map[string]http.Handler{}
	if rt.control != nil {
		controlRoutes(routes, cfg, rt.control)
	}
	if cfg.HTTPListen != "" {
		// The conflict report reads this region's own conflict log through
		// a small pool that connects on first use (so it needs no database
		// at start and none between reports).
		pool, err := reportPool(cfg.Database)
		if err != nil {
			return err
		}
		defer pool.Close()
		routes["GET /conflicts/report"] = reportHandler(cfg, pool)
	}
	if cfg.Search != nil {
		// The index feed runs beside the data plane, on its own slot, until
		// Run returns; it outlives database outages by retrying.
		sctx, scancel := context.WithCancel(context.WithoutCancel(ctx))
		s, done, err := startSearch(sctx, cfg, rt.log)
		if err != nil {
			scancel()
			return err
		}
		defer func() {
			scancel()
			<-done
		}()
		mcfg.IndexLag = s.feed.Lag
		if s.handler != nil {
			routes["GET /search/"] = s.handler
		}
	}
	mcfg.Routes = routes
	rt.mon = obs.New(mcfg)

	// The prober and the operations server run until Run returns.
	pctx, pcancel := context.WithCancel(context.WithoutCancel(ctx))
	proberDone := make(chan struct{})
	defer func() {
		pcancel()
		<-proberDone
	}()
	go func() {
		defer close(proberDone)
		rt.mon.Run(pctx)
	}()
	if cfg.HTTPListen != "" {
		stopHTTP, err := rt.mon.Serve(cfg.HTTPListen)
		if err != nil {
			return err
		}
		defer func() { _ = stopHTTP() }()
	}
	rt.ctx = pctx
	stopLinks, err := rt.serveLinks(cfg)
	if err != nil {
		return err
	}
	defer stopLinks()
	if rt.control != nil {
		controlDone := make(chan struct{})
		defer func() {
			pcancel()
			<-controlDone
		}()
		go func() {
			defer close(controlDone)
			rt.control.Run(pctx)
		}()
	}
	if cfg.Reload != nil {
		go func() {
			for {
				select {
				case <-pctx.Done():
					return
				case nc := <-cfg.Reload:
					rt.reload(cfg, nc)
				}
			}
		}()
	}
	rt.log.Debug("operations server and prober started", "http", cfg.HTTPListen, "peers", ids)

	backoff := time.Second
	drained := false // the last run ended as every peer confirmed all a reseeding region shipped
	for {
		if rt.control != nil && cfg.JoinFrom != "" {
			// A region to join waits until the cluster added it.
			if err := awaitMembership(ctx, cfg, rt.control, rt.mon); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		learnErr := rt.loadLearned(ctx, cfg)
		dcfg := rt.dataPlaneConfig(cfg)
		if extra := notAgreed(cfg.Cluster.Tables, dcfg.Cluster); len(extra) > 0 {
			rt.log.Warn("tables in the configuration that the cluster does not replicate: add them with cluster configure", "tables", extra)
		}
		if missing := unconfiguredMembers(dcfg); len(missing) > 0 {
			rt.log.Warn("members of the cluster that this region cannot follow: add them to peers: (url, token) and reload", "regions", missing)
		}
		rt.mon.SetPeers(peerIDs(dcfg))
		began := time.Now()
		reseedAt := rt.reseedSince(cfg.Region)
		dcfg, draining, err := rt.reseed(ctx, dcfg, drained)
		if err == nil && learnErr != nil {
			err = fmt.Errorf("read the policy changes learned from peers: %w", learnErr)
		}
		drained = false
		if err == nil {
			runCtx, endRun := context.WithCancel(ctx)
			changed := rt.watchDataPlaneConfig(runCtx, cfg, dcfg, reseedAt, endRun)
			drainEnded := func() bool { return false }
			if draining {
				drainEnded = rt.watchDrain(runCtx, dcfg, endRun)
			}
			err = runDataPlane(runCtx, dcfg, rt)
			endRun()
			rt.reader.Store(nil)
			drained = drainEnded()
			if errors.Is(err, errTablesReady) && ctx.Err() == nil {
				continue // seed it
			}
			if (changed.Load() || drained) && ctx.Err() == nil && (err == nil || errors.Is(err, context.Canceled) || errors.Is(err, ErrShutdownDeadline)) {
				// Stopped for the new membership or peers, or to empty the
				// region for its reseed (work abandoned at the deadline is
				// redone): start again with them.
				continue
			}
			drained = false
		}
		if err == nil || errors.Is(err, ErrShutdownDeadline) {
			if err != nil {
				rt.log.Error("stopped", "err", err)
			}
			return err
		}
		if ctx.Err() != nil && errors.Is(err, context.Canceled) {
			return nil // stopped before the data plane was up
		}
		var probs postgres.Problems
		var waiting *tablesPending
		var busy *postgres.LockBusy
		if !errors.As(err, &waiting) && !errors.As(err, &busy) && (errors.As(err, &probs) || !rt.databaseUnavailable(ctx, cfg, err)) {
			return err
		}
		if time.Since(began) > time.Minute {
			backoff = time.Second
		}
		rt.mon.DataPlane(err)
		rt.mon.Metrics().Error(obs.ErrDataPlane)
		switch {
		case waiting != nil:
			rt.log.Error("replication here waits for a table the cluster added", "err", err, "retry_in", backoff.String())
		case busy != nil:
			rt.log.Error("replication here waits for the applications to release a replicated table (the change it needs takes a lock they hold)", "err", err, "retry_in", backoff.String())
		default:
			rt.log.Error("local database unavailable; replication restarts once it is back", "err", err, "retry_in", backoff.String())
		}
		select {
		case <-ctx.Done():
			rt.log.Info("stopped while waiting for the local database")
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 15*time.Second)
	}
}

// databaseUnavailable reports whether a data-plane failure comes from the
// local database going away (as opposed to a refusal, such as a wrong
// password or database name, or a bug): the error says so, or the database
// cannot be reached or does not take writes now.
func (rt *runtime) databaseUnavailable(ctx context.Context, cfg Config, err error) bool {
	if postgres.IsUnavailable(err) {
		return true
	}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	p, perr := postgres.ProbeLocal(pctx, cfg.Database, string(cfg.Region))
	if perr != nil {
		return postgres.IsUnavailable(perr) || errors.Is(perr, context.DeadlineExceeded)
	}
	return p.InRecovery || p.ReadOnly
}

// reload applies what can change while running (health settings, the
// shutdown deadline) and logs every other difference as refused.
func (rt *runtime) reload(cur, next Config) {
	next.defaults()
	if err := next.Validate(); err != nil {
		rt.log.Error("config reload refused: the new config is invalid; keeping the running one", "err", err)
		return
	}
	var refused []string
	same := func(key string, a, b any) {
		if !reflect.DeepEqual(a, b) {
			refused = append(refused, key)
		}
	}
	same("region", cur.Region, next.Region)
	same("database", cur.Database, next.Database)
	same("listen", cur.Listen, next.Listen)
	same("tls", cur.TLS, next.TLS)
	// Once the cluster is initialised, its membership is the control
	// plane's: peers (and witnesses) only say how to reach each member.
	agreed := rt.control != nil && len(rt.control.Membership().Epochs) > 0
	if agreed && (!reflect.DeepEqual(rt.currentPeers(), next.Peers) || !reflect.DeepEqual(rt.currentWitnesses(), next.Witnesses)) {
		// The membership is the control plane's; peers and witnesses only
		// say how to reach each one: the data plane restarts with the new
		// peers.
		for _, p := range append(append([]Peer(nil), next.Peers...), next.Witnesses...) {
			rt.red.Add(p.Token)
		}
		peers := append([]Peer(nil), next.Peers...)
		rt.peers.Store(&peers)
		witnesses := append([]Peer(nil), next.Witnesses...)
		rt.witnesses.Store(&witnesses)
		rt.links.setControlTokens(rt, next)
		rt.log.Info("config reload: peers applied (the data plane restarts with them)", "peers", next.PeerNames(), "witnesses", len(next.Witnesses))
	} else if !agreed {
		same("peers", cur.Peers, next.Peers)
		same("witnesses", cur.Witnesses, next.Witnesses)
	}
	if agreed {
		// Regions are agreed by the control plane; only the policies count.
		cur.Cluster.Agreed, next.Cluster.Agreed = true, true
	}
	same("regions/tables (the agreed configuration)", cur.Cluster.Fingerprint(), next.Cluster.Fingerprint())
	same("outbox_max_transactions", cur.OutboxMaxTxns, next.OutboxMaxTxns)
	same("join.spool", cur.SpoolBytes, next.SpoolBytes)
	same("http.listen", cur.HTTPListen, next.HTTPListen)
	same("control", cur.Control, next.Control)
	for _, k := range refused {
		rt.log.Warn("config reload: setting changed but cannot change while running; restart to apply it", "key", k)
	}
	old := rt.mon.Health()
	nh := next.Health
	var changed []any
	for _, c := range []struct {
		key      string
		old, new time.Duration
	}{
		{"health.probe_interval", old.ProbeInterval, nh.ProbeInterval},
		{"health.probe_timeout", old.ProbeTimeout, nh.ProbeTimeout},
		{"health.hold", old.Hold, nh.Hold},
		{"health.max_lag", old.MaxLag, nh.MaxLag},
		{"health.max_index_lag", old.MaxIndexLag, nh.MaxIndexLag},
		{"health.stall_after", old.StallAfter, nh.StallAfter},
		{"shutdown_timeout", rt.shutdownTimeout(), next.ShutdownTimeout},
		{"conflict_log.retention", rt.conflictRetention(), next.ConflictRetention},
	} {
		if c.old != c.new {
			changed = append(changed, c.key, fmt.Sprintf("%s -> %s", c.old, c.new))
		}
	}
	rt.mon.SetHealth(nh)
	rt.shutdown.Store(int64(next.ShutdownTimeout))
	rt.retention.Store(int64(next.ConflictRetention))
	if len(changed) > 0 {
		rt.log.Info("config reload: applied", changed...)
	} else {
		rt.log.Info("config reload: no setting that can change while running changed")
	}
}

// reportHandler serves this region's conflict report. Reports carry row
// images: they are served like control changes, to this machine or to a
// request that presents the admin token, not to whatever reaches /health.
func reportHandler(cfg Config, q audit.Querier) http.Handler {
	return adminOnly(cfg.adminToken(), "conflict report requests", audit.Handler(audit.DB{Name: "region " + string(cfg.Region), Q: q}))
}

// reportPool returns the pool the conflict report reads through: at most
// two sessions, opened on demand, with the settings of every replicator
// session (search_path pinned).
func reportPool(database string) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(database)
	if err != nil {
		return nil, fmt.Errorf("conflict report pool: %w", err)
	}
	pc.MaxConns = 2
	pc.MaxConnIdleTime = time.Minute
	rp := pc.ConnConfig.RuntimeParams
	rp["search_path"] = "pg_catalog, pg_temp"
	if rp["application_name"] == "" {
		rp["application_name"] = "polyregion conflict report"
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, fmt.Errorf("conflict report pool: %w", err)
	}
	return pool, nil
}
