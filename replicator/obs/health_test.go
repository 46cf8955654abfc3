package obs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator/link"
	"github.com/polyregion/polyregion/replicator/postgres"
)

func TestHealthEvaluateOnlyLocalTroubleIsUnavailable(t *testing.T) {
	c := HealthConfig{}
	c.Defaults()
	up := PeerView{Peer: "eu", LinkUp: true}
	cases := []struct {
		name  string
		o     Observation
		state string
		want  string
	}{
		{"all well", Observation{Peers: []PeerView{up}}, StateServing, ""},
		{"peer link down", Observation{Peers: []PeerView{{Peer: "eu", For: 12, LastErr: "connection refused"}}}, StateDegraded, "peer eu: link down for 12s: connection refused"},
		{"peer lag", Observation{Peers: []PeerView{{Peer: "eu", LinkUp: true, LagSeconds: 90, LagTxns: 7}}}, StateDegraded, "peer eu: lag 90.0s above 1m0s (7 transactions behind)"},
		{"index behind", Observation{Peers: []PeerView{up}, Index: &IndexView{Known: true, SecondsBehind: 61}}, StateDegraded, "index: 61.0s behind"},
		{"index silent", Observation{Index: &IndexView{}}, StateDegraded, "index: lag unknown"},
		{"every peer down is still serving", Observation{Peers: []PeerView{{Peer: "eu"}, {Peer: "ap"}}}, StateDegraded, "peer ap: link down"},
		{"postgres down", Observation{ProbeErr: errors.New("connection refused"), Peers: []PeerView{{Peer: "eu"}}}, StateUnavailable, "local postgres unreachable: connection refused"},
		{"standby", Observation{InRecovery: true}, StateUnavailable, "in recovery"},
		{"read-only", Observation{ReadOnly: true}, StateUnavailable, "default_transaction_read_only"},
		{"stalled", Observation{Stalled: 3 * time.Minute}, StateUnavailable, "replicator stalled"},
		{"briefly behind is not stalled", Observation{Stalled: 30 * time.Second}, StateServing, ""},
		{"joining", Observation{Joining: "loading a snapshot from eu", Peers: []PeerView{up}}, StateUnavailable, "joining: loading a snapshot from eu"},
		{"control plane with a leader", Observation{Peers: []PeerView{up}, Control: &ControlView{Initialised: true, Quorum: true, Self: "active"}}, StateServing, ""},
		{"control plane without quorum still serves", Observation{Peers: []PeerView{up}, Control: &ControlView{Initialised: true, Voters: []string{"ap", "eu", "us"}, Self: "active"}}, StateDegraded, "control plane: no quorum (reaches no leader among the voters ap, eu, us); configuration changes are refused, replication goes on"},
		{"control plane not initialised yet", Observation{Peers: []PeerView{up}, Control: &ControlView{}}, StateServing, ""},
		{"removed from the cluster", Observation{Peers: []PeerView{up}, Control: &ControlView{Initialised: true, Quorum: true, Self: "removed"}}, StateUnavailable, "removed from the cluster"},
		{"slot lost: still serving, says so", Observation{Peers: []PeerView{up}, SlotLost: "the replication slot polyregion_us was lost"}, StateDegraded, "the replication slot polyregion_us was lost"},
		{"a table the cluster added waits: still serving, says so", Observation{Peers: []PeerView{up}, TablesWaiting: []string{"table public.notes added by the cluster is not replicated here yet"}}, StateDegraded, "public.notes"},
	}
	for _, tc := range cases {
		state, reasons := Evaluate(c, tc.o)
		if state != tc.state {
			t.Errorf("%s: state %s, want %s (%v)", tc.name, state, tc.state, reasons)
		}
		if tc.want != "" && !strings.Contains(strings.Join(reasons, "\n"), tc.want) {
			t.Errorf("%s: reasons %q do not say %q", tc.name, reasons, tc.want)
		}
	}
}

func TestHealthHysteresisHoldsUntilTheNewStateLasts(t *testing.T) {
	var h hysteresis
	t0 := time.Unix(1000, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	hold := 3 * time.Second
	steps := []struct {
		at      float64
		state   string
		want    string
		changed bool
	}{
		{0, StateServing, StateServing, true}, // the first observation is reported at once
		{1, StateUnavailable, StateServing, false},
		{2, StateUnavailable, StateServing, false},
		{3, StateServing, StateServing, false}, // blip over: never reported
		{4, StateUnavailable, StateServing, false},
		{5, StateDegraded, StateServing, false}, // a different candidate restarts the clock
		{7, StateDegraded, StateServing, false},
		{8, StateDegraded, StateDegraded, true}, // held 3s
		{9, StateServing, StateDegraded, false},
		{12, StateServing, StateServing, true},
	}
	for _, s := range steps {
		changed := h.observe(at(s.at), s.state, nil, hold)
		if h.reported != s.want || changed != s.changed {
			t.Fatalf("t=%vs observed %s: reported %s (changed %v), want %s (changed %v)", s.at, s.state, h.reported, changed, s.want, s.changed)
		}
	}
	var none hysteresis
	none.observe(at(0), StateServing, nil, NoHold)
	if none.observe(at(0.1), StateUnavailable, nil, NoHold); none.reported != StateUnavailable {
		t.Fatalf("with no hold the change is reported at once, got %s", none.reported)
	}
}

// TestHealthAnswersFromCacheWhileTheProbeHangs: the handler never waits for
// the database.
func TestHealthAnswersFromCacheWhileTheProbeHangs(t *testing.T) {
	var calls atomic.Int32
	release := make(chan struct{})
	m := New(Config{Region: "us", Peers: []conflict.RegionID{"eu"},
		Health: HealthConfig{ProbeInterval: 100 * time.Millisecond, ProbeTimeout: time.Hour, Hold: NoHold},
		Probe: func(ctx context.Context) (postgres.Probe, error) {
			if calls.Add(1) > 1 {
				select { // the second probe hangs
				case <-release:
				case <-ctx.Done():
				}
			}
			return postgres.Probe{WAL: 100, Stats: true, Shipped: 5, Acked: map[string]int64{"eu": 3}}, nil
		},
		ReaderPosition: func() (uint64, bool) { return 100, true },
	})
	m.LinkUp("eu")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	defer func() { close(release); cancel(); <-done }()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	deadline := time.Now().Add(5 * time.Second)
	for calls.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	for i := 0; i < 20; i++ {
		start := time.Now()
		resp, err := http.Get(srv.URL + "/health")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if took := time.Since(start); took > 100*time.Millisecond {
			t.Fatalf("/health took %s while a probe hangs", took)
		}
		if resp.StatusCode != 200 || !strings.HasPrefix(string(body), "serving") {
			t.Fatalf("/health: %d %q", resp.StatusCode, body)
		}
	}
	resp, err := http.Get(srv.URL + "/live")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/live: %v %v", resp, err)
	}
	resp.Body.Close()
	if s := m.Snapshot(); len(s.Peers) != 1 || s.Peers[0].Backlog != 2 {
		t.Fatalf("snapshot peers %+v, want eu with backlog 2", s.Peers)
	}
}

func TestHealthPeerLag(t *testing.T) {
	m := New(Config{Region: "us", Peers: []conflict.RegionID{"eu"}, Health: HealthConfig{Hold: NoHold},
		Probe: func(context.Context) (postgres.Probe, error) { return postgres.Probe{}, nil }})
	m.LinkUp("eu")
	m.PeerApplied("eu", 10, time.Now().Add(-90*time.Second).UnixMicro())
	m.PeerHead("eu", 10)
	m.probe(context.Background(), m.Health())
	if p := m.Snapshot().Peers[0]; p.LagSeconds != 0 || p.LagTxns != 0 {
		t.Fatalf("caught up: lag %+v", p)
	}
	m.PeerHead("eu", 15) // the peer wrote more; the last applied one is 90s old
	time.Sleep(10 * time.Millisecond)
	m.probe(context.Background(), m.Health())
	p := m.Snapshot().Peers[0]
	if p.LagTxns != 5 || p.LagSeconds <= 0 || p.LagSeconds > 1 {
		t.Fatalf("behind since the last probe: lag %+v, want 5 transactions and well under a second", p)
	}
	m.LinkDown("eu", errors.New("connection refused"))
	m.probe(context.Background(), m.Health())
	if s := m.Snapshot(); s.Status != StateDegraded || !strings.Contains(strings.Join(s.Reasons, ";"), "peer eu: link down") {
		t.Fatalf("link down: %+v", s)
	}
}

func TestHealthIndexLagFromHook(t *testing.T) {
	m := New(Config{Region: "us", Health: HealthConfig{Hold: NoHold, MaxIndexLag: 30 * time.Second},
		Probe: func(context.Context) (postgres.Probe, error) { return postgres.Probe{}, nil }})
	m.probe(context.Background(), m.Health())
	if s := m.Snapshot(); s.Status != StateServing || s.Index != nil {
		t.Fatalf("no index: %+v", s)
	}
	lag := 45.0
	m.SetIndexLag(func() (int64, float64, bool) { return 4096, lag, true })
	m.probe(context.Background(), m.Health())
	if s := m.Snapshot(); s.Status != StateDegraded || !strings.Contains(strings.Join(s.Reasons, ";"), "index: 45.0s behind") {
		t.Fatalf("index behind: %+v", s)
	}
	lag = 1
	m.probe(context.Background(), m.Health())
	if s := m.Snapshot(); s.Status != StateServing || s.Index == nil || s.Index.BytesBehind != 4096 {
		t.Fatalf("index caught up: %+v", s)
	}
	fams, _ := m.Metrics().Registry.Gather()
	for _, f := range fams {
		if f.GetName() == "polyregion_index_lag_seconds" && f.GetMetric()[0].GetGauge().GetValue() != 1 {
			t.Errorf("polyregion_index_lag_seconds = %v, want 1", f.GetMetric()[0].GetGauge().GetValue())
		}
		if f.GetName() == "polyregion_index_configured" && f.GetMetric()[0].GetGauge().GetValue() != 1 {
			t.Errorf("polyregion_index_configured = %v, want 1", f.GetMetric()[0].GetGauge().GetValue())
		}
	}
}

// A joining region answers 503 while it loads its snapshot and then until
// it has applied all that every reachable peer advertised; a peer whose
// link stays down for JoinPeerGrace after the load is not waited for.
func TestHealthJoiningRegionIsUnavailableUntilCaughtUp(t *testing.T) {
	m := New(Config{Region: "ap", Peers: []conflict.RegionID{"us", "eu"}, Health: HealthConfig{Hold: NoHold},
		Probe: func(context.Context) (postgres.Probe, error) { return postgres.Probe{}, nil }})
	probe := func() Snapshot {
		m.probe(context.Background(), m.Health())
		return m.Snapshot()
	}
	joining := func(s Snapshot, what string) {
		t.Helper()
		if r := strings.Join(s.Reasons, ";"); s.Status != StateUnavailable || !strings.Contains(r, "joining: ") || !strings.Contains(r, what) || !strings.Contains(s.Joining, what) {
			t.Fatalf("want unavailable, joining: %s; got %+v", what, s)
		}
	}
	m.Joining("loading a snapshot from eu")
	joining(probe(), "loading a snapshot from eu")
	var caught atomic.Int32
	m.Loaded("eu", func() { caught.Add(1) })
	joining(probe(), "catching up")
	m.LinkUp("eu")
	m.PeerHead("eu", 10)
	m.PeerApplied("eu", 5, time.Now().UnixMicro())
	joining(probe(), "catching up")
	m.PeerApplied("eu", 10, time.Now().UnixMicro())
	// us has been down since before the load, but not yet for the grace.
	joining(probe(), "catching up")
	m.mu.Lock()
	m.loadedAt = m.loadedAt.Add(-JoinPeerGrace)
	m.peers["us"].changedAt = m.peers["us"].changedAt.Add(-JoinPeerGrace)
	m.mu.Unlock()
	// us comes up behind: waited for again.
	m.LinkUp("us")
	m.PeerHead("us", 3)
	joining(probe(), "catching up")
	m.PeerApplied("us", 3, time.Now().UnixMicro())
	if s := probe(); s.Status != StateServing || s.Joining != "" {
		t.Fatalf("caught up with every peer: %+v", s)
	}
	for start := time.Now(); caught.Load() == 0 && time.Since(start) < 5*time.Second; {
		time.Sleep(time.Millisecond)
	}
	if n := caught.Load(); n != 1 {
		t.Fatalf("caught-up hook called %d times, want once", n)
	}
	// Once joined, a peer falling behind only degrades (lag), as anywhere.
	m.PeerHead("us", 9)
	if s := probe(); s.Status == StateUnavailable || s.Joining != "" {
		t.Fatalf("joined region behind a peer: %+v", s)
	}
}

// loadedFromEU is a region ap that loaded eu's snapshot and applied all eu
// advertised; us has been down since before the load.
func loadedFromEU() *Monitor {
	m := New(Config{Region: "ap", Peers: []conflict.RegionID{"us", "eu"}, Health: HealthConfig{Hold: NoHold},
		Probe: func(context.Context) (postgres.Probe, error) { return postgres.Probe{}, nil }})
	m.Loaded("eu", nil)
	m.LinkUp("eu")
	m.PeerHead("eu", 4)
	m.PeerApplied("eu", 4, time.Now().UnixMicro())
	return m
}

// pastGrace moves the load and us's link going down JoinPeerGrace back.
func pastGrace(m *Monitor) {
	m.mu.Lock()
	m.loadedAt = m.loadedAt.Add(-JoinPeerGrace)
	m.peers["us"].changedAt = m.peers["us"].changedAt.Add(-JoinPeerGrace)
	m.mu.Unlock()
}

func TestHealthJoinDoesNotWaitForAPeerThatStaysDown(t *testing.T) {
	m := loadedFromEU()
	m.probe(context.Background(), m.Health())
	if s := m.Snapshot(); s.Status != StateUnavailable {
		t.Fatalf("us down only since the load: %+v", s)
	}
	pastGrace(m)
	m.probe(context.Background(), m.Health())
	if s := m.Snapshot(); s.Status != StateDegraded || s.Joining != "" || !strings.Contains(strings.Join(s.Reasons, ";"), "peer us: link down") {
		t.Fatalf("us down for the grace after the load: %+v", s)
	}
}

// A peer that refuses this region (it no longer holds what the region
// needs, or its configuration differs) holds the join however long its link
// has been down: what the region lacks from it will not come.
func TestHealthJoinWaitsForAPeerThatRefusesTheRegion(t *testing.T) {
	m := loadedFromEU()
	m.LinkDown("us", fmt.Errorf("stream from us: %w: resume after 3 is before the oldest kept (90)", link.ErrTooFarBehind))
	pastGrace(m)
	m.probe(context.Background(), m.Health())
	if s := m.Snapshot(); s.Status != StateUnavailable || s.Joining == "" {
		t.Fatalf("us refuses ap: %+v", s)
	}
	m.LinkUp("us")
	m.PeerHead("us", 7)
	m.PeerApplied("us", 7, time.Now().UnixMicro())
	m.probe(context.Background(), m.Health())
	if s := m.Snapshot(); s.Status != StateServing || s.Joining != "" {
		t.Fatalf("us accepts ap again and ap caught up: %+v", s)
	}
}
