package obs

import (
	"errors"
	"fmt"
	"time"
)

// HealthConfig tunes the health check. Zero values take the defaults.
type HealthConfig struct {
	// ProbeInterval is how often the local database is probed and the
	// status recomputed (default 1s).
	ProbeInterval time.Duration
	// ProbeTimeout bounds one probe; a probe that takes longer counts as the
	// database being unreachable (default 2s).
	ProbeTimeout time.Duration
	// Hold is the hysteresis: a new status is reported only once every probe
	// for this long has agreed on it (default 5s; 0 reports every change at
	// once).
	Hold time.Duration
	// MaxLag: a peer further behind than this makes the region degraded
	// (default 60s).
	MaxLag time.Duration
	// MaxIndexLag: a search index further behind than this makes the region
	// degraded (default 60s).
	MaxIndexLag time.Duration
	// StallAfter: local WAL written this long ago and not yet versioned by
	// the reader means the replicator is stalled, and the region reports
	// unavailable (default 2m).
	StallAfter time.Duration
}

// Defaults fills in zero values.
func (c *HealthConfig) Defaults() {
	if c.ProbeInterval <= 0 {
		c.ProbeInterval = time.Second
	}
	if c.ProbeTimeout <= 0 {
		c.ProbeTimeout = 2 * time.Second
	}
	if c.Hold == 0 {
		c.Hold = 5 * time.Second
	}
	if c.MaxLag <= 0 {
		c.MaxLag = time.Minute
	}
	if c.MaxIndexLag <= 0 {
		c.MaxIndexLag = time.Minute
	}
	if c.StallAfter <= 0 {
		c.StallAfter = 2 * time.Minute
	}
}

// Validate names the first setting out of range (after Defaults).
func (c HealthConfig) Validate() error {
	switch {
	case c.ProbeInterval < 100*time.Millisecond:
		return fmt.Errorf("health.probe_interval: %s is below 100ms", c.ProbeInterval)
	case c.ProbeTimeout < 100*time.Millisecond:
		return fmt.Errorf("health.probe_timeout: %s is below 100ms", c.ProbeTimeout)
	case c.StallAfter < 10*time.Second:
		return fmt.Errorf("health.stall_after: %s is below 10s (the reader passes a barrier every few seconds)", c.StallAfter)
	}
	return nil
}

// NoHold is a HealthConfig.Hold that reports every change at once (a zero
// Hold means the default).
const NoHold = -time.Nanosecond

// PeerView is what the health check knows of one peer at a probe.
type PeerView struct {
	Peer    string  `json:"peer"`
	LinkUp  bool    `json:"link_up"`
	For     float64 `json:"for_seconds"` // how long the link has been up or down
	LastErr string  `json:"last_error,omitempty"`
	// LagSeconds and LagTxns: see polyregion_peer_lag_seconds and
	// polyregion_peer_lag_transactions.
	LagSeconds float64 `json:"lag_seconds"`
	LagTxns    int64   `json:"lag_transactions"`
	// Backlog is this region's transactions the peer has not confirmed.
	Backlog int64 `json:"backlog"`
}

// IndexView is the search index's lag at a probe.
type IndexView struct {
	Known         bool    `json:"known"`
	BytesBehind   int64   `json:"bytes_behind"`
	SecondsBehind float64 `json:"seconds_behind"`
}

// Observation is everything one probe saw: the input of Evaluate.
type Observation struct {
	ProbeErr   error
	InRecovery bool
	ReadOnly   bool
	// Stalled is how long local WAL has waited for the reader.
	Stalled   time.Duration
	DataPlane error // why the data plane is not running (nil: running)
	// Joining, when set, says how far the region is in joining: it is not
	// to take traffic until it has loaded a snapshot and caught up.
	Joining string
	Peers   []PeerView
	Index   *IndexView // nil: no index configured
	// Control is the control plane at the probe (nil: none runs).
	Control *ControlView
	// SlotLost, when set, says the region's slot was lost (local writes
	// may never have been shipped) and what to do.
	SlotLost string
	// TablesWaiting says, one line each, which tables the cluster added
	// are not replicated here yet and why.
	TablesWaiting []string
}

// Evaluate computes the status an observation calls for and why. Only the
// local database and the replicator itself can make a region unavailable;
// peers and the index only degrade it.
func Evaluate(c HealthConfig, o Observation) (string, []string) {
	var down, degraded []string
	switch {
	case o.ProbeErr != nil:
		down = append(down, "local postgres unreachable: "+o.ProbeErr.Error())
	case o.InRecovery:
		down = append(down, "local postgres is in recovery (a standby): it takes no writes")
	case o.ReadOnly:
		down = append(down, "local postgres is read-only (default_transaction_read_only = on)")
	}
	if o.Joining != "" {
		down = append(down, "joining: "+o.Joining)
	}
	cdown, cdegraded := controlReasons(o.Control)
	down, degraded = append(down, cdown...), append(degraded, cdegraded...)
	if o.Stalled >= c.StallAfter {
		down = append(down, fmt.Sprintf("replicator stalled: local WAL written %s ago is not versioned yet (limit %s)", o.Stalled.Round(time.Second), c.StallAfter))
	}
	if o.DataPlane != nil {
		degraded = append(degraded, "replication restarting: "+o.DataPlane.Error())
	}
	if o.SlotLost != "" {
		degraded = append(degraded, o.SlotLost)
	}
	degraded = append(degraded, o.TablesWaiting...)
	for _, p := range o.Peers {
		if !p.LinkUp {
			r := fmt.Sprintf("peer %s: link down for %.0fs", p.Peer, p.For)
			if p.LastErr != "" {
				r += ": " + p.LastErr
			}
			degraded = append(degraded, r)
		}
		if p.LagSeconds > c.MaxLag.Seconds() {
			degraded = append(degraded, fmt.Sprintf("peer %s: lag %.1fs above %s (%d transactions behind)", p.Peer, p.LagSeconds, c.MaxLag, p.LagTxns))
		}
	}
	if o.Index != nil {
		switch {
		case !o.Index.Known:
			degraded = append(degraded, "index: lag unknown (the index feed does not report, or its search engine is unreachable)")
		case o.Index.SecondsBehind > c.MaxIndexLag.Seconds():
			degraded = append(degraded, fmt.Sprintf("index: %.1fs behind, above %s (%d bytes)", o.Index.SecondsBehind, c.MaxIndexLag, o.Index.BytesBehind))
		}
	}
	switch {
	case len(down) > 0:
		return StateUnavailable, append(down, degraded...)
	case len(degraded) > 0:
		return StateDegraded, degraded
	}
	return StateServing, nil
}

// hysteresis reports a status only once it has held: every observation for
// at least hold agreed on it. The first observation is reported at once.
type hysteresis struct {
	started  bool
	reported string
	reasons  []string
	since    time.Time // when the reported status was adopted

	candidate      string
	candidateSince time.Time
}

// observe feeds one evaluated status and returns whether the reported one
// changed.
func (h *hysteresis) observe(now time.Time, state string, reasons []string, hold time.Duration) bool {
	if !h.started || state == h.reported {
		changed := !h.started
		if changed {
			h.since = now
		}
		h.started, h.reported, h.reasons, h.candidate = true, state, reasons, ""
		return changed
	}
	if h.candidate != state {
		h.candidate, h.candidateSince = state, now
	}
	if now.Sub(h.candidateSince) < hold {
		return false
	}
	h.reported, h.reasons, h.since, h.candidate = state, reasons, now, ""
	return true
}

var errStarting = errors.New("no probe has completed yet")
