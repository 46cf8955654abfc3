package postgres

// Claims among the appliers of a process (see replicator.Claims): an apply
// transaction claims its rows before it begins, so the appliers of
// different sources wait for each other holding nothing, and never in the
// server, where each wait is bounded by the lock timeout meant for
// applications.

import (
	"context"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

// claimRows claims the rows txns change, waiting for the appliers of
// other sources that hold any of them, and returns the release to call
// once the transaction has ended. Updates of counter-only rows that take
// their increments in place are not claimed, unless every row is read
// (a retry): they are not read, and are locked only while the batch is
// written, briefly, as the applications lock them. They are the hot
// counters every region writes, and claiming them would put the appliers
// of every source in one line.
func (a *Applier) claimRows(ctx context.Context, txns []*replicator.Txn) (func(), error) {
	if a.cfg.Claims == nil {
		return func() {}, nil
	}
	n := 0
	for _, t := range txns {
		n += len(t.Changes)
	}
	ids := make([]uint64, 0, n)
	folds := map[string]bool{}
	for _, t := range txns {
		for i := range t.Changes {
			c := &t.Changes[i]
			sh := t.Shapes[c.T]
			if c.Op == conflict.OpUpdate && !a.readAll {
				f, ok := folds[sh.Table]
				if !ok {
					f = a.countersOnly(sh)
					folds[sh.Table] = f
				}
				if f {
					continue
				}
			}
			ids = append(ids, replicator.ClaimID(sh.Table, c.Key))
		}
	}
	started := time.Now()
	release, waited, err := a.cfg.Claims.Claim(ctx, ids)
	if err != nil {
		return nil, err
	}
	if waited && a.cfg.OnClaimWait != nil {
		a.cfg.OnClaimWait(time.Since(started))
	}
	return release, nil
}
