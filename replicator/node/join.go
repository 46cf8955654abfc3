package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
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

// A region joins a running cluster by loading a consistent snapshot of one
// peer (cfg.JoinFrom) over the link: the rows, their versions, and how far
// that peer had applied every region. Its streams then resume from those
// positions, so nothing written anywhere meanwhile is missed or applied
// twice. Every region keeps its outbox for a configured peer until the
// peer acknowledges it, so what the new region needs is still there.
//
// The load commits in parts (see replicator/postgres/snapshot_units.go): a
// load cut short (either replicator killed, the link broken) keeps the
// parts it committed and goes on after them, from a new snapshot of the
// same peer, until it succeeds. Until the region has loaded its snapshot
// and caught up with its peers, /health answers 503 (joining).

// join loads the region from cfg.JoinFrom's snapshot, unless it joined or
// applies peers' transactions already.
func join(ctx context.Context, cfg Config, rt *runtime) error {
	mon, log := rt.mon, rt.log
	conn, err := postgres.Connect(ctx, cfg.Database)
	if err != nil {
		return err
	}
	st, err := postgres.ReadJoinState(ctx, conn)
	conn.Close(context.Background())
	if err != nil {
		return err
	}
	if rt.control != nil && rt.control.Membership().State(cfg.Region) == regions.Removed {
		return postgres.Problems{fmt.Sprintf("region %s was removed from the cluster: its peers refuse its links (a removed region does not come back under the same id)", cfg.Region)}
	}
	if st.CatchingUp != "" {
		// Loaded before a restart, not caught up yet: still joining.
		mon.Loaded(st.CatchingUp, markCaughtUp(cfg, rt))
	}
	if st.Joined {
		if st.CatchingUp == "" && rt.control != nil && reseedCarriedOut(rt.control.Membership(), cfg.Region, st) {
			go activateWhenJoined(rt.ctx, rt.control, cfg.Region, log)
		}
		return nil
	}
	if cfg.JoinFrom == "" {
		if _, err := loadedBefore(ctx, cfg, log); err != nil {
			return err
		}
		if st.Reseeding {
			// Streams alone cannot fill it again (peers trimmed what it
			// would need), and it would serve a part of the rows.
			return postgres.Problems{fmt.Sprintf("region %s was emptied to be re-seeded: start it with --join PEER to load a peer's snapshot", cfg.Region)}
		}
		return nil
	}
	var peer Peer
	for _, p := range cfg.Peers {
		if p.ID == cfg.JoinFrom {
			peer = p
		}
	}
	tlsCfg, err := link.ClientTLS(peer.TLS)
	if err != nil {
		return fmt.Errorf("join from %s: %w", peer.ID, err)
	}
	client, err := link.NewClient(link.ClientConfig{Region: cfg.Region, Peer: peer.ID, URL: peer.URL, Token: peer.Token, TLS: tlsCfg, Cluster: cfg.Cluster,
		Encoding: cfg.encoding})
	if err != nil {
		return fmt.Errorf("join from %s: %w", peer.ID, err)
	}
	defer client.Close()
	mon.Joining("waiting for a snapshot from " + string(peer.ID))
	log.Info("joining: loading a snapshot", "from", string(peer.ID))
	backoff := time.Second
	for attempt := 1; ; attempt++ {
		began := time.Now()
		var h postgres.SnapshotHeader
		var sum postgres.SnapshotSummary
		err := peersAccept(ctx, cfg, peer.ID)
		var resume []byte
		if err == nil {
			resume, err = loadedBefore(ctx, cfg, log)
		}
		if err == nil {
			rt.loading.Store(true)
			err = client.Snapshot(ctx, resume, func(r io.Reader) error {
				var err error
				h, sum, err = postgres.LoadSnapshot(ctx, postgres.LoadConfig{
					Region: string(cfg.Region), From: string(peer.ID), ConnString: cfg.Database, Tables: cfg.TableNames(), Logger: log,
					Progress: joinProgress(mon, log),
				}, r)
				return err
			})
			rt.loading.Store(false)
		}
		switch {
		case err == nil:
			var rows int64
			for _, n := range sum.Rows {
				rows += n
			}
			log.Info("joined: snapshot loaded", "from", string(peer.ID), "rows", rows, "versions", sum.Versions, "parked", sum.Parked,
				"took", time.Since(began).Round(time.Millisecond).String(), "source_writers_paused_ms", h.PauseMillis, "source_seq", h.SourceSeq)
			mon.Loaded(string(peer.ID), markCaughtUp(cfg, rt))
			// Keys now in the tables may lie above where the sequences were set.
			c, err := postgres.Connect(ctx, cfg.Database)
			if err != nil {
				return err
			}
			defer c.Close(context.Background())
			return prepareSequences(ctx, c, cfg)
		case errors.Is(err, postgres.ErrAlreadyJoined):
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case !retryJoin(err):
			return fmt.Errorf("join from %s: %w", peer.ID, err)
		}
		log.Warn("joining: the snapshot could not be loaded; the parts committed are kept and the load goes on after them", "from", string(peer.ID), "attempt", attempt, "err", err, "retry_in", backoff.String())
		mon.Joining(fmt.Sprintf("loading a snapshot from %s failed (attempt %d), retrying: %v", peer.ID, attempt, err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 15*time.Second)
	}
}

// loadedBefore reads what an earlier load committed, as the snapshot
// request's resume parameter (forgetting first what it loaded of tables
// the region no longer replicates). Parts loaded from another region than
// cfg.JoinFrom are refused: the load must end from the region it began
// with (its rows and positions are that region's).
func loadedBefore(ctx context.Context, cfg Config, log *slog.Logger) ([]byte, error) {
	conn, err := postgres.Connect(ctx, cfg.Database)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	forgotten, err := postgres.ForgetJoinParts(ctx, conn, cfg.TableNames())
	if err != nil {
		return nil, err
	}
	if len(forgotten) > 0 {
		log.Warn("joining: tables loaded in part before are no longer replicated: the load goes on without them (their rows loaded so far stay, not replicated)", "tables", strings.Join(forgotten, ", "))
	}
	source, resume, rows, err := postgres.ReadJoinResume(ctx, conn)
	if err != nil {
		return nil, err
	}
	if source != "" && source != string(cfg.JoinFrom) {
		return nil, fmt.Errorf("%w: region %s loaded %d rows of a snapshot of %s before its load was cut short: start it with --join %s to finish that load", postgres.ErrCannotJoin, cfg.Region, rows, source, source)
	}
	if source != "" {
		log.Info("joining: going on with a load cut short", "from", source, "rows_loaded", rows, "tables_done", len(resume.Done), "tables_in_part", len(resume.After))
	}
	return json.Marshal(resume)
}

// markCaughtUp records, once the region has caught up, that it did: a
// restart before that finds it still joining.
// With a control plane, the region is then marked active (it votes).
func markCaughtUp(cfg Config, rt *runtime) func() {
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := postgres.MarkCaughtUp(ctx, cfg.Database); err != nil {
			rt.log.Warn("joined: could not record that the region caught up; after a restart it reports joining until it catches up again", "err", err)
			return
		}
		if rt.control == nil {
			return
		}
		// A reseed asked after this load (the region then caught up with
		// its old rows) is carried out before the region is active again.
		conn, err := postgres.Connect(ctx, cfg.Database)
		if err != nil {
			rt.log.Warn("joined: could not read whether a reseed is due; the region is marked active once it runs again", "err", err)
			return
		}
		st, err := postgres.ReadJoinState(ctx, conn)
		conn.Close(context.Background())
		if err != nil || !reseedCarriedOut(rt.control.Membership(), cfg.Region, st) {
			return
		}
		activateWhenJoined(rt.ctx, rt.control, cfg.Region, rt.log)
	}
}

// peersAccept checks, before a snapshot is asked for, that every other
// peer accepts this region: it lists it with the same token and runs the
// same configuration. A peer that does not would never send this region
// what it writes (its stream refused), and the join would look done while
// that region's writes were missing. A peer that cannot be reached now is
// not waited for (it may be down; it streams once it is back).
func peersAccept(ctx context.Context, cfg Config, source conflict.RegionID) error {
	var refusals []string
	for _, p := range cfg.Peers {
		if p.ID == source {
			continue
		}
		if err := peerAccepts(ctx, cfg, p); err != nil {
			refusals = append(refusals, err.Error())
		}
	}
	if len(refusals) > 0 {
		return fmt.Errorf("not every region accepts this one yet (add it to every region's configuration, the same everywhere, before it joins): %s", strings.Join(refusals, "; "))
	}
	return nil
}

var errAccepted = errors.New("accepted")

// peerAccepts opens a stream from peer and ends it at its first frame.
func peerAccepts(ctx context.Context, cfg Config, p Peer) error {
	tlsCfg, err := link.ClientTLS(p.TLS)
	if err != nil {
		return fmt.Errorf("peer %s: %w", p.ID, err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var accepted atomic.Bool
	client, err := link.NewClient(link.ClientConfig{Region: cfg.Region, Peer: p.ID, URL: p.URL, Token: p.Token, TLS: tlsCfg, Cluster: cfg.Cluster, Encoding: cfg.encoding,
		OnConnected: func() { accepted.Store(true); cancel() }})
	if err != nil {
		return fmt.Errorf("peer %s: %w", p.ID, err)
	}
	defer client.Close()
	err = client.Stream(pctx, 0, func(*replicator.Txn) error { return errAccepted })
	var mm *link.MismatchError
	switch {
	case accepted.Load(), errors.Is(err, errAccepted), errors.Is(err, link.ErrTooFarBehind):
		return nil // its stream would start (from some position): it accepts this region
	case errors.Is(err, link.ErrUnauthorized):
		return fmt.Errorf("peer %s refuses this region's credentials (is %s among its peers, with the same token?)", p.ID, cfg.Region)
	case errors.As(err, &mm):
		return fmt.Errorf("peer %s runs another configuration (%s)", p.ID, strings.Join(mm.Differences, "; "))
	}
	return nil
}

// retryJoin reports whether a failed load may succeed when tried again
// (the link or the source failed) rather than being refused for good (the
// configurations differ, credentials are wrong, the region is not new,
// the source refuses it).
func retryJoin(err error) bool {
	var mm *link.MismatchError
	return !errors.As(err, &mm) && !errors.Is(err, link.ErrUnauthorized) && !errors.Is(err, link.ErrNotServed) &&
		!errors.Is(err, link.ErrSnapshotRefused) && !errors.Is(err, postgres.ErrCannotJoin)
}

// joinProgress reports a load's progress on /health and, every 10 s, in
// the log.
func joinProgress(mon *obs.Monitor, log *slog.Logger) func(postgres.LoadProgress) {
	var logged time.Time
	return func(p postgres.LoadProgress) {
		what := fmt.Sprintf("loading a snapshot from %s: %d of %d tables, %d rows of about %d, %d MB received",
			p.Source, p.TablesDone, p.TablesTotal, p.Rows, p.Estimate, p.Bytes>>20)
		if p.Table != "" {
			what += " (loading " + p.Table + ")"
		}
		mon.Joining(what)
		mon.JoinLoaded(p.Rows, p.Bytes)
		if time.Since(logged) >= 10*time.Second {
			logged = time.Now()
			log.Info("joining", "progress", what)
		}
	}
}

// snapshotConfig is what a snapshot this region serves reads, and how.
func snapshotConfig(cfg Config, order *replicator.TableOrder, log *slog.Logger) postgres.SnapshotConfig {
	return postgres.SnapshotConfig{
		Region: string(cfg.Region), ConnString: cfg.Database, Tables: cfg.TableNames(), LockOrder: order, Logger: log,
		SpoolBytes: cfg.SpoolBytes,
	}
}

// snapshotFor serves this region's snapshots to joining peers.
// One at a time: each pauses the region's writers briefly and reads every
// replicated row.
func snapshotFor(cfg Config, order *replicator.TableOrder, log *slog.Logger) func(context.Context, conflict.RegionID, io.Writer) error {
	var one sync.Mutex
	return func(ctx context.Context, peer conflict.RegionID, w io.Writer) error {
		one.Lock()
		defer one.Unlock()
		began := time.Now()
		sc := snapshotConfig(cfg, order, log.With("peer", string(peer)))
		if b, ok := link.SnapshotResume(ctx); ok {
			sc.Resume = &postgres.SnapshotResume{}
			if err := json.Unmarshal(b, sc.Resume); err != nil {
				return fmt.Errorf("snapshot for %s: what it loaded before: %w", peer, err)
			}
		}
		sum, err := postgres.WriteSnapshot(ctx, sc, w)
		if errors.Is(err, postgres.ErrCannotJoin) {
			return link.RefuseSnapshot(err)
		}
		if err != nil {
			return err
		}
		var rows int64
		for _, n := range sum.Rows {
			rows += n
		}
		log.Info("snapshot sent", "peer", string(peer), "rows", rows, "versions", sum.Versions, "took", time.Since(began).Round(time.Millisecond).String())
		return nil
	}
}
