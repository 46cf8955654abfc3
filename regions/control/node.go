// Package control runs the regions' control plane on hashicorp/raft: every
// region's replicator is a voter (a witness can be the third voter of a
// two-region cluster), and together they agree on the membership (which
// regions there are and whether each is joining, active, leaving or
// removed), the numbered configuration epochs, and each region's reported
// positions (regions.Membership).
//
// Guarantees:
//   - Every region applies the same commands in the same order, so every
//     region's Membership passes through the same states.
//   - A change is applied only with a majority of the voters reachable;
//     without one it is refused with an error naming the voters, and
//     nothing changes. The data plane never waits for the control plane.
//   - Raft traffic runs over the regions' links: the same address, TLS and
//     per-peer tokens; a peer the cluster removed is refused there.
//   - A joining region receives the log without a vote until it has
//     caught up, so adding one never costs the cluster its majority.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
)

// Config configures one region's (or witness's) control-plane node.
type Config struct {
	Region conflict.RegionID
	// Dir holds the raft log and snapshots (it must survive restarts).
	Dir string
	// Dial opens an authenticated control connection to a peer's link.
	Dial func(ctx context.Context, peer conflict.RegionID) (net.Conn, error)
	// Forward sends a command (JSON) to a peer believed to lead and
	// returns its answer.
	Forward func(ctx context.Context, peer conflict.RegionID, body []byte) ([]byte, error)
	// Progress, when set, returns the region's positions; they are
	// reported to the cluster (at most every ReportInterval, when changed)
	// so that a region's removal can tell what it waits for.
	Progress       func(ctx context.Context) (regions.Progress, error)
	ReportInterval time.Duration
	// HeartbeatTimeout and ElectionTimeout tune raft (default 1s each,
	// suited to regions up to a few hundred milliseconds apart).
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
	Logger           *slog.Logger
}

// ErrNoQuorum is returned when a change cannot be applied because this
// region reaches no leader (no majority of the voters).
var ErrNoQuorum = errors.New("the control plane has no majority this region can reach")

// Node is one member's control-plane node.
type Node struct {
	cfg       Config
	log       *slog.Logger
	fsm       *fsm
	stream    *stream
	store     *raftboltdb.BoltStore
	snaps     raft.SnapshotStore
	transport *raft.NetworkTransport
	raft      *raft.Raft

	mu         sync.Mutex
	lastReport time.Time
	// snapped is the membership (without positions) of the last snapshot.
	snapped atomic.Pointer[string]
	// initMu is held by Init throughout, so that Run does not apply the
	// same pending init meanwhile.
	initMu sync.Mutex
}

// Open starts the node from its directory (a new one when empty). It takes
// part in elections at once; a node with no state waits to be contacted by
// a cluster's leader (or for Init).
func Open(cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ReportInterval <= 0 {
		cfg.ReportInterval = 10 * time.Second
	}
	if cfg.Dir == "" {
		return nil, errors.New("control.dir: a directory for the control plane's log is required")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("control.dir: %w", err)
	}
	n := &Node{cfg: cfg, log: cfg.Logger, fsm: newFSM(), stream: newStream(cfg.Region, cfg.Dial)}
	hl := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: slogWriter{cfg.Logger}, DisableTime: true})
	var err error
	if n.store, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.Dir, "raft.db")}); err != nil {
		return nil, fmt.Errorf("control.dir: raft log: %w", err)
	}
	if n.snaps, err = raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, hl); err != nil {
		n.store.Close()
		return nil, fmt.Errorf("control.dir: snapshots: %w", err)
	}
	n.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: n.stream, MaxPool: 3, Timeout: 10 * time.Second, Logger: hl})
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.Region)
	rc.Logger = hl
	if cfg.HeartbeatTimeout > 0 {
		rc.HeartbeatTimeout = cfg.HeartbeatTimeout
		rc.LeaderLeaseTimeout = cfg.HeartbeatTimeout / 2
	}
	if cfg.ElectionTimeout > 0 {
		rc.ElectionTimeout = cfg.ElectionTimeout
	}
	if n.raft, err = raft.NewRaft(rc, n.fsm, n.store, n.store, n.snaps, n.transport); err != nil {
		n.transport.Close()
		n.store.Close()
		return nil, fmt.Errorf("control plane: %w", err)
	}
	restored := n.shape() // as restored from the last snapshot
	n.snapped.Store(&restored)
	return n, nil
}

// Close stops the node (its state stays in Dir).
func (n *Node) Close() error {
	err := n.raft.Shutdown().Error()
	n.transport.Close()
	if cerr := n.store.Close(); err == nil {
		err = cerr
	}
	return err
}

// Conn implements link.Control: raft takes the peer's connection, bound to
// the peer the link authenticated (see bound.go).
func (n *Node) Conn(peer conflict.RegionID, conn net.Conn) { n.stream.take(bind(conn, peer, n.log)) }

// Removed implements link.Control.
func (n *Node) Removed(peer conflict.RegionID) bool { return n.fsm.state(peer) == regions.Removed }

// Membership returns a copy of the agreed membership as this region has
// applied it.
func (n *Node) Membership() regions.Membership { return n.fsm.membership() }

// answer is a forwarded command's reply.
type answer struct {
	Result  regions.Result `json:"result"`
	Error   string         `json:"error,omitempty"`
	Refused bool           `json:"refused,omitempty"`
	Invalid bool           `json:"invalid,omitempty"`
	// Index is the command's log index (0 when refused).
	Index uint64 `json:"index,omitempty"`
}

// Forward implements link.Control: a peer forwarded a command to this
// region, which applies it if it leads.
func (n *Node) Forward(ctx context.Context, peer conflict.RegionID, body []byte) ([]byte, error) {
	if n.raft.State() != raft.Leader {
		return nil, fmt.Errorf("region %s does not lead the control plane", n.cfg.Region)
	}
	var c regions.Command
	if err := json.Unmarshal(body, &c); err != nil {
		return nil, fmt.Errorf("forwarded command from %s does not decode: %w", peer, err)
	}
	if (c.Op == regions.OpReport || c.Op == regions.OpActivate || c.Op == regions.OpFence) && c.Region != peer {
		// A region speaks for itself only: its positions, its having
		// caught up, its fence for a policy change.
		return json.Marshal(answer{Error: fmt.Sprintf("%s: %s may not %s region %s", regions.ErrRefused, peer, c.Op, c.Region), Refused: true})
	}
	res, index, err := n.applyLocal(ctx, body)
	if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
		return nil, err
	}
	a := answer{Result: res, Index: index}
	if err != nil {
		a.Error, a.Refused, a.Invalid = err.Error(), errors.Is(err, regions.ErrRefused), errors.Is(err, regions.ErrInvalid)
	}
	return json.Marshal(a)
}

// applyLocal applies an encoded command on the leader.
func (n *Node) applyLocal(ctx context.Context, body []byte) (regions.Result, uint64, error) {
	timeout := 10 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	f := n.raft.Apply(body, timeout)
	if err := f.Error(); err != nil {
		return regions.Result{}, 0, err
	}
	a, _ := f.Response().(applied)
	return a.Result, f.Index(), a.Err
}

// caughtUpTo waits (until ctx ends) for this region's membership to hold
// the command at index, so that what it shows after a change includes it.
// (Raft's own applied index moves when a command is handed to the state
// machine, before it is applied.)
func (n *Node) caughtUpTo(ctx context.Context, index uint64) {
	for n.fsm.applied() < index {
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Apply applies a command through the leader (this region or the one it
// follows), waiting until ctx ends for one to be reachable. A refusal
// wraps regions.ErrRefused; no leader in time, ErrNoQuorum.
func (n *Node) Apply(ctx context.Context, c regions.Command) (regions.Result, error) {
	res, _, err := n.applyAt(ctx, c)
	return res, err
}

// applyAt is Apply, also returning the command's log index (0 when it was
// not applied). Once it returns, this region's membership holds the
// command, unless ctx ended first.
func (n *Node) applyAt(ctx context.Context, c regions.Command) (regions.Result, uint64, error) {
	body, err := json.Marshal(c)
	if err != nil {
		return regions.Result{}, 0, err
	}
	var last error
	for {
		switch _, leader := n.raft.LeaderWithID(); {
		case n.raft.State() == raft.Leader:
			res, index, err := n.applyLocal(ctx, body)
			if !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipLost) && !errors.Is(err, raft.ErrEnqueueTimeout) {
				return res, index, err
			}
			last = err
		case leader != "" && leader != raft.ServerID(n.cfg.Region):
			out, err := n.cfg.Forward(ctx, conflict.RegionID(leader), body)
			if err == nil {
				var a answer
				if err := json.Unmarshal(out, &a); err != nil {
					return regions.Result{}, 0, fmt.Errorf("control plane leader %s: answer: %w", leader, err)
				}
				n.caughtUpTo(ctx, a.Index)
				switch {
				case a.Refused:
					return a.Result, a.Index, fmt.Errorf("%w: %s", regions.ErrRefused, strings.TrimPrefix(a.Error, regions.ErrRefused.Error()+": "))
				case a.Invalid:
					return a.Result, a.Index, fmt.Errorf("%w: %s", regions.ErrInvalid, strings.TrimPrefix(a.Error, regions.ErrInvalid.Error()+": "))
				case a.Error != "":
					return a.Result, a.Index, errors.New(a.Error)
				}
				return a.Result, a.Index, nil
			}
			last = err
		}
		select {
		case <-ctx.Done():
			if n.raft.State() == raft.Shutdown {
				return regions.Result{}, 0, fmt.Errorf("region %s's control plane is shut down (it was removed from the cluster, or is stopping)", n.cfg.Region)
			}
			if errors.Is(ctx.Err(), context.Canceled) {
				return regions.Result{}, 0, ctx.Err()
			}
			st := n.Status()
			msg := fmt.Sprintf("%s: region %s reaches no leader among the voters %s", ErrNoQuorum.Error(), n.cfg.Region, strings.Join(st.Voters, ", "))
			if len(st.Voters) == 0 && len(st.Nonvoters) == 0 {
				// No configuration at all: not a lost majority.
				msg = fmt.Sprintf("%s: region %s has no control-plane state yet: run `polyregion cluster init` on the region that holds the data first, or add this region from a member (`polyregion region add`)", ErrNoQuorum.Error(), n.cfg.Region)
			}
			if last != nil {
				msg += " (last attempt: " + last.Error() + ")"
			}
			return regions.Result{}, 0, fmt.Errorf("%w%s", ErrNoQuorum, strings.TrimPrefix(msg, ErrNoQuorum.Error()))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Current returns the membership once this region holds every change the
// cluster committed before the call: it writes a no-op through the leader
// and waits until it has applied it. A region that restarted, or lags,
// may hold an older membership than the cluster's; what it decides from
// the one Current returns (trimming its outbox, collecting tombstones for
// the members it names) is safe against any member added before the call.
// Without a leader before ctx ends it fails (ErrNoQuorum).
func (n *Node) Current(ctx context.Context) (regions.Membership, error) {
	_, index, err := n.applyAt(ctx, regions.Command{Op: regions.OpNoop})
	if err != nil {
		return regions.Membership{}, err
	}
	if n.fsm.applied() < index {
		return regions.Membership{}, fmt.Errorf("region %s has not applied the control plane's log up to %d yet: %w", n.cfg.Region, index, ctx.Err())
	}
	return n.fsm.membership(), nil
}

// pendingInit is the file holding an init command not yet applied.
func (n *Node) pendingInit() string { return filepath.Join(n.cfg.Dir, "init.json") }

// Init founds the cluster: founding members (every region of the
// configuration it starts from, each a voter) and epoch 1. It bootstraps
// raft when this node has no state yet; the init command is applied as
// soon as a majority of the founders is up (by Run, if not before ctx
// ends: the error says so).
func (n *Node) Init(ctx context.Context, c regions.Command) (regions.Result, error) {
	c.Op = regions.OpInit
	n.initMu.Lock()
	defer n.initMu.Unlock()
	if m := n.fsm.membership(); len(m.Epochs) > 0 {
		return regions.Result{}, fmt.Errorf("%w: the cluster is already initialised (epoch %d, members %s)", regions.ErrRefused, m.Epoch().Number, m.Describe())
	}
	has, err := raft.HasExistingState(n.store, n.store, n.snaps)
	if err != nil {
		return regions.Result{}, err
	}
	_, statErr := os.Stat(n.pendingInit())
	switch {
	case !has:
		b, _ := json.Marshal(c)
		if err := os.WriteFile(n.pendingInit(), b, 0o600); err != nil {
			return regions.Result{}, fmt.Errorf("control.dir: %w", err)
		}
		var servers []raft.Server
		for _, m := range c.Members {
			servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.ID), Address: raft.ServerAddress(m.ID)})
		}
		if err := n.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
			_ = os.Remove(n.pendingInit())
			return regions.Result{}, fmt.Errorf("control plane bootstrap: %w", err)
		}
		n.log.Info("control plane: bootstrapped", "voters", len(servers))
	case statErr != nil:
		return regions.Result{}, fmt.Errorf("%w: region %s already belongs to a control plane (its log in control.dir is not empty); cluster init runs once, in the first region", regions.ErrRefused, n.cfg.Region)
	}
	res, err := n.Apply(ctx, c)
	if err == nil || errors.Is(err, regions.ErrRefused) {
		_ = os.Remove(n.pendingInit())
	}
	if errors.Is(err, ErrNoQuorum) {
		return res, fmt.Errorf("bootstrapped, but %w; the cluster is initialised as soon as a majority of the founding regions run with the control plane enabled", err)
	}
	return res, err
}

// Activate marks this (joining) region active: it has caught up and
// votes from then on. It retries until it succeeds or ctx ends.
func (n *Node) Activate(ctx context.Context) error {
	for {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := n.Apply(actx, regions.Command{Op: regions.OpActivate, Region: n.cfg.Region})
		cancel()
		if err == nil || errors.Is(err, regions.ErrRefused) {
			return err
		}
		n.log.Warn("control plane: cannot mark this region active yet; retrying", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// Run keeps the node's duties until ctx ends: the leader keeps raft's
// voters in line with the membership, a founder applies its pending init,
// and the region reports its positions.
//
// The report runs beside the loop, one at a time: reading the positions
// waits for the local database and reader (a stalled synchronous standby,
// a reader far behind), and the leader's reconciliation and the
// membership's snapshots must not wait with it.
func (n *Node) Run(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	reported := make(chan struct{}, 1)
	reported <- struct{}{} // no report in flight
	defer func() { <-reported }()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-n.fsm.changed:
		case <-n.raft.LeaderCh():
		}
		n.applyPendingInit(ctx)
		if n.raft.State() == raft.Leader {
			n.reconcile()
		}
		n.snapshotMembership()
		select {
		case <-reported:
			go func() {
				defer func() { reported <- struct{}{} }()
				n.report(ctx)
			}()
		default: // the last one is still reading or sending
		}
	}
}

// snapshotMembership takes a raft snapshot once the membership (members,
// their states, epochs, sequence offsets) changed: raft restores only its
// last snapshot at start and replays the log after it only once it hears
// the commit index from a leader, so without one a restarted region would
// know no membership until it reaches a majority.
func (n *Node) snapshotMembership() {
	b := n.shape()
	if last := n.snapped.Load(); last != nil && b == *last {
		return
	}
	err := n.raft.Snapshot().Error()
	if err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		// Raft takes none before its latest voter change counts as
		// applied, which it does once a later command is (the leader
		// writes one after each change): next turn.
		n.log.Debug("control plane: snapshot of the membership not taken yet", "err", err)
		return
	}
	n.snapped.Store(&b)
}

// shape is the membership without positions, as snapshotMembership
// compares it.
func (n *Node) shape() string {
	m := n.fsm.membership()
	m.Progress, m.Applied = nil, 0
	b, _ := json.Marshal(m)
	return string(b)
}

func (n *Node) applyPendingInit(ctx context.Context) {
	if !n.initMu.TryLock() {
		return
	}
	defer n.initMu.Unlock()
	b, err := os.ReadFile(n.pendingInit())
	if err != nil {
		return
	}
	if m := n.fsm.membership(); len(m.Epochs) > 0 {
		_ = os.Remove(n.pendingInit())
		return
	}
	var c regions.Command
	if err := json.Unmarshal(b, &c); err != nil {
		n.log.Error("control plane: pending init does not decode; run cluster init again", "err", err)
		_ = os.Remove(n.pendingInit())
		return
	}
	actx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := n.Apply(actx, c); err == nil || errors.Is(err, regions.ErrRefused) {
		_ = os.Remove(n.pendingInit())
		m := n.fsm.membership()
		n.log.Info("control plane: cluster initialised", "members", m.Describe())
	}
}

// reconcile (leader only) makes raft's configuration match the membership:
// voters for active and leaving regions and witnesses, non-voters for
// joining regions, nothing for removed ones.
func (n *Node) reconcile() {
	m := n.fsm.membership()
	if len(m.Epochs) == 0 {
		return
	}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	have := map[raft.ServerID]raft.ServerSuffrage{}
	for _, s := range f.Configuration().Servers {
		have[s.ID] = s.Suffrage
	}
	change := func(what string, id raft.ServerID, fut raft.IndexFuture) {
		if err := fut.Error(); err != nil {
			n.log.Warn("control plane: membership change not applied yet", "change", what, "region", string(id), "err", err)
			return
		}
		n.log.Info("control plane: voters changed", "change", what, "region", string(id))
		// A command after the voter change lets every region snapshot the
		// membership past it (see snapshotMembership).
		body, _ := json.Marshal(regions.Command{Op: regions.OpNoop})
		_ = n.raft.Apply(body, 2*time.Second).Error()
	}
	for _, mem := range m.Sorted() {
		id := raft.ServerID(mem.ID)
		cur, ok := have[id]
		delete(have, id)
		switch {
		case mem.State == regions.Removed:
			if ok {
				change("remove", id, n.raft.RemoveServer(id, 0, 5*time.Second))
			}
		case mem.Voter() && (!ok || cur != raft.Voter):
			change("add voter", id, n.raft.AddVoter(id, raft.ServerAddress(mem.ID), 0, 5*time.Second))
		case !mem.Voter() && !ok:
			change("add non-voter", id, n.raft.AddNonvoter(id, raft.ServerAddress(mem.ID), 0, 5*time.Second))
		}
	}
	for id := range have {
		change("remove (not a member)", id, n.raft.RemoveServer(id, 0, 5*time.Second))
	}
}

// report sends the region's positions when they moved, at most every
// ReportInterval.
func (n *Node) report(ctx context.Context) {
	if n.cfg.Progress == nil {
		return
	}
	n.mu.Lock()
	due := time.Since(n.lastReport) >= n.cfg.ReportInterval
	n.mu.Unlock()
	if !due {
		return
	}
	m := n.fsm.membership()
	switch m.State(n.cfg.Region) {
	case regions.Active, regions.Joining, regions.Reseeding, regions.Leaving:
	default:
		return
	}
	if m.Members[n.cfg.Region].Witness {
		return
	}
	p, err := n.cfg.Progress(ctx)
	if err != nil {
		n.log.Warn("control plane: cannot read this region's positions to report", "err", err)
		return
	}
	// Unchanged positions are not reported again, except once the region
	// began leaving: its removal waits for a report made since.
	mem := m.Members[n.cfg.Region]
	if old := m.Progress[n.cfg.Region]; old != nil && covers(*old, p) && (mem.State != regions.Leaving || old.Index >= mem.Since) {
		n.mu.Lock()
		n.lastReport = time.Now()
		n.mu.Unlock()
		return
	}
	actx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := n.Apply(actx, regions.Command{Op: regions.OpReport, Region: n.cfg.Region, Progress: &p}); err != nil {
		level := slog.LevelDebug
		if mem.State == regions.Leaving {
			level = slog.LevelWarn // its removal waits for this report
		}
		n.log.Log(ctx, level, "control plane: positions not reported", "err", err)
		return
	}
	n.mu.Lock()
	n.lastReport = time.Now()
	n.mu.Unlock()
}

// covers reports whether the recorded progress already holds p: its
// positions, and what its release takes (a region restarted on another
// release while its writes stood still must still say so, or the
// configuration changes that wait for it are refused).
func covers(old, p regions.Progress) bool {
	if p.Takes != old.Takes || p.Shipped > old.Shipped {
		return false
	}
	for r, v := range p.Applied {
		if v > old.Applied[r] {
			return false
		}
	}
	return true
}

// Status is the control plane as this region sees it.
type Status struct {
	Region conflict.RegionID `json:"region"`
	// Role is leader, follower, candidate or shutdown.
	Role   string            `json:"role"`
	Leader conflict.RegionID `json:"leader,omitempty"`
	Term   uint64            `json:"term"`
	// CommitIndex and AppliedIndex: the log's last committed entry this
	// region knows of, and the last it applied.
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	// LastContactSeconds: since the leader was last heard from (0 on the
	// leader, -1 never).
	LastContactSeconds float64 `json:"last_contact_seconds"`
	// Quorum: this region reaches a leader, so changes can be applied.
	Quorum    bool             `json:"quorum"`
	Voters    []string         `json:"voters"`
	Nonvoters []string         `json:"nonvoters,omitempty"`
	Epoch     regions.Epoch    `json:"epoch"`
	Members   []regions.Member `json:"members"`
	// Sequences is the members' sequence offsets (nil: no plan).
	Sequences *regions.SequencePlan `json:"sequences,omitempty"`
	// EpochWaits: what the latest epoch, announced, waits for before it
	// is in effect.
	EpochWaits []string `json:"epoch_waits,omitempty"`
	// Takes: what each region that reported runs takes of the changes
	// made at an epoch (regions.Takes; absent: not reported).
	Takes map[conflict.RegionID]int `json:"takes,omitempty"`
}

// Status returns the control plane as this region sees it.
func (n *Node) Status() Status {
	st := Status{Region: n.cfg.Region, Role: strings.ToLower(n.raft.State().String())}
	_, leader := n.raft.LeaderWithID()
	st.Leader = conflict.RegionID(leader)
	stats := n.raft.Stats()
	st.Term, _ = strconv.ParseUint(stats["term"], 10, 64)
	st.CommitIndex, _ = strconv.ParseUint(stats["commit_index"], 10, 64)
	st.AppliedIndex = n.raft.AppliedIndex()
	switch lc := n.raft.LastContact(); {
	case n.raft.State() == raft.Leader:
		st.LastContactSeconds = 0
	case lc.IsZero():
		st.LastContactSeconds = -1
	default:
		st.LastContactSeconds = time.Since(lc).Seconds()
	}
	hb := n.cfg.HeartbeatTimeout
	if hb <= 0 {
		hb = time.Second
	}
	st.Quorum = n.raft.State() == raft.Leader || (leader != "" && st.LastContactSeconds >= 0 && st.LastContactSeconds < 2*hb.Seconds())
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			if s.Suffrage == raft.Voter {
				st.Voters = append(st.Voters, string(s.ID))
			} else {
				st.Nonvoters = append(st.Nonvoters, string(s.ID))
			}
		}
	}
	sort.Strings(st.Voters)
	sort.Strings(st.Nonvoters)
	m := n.fsm.membership()
	st.Epoch, st.Members, st.Sequences = m.Epoch(), m.Sorted(), m.Sequences
	st.EpochWaits = m.EpochWaits()
	for r, p := range m.Progress {
		if st.Takes == nil {
			st.Takes = map[conflict.RegionID]int{}
		}
		st.Takes[r] = p.Takes
	}
	return st
}

// slogWriter passes raft's log lines (warnings and errors) to the logger.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if line != "" {
		level := slog.LevelWarn
		if strings.Contains(line, "[ERROR]") {
			level = slog.LevelError
		}
		w.log.Log(context.Background(), level, "control plane", "raft", line)
	}
	return len(p), nil
}
