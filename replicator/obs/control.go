package obs

import (
	"fmt"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/polyregion/polyregion/conflict"
)

// ControlView is the control plane as this region sees it, at a probe.
type ControlView struct {
	// Role is leader, follower, candidate or shutdown.
	Role   string `json:"role"`
	Leader string `json:"leader,omitempty"`
	Term   uint64 `json:"term"`
	// CommitIndex and AppliedIndex of the control plane's log.
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	// LastContactSeconds: since the leader was last heard from (0 on the
	// leader, -1 never).
	LastContactSeconds float64 `json:"last_contact_seconds"`
	// Quorum: a leader is reachable, so configuration changes can be made.
	Quorum    bool     `json:"quorum"`
	Voters    []string `json:"voters"`
	Nonvoters []string `json:"nonvoters,omitempty"`
	// Initialised: the cluster was founded (cluster init) and this region
	// applied it.
	Initialised bool   `json:"initialised"`
	Epoch       uint64 `json:"epoch"`
	// EpochPending: the latest epoch (a policy change) was announced and
	// is not in effect yet; EpochWaits says what it waits for.
	EpochPending bool         `json:"epoch_pending,omitempty"`
	EpochWaits   []string     `json:"epoch_waits,omitempty"`
	Members      []MemberView `json:"members"`
	// Self is this region's membership state ("" when not a member).
	Self string `json:"self"`
	// Sequences is the members' sequence offsets ("stride=16;eu=0,us=1").
	Sequences string `json:"sequences,omitempty"`
}

// MemberView is one member as status shows it.
type MemberView struct {
	ID      string `json:"id"`
	URL     string `json:"url"`
	State   string `json:"state"`
	Witness bool   `json:"witness,omitempty"`
	From    string `json:"from,omitempty"`
	// Lost: transactions of a region removed by force that no surviving
	// region had reported applying.
	Lost uint64 `json:"lost,omitempty"`
	// Takes: what the region's release takes of the changes made at an
	// epoch, as it last reported (regions.Takes; 0: not reported).
	Takes int `json:"takes,omitempty"`
}

// controlReasons is what the control plane adds to the health evaluation:
// a region the cluster removed is down (its peers refuse its links, so
// writes taken there would go nowhere); no quorum only degrades (the data
// plane never waits for the control plane).
func controlReasons(c *ControlView) (down, degraded []string) {
	if c == nil || !c.Initialised {
		return nil, nil // no cluster (here) yet: nothing to have a quorum of
	}
	if c.Self == "removed" {
		down = append(down, "removed from the cluster: its peers refuse its links, its writes replicate nowhere")
		return down, nil
	}
	if !c.Quorum {
		r := "control plane: no quorum"
		if len(c.Voters) > 0 {
			r += fmt.Sprintf(" (reaches no leader among the voters %s)", strings.Join(c.Voters, ", "))
		}
		degraded = append(degraded, r+"; configuration changes are refused, replication goes on")
	}
	return down, degraded
}

// controlMetrics are the control plane's series (registered only in a
// region that runs one).
type controlMetrics struct {
	leader, quorum, term, commit, applied, contact prometheus.Gauge
	epoch, epochPending                            prometheus.Gauge
	members                                        *prometheus.GaugeVec
}

var memberStates = []string{"joining", "active", "reseeding", "leaving", "removed"}

func (m *Metrics) enableControl() {
	f := m.f
	c := &controlMetrics{
		leader:  f.gauge("polyregion_control_leader", "1 while this region leads the control plane, else 0."),
		quorum:  f.gauge("polyregion_control_quorum", "1 while this region reaches a control-plane leader (configuration changes can be made), else 0."),
		term:    f.gauge("polyregion_control_term", "The control plane's current raft term as this region knows it."),
		commit:  f.gauge("polyregion_control_commit_index", "The control plane's last committed log index as this region knows it."),
		applied: f.gauge("polyregion_control_applied_index", "The control plane's last log index this region applied."),
		contact: f.gauge("polyregion_control_last_contact_seconds", "Seconds since this region last heard from the control plane's leader (0 on the leader, -1 never)."),
		members: f.gaugeVec("polyregion_control_members", "Members of the cluster by state, as this region applied the membership.", []string{"state"}),
		epoch:   f.gauge("polyregion_control_epoch", "The latest configuration epoch (policy change) this region applied (1: the founding configuration)."),
		epochPending: f.gauge("polyregion_control_epoch_pending",
			"1 while the latest policy change is announced and not in effect yet (it waits for every region's fence and for every region to apply what came before it), else 0."),
	}
	for _, s := range memberStates {
		c.members.WithLabelValues(s)
	}
	c.contact.Set(-1)
	m.control = c
}

// observeControl sets the control plane's series from a view.
func (m *Metrics) observeControl(v *ControlView) {
	c := m.control
	if c == nil || v == nil {
		return
	}
	c.leader.Set(b2f(v.Role == "leader"))
	c.quorum.Set(b2f(v.Quorum))
	c.term.Set(float64(v.Term))
	c.commit.Set(float64(v.CommitIndex))
	c.applied.Set(float64(v.AppliedIndex))
	c.contact.Set(v.LastContactSeconds)
	c.epoch.Set(float64(v.Epoch))
	c.epochPending.Set(b2f(v.EpochPending))
	counts := map[string]int{}
	for _, mem := range v.Members {
		counts[mem.State]++
	}
	for _, s := range memberStates {
		c.members.WithLabelValues(s).Set(float64(counts[s]))
	}
}

// NewControlMetrics is the registry of a process that runs a control plane
// and no data plane (a witness): the Go runtime and process collectors and
// the control plane's series.
func NewControlMetrics(id conflict.RegionID) *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{Registry: reg, f: newFactory(reg, prometheus.Labels{"region": string(id)})}
	m.enableControl()
	return m
}

// ObserveControl sets the control plane's series from a view.
func (m *Metrics) ObserveControl(v *ControlView) { m.observeControl(v) }
