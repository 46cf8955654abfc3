package node

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
)

// With an initialised control plane the data plane's regions are the
// membership's, not the configuration's: every region that replicates
// (joining, active or leaving) is followed, waited for by outbox trimming
// and tombstone collection, and counted as a region; a region the
// configuration lists that is not a member is not, nor is a removed one.
// The configuration still gives each peer's URL, TLS and token (secrets
// never go through the control plane), and can change them on reload.
// When the membership or the peers change, the data plane stops gracefully
// (the work in flight is committed and acknowledged) and starts again with
// them; the process, its control plane and its link address stay up.

// currentPeers returns the configured peers (as last reloaded).
func (rt *runtime) currentPeers() []Peer {
	if p := rt.peers.Load(); p != nil {
		return *p
	}
	return nil
}

// currentWitnesses returns the configured witnesses (as last reloaded).
func (rt *runtime) currentWitnesses() []Peer {
	if w := rt.witnesses.Load(); w != nil {
		return *w
	}
	return nil
}

// controlPeers are everyone the control plane reaches: peers and
// witnesses.
func (rt *runtime) controlPeers() []Peer {
	return append(append([]Peer(nil), rt.currentPeers()...), rt.currentWitnesses()...)
}

// dataPlaneConfig is the configuration one run of the data plane uses.
func (rt *runtime) dataPlaneConfig(cfg Config) Config {
	cfg.Peers = append([]Peer(nil), rt.currentPeers()...)
	if rt.control == nil {
		return cfg
	}
	m := rt.control.Membership()
	if len(m.Epochs) == 0 {
		return cfg // not initialised (here yet): the configuration's regions
	}
	regs := []conflict.RegionID{}
	members := map[conflict.RegionID]bool{}
	for _, mem := range m.Sorted() {
		if mem.Witness || mem.State == regions.Removed {
			continue
		}
		regs = append(regs, mem.ID)
		members[mem.ID] = true
	}
	if !members[cfg.Region] {
		regs = append(regs, cfg.Region)
		slices.Sort(regs)
	}
	var peers []Peer
	for _, p := range cfg.Peers {
		if members[p.ID] && p.ID != cfg.Region {
			peers = append(peers, p)
		}
	}
	cfg.Peers = peers
	cfg.Cluster.Regions = regs
	cfg.Cluster.Agreed = true
	cfg.Cluster.Sequences = m.Sequences
	cfg.Cluster.Tables, cfg.Cluster.Changes = agreedPolicies(cfg.Cluster.Tables, m.Epochs)
	cfg.Cluster.Changes = withLearned(cfg.Cluster.Changes, rt.learnedSoFar())
	cfg.Cluster = cfg.Cluster.WithTableChanges()
	return cfg
}

// agreedPolicies are the founding tables with the founding epoch's
// policies where the control plane holds them (a cluster founded by a
// release that recorded none keeps the configuration's), and the policy
// changes after it. The configuration's tables and policies are not the
// agreed ones once the cluster holds them: a table the configuration adds
// is replicated once a change adds it (cluster configure; see
// regions/tables.go), and a change of policy goes through it too.
func agreedPolicies(tables []regions.Table, epochs []regions.Epoch) ([]regions.Table, []regions.Epoch) {
	if len(epochs) == 0 {
		return tables, nil
	}
	founding := epochs[0]
	out := make([]regions.Table, 0, len(tables))
	for _, t := range tables {
		if p, ok := founding.Policies[t.Name]; ok {
			t.Policy = p
		} else if founding.Policies != nil || (len(founding.Describe) > 0 && founding.Describe["table "+t.Name] == "") {
			continue // not a founding table (an earlier release recorded their description only)
		}
		out = append(out, t)
	}
	return out, slices.Clone(epochs[1:])
}

// notAgreed names the tables of the configuration that the data plane
// does not replicate (the cluster has not added them).
func notAgreed(configured []regions.Table, running regions.Cluster) []string {
	var out []string
	for _, t := range configured {
		if _, ok := running.Table(t.Name); !ok {
			out = append(out, t.Name)
		}
	}
	return out
}

// epochsShape is what of the policy changes a data plane runs with: each
// epoch and whether it is in effect.
func epochsShape(c regions.Cluster) string {
	var b strings.Builder
	for _, e := range c.Changes {
		fmt.Fprintf(&b, "%d:%v ", e.Number, e.Effective > 0)
	}
	return b.String()
}

// confirmMembers returns what a data plane running with running calls to
// confirm that the cluster added no member it does not follow (nil
// without a control plane). Before the cluster is initialised the data
// plane runs with the configuration's regions, which are the founders.
func (rt *runtime) confirmMembers(running []conflict.RegionID) func(context.Context) error {
	if rt.control == nil {
		return nil
	}
	return func(ctx context.Context) error {
		if len(rt.control.Membership().Epochs) == 0 {
			return nil
		}
		m, err := rt.control.Current(ctx)
		if err != nil {
			return err
		}
		if missing := m.Unfollowed(running); len(missing) > 0 {
			return fmt.Errorf("the cluster added %s, which this data plane does not follow yet (it restarts with them)", strings.Join(missing, ", "))
		}
		return nil
	}
}

// unconfiguredMembers names the members this region cannot follow: no
// peers: entry gives their URL and token.
func unconfiguredMembers(cfg Config) []string {
	have := map[conflict.RegionID]bool{cfg.Region: true}
	for _, p := range cfg.Peers {
		have[p.ID] = true
	}
	var out []string
	for _, r := range cfg.Cluster.Regions {
		if !have[r] {
			out = append(out, string(r))
		}
	}
	return out
}

// watchDataPlaneConfig ends the run of the data plane (cancels it, and
// reports so) once the configuration it should run with differs from
// running's, or the control plane asks to re-seed the region (a reseed
// other than the one at index reseed, which the run carries out).
func (rt *runtime) watchDataPlaneConfig(ctx context.Context, base, running Config, reseed uint64, restart context.CancelFunc) *atomic.Bool {
	var changed atomic.Bool
	if rt.control == nil && base.Reload == nil {
		return &changed
	}
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if rt.loading.Load() {
				continue // a load is one transaction: restart once it is in
			}
			if since := rt.reseedSince(base.Region); since != 0 && since != reseed {
				changed.Store(true)
				rt.log.Info("the control plane asks to re-seed this region: restarting the data plane to carry it out")
				restart()
				return
			}
			next := rt.dataPlaneConfig(base)
			if !reflect.DeepEqual(next.Peers, running.Peers) || !slices.Equal(next.Cluster.Regions, running.Cluster.Regions) ||
				next.Cluster.Agreed != running.Cluster.Agreed || !reflect.DeepEqual(next.Cluster.Sequences, running.Cluster.Sequences) {
				changed.Store(true)
				rt.log.Info("the membership or the peers changed: restarting the data plane with them",
					"regions", regionNames(next.Cluster.Regions), "peers", next.PeerNames())
				restart()
				return
			}
			if epochsShape(next.Cluster) != epochsShape(running.Cluster) {
				changed.Store(true)
				rt.log.Info("a policy change was announced or came into effect: restarting the data plane with it",
					"epoch", next.Cluster.KnownEpoch(), "in_effect", next.Cluster.InEffect())
				restart()
				return
			}
		}
	}()
	return &changed
}

func regionNames(rs []conflict.RegionID) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = string(r)
	}
	return out
}
