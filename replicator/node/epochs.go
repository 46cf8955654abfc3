package node

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// Policy changes (see regions/epochs.go): once this region's reader has
// recorded its fence for an announced epoch (at its start with the epoch
// known, see postgres/epochs.go), the region reports it to the control
// plane, again every few seconds until the membership holds it. Without
// a majority the report waits; the data plane does not.

// reportFence runs while the data plane does.
func (rt *runtime) reportFence(ctx context.Context, cfg Config) {
	if rt.control == nil {
		return
	}
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	warned := false
	for {
		m := rt.control.Membership()
		e := m.Epoch()
		switch {
		case e.Number < cfg.Cluster.KnownEpoch():
			// Learned from a peer: reported once the control plane
			// brings it.
		case !e.Pending() || e.Number != cfg.Cluster.KnownEpoch():
			return // nothing to report, or the data plane restarts with another epoch
		default:
			if _, ok := e.Fences[cfg.Region]; ok {
				return
			}
			if err := rt.sendFence(ctx, cfg, e.Number); err != nil && !warned && ctx.Err() == nil {
				rt.log.Warn("the fence of a policy change is not reported yet (retrying)", "epoch", e.Number, "err", err)
				warned = true
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (rt *runtime) sendFence(ctx context.Context, cfg Config, epoch uint64) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	fence, ok, err := postgres.ReadFence(rctx, cfg.Database, epoch)
	if err != nil || !ok {
		return err // not recorded yet: the reader is starting
	}
	if _, err := rt.control.Apply(rctx, regions.Command{Op: regions.OpFence, Region: cfg.Region, Epoch: epoch, Fence: fence}); err != nil {
		return err
	}
	rt.log.Info("reported the fence of a policy change", "epoch", epoch, "fence", fence)
	return nil
}

// Epochs learned from peers (see regions/learn.go): a region that the
// control plane's leader cannot reach keeps applying what its peers ship
// under a new epoch. Each stream from a peer opens with the epochs the
// peer knows; one after this region's is taken (learnEpochs), the data
// plane restarts with it (dataPlaneConfig appends it; its reader records
// the fence and, for a learned epoch, its policies), and once the control
// plane brings the epoch it is the control plane's again. The fence is
// reported after the heal (reportFence keeps waiting meanwhile).

// learnedEpochs are the epochs this region took from peers.
type learnedEpochs struct {
	mu     sync.Mutex
	loaded bool
	epochs []regions.Epoch
}

// loadLearned reads, once per process, the epochs an earlier run learned
// from peers and recorded (a restart still out of reach of the control
// plane's leader knows them).
func (rt *runtime) loadLearned(ctx context.Context, cfg Config) error {
	if rt.control == nil {
		return nil
	}
	rt.learned.mu.Lock()
	defer rt.learned.mu.Unlock()
	if rt.learned.loaded {
		return nil
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	es, err := postgres.LearnedEpochs(lctx, cfg.Database)
	if err != nil {
		return err
	}
	rt.learned.epochs = append(es, rt.learned.epochs...)
	rt.learned.loaded = true
	return nil
}

func (rt *runtime) learnedSoFar() []regions.Epoch {
	rt.learned.mu.Lock()
	defer rt.learned.mu.Unlock()
	return slices.Clone(rt.learned.epochs)
}

// learnEpochs takes, from a peer's offer, the epochs after those the
// running data plane knows (with any learned since it started).
func (rt *runtime) learnEpochs(running regions.Cluster, from conflict.RegionID, offered []regions.Epoch) {
	rt.learned.mu.Lock()
	defer rt.learned.mu.Unlock()
	c := running
	c.Changes = withLearned(c.Changes, rt.learned.epochs)
	es, err := c.Learn(offered)
	if err != nil {
		rt.log.Error("a peer's policy changes cannot be taken here; transactions it ships under them wait for the control plane", "peer", string(from), "err", err)
		return
	}
	for _, e := range es {
		rt.learned.epochs = append(rt.learned.epochs, e)
		rt.log.Warn("learned a policy change from a peer before the control plane brought it (its leader is out of reach?): the data plane restarts with it",
			"epoch", e.Number, "peer", string(from))
	}
}

// withLearned appends to changes (the control plane's) the learned epochs
// that follow them, in order: none the control plane holds already.
func withLearned(changes, learned []regions.Epoch) []regions.Epoch {
	out := slices.Clone(changes)
	known := regions.Cluster{Changes: out}.KnownEpoch()
	for _, e := range learned {
		if e.Number == known+1 {
			out = append(out, e)
			known++
		}
	}
	return out
}

// learnedIn are the epochs of changes taken from a peer (the control
// plane's each carry the log index that announced them).
func learnedIn(changes []regions.Epoch) []regions.Epoch {
	var out []regions.Epoch
	for _, e := range changes {
		if e.Index == 0 {
			out = append(out, e)
		}
	}
	return out
}
