package node

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// Watermark is what a region advertises to its peers on every keepalive:
// how far it has applied each source, and how far its own outbox was
// versioned after that (every local write committed before the applied
// positions were read has a sequence number at most Versioned).
type Watermark struct {
	Applied   map[conflict.RegionID]int64 `json:"applied"`
	Versioned int64                       `json:"versioned"`
	// Settled is, per origin, how far the region has settled that
	// origin's deletes (its recorded tombstone floors): a tombstone is
	// collected once every member's floor covers it. Absent from a region
	// of an earlier release, which holds every collection up.
	Settled map[string]int64 `json:"settled,omitempty"`
}

// tombstones trims the outbox of what every peer acknowledged, and
// collects row versions of deleted rows once no write concurrent with the
// delete can still arrive here. For a tombstone left by a delete
// from origin O with sequence s, that holds when every other region R
// (neither this one nor O) advertised having applied O up to s, and this
// region has applied R's outbox up to what R had versioned at that moment:
// any write R made before it saw the delete has then arrived. Tables with
// counter columns keep their tombstones (their sums live on in them).
//
// Both wait for every member, so both need a membership that is current:
// a member may run with an older one (it restarted, or lags) while a new
// region loads a snapshot, and trimming by the others' acknowledgements
// alone would drop what the new region needs. So a round reads the
// acknowledgements and watermarks first, then confirms (through the
// control plane's leader) that no member was added that its data plane
// does not follow, and only then trims and collects. A region added
// before the confirmation is followed, hence waited for; one added after
// it loads a snapshot its source took later still, which holds at least
// what the acknowledgements read said was applied. Without a confirmation
// (no leader reachable, or the data plane is about to restart with new
// members) the round trims and collects nothing. A member that is down
// therefore never holds up a join.
type tombstones struct {
	cfg    Config
	reader *postgres.Reader
	outbox outboxKeeper
	log    *slog.Logger
	// onError, when set, counts a failed round.
	onError func()
	// removed reports whether the cluster removed a region: its watermark
	// is waited for no more (it writes nothing more that could arrive).
	removed func(conflict.RegionID) bool
	// confirm, when set, fails unless the membership the data plane runs
	// with is the cluster's current one (nil: no control plane).
	confirm func(context.Context) error
	// unconfirmed: the last round could not confirm it.
	unconfirmed bool
	// onConfirm, when set, is told whether each round confirmed it.
	onConfirm func(bool)

	mu      sync.Mutex
	own     []byte
	adverts map[conflict.RegionID]Watermark
}

// outboxKeeper is the outbox as a round keeps it (postgres.Outbox).
type outboxKeeper interface {
	Cap(context.Context) error
	AckFloor(context.Context) (replicator.Seq, error)
	Trim(context.Context, replicator.Seq) error
}

func newTombstones(cfg Config, reader *postgres.Reader, outbox outboxKeeper, log *slog.Logger) *tombstones {
	return &tombstones{cfg: cfg, reader: reader, outbox: outbox, log: log, adverts: map[conflict.RegionID]Watermark{}}
}

// Advert returns this region's latest watermark (nil before the first).
func (g *tombstones) Advert() []byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.own
}

// heard records a peer's watermark and returns it.
func (g *tombstones) heard(peer conflict.RegionID, payload []byte) (Watermark, bool) {
	var w Watermark
	if err := json.Unmarshal(payload, &w); err != nil {
		g.log.Warn("peer sent an unreadable watermark", "peer", string(peer), "err", err)
		return w, false
	}
	g.mu.Lock()
	g.adverts[peer] = w
	g.mu.Unlock()
	return w, true
}

func (g *tombstones) run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := g.round(ctx); err != nil && ctx.Err() == nil {
			g.log.Warn("watermark and tombstone round failed", "err", err)
			if g.onError != nil {
				g.onError()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (g *tombstones) round(ctx context.Context) error {
	adverts, current, err := g.keepOutbox(ctx)
	if err != nil {
		return err
	}
	conn, err := postgres.Connect(ctx, g.cfg.Database)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	applied, err := postgres.SettledPositions(ctx, conn)
	if err != nil {
		return err
	}
	// The appliers commit asynchronously (see durable.go): advertise only
	// durable positions.
	if err := postgres.FlushWAL(ctx, conn); err != nil {
		return fmt.Errorf("watermark: %w", err)
	}
	// Everything committed locally before now is versioned past the barrier.
	l, err := postgres.EmitBarrier(ctx, conn)
	if err != nil {
		return fmt.Errorf("watermark: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = g.reader.WaitVersioned(wctx, l)
	cancel()
	if err != nil {
		return err
	}
	versioned, err := postgres.VersionedSeq(ctx, conn, string(g.cfg.Region))
	if err != nil {
		return err
	}
	w := Watermark{Applied: applied, Versioned: versioned}
	if current {
		w.Settled, err = postgres.RaiseTombstoneFloors(ctx, conn, g.settledHere(adverts, applied, versioned))
	} else {
		w.Settled, err = postgres.TombstoneFloors(ctx, conn)
	}
	if err != nil {
		return err
	}
	own, _ := json.Marshal(w)
	g.mu.Lock()
	g.own = own
	g.mu.Unlock()
	if !current {
		return nil
	}

	var tables []string
	for _, t := range g.cfg.Cluster.Tables {
		if len(t.Policy.Counters) == 0 {
			tables = append(tables, t.Name)
		}
	}
	if len(tables) == 0 {
		return nil
	}
	collect := g.settledEverywhere(adverts, w.Settled)
	for _, origin := range g.cfg.Cluster.Regions {
		safe := collect[string(origin)]
		if safe == 0 {
			continue
		}
		n, err := postgres.CollectTombstones(ctx, conn, tables, string(origin), safe, collect)
		if err != nil {
			return err
		}
		if n > 0 {
			g.log.Debug("tombstones collected", "origin", string(origin), "up_to_seq", safe, "count", n)
		}
	}
	return nil
}

// settledHere is, per origin, how far this region has settled the
// origin's deletes: their tombstones, and siblings the origin wrote, up to
// there can no longer meet a concurrent write here. Its own deletes are
// settled no further than it has versioned (with no other member, that
// far: a region that joins later loads a snapshot that holds them).
func (g *tombstones) settledHere(adverts map[conflict.RegionID]Watermark, applied map[conflict.RegionID]int64, versioned int64) map[string]int64 {
	safeFor := map[string]int64{}
	for _, origin := range g.cfg.Cluster.Regions {
		safe := int64(math.MaxInt64)
		for _, r := range g.cfg.Cluster.Regions {
			if r == g.cfg.Region || r == origin || g.gone(r) {
				continue
			}
			w, ok := adverts[r]
			if !ok || applied[r] < w.Versioned {
				safe = 0
				break
			}
			safe = min(safe, w.Applied[origin])
		}
		if origin != g.cfg.Region {
			// Nor past what this region settled from the origin: a change
			// parked here (an insert behind the delete whose tombstone
			// this is) would otherwise bring the row back when retried.
			safe = min(safe, applied[origin])
		} else {
			safe = min(safe, versioned)
		}
		safeFor[string(origin)] = safe
	}
	return safeFor
}

// settledEverywhere is, per origin, how far every member has settled its
// deletes (each member's recorded floor; this region's is own): a
// tombstone is collected only then, so that when this region writes its
// key again, every other region takes that first write as following the
// delete (see postgres.SupersedesSettled).
func (g *tombstones) settledEverywhere(adverts map[conflict.RegionID]Watermark, own map[string]int64) map[string]int64 {
	out := map[string]int64{}
	for _, origin := range g.cfg.Cluster.Regions {
		safe := own[string(origin)]
		for _, r := range g.cfg.Cluster.Regions {
			if r == g.cfg.Region || g.gone(r) {
				continue
			}
			safe = min(safe, adverts[r].Settled[string(origin)])
		}
		out[string(origin)] = safe
	}
	return out
}

// gone reports whether the cluster removed region r.
func (g *tombstones) gone(r conflict.RegionID) bool { return g.removed != nil && g.removed(r) }

// keepOutbox caps the outbox, reads what the peers said (their watermarks
// and acknowledgements), then confirms the membership current and, if it
// is, trims the outbox by what was read before. The watermarks returned
// were read before the confirmation too; current says whether it held.
func (g *tombstones) keepOutbox(ctx context.Context) (adverts map[conflict.RegionID]Watermark, current bool, err error) {
	if err := g.outbox.Cap(ctx); err != nil {
		return nil, false, err
	}
	g.mu.Lock()
	adverts = make(map[conflict.RegionID]Watermark, len(g.adverts))
	for k, v := range g.adverts {
		adverts[k] = v
	}
	g.mu.Unlock()
	floor, err := g.outbox.AckFloor(ctx)
	if err != nil {
		return nil, false, err
	}
	if !g.current(ctx) {
		return adverts, false, nil
	}
	return adverts, true, g.outbox.Trim(ctx, floor)
}

// current reports whether the membership the data plane runs with is
// confirmed to be the cluster's (always, without a control plane), and
// logs when that changes.
func (g *tombstones) current(ctx context.Context) bool {
	if g.confirm == nil {
		return true
	}
	// A leader answers in a round trip; without one, the round goes on to
	// the watermark soon.
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	err := g.confirm(cctx)
	cancel()
	switch {
	case err == nil && g.unconfirmed:
		g.log.Info("outbox trimming and tombstone collection resume: the membership is confirmed current")
	case err != nil && !g.unconfirmed && ctx.Err() == nil:
		g.log.Warn("outbox trimming and tombstone collection wait until the membership can be confirmed current", "reason", err.Error())
	}
	g.unconfirmed = err != nil && ctx.Err() == nil
	if g.onConfirm != nil && ctx.Err() == nil {
		g.onConfirm(err == nil)
	}
	return err == nil
}
