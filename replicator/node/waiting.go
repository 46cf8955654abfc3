package node

// Tables the cluster added that cannot be replicated here yet (missing,
// without a primary key or privileges, or being seeded, which the
// applications may hold for longer than the seed waits for its lock: it is
// then tried again after seedRetry). They do not hold the rest of
// the region's replication: the data plane runs with every other table,
// peers' changes of a waiting table are parked (they are applied, by the
// usual decision, once the table is seeded here), and /health says
// degraded, naming the table. Once the table can be prepared the data
// plane restarts and seeds it while it runs (seeding.go); the next run
// replicates it, and the parked changes are made due.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// waitingTable is why one added table is not replicated here yet.
type waitingTable struct {
	reason string
	// seedNow: the table is being seeded while the data plane runs (see
	// seeding.go), which restarts it once the seed ends.
	seedNow bool
}

// tablesWaiting maps each waiting table to why.
type tablesWaiting map[string]waitingTable

// seedRetryAfter is how long the data plane runs before it tries again a
// seed that failed (did not get its lock; the first time, see seedRetry).
const seedRetryAfter = 30 * time.Second

// seedRetryMax caps the wait between two tries of a seed.
const seedRetryMax = 10 * time.Minute

// waitingCheckEvery is how often the data plane looks whether a missing
// table can be prepared now.
const waitingCheckEvery = 2 * time.Second

// parkReasons are the reasons peers' changes of the waiting tables are
// parked with, by table.
func (w tablesWaiting) parkReasons(region string) map[string]string {
	if len(w) == 0 {
		return nil
	}
	out := make(map[string]string, len(w))
	for t, why := range w {
		out[t] = fmt.Sprintf("table %s was added by the cluster and is not replicated in region %s yet: %s", t, region, why.reason)
	}
	return out
}

// healthReasons are the lines /health shows for the waiting tables.
func (w tablesWaiting) healthReasons() []string {
	var out []string
	for _, t := range slices.Sorted(maps.Keys(w)) {
		out = append(out, fmt.Sprintf("table %s added by the cluster is not replicated here yet (peers' changes to it are parked; every other table replicates): %s", t, w[t].reason))
	}
	return out
}

// describe names each waiting table and why, for an error.
func (w tablesWaiting) describe() string {
	var out []string
	for _, t := range slices.Sorted(maps.Keys(w)) {
		out = append(out, t+": "+w[t].reason)
	}
	return strings.Join(out, "; ")
}

// seedRetry is how long a run of the data plane goes on before it tries
// again a seed that did not get its lock, after failures runs in a row
// that did not: seedRetryAfter doubling, at most seedRetryMax.
func seedRetry(failures int) time.Duration {
	return min(seedRetryAfter<<min(max(failures, 0), 5), seedRetryMax)
}

// ready reports whether a waiting table other than the ones seeding now
// passes the checks, so that the data plane may restart to seed it.
func (w tablesWaiting) ready(ctx context.Context, database string) (bool, error) {
	var check []string
	for t, why := range w {
		if why.seedNow {
			continue // the seed running with the data plane ends the run itself
		}
		check = append(check, t)
	}
	if len(check) == 0 {
		return false, nil
	}
	conn, err := postgres.Connect(ctx, database)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	for _, t := range check {
		err := postgres.CheckTables(ctx, conn, []string{t})
		var probs postgres.Problems
		switch {
		case err == nil:
			return true, nil
		case !errors.As(err, &probs):
			return false, err
		}
	}
	return false, nil
}

// watchWaiting ends the run of the data plane (cancels it, and reports so)
// once a waiting table can be prepared.
func (rt *runtime) watchWaiting(ctx context.Context, cfg Config, w tablesWaiting, restart func()) {
	if len(w) == 0 {
		return
	}
	t := time.NewTicker(waitingCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ok, err := w.ready(ctx, cfg.Database)
		if err != nil {
			if ctx.Err() == nil {
				rt.log.Debug("could not check the tables the cluster added", "err", err)
			}
			continue
		}
		if ok {
			rt.log.Info("a table the cluster added can be replicated here now: restarting the data plane to seed it", "tables", slices.Sorted(maps.Keys(w)))
			restart()
			return
		}
	}
}
