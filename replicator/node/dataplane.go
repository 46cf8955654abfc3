package node

// One run of the data plane: the reader, the link server and a follower
// per peer, started together and stopped together.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
	"github.com/polyregion/polyregion/replicator/link"
	"github.com/polyregion/polyregion/replicator/obs"
	"github.com/polyregion/polyregion/replicator/postgres"
)

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
	if cfg.encoding, err = keepTextEncoding(stop, cfg); err != nil {
		return err
	}
	if w := replicator.EncodingWarning(cfg.encoding); w != "" {
		log.Warn(w, "text_encoding", cfg.encoding)
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
	pool, err := postgres.OpenPool(ctx, cfg.Database)
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
	// applications write them in (and so does a snapshot's pause), and
	// claims the rows it reads from the others before it locks them.
	order := replicator.NewTableOrder()
	shared := appliersShare{order: order, claims: replicator.NewClaims()}
	var ctrl link.Control
	if rt.control != nil {
		ctrl = rt.control
	}
	// Every configured peer is known by its token, followed or not: one the
	// cluster removed is told so (403) rather than refused as a stranger.
	server := link.NewServer(link.ServerConfig{
		Region: cfg.Region, Cluster: cfg.Cluster, Tokens: tokensOf(rt.currentPeers()), Control: ctrl,
		Outbox: outbox, Logger: log, Snapshot: snapshotUnlessWaiting(snapshotFor(cfg, order, log), waiting),
		Advert: graves.Advert, Encoding: cfg.encoding,
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
	wg.Add(1)
	go func() {
		defer wg.Done()
		rt.pruneConflicts(gctx, pool)
	}()
	stopping, readerWaitsEnd := make(chan struct{}), make(chan struct{})
	for _, p := range cfg.Peers {
		var onEpochs func([]regions.Epoch)
		if rt.control != nil {
			onEpochs = func(es []regions.Epoch) { rt.learnEpochs(cfg.Cluster, p.ID, es) }
		}
		f, err := newFollower(cfg, p, reader, pool, shared, graves, rt.mon, stopSignals{stopping, readerWaitsEnd}, log, onEpochs)
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
	// A batch still waiting for the reader half the deadline in is rolled
	// back: the reader may have far to go (a region that just joined
	// passes every loaded row first).
	began := time.Now()
	deadline := rt.shutdownTimeout()
	log.Info("stopping: finishing the work in flight", "deadline", deadline.String())
	timer := time.AfterFunc(deadline, func() { cancel(ErrShutdownDeadline) })
	defer timer.Stop()
	waits := time.AfterFunc(deadline/2, func() { close(readerWaitsEnd) })
	defer waits.Stop()
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

// keepTextEncoding returns the encoding this run's sessions exchange text
// in (postgres.TextEncoding) and records it, refusing a change while the
// outbox holds transactions read in the one before that some region still
// waits for (postgres.KeepTextEncoding).
func keepTextEncoding(ctx context.Context, cfg Config) (string, error) {
	conn, err := postgres.Connect(ctx, cfg.Database)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	enc := postgres.TextEncoding(conn.PgConn())
	var waitedFor []string
	for _, r := range cfg.Cluster.Regions {
		if r != cfg.Region {
			waitedFor = append(waitedFor, string(r))
		}
	}
	return enc, postgres.KeepTextEncoding(ctx, conn, enc, waitedFor)
}
