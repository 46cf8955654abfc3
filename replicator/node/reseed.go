package node

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// A region the control plane asks to re-seed (region reseed ID --from
// SOURCE, from any region) carries it out itself, in steps that each
// survive a restart of its replicator:
//
//  1. drain: its data plane runs on until every other region confirmed all
//     the region shipped; then it stops and, with its slot free, checks
//     that no local write is left that its reader has not versioned. If one
//     is (applications still write), it runs again and repeats. /health
//     answers 503 (reseeding) from the start, so DNS sends traffic away.
//  2. empty: PrepareReseed deletes the replicated rows and positions and
//     records the reseed's log index (its member's Since), so the region is
//     emptied once per reseed, however often it restarts after.
//  3. load: the data plane starts as a joining region's does, loading
//     SOURCE's snapshot, and catches up; then the region is active again.

// reseedStep is what a run of the data plane does for this region's
// reseed.
type reseedStep int

const (
	reseedNone  reseedStep = iota // no reseed asked, or it is carried out
	reseedDrain                   // run until its transactions reached every peer
	reseedLoad                    // emptied: load the source's snapshot
)

// reseedPhase says where this region's reseed stands, given the membership
// and what its database records.
func reseedPhase(m regions.Membership, self conflict.RegionID, st postgres.JoinState) (reseedStep, regions.Member) {
	mem := m.Members[self]
	if mem == nil || mem.State != regions.Reseeding {
		return reseedNone, regions.Member{}
	}
	if st.ReseedIndex < mem.Since {
		return reseedDrain, *mem
	}
	return reseedLoad, *mem
}

// reseedCarriedOut reports whether the region's database holds the reseed
// the membership asks for (or none is asked): only then may a joined
// region that is reseeding be marked active.
func reseedCarriedOut(m regions.Membership, self conflict.RegionID, st postgres.JoinState) bool {
	step, _ := reseedPhase(m, self, st)
	return step != reseedDrain
}

// reseed prepares this run of the data plane for the region's reseed: it
// returns the configuration to run with (the source to load from, once the
// region is emptied) and whether the run drains (ends once every other
// region confirmed all it shipped). drained says the last run ended so:
// then the region is emptied here, if nothing is left to ship.
func (rt *runtime) reseed(ctx context.Context, dcfg Config, drained bool) (Config, bool, error) {
	if rt.reseedSince(dcfg.Region) == 0 {
		return dcfg, false, nil
	}
	// The schema as this release has it (the data plane prepares it too).
	if waiting, err := Prepare(ctx, dcfg); err != nil {
		return dcfg, false, err
	} else if len(waiting) > 0 {
		// A reseed loads every table the source replicates.
		return dcfg, false, &tablesPending{err: errors.New(waiting.describe())}
	}
	conn, err := postgres.Connect(ctx, dcfg.Database)
	if err != nil {
		return dcfg, false, err
	}
	defer conn.Close(context.Background())
	st, err := postgres.ReadJoinState(ctx, conn)
	if err != nil {
		return dcfg, false, err
	}
	step, mem := reseedPhase(rt.control.Membership(), dcfg.Region, st)
	if step == reseedNone {
		return dcfg, false, nil
	}
	if !slices.ContainsFunc(dcfg.Peers, func(p Peer) bool { return p.ID == mem.From }) {
		// Not emptied before it can load (the source needs its URL and token).
		msg := fmt.Sprintf("the cluster re-seeds region %s from %s, which is not among its peers (add its url and token under peers:, and reload)", dcfg.Region, mem.From)
		if step == reseedLoad {
			return dcfg, false, postgres.Problems{msg}
		}
		rt.mon.Joining(msg)
		rt.log.Warn("reseed: waiting for the source's peer entry", "problem", msg)
		return dcfg, false, nil
	}
	if step == reseedLoad {
		dcfg.JoinFrom = mem.From
		return dcfg, false, nil
	}
	if !drained {
		rt.mon.Joining(fmt.Sprintf("reseeding from %s: waiting for this region's transactions to reach every other region (stop writes to this region)", mem.From))
		rt.log.Info("reseed: the control plane asks to re-seed this region; its transactions reach every other region first", "from", string(mem.From), "index", mem.Since)
		return dcfg, true, nil
	}
	others := otherRegions(dcfg)
	var chk postgres.ReseedCheck
	for try := 0; ; try++ {
		chk, err = postgres.CheckReseed(ctx, conn, string(dcfg.Region), dcfg.TableNames(), others, true)
		if err != nil {
			return dcfg, false, err
		}
		// The slot may still be in use for a moment after the data plane
		// stopped.
		if chk.Ready() || len(chk.NotApplied) > 0 || chk.Unversioned > 0 || try == 10 {
			break
		}
		select {
		case <-ctx.Done():
			return dcfg, false, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	if !chk.Ready() {
		what := chk.Refusal(string(dcfg.Region))
		rt.mon.Joining(fmt.Sprintf("reseeding from %s: not emptied yet: %s", mem.From, what))
		rt.log.Warn("reseed: not emptied yet; the data plane runs on until its transactions reached every other region", "from", string(mem.From), "waiting_for", what)
		return dcfg, true, nil
	}
	deleted, err := postgres.PrepareReseed(ctx, postgres.ReseedPlan{ConnString: dcfg.Database, Region: string(dcfg.Region),
		Tables: dcfg.TableNames(), Peers: others, Shipped: chk.Shipped, ControlIndex: mem.Since, OwnSessions: true})
	if err != nil && deleted == nil {
		// Refused under its locks (a write came in meanwhile): drain again.
		rt.mon.Joining(fmt.Sprintf("reseeding from %s: not emptied yet: %v", mem.From, err))
		rt.log.Warn("reseed: not emptied yet; the data plane runs on", "from", string(mem.From), "err", err)
		return dcfg, true, nil
	}
	var rows []string
	for _, t := range slices.Sorted(maps.Keys(deleted)) {
		rows = append(rows, fmt.Sprintf("%s=%d", t, deleted[t]))
	}
	rt.log.Info("reseed: emptied (every transaction of this region had reached every other region); loading a snapshot", "from", string(mem.From), "shipped", chk.Shipped, "deleted", strings.Join(rows, ","))
	if err != nil {
		rt.log.Warn("reseed", "err", err) // the slot is recreated by the load
	}
	dcfg.JoinFrom = mem.From
	return dcfg, false, nil
}

// otherRegions are the regions whose confirmations a reseed waits for:
// every member that replicates but this one, followed here or not.
func otherRegions(dcfg Config) []string {
	var out []string
	for _, r := range dcfg.Cluster.Regions {
		if r != dcfg.Region {
			out = append(out, string(r))
		}
	}
	return out
}

// watchDrain ends a draining run of the data plane (restart) once every
// other region has confirmed all this region shipped, and keeps /health
// saying what the reseed waits for. It reports whether it ended the run.
func (rt *runtime) watchDrain(ctx context.Context, dcfg Config, restart context.CancelFunc) func() bool {
	done := make(chan bool, 1)
	go func() {
		ended := false
		defer func() { done <- ended }()
		began := time.Now()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			behind, shipped, err := rt.notConfirmed(ctx, dcfg)
			switch {
			case err != nil:
				rt.log.Debug("reseed: cannot read the confirmations", "err", err)
				continue
			case len(behind) > 0:
				rt.mon.Joining(fmt.Sprintf("reseeding: waiting for this region's %d transactions to reach every other region (%s; stop writes to this region)", shipped, strings.Join(behind, ", ")))
				continue
			case time.Since(began) < drainAtLeast:
				continue // the reader reads what was committed last
			}
			ended = true
			rt.log.Info("reseed: every other region confirmed all this region shipped; stopping the data plane to empty the region", "shipped", shipped)
			restart()
			return
		}
	}()
	return func() bool { return <-done }
}

// drainAtLeast is how long a draining data plane runs at least: its
// reader ships what was committed just before it started.
const drainAtLeast = 3 * time.Second

// notConfirmed names the other regions that have not confirmed all the
// region shipped.
func (rt *runtime) notConfirmed(ctx context.Context, dcfg Config) ([]string, int64, error) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := postgres.Connect(qctx, dcfg.Database)
	if err != nil {
		return nil, 0, err
	}
	defer conn.Close(context.Background())
	chk, err := postgres.Unconfirmed(qctx, conn, string(dcfg.Region), otherRegions(dcfg))
	if err != nil {
		return nil, 0, err
	}
	var behind []string
	for _, r := range otherRegions(dcfg) {
		if n := chk.NotApplied[r]; n > 0 {
			behind = append(behind, fmt.Sprintf("%s has not confirmed %d", r, n))
		}
	}
	return behind, chk.Shipped, nil
}

// reseedSince is the log index of the reseed the membership asks of this
// region (0 when none): a run of the data plane started before a reseed
// was asked ends, so the next one drains.
func (rt *runtime) reseedSince(self conflict.RegionID) uint64 {
	if rt.control == nil {
		return 0
	}
	if mem := rt.control.Membership().Members[self]; mem != nil && mem.State == regions.Reseeding {
		return mem.Since
	}
	return 0
}
