package node

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/polyregion/polyregion/replicator/obs"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// DefaultConflictRetention is how long the command keeps conflict log
// records when its configuration says nothing (conflict_log.retention).
const DefaultConflictRetention = 30 * 24 * time.Hour

// pruneEvery is how often records past the retention are deleted: a 24th
// of the retention (so a record outlives it by at most that), between a
// second and an hour. Under 0 (keep them all) it is how often a reloaded
// retention is looked for: every second.
func pruneEvery(retention time.Duration) time.Duration {
	return min(max(retention/24, time.Second), time.Hour)
}

// pruneConflicts deletes this region's conflict log records older than the
// retention in force (rt.conflictRetention; 0 keeps them all), at start
// and then every pruneEvery, until ctx ends. A failure is logged and
// counted and tried again next round.
func (rt *runtime) pruneConflicts(ctx context.Context, pool *pgxpool.Pool) {
	for {
		keep := rt.conflictRetention()
		if keep > 0 {
			n, err := postgres.PruneConflictLog(ctx, pool, time.Now().Add(-keep))
			switch {
			case err != nil && ctx.Err() == nil:
				rt.mon.Metrics().Error(obs.ErrConflictLog)
				rt.log.Warn("conflict log: records past the retention could not be deleted; trying again", "retention", keep, "err", err)
			case n > 0:
				rt.log.Info("conflict log: records past the retention deleted", "records", n, "retention", keep)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pruneEvery(keep)):
		}
	}
}
