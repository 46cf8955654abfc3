package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/regions/control"
	"github.com/polyregion/polyregion/replicator/link"
	"github.com/polyregion/polyregion/replicator/obs"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// ControlConfig enables the control plane (see regions/control): the
// regions agree through it on who the members are, and a removed region's
// links are refused.
type ControlConfig struct {
	// Dir keeps the control plane's log and snapshots; it must survive
	// restarts (losing it makes the region a stranger to the cluster).
	Dir string
	// HeartbeatTimeout and ElectionTimeout tune raft (0: 1s each).
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
	// ReportInterval is how often the region reports its positions (0:
	// 10s).
	ReportInterval time.Duration
	// AdminToken, when set, is what a change asked of the operations
	// server (cluster init, region add and remove) must present; without
	// it only a change asked from the machine itself (loopback) is taken.
	AdminToken string
}

// openControl opens the region's control-plane node (nil when not
// configured). Raft traffic and forwarded commands go over the links to
// the peers of cfg.Peers, with their URLs, TLS and tokens.
func openControl(cfg Config, currentPeers func() []Peer, progress func(context.Context) (regions.Progress, error)) (*control.Node, error) {
	if cfg.Control == nil {
		return nil, nil
	}
	clientCfg := func(id conflict.RegionID) (link.ClientConfig, error) {
		var p Peer
		ok := false
		for _, c := range currentPeers() {
			if c.ID == id {
				p, ok = c, true
			}
		}
		if !ok {
			return link.ClientConfig{}, fmt.Errorf("region %s is a member of the control plane but not among this region's peers: add it to peers: (url, token) here", id)
		}
		tlsCfg, err := link.ClientTLS(p.TLS)
		if err != nil {
			return link.ClientConfig{}, fmt.Errorf("peer %s: %w", id, err)
		}
		return link.ClientConfig{Region: cfg.Region, Peer: id, URL: p.URL, Token: p.Token, TLS: tlsCfg, Cluster: cfg.Cluster}, nil
	}
	return control.Open(control.Config{
		Region: cfg.Region, Dir: cfg.Control.Dir, Logger: cfg.Logger,
		HeartbeatTimeout: cfg.Control.HeartbeatTimeout, ElectionTimeout: cfg.Control.ElectionTimeout,
		ReportInterval: cfg.Control.ReportInterval,
		Dial: func(ctx context.Context, id conflict.RegionID) (net.Conn, error) {
			cc, err := clientCfg(id)
			if err != nil {
				return nil, err
			}
			return link.DialControl(ctx, cc)
		},
		Forward: func(ctx context.Context, id conflict.RegionID, body []byte) ([]byte, error) {
			cc, err := clientCfg(id)
			if err != nil {
				return nil, err
			}
			c, err := link.NewClient(cc)
			if err != nil {
				return nil, err
			}
			defer c.Close()
			return c.Forward(ctx, body)
		},
		Progress: progress,
	})
}

// readProgress reads the region's positions as the cluster may rely on
// them: the newest transaction it shipped, once its reader has versioned
// every local write committed before the call (a region's removal waits
// for that count), how far it durably took in every other region (parked
// changes not counted: they are retried only while their source is a
// member). Without a running reader it reports nothing.
func (rt *runtime) readProgress(ctx context.Context, cfg Config) (regions.Progress, error) {
	reader := rt.reader.Load()
	if reader == nil {
		return regions.Progress{}, errors.New("the data plane is not running")
	}
	conn, err := postgres.Connect(ctx, cfg.Database)
	if err != nil {
		return regions.Progress{}, err
	}
	defer conn.Close(context.Background())
	applied, err := postgres.SettledPositions(ctx, conn)
	if err != nil {
		return regions.Progress{}, err
	}
	// Appliers commit asynchronously (durable.go): report durable positions.
	if err := postgres.FlushWAL(ctx, conn); err != nil {
		return regions.Progress{}, err
	}
	lsn, err := postgres.EmitBarrier(ctx, conn)
	if err != nil {
		return regions.Progress{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = reader.WaitVersioned(wctx, lsn)
	cancel()
	if err != nil {
		return regions.Progress{}, fmt.Errorf("reader: %w", err)
	}
	shipped, err := postgres.VersionedSeq(ctx, conn, string(cfg.Region))
	if err != nil {
		return regions.Progress{}, err
	}
	p := regions.Progress{Shipped: uint64(max(shipped, 0)), Applied: map[conflict.RegionID]uint64{}, Takes: regions.Takes}
	for r, seq := range applied {
		p.Applied[r] = uint64(max(seq, 0))
	}
	return p, nil
}

// controlView is the control plane as the monitor shows it.
func controlView(n *control.Node, self conflict.RegionID) *obs.ControlView {
	st := n.Status()
	v := &obs.ControlView{Role: st.Role, Leader: string(st.Leader), Term: st.Term, CommitIndex: st.CommitIndex, AppliedIndex: st.AppliedIndex,
		LastContactSeconds: st.LastContactSeconds, Quorum: st.Quorum, Voters: st.Voters, Nonvoters: st.Nonvoters,
		Initialised: st.Epoch.Number > 0, Epoch: st.Epoch.Number, EpochPending: st.Epoch.Pending(), EpochWaits: st.EpochWaits}
	if st.Sequences != nil {
		v.Sequences = st.Sequences.String()
	}
	for _, m := range st.Members {
		v.Members = append(v.Members, obs.MemberView{ID: string(m.ID), URL: m.URL, State: string(m.State), Witness: m.Witness, From: string(m.From), Lost: m.Lost,
			Takes: st.Takes[m.ID]})
		if m.ID == self {
			v.Self = string(m.State)
		}
	}
	return v
}

// awaitMembership holds a region that is to join until the cluster has
// added it (region add), and checks that it loads from the region the
// cluster named. A region the cluster removed does not start.
func awaitMembership(ctx context.Context, cfg Config, n *control.Node, mon *obs.Monitor) error {
	asked := false
	for {
		m := n.Membership()
		mem := m.Members[cfg.Region]
		switch {
		case mem != nil && mem.State == regions.Removed:
			return postgres.Problems{fmt.Sprintf("region %s was removed from the cluster (a removed region does not come back under the same id: add it under a new one)", cfg.Region)}
		case mem != nil && mem.State == regions.Joining && cfg.JoinFrom != "" && mem.From != cfg.JoinFrom:
			return postgres.Problems{fmt.Sprintf("the cluster added region %s to load from %s, but --join names %s", cfg.Region, mem.From, cfg.JoinFrom)}
		case mem != nil:
			return nil
		}
		if !asked {
			asked = true
			mon.Joining(fmt.Sprintf("waiting to be added to the cluster: run `polyregion region add %s --url URL --from %s` in any region", cfg.Region, cfg.JoinFrom))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// activateWhenJoined marks this region active in the control plane once it
// joined (or was re-seeded) and caught up (a joined region votes from
// then on). It returns at once when the region is neither joining nor
// reseeding.
func activateWhenJoined(ctx context.Context, n *control.Node, region conflict.RegionID, log interface {
	Info(string, ...any)
	Warn(string, ...any)
}) {
	if s := n.Membership().State(region); s != regions.Joining && s != regions.Reseeding {
		return
	}
	if err := n.Activate(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Warn("control plane: this region could not be marked active", "err", err)
		return
	}
	log.Info("control plane: this region is active (it caught up) and votes")
}

// removed reports whether the cluster removed region r (never, without a
// control plane).
func (rt *runtime) removed(r conflict.RegionID) bool {
	return rt.control != nil && rt.control.Removed(r)
}
