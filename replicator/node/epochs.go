package node

import (
	"context"
	"time"

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
		if !e.Pending() || e.Number != cfg.Cluster.KnownEpoch() {
			return // nothing to report, or the data plane restarts with another epoch
		}
		if _, ok := e.Fences[cfg.Region]; ok {
			return
		}
		if err := rt.sendFence(ctx, cfg, e.Number); err != nil && !warned && ctx.Err() == nil {
			rt.log.Warn("the fence of a policy change is not reported yet (retrying)", "epoch", e.Number, "err", err)
			warned = true
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
