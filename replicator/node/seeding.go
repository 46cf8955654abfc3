package node

// Seeding a table the cluster added while the data plane runs. Every region
// seeds its rows of the table at the same epoch (postgres.SeedTable: chunks
// of rows written into the change stream, shipped as the region's
// inserts). Seeded before the data plane started, that held every other
// table's replication, both ways, for as long as the seed took (3.8 s a
// million rows here; an hour for a billion, in every region at once).
//
// So the seed runs alongside: peers' changes to the table are parked (it is
// a waiting table, seedNow) so that no applied row is read by the seed as
// this region's own, and the reader ships the table's writes and seed
// rows as they come (it learns where the seed began from its first
// message; see postgres/reader_seeds.go). Once the seed ends the data plane
// restarts; the next run replicates the table and applies its parked
// changes. A seed cut short (a stop, a kill, writers holding the table
// past the seed's lock budget) goes on from the first key in the next run,
// keeping where it began; one that fails is tried again after a backoff.

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// seedWhileRunning seeds the tables (table -> the epoch that added it)
// until ctx ends, and reports whether every seed finished. /health shows
// each seed's progress among waiting, the run's waiting tables.
func (rt *runtime) seedWhileRunning(ctx context.Context, cfg Config, seeds map[string]uint64, waiting tablesWaiting) bool {
	shown := maps.Clone(waiting)
	report := func(t string, st postgres.SeedStats, done bool) {
		why := shown[t]
		why.reason = seedProgress(st, done)
		shown[t] = why
		rt.mon.TablesWaiting(shown.healthReasons())
		rt.mon.Seeded(st.Rows)
	}
	conn, err := postgres.Connect(ctx, cfg.Database)
	if err != nil {
		if ctx.Err() == nil {
			rt.log.Error("cannot seed the tables the cluster added: no connection (tried again when the data plane restarts)", "err", err)
		}
		return false
	}
	defer conn.Close(context.Background())
	for _, t := range slices.Sorted(maps.Keys(seeds)) {
		began := time.Now()
		rt.log.Info("seeding a table added by the cluster while the other tables replicate", "table", t, "epoch", seeds[t])
		st, err := postgres.SeedTable(ctx, conn, string(cfg.Region), cfg.tableToSeed(t, seeds[t]), func(st postgres.SeedStats) { report(t, st, false) })
		if err != nil {
			if ctx.Err() == nil {
				rt.log.Error("the seed of a table the cluster added did not finish (it goes on when the data plane restarts)", "table", t, "rows", st.Rows, "err", err)
			}
			return false
		}
		report(t, st, true)
		rt.log.Info("replicating a table added by the cluster: its rows here are shipped as this region's (the data plane restarts to apply peers' changes to it)", "table", t, "epoch", seeds[t], "rows", st.Rows,
			"chunks", st.Chunks, "resumed", st.Resumed, "took_ms", time.Since(began).Milliseconds(), "writes_held_longest_ms", st.LongestHold.Milliseconds())
	}
	return true
}

// seedProgress is the /health reason of a table seeded while the data
// plane runs, after st (done: the seed ended).
func seedProgress(st postgres.SeedStats, done bool) string {
	switch {
	case done:
		return fmt.Sprintf("seeded (%d rows into this region's change stream); replicated once the data plane restarts", st.Rows)
	case st.Chunks == 0 && st.Resumed:
		return fmt.Sprintf("its rows here are being seeded into this region's change stream, again from the first key: an earlier run had seeded %d rows when it stopped", st.Earlier)
	case st.Chunks == 0:
		return "its rows here are being seeded into this region's change stream"
	}
	return fmt.Sprintf("its rows here are being seeded into this region's change stream: %d rows so far", st.Rows)
}

// nextSeedFailures is the count of runs in a row whose seed failed, after
// a run that ran seeds (or not) and failed one (or not).
func nextSeedFailures(before int, ran, failed bool) int {
	switch {
	case failed:
		return before + 1
	case ran:
		return 0
	}
	return before
}

// snapshotUnlessWaiting serves snapshots with serve, except while a table
// waits here (waiting, this run's): a table being seeded holds rows the
// seed has not versioned nor shipped yet, one whose seed has not begun
// holds only unversioned rows, and peers' changes to either are parked
// here. The joining region is refused (its load is cut and tried again)
// until a run replicates every table.
func snapshotUnlessWaiting(serve func(context.Context, conflict.RegionID, io.Writer) error, waiting tablesWaiting) func(context.Context, conflict.RegionID, io.Writer) error {
	if len(waiting) == 0 {
		return serve
	}
	var seeding, other []string
	for _, t := range slices.Sorted(maps.Keys(waiting)) {
		if waiting[t].seedNow {
			seeding = append(seeding, t)
		} else {
			other = append(other, t+" ("+waiting[t].reason+")")
		}
	}
	var why []string
	if len(seeding) > 0 {
		why = append(why, "this region is seeding "+strings.Join(seeding, ", ")+", added by the cluster")
	}
	if len(other) > 0 {
		why = append(why, "this region does not replicate "+strings.Join(other, ", ")+" yet")
	}
	err := fmt.Errorf("%s: a snapshot is served once every table replicates here", strings.Join(why, "; "))
	return func(context.Context, conflict.RegionID, io.Writer) error { return err }
}
