// Package obs is the replicator's view from outside: a health check built
// for DNS failover, a liveness check for process supervisors, and
// Prometheus metrics.
//
// Guarantees:
//   - /health and /live answer from state cached by a background prober;
//     a request never touches the database, so an answer takes
//     microseconds whatever the database is doing;
//   - only the local database (down, in recovery, read-only) or the
//     replicator itself (stalled) make /health fail (HTTP 503); peers and
//     the search index only degrade it (HTTP 200, body says why), so a
//     problem shared by every region can never fail all of them at once;
//   - a status is reported only after it held for the configured hold
//     (hysteresis), so a blip does not flap DNS;
//   - every metric series exists from the start (at zero).
package obs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator/link"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// Config configures a Monitor.
type Config struct {
	Region conflict.RegionID
	Peers  []conflict.RegionID
	Tables []regions.Table
	Health HealthConfig
	// Probe checks the local database (postgres.ProbeLocal, typically). It
	// is called from one goroutine, at most once per ProbeInterval.
	Probe func(ctx context.Context) (postgres.Probe, error)
	// ReaderPosition returns the WAL position before which the reader has
	// versioned every local commit (ok false while no reader runs).
	ReaderPosition func() (lsn uint64, ok bool)
	// IndexLag, when set, reports how far the regional search index is
	// behind (ok false when it cannot tell). nil: no index.
	IndexLag func() (bytesBehind int64, secondsBehind float64, ok bool)
	Logger   *slog.Logger
	// Routes are further handlers served beside the operations endpoints,
	// by ServeMux pattern (the embedded index's /search/, the conflict
	// report).
	Routes map[string]http.Handler
	// Redact removes the configuration's secrets from every reason and
	// error the monitor shows (nil: none known).
	Redact *Redactor
	// Control, when set, returns the control plane as this region sees it
	// (called once per probe; it must not block).
	Control func() *ControlView
}

// Monitor tracks the region's health and metrics. Its methods are safe for
// concurrent use.
type Monitor struct {
	cfg      Config
	metrics  *Metrics
	log      *slog.Logger
	start    time.Time
	indexLag atomic.Pointer[func() (int64, float64, bool)]

	mu        sync.Mutex
	health    HealthConfig
	peers     map[string]*peerState
	dataPlane error
	// tablesWaiting: see TablesWaiting.
	tablesWaiting []string
	// joining: how far a joining region is ("" once it has caught up, or
	// never joined); catchingUp: it loaded its snapshot and catches up.
	joining    string
	catchingUp bool
	loadedAt   time.Time
	caughtUp   func()
	walSeen    []walSample // local WAL positions not yet versioned, oldest first
	hyst       hysteresis
	snap       Snapshot
	beat       time.Time // last prober loop iteration
	hasProbed  bool
}

type peerState struct {
	up         bool
	changedAt  time.Time
	lastErr    string
	applied    uint64
	head       uint64
	headKnown  bool
	lastCommit time.Time // source commit time of the last applied transaction
	current    time.Time // last probe that found everything the peer advertised applied
	// cutOff: the link is down because the peer refuses this region (it no
	// longer holds what this region needs, or credentials or configuration
	// differ), not because it cannot be reached.
	cutOff bool
	// removed: the cluster removed the peer; health and status leave it out.
	removed bool
}

type walSample struct {
	at  time.Time
	lsn uint64
}

// Snapshot is the cached state /health, /status and the status command
// show.
type Snapshot struct {
	Region string `json:"region"`
	// Status is what /health reports; Reasons why.
	Status  string   `json:"status"`
	Reasons []string `json:"reasons,omitempty"`
	Since   string   `json:"since"`
	// Observed is what the latest probe alone calls for (it becomes Status
	// once it held for HoldSeconds).
	Observed        string     `json:"observed"`
	ObservedReasons []string   `json:"observed_reasons,omitempty"`
	HoldSeconds     float64    `json:"hold_seconds"`
	CheckedAt       string     `json:"checked_at"`
	Writable        bool       `json:"local_postgres_writable"`
	Peers           []PeerView `json:"peers"`
	Index           *IndexView `json:"index,omitempty"`
	// Joining says how far the region is in joining (empty once joined).
	Joining string `json:"joining,omitempty"`
	// Control is the control plane as this region sees it (nil: none).
	Control *ControlView `json:"control,omitempty"`
}

// New returns a Monitor; Run starts its prober.
func New(cfg Config) *Monitor {
	cfg.Health.Defaults()
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m := &Monitor{cfg: cfg, metrics: NewMetrics(cfg.Region, cfg.Peers, cfg.Tables), log: cfg.Logger, start: time.Now(),
		health: cfg.Health, peers: map[string]*peerState{}}
	for _, p := range cfg.Peers {
		m.peers[string(p)] = &peerState{changedAt: m.start, lastErr: "not connected yet"}
	}
	m.SetIndexLag(cfg.IndexLag)
	if cfg.Control != nil {
		m.metrics.enableControl()
	}
	m.snap = Snapshot{Region: string(cfg.Region), Status: StateUnavailable, Reasons: []string{"starting: " + errStarting.Error()}, Observed: StateUnavailable}
	return m
}

// SetIndexLag sets (or, with nil, removes) the search index's lag source;
// the next probe uses it. For an index feed started after the monitor.
func (m *Monitor) SetIndexLag(f func() (bytesBehind int64, secondsBehind float64, ok bool)) {
	if f == nil {
		m.indexLag.Store(nil)
	} else {
		m.indexLag.Store(&f)
	}
	m.metrics.indexOn.Set(b2f(f != nil))
}

// Metrics returns the registry the monitor feeds.
func (m *Monitor) Metrics() *Metrics { return m.metrics }

// Health returns the health settings in force.
func (m *Monitor) Health() HealthConfig {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.health
}

// SetHealth changes the health settings (a configuration reload); the
// prober uses them from its next probe on.
func (m *Monitor) SetHealth(c HealthConfig) {
	c.Defaults()
	m.mu.Lock()
	m.health = c
	m.mu.Unlock()
}

func (m *Monitor) peer(p conflict.RegionID) *peerState {
	ps := m.peers[string(p)]
	if ps == nil {
		ps = &peerState{changedAt: time.Now()}
		m.peers[string(p)] = ps
	}
	return ps
}

// SetPeers replaces the peers the monitor watches (the data plane's peers
// changed with the membership); a peer it knew keeps its state, a new one
// starts as not connected yet.
func (m *Monitor) SetPeers(peers []conflict.RegionID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cfg.Peers = append([]conflict.RegionID(nil), peers...)
	for _, p := range peers {
		if m.peers[string(p)] == nil {
			m.peers[string(p)] = &peerState{changedAt: time.Now(), lastErr: "not connected yet"}
		}
	}
}

// LinkUp records that the stream from peer is connected.
func (m *Monitor) LinkUp(p conflict.RegionID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps := m.peer(p)
	if !ps.up {
		ps.up, ps.changedAt, ps.lastErr = true, time.Now(), ""
	}
	ps.cutOff = false
	m.metrics.linkUp.WithLabelValues(string(p)).Set(1)
}

// LinkDown records that the stream from peer ended, and why.
func (m *Monitor) LinkDown(p conflict.RegionID, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps := m.peer(p)
	if ps.up {
		ps.up, ps.changedAt = false, time.Now()
	}
	if err != nil {
		ps.lastErr = m.cfg.Redact.String(err.Error())
	}
	var mm *link.MismatchError
	ps.cutOff = errors.Is(err, link.ErrTooFarBehind) || errors.Is(err, link.ErrUnauthorized) || errors.Is(err, link.ErrRemoved) || errors.As(err, &mm)
	m.metrics.linkUp.WithLabelValues(string(p)).Set(0)
}

// PeerRemoved records that the cluster removed peer p: health and status
// leave it out from then on.
func (m *Monitor) PeerRemoved(p conflict.RegionID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.peer(p).removed = true
}

// PeerHead records the last transaction peer has versioned, as it
// advertised.
func (m *Monitor) PeerHead(p conflict.RegionID, seq uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps := m.peer(p)
	ps.head, ps.headKnown = seq, true
}

// PeerApplied records that every transaction from peer up to seq is
// applied here; commitUnixMicros is the last one's source commit time (0:
// unknown).
func (m *Monitor) PeerApplied(p conflict.RegionID, seq uint64, commitUnixMicros int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps := m.peer(p)
	ps.applied = seq
	if commitUnixMicros > 0 {
		ps.lastCommit = time.UnixMicro(commitUnixMicros)
	}
}

// DataPlane records why the data plane is not running (nil: it runs).
func (m *Monitor) DataPlane(err error) {
	m.mu.Lock()
	m.dataPlane = err
	m.mu.Unlock()
}

// TablesWaiting records which tables the cluster added are not replicated
// here yet and why, one line each (nil: none): /health says degraded with
// them.
func (m *Monitor) TablesWaiting(reasons []string) {
	m.mu.Lock()
	m.tablesWaiting = reasons
	m.mu.Unlock()
}

// Joining records how far the region is in loading a peer's snapshot:
// /health answers 503 with it until the region has caught up.
func (m *Monitor) Joining(progress string) {
	m.mu.Lock()
	m.joining = progress
	m.mu.Unlock()
}

// Loaded records that the joining region loaded its snapshot: it keeps
// answering 503 until it has caught up with every peer it can reach
// (applied all the peer advertised). A peer whose link stays down for
// JoinPeerGrace after the load is not waited for (a region that is gone, or
// listed but not started yet, does not hold the join; the region then
// reports it as it reports any peer that is away); one that refuses this
// region (too far behind for it, another configuration) holds it: what the
// region lacks from that peer will not come.
//
// caughtUp, when set, is called (from the prober, once) when it has.
func (m *Monitor) Loaded(from string, caughtUp func()) {
	m.mu.Lock()
	m.joining = "snapshot from " + from + " loaded; catching up with every peer"
	m.catchingUp, m.loadedAt, m.caughtUp = true, time.Now(), caughtUp
	m.mu.Unlock()
}

// JoinLoaded records how much of a snapshot a joining region has loaded
// (for /metrics).
func (m *Monitor) JoinLoaded(rows, bytes int64) {
	m.metrics.joinRows.Set(float64(rows))
	m.metrics.joinBytes.Set(float64(bytes))
}

// Seeded records how many rows of a table the cluster added the current
// seed has emitted (for /metrics).
func (m *Monitor) Seeded(rows int64) {
	m.metrics.seedRows.Set(float64(rows))
}

// JoinPeerGrace is how long a joined region waits for a peer's link to come
// up before it stops waiting to catch up with that peer.
const JoinPeerGrace = 10 * time.Second

// joinCaughtUp reports whether a loaded joining region has caught up.
// Called with mu held.
func (m *Monitor) joinCaughtUp(now time.Time) bool {
	for _, id := range m.cfg.Peers {
		ps := m.peer(id)
		if ps.removed {
			continue
		}
		down := ps.changedAt
		if m.loadedAt.After(down) {
			down = m.loadedAt
		}
		switch {
		case ps.up && ps.headKnown && ps.applied >= ps.head:
		case !ps.up && !ps.cutOff && now.Sub(down) >= JoinPeerGrace:
		default:
			return false
		}
	}
	return true
}

// Snapshot returns the latest cached state.
func (m *Monitor) Snapshot() Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.snap
}

// Run probes until ctx ends.
func (m *Monitor) Run(ctx context.Context) {
	for {
		h := m.Health()
		next := time.Now().Add(h.ProbeInterval)
		m.probe(ctx, h)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
	}
}

func (m *Monitor) probe(ctx context.Context, h HealthConfig) {
	pctx, cancel := context.WithTimeout(ctx, h.ProbeTimeout)
	started := time.Now()
	p, err := m.cfg.Probe(pctx)
	cancel()
	if ctx.Err() != nil {
		return
	}
	m.metrics.probeDur.Observe(time.Since(started).Seconds())
	if err != nil {
		m.metrics.Error(ErrProbe)
	}
	var index *IndexView
	if f := m.indexLag.Load(); f != nil {
		b, s, ok := (*f)()
		index = &IndexView{Known: ok, BytesBehind: b, SecondsBehind: s}
		m.metrics.indexUp.Set(b2f(ok))
		if ok {
			m.metrics.indexBytes.Set(float64(b))
			m.metrics.indexSeconds.Set(s)
		}
	}
	var control *ControlView
	if m.cfg.Control != nil {
		control = m.cfg.Control()
		m.metrics.observeControl(control)
	}
	readerPos, readerOK := uint64(0), false
	if m.cfg.ReaderPosition != nil {
		readerPos, readerOK = m.cfg.ReaderPosition()
	}

	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.beat = now
	m.hasProbed = true
	if m.catchingUp && m.joinCaughtUp(now) {
		m.catchingUp, m.joining = false, ""
		m.log.Info("joined: caught up with every peer")
		if f := m.caughtUp; f != nil {
			m.caughtUp = nil
			go f()
		}
	}
	m.metrics.joining.Set(b2f(m.joining != ""))
	o := Observation{ProbeErr: err, DataPlane: m.dataPlane, Joining: m.joining, TablesWaiting: m.tablesWaiting}
	writable := err == nil && !p.InRecovery && !p.ReadOnly
	m.metrics.writable.Set(b2f(writable))
	if err == nil {
		o.InRecovery, o.ReadOnly = p.InRecovery, p.ReadOnly
		if p.WAL != 0 {
			if n := len(m.walSeen); n == 0 || m.walSeen[n-1].lsn < uint64(p.WAL) {
				m.walSeen = append(m.walSeen, walSample{now, uint64(p.WAL)})
			}
			if len(m.walSeen) > 4096 {
				m.walSeen = append(m.walSeen[:1], m.walSeen[len(m.walSeen)-4095:]...)
			}
			if readerOK {
				m.metrics.readerBehind.Set(float64(max(int64(p.WAL)-int64(readerPos), 0)))
			}
		}
		if p.Stats {
			o.SlotLost = p.SlotLost
			m.metrics.slotLost.Set(b2f(p.SlotLost != ""))
			m.metrics.slotRetained.Set(float64(p.SlotRetainedBytes))
			m.metrics.slotMax.Set(float64(p.SlotWALMaxBytes))
			m.metrics.parkedOpen.Set(float64(p.ParkedOpen))
		}
	}
	// Stall: the oldest WAL position seen that the reader has not passed.
	i := 0
	for i < len(m.walSeen) && m.walSeen[i].lsn <= readerPos {
		i++
	}
	m.walSeen = m.walSeen[i:]
	if len(m.walSeen) > 0 {
		o.Stalled = now.Sub(m.walSeen[0].at)
	}

	for _, id := range m.cfg.Peers {
		ps := m.peer(id)
		if ps.removed {
			continue
		}
		caughtUp := ps.up && (!ps.headKnown || ps.applied >= ps.head)
		if caughtUp {
			ps.current = now
		}
		pv := PeerView{Peer: string(id), LinkUp: ps.up, For: now.Sub(ps.changedAt).Seconds(), LastErr: ps.lastErr}
		if ps.headKnown && ps.head > ps.applied {
			pv.LagTxns = int64(ps.head - ps.applied)
		}
		if !caughtUp {
			ref := ps.current
			if ps.lastCommit.After(ref) {
				ref = ps.lastCommit
			}
			if ref.IsZero() {
				ref = m.start
			}
			pv.LagSeconds = max(now.Sub(ref).Seconds(), 0)
		}
		if err == nil && p.Stats {
			pv.Backlog = max(p.Shipped-p.Acked[string(id)], 0)
			m.metrics.backlog.WithLabelValues(string(id)).Set(float64(pv.Backlog))
		} else if len(m.snap.Peers) > 0 {
			for _, old := range m.snap.Peers {
				if old.Peer == pv.Peer {
					pv.Backlog = old.Backlog
				}
			}
		}
		m.metrics.lagSeconds.WithLabelValues(string(id)).Set(pv.LagSeconds)
		m.metrics.lagTxns.WithLabelValues(string(id)).Set(float64(pv.LagTxns))
		m.metrics.linkUp.WithLabelValues(string(id)).Set(b2f(ps.up))
		o.Peers = append(o.Peers, pv)
	}
	o.Index = index
	o.Control = control

	state, reasons := Evaluate(h, o)
	for i, r := range reasons {
		reasons[i] = m.cfg.Redact.String(r)
	}
	prev := m.hyst.reported
	if m.hyst.observe(now, state, reasons, h.Hold) {
		lvl := slog.LevelInfo
		if m.hyst.reported != StateServing {
			lvl = slog.LevelWarn
		}
		m.log.Log(context.Background(), lvl, "health status changed", "from", orDash(prev), "to", m.hyst.reported, "reasons", strings.Join(m.hyst.reasons, "; "))
	}
	for _, s := range states {
		m.metrics.health.WithLabelValues(s).Set(b2f(s == m.hyst.reported))
	}
	m.snap = Snapshot{
		Region: string(m.cfg.Region), Status: m.hyst.reported, Reasons: m.hyst.reasons, Since: m.hyst.since.UTC().Format(time.RFC3339),
		Observed: state, ObservedReasons: reasons, HoldSeconds: max(h.Hold, 0).Seconds(), CheckedAt: now.UTC().Format(time.RFC3339Nano),
		Writable: writable, Peers: o.Peers, Index: index, Joining: m.cfg.Redact.String(m.joining), Control: control,
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Live reports whether the prober loop is turning (the process is not
// wedged).
func (m *Monitor) Live() (bool, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	limit := 3*m.health.ProbeInterval + m.health.ProbeTimeout + 5*time.Second
	last := m.beat
	if !m.hasProbed {
		last = m.start
	}
	if age := time.Since(last); age > limit {
		return false, fmt.Sprintf("health prober has not run for %s", age.Round(time.Second))
	}
	return true, ""
}

// Handler serves GET /health, /live, /status (JSON) and /metrics.
func (m *Monitor) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		s := m.Snapshot()
		w.Header().Set("Cache-Control", "no-store")
		if r.URL.Query().Get("format") == "json" {
			w.Header().Set("Content-Type", "application/json")
			if s.Status == StateUnavailable {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
			_ = json.NewEncoder(w).Encode(s)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		var b strings.Builder
		switch s.Status {
		case StateServing:
			fmt.Fprintf(&b, "serving\nregion %s\n", s.Region)
		case StateDegraded:
			fmt.Fprintf(&b, "serving degraded\nregion %s\n", s.Region)
		default:
			fmt.Fprintf(&b, "unavailable\nregion %s\n", s.Region)
		}
		for _, r := range s.Reasons {
			fmt.Fprintf(&b, "- %s\n", r)
		}
		if s.Observed != s.Status {
			next := s.Observed
			if s.Status == StateUnavailable {
				next = "recovery" // a 503 body never says serving
			}
			fmt.Fprintf(&b, "pending: %s (reported once it holds for %.0fs)\n", next, s.HoldSeconds)
		}
		if s.Status == StateUnavailable {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = w.Write([]byte(b.String()))
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(m.Snapshot())
	})
	mux.HandleFunc("GET /live", func(w http.ResponseWriter, r *http.Request) {
		ok, why := m.Live()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not live: %s\n", why)
			return
		}
		fmt.Fprintln(w, "live")
	})
	mux.Handle("GET /metrics", m.metrics.Handler())
	for pattern, h := range m.cfg.Routes {
		mux.Handle(pattern, h)
	}
	return mux
}

// Serve serves Handler on addr until the returned stop is called. A bad
// address fails here, before anything else starts.
func (m *Monitor) Serve(addr string) (stop func() error, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http.listen %s: %w", addr, err)
	}
	srv := &http.Server{Handler: m.Handler(), ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 10 * time.Second, IdleTimeout: 60 * time.Second}
	done := make(chan error, 1)
	go func() {
		err := srv.Serve(ln)
		if err == http.ErrServerClosed {
			err = nil
		}
		done <- err
	}()
	stop = func() error {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return <-done
	}
	return stop, nil
}
