package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
)

// network connects in-process nodes with pipes and can cut a region off.
type network struct {
	mu    sync.Mutex
	nodes map[conflict.RegionID]*Node
	cut   map[conflict.RegionID]bool
	// quiet regions exchange no raft traffic, but forwarded commands pass.
	quiet map[conflict.RegionID]bool
	conns map[conflict.RegionID][]net.Conn
	stops map[conflict.RegionID]func()
}

func newNetwork() *network {
	return &network{nodes: map[conflict.RegionID]*Node{}, cut: map[conflict.RegionID]bool{}, quiet: map[conflict.RegionID]bool{}, conns: map[conflict.RegionID][]net.Conn{}, stops: map[conflict.RegionID]func(){}}
}

func (nw *network) dialer(from conflict.RegionID) func(context.Context, conflict.RegionID) (net.Conn, error) {
	return func(_ context.Context, to conflict.RegionID) (net.Conn, error) {
		nw.mu.Lock()
		target, cut := nw.nodes[to], nw.cut[from] || nw.cut[to] || nw.quiet[from] || nw.quiet[to]
		if target == nil || cut {
			nw.mu.Unlock()
			return nil, fmt.Errorf("%s cannot reach %s", from, to)
		}
		a, b := net.Pipe()
		nw.conns[from] = append(nw.conns[from], a)
		nw.conns[to] = append(nw.conns[to], b)
		nw.mu.Unlock()
		go target.Conn(from, b)
		return a, nil
	}
}

func (nw *network) forwarder(from conflict.RegionID) func(context.Context, conflict.RegionID, []byte) ([]byte, error) {
	return func(ctx context.Context, to conflict.RegionID, body []byte) ([]byte, error) {
		nw.mu.Lock()
		target, cut := nw.nodes[to], nw.cut[from] || nw.cut[to]
		nw.mu.Unlock()
		if target == nil || cut {
			return nil, fmt.Errorf("%s cannot reach %s", from, to)
		}
		return target.Forward(ctx, from, body)
	}
}

// partition cuts r off from every other region (and closes its
// connections) or heals it.
func (nw *network) partition(r conflict.RegionID, cut bool) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.cut[r] = cut
	if cut {
		for _, c := range nw.conns[r] {
			c.Close()
		}
		nw.conns[r] = nil
	}
}

// silence stops r's raft traffic (and closes its connections), or lets it
// flow again; forwarded commands still pass.
func (nw *network) silence(r conflict.RegionID, quiet bool) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	nw.quiet[r] = quiet
	if quiet {
		for _, c := range nw.conns[r] {
			c.Close()
		}
		nw.conns[r] = nil
	}
}

func (nw *network) start(t *testing.T, r conflict.RegionID) *Node {
	t.Helper()
	return nw.startIn(t, r, t.TempDir())
}

// startIn starts r's node on dir; set, when given, changes its
// configuration first.
func (nw *network) startIn(t *testing.T, r conflict.RegionID, dir string, set ...func(*Config)) *Node {
	t.Helper()
	cfg := Config{
		Region: r, Dir: dir, Dial: nw.dialer(r), Forward: nw.forwarder(r),
		HeartbeatTimeout: 300 * time.Millisecond, ElectionTimeout: 300 * time.Millisecond,
	}
	for _, f := range set {
		f(&cfg)
	}
	n, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	nw.mu.Lock()
	nw.nodes[r] = n
	nw.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; n.Close() })
	nw.mu.Lock()
	nw.stops[r] = func() { cancel(); <-done; n.Close() }
	nw.mu.Unlock()
	return n
}

func (nw *network) stop(r conflict.RegionID) {
	nw.mu.Lock()
	n := nw.nodes[r]
	delete(nw.nodes, r)
	nw.mu.Unlock()
	nw.partition(r, true)
	n.raft.Shutdown().Error()
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func apply(t *testing.T, n *Node, c regions.Command) regions.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	res, err := n.Apply(ctx, c)
	if err != nil {
		t.Fatalf("%s %s at %s: %v", c.Op, c.Region, n.cfg.Region, err)
	}
	return res
}

// foundThree initialises the cluster through n with us, eu and ap as
// founders.
func foundThree(t *testing.T, ctx context.Context, n *Node) {
	t.Helper()
	var founders []regions.Member
	for _, r := range []conflict.RegionID{"us", "eu", "ap"} {
		founders = append(founders, regions.Member{ID: r, URL: "https://" + string(r)})
	}
	if _, err := n.Init(ctx, regions.Command{Members: founders, Fingerprint: "fp1"}); err != nil {
		t.Fatal(err)
	}
}

// foundAlone initialises the cluster through n with its region as the
// only founder.
func foundAlone(t *testing.T, ctx context.Context, n *Node) {
	t.Helper()
	r := n.cfg.Region
	if _, err := n.Init(ctx, regions.Command{Members: []regions.Member{{ID: r, URL: "https://" + string(r) + ":7480"}}, Fingerprint: "fp1"}); err != nil {
		t.Fatal(err)
	}
}

func voters(n *Node) string { return strings.Join(n.Status().Voters, ",") }

func TestRegionsJoinTheControlPlaneAndVoteOnceActive(t *testing.T) {
	nw := newNetwork()
	us := nw.start(t, "us")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	foundAlone(t, ctx, us)
	if _, err := us.Init(ctx, regions.Command{Members: []regions.Member{{ID: "us"}}, Fingerprint: "fp1"}); !errors.Is(err, regions.ErrRefused) {
		t.Fatalf("a second init: got %v, want a refusal", err)
	}

	eu, ap := nw.start(t, "eu"), nw.start(t, "ap")
	apply(t, us, regions.Command{Op: regions.OpAdd, Region: "eu", URL: "https://eu:7480", From: "us"})
	eventually(t, "eu to follow the log as a non-voter", func() bool {
		st := us.Status()
		return eu.Membership().State("eu") == regions.Joining && strings.Join(st.Nonvoters, ",") == "eu" && voters(us) == "us"
	})
	// A joining region's commands are forwarded to the leader.
	if err := eu.Activate(ctx); err != nil {
		t.Fatal(err)
	}
	apply(t, eu, regions.Command{Op: regions.OpAdd, Region: "ap", URL: "https://ap:7480", From: "eu"})
	eventually(t, "ap to follow the log", func() bool { return ap.Membership().State("ap") == regions.Joining })
	if err := ap.Activate(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "three voters", func() bool { return voters(us) == "ap,eu,us" && voters(ap) == "ap,eu,us" })
	for _, n := range []*Node{us, eu, ap} {
		m := n.Membership()
		if got := m.Describe(); got != "ap=active,eu=active,us=active" {
			t.Fatalf("%s holds membership %s", n.cfg.Region, got)
		}
		if m.Epoch().Number != 1 || m.Epoch().Fingerprint != "fp1" {
			t.Fatalf("%s holds epoch %+v", n.cfg.Region, m.Epoch())
		}
	}
}

// A joining region that shipped transactions and is then removed is
// drained; it never voted and must not start to, or a region whose host
// is gone would take the cluster's majority with it.
func TestADrainedJoiningRegionNeverVotes(t *testing.T) {
	nw := newNetwork()
	us := nw.start(t, "us")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	foundAlone(t, ctx, us)
	// ap is added and never runs here: its host is gone.
	apply(t, us, regions.Command{Op: regions.OpAdd, Region: "ap", URL: "https://ap:7480", From: "us"})
	apply(t, us, regions.Command{Op: regions.OpReport, Region: "us", Progress: &regions.Progress{Takes: regions.TakesMembershipRules}})
	apply(t, us, regions.Command{Op: regions.OpReport, Region: "ap", Progress: &regions.Progress{Shipped: 1, Takes: regions.TakesMembershipRules}})
	if res := apply(t, us, regions.Command{Op: regions.OpRemove, Region: "ap"}); len(res.Waiting) == 0 {
		t.Fatalf("ap shipped a transaction and was removed without a drain: %+v", res)
	}
	// Give the leader's reconciliation time to act on the new state.
	time.Sleep(time.Second)
	if v := voters(us); v != "us" {
		t.Fatalf("voters while ap drains: %s, want us", v)
	}
	res := apply(t, us, regions.Command{Op: regions.OpRemove, Region: "ap", Force: true})
	if us.Membership().State("ap") != regions.Removed {
		t.Fatalf("ap after a forced removal: %s (%+v)", us.Membership().State("ap"), res)
	}
}

// Reading the region's positions waits for its database and reader; the
// leader must keep raft's voters in line with the membership meanwhile.
func TestAStuckPositionReadDoesNotHoldTheVoters(t *testing.T) {
	nw := newNetwork()
	us := nw.startIn(t, "us", t.TempDir(), func(c *Config) {
		c.ReportInterval = 100 * time.Millisecond
		c.Progress = func(ctx context.Context) (regions.Progress, error) {
			<-ctx.Done() // a database that does not answer
			return regions.Progress{}, ctx.Err()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	foundAlone(t, ctx, us)
	eu := nw.start(t, "eu")
	apply(t, us, regions.Command{Op: regions.OpAdd, Region: "eu", URL: "https://eu:7480", From: "us"})
	eventually(t, "eu to follow the log", func() bool { return eu.Membership().State("eu") == regions.Joining })
	if err := eu.Activate(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "eu to vote", func() bool { return voters(us) == "eu,us" })
}

func TestAChangeBeforeInitSaysSo(t *testing.T) {
	nw := newNetwork()
	us := nw.start(t, "us")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := us.Apply(ctx, regions.Command{Op: regions.OpAdd, Region: "eu", URL: "https://eu:7480", From: "us"})
	if !errors.Is(err, ErrNoQuorum) || !strings.Contains(err.Error(), "cluster init") {
		t.Fatalf("a change before init: got %v, want an error naming cluster init", err)
	}
}

func TestAChangeIsRefusedWithoutAMajorityAndTheMajorityGoesOn(t *testing.T) {
	nw := newNetwork()
	us, eu, ap := nw.start(t, "us"), nw.start(t, "eu"), nw.start(t, "ap")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	foundThree(t, ctx, us)
	eventually(t, "every founder to apply the init", func() bool {
		return eu.Membership().Epoch().Number == 1 && ap.Membership().Epoch().Number == 1
	})

	nw.partition("ap", true)
	eventually(t, "ap to see it has no quorum", func() bool { return !ap.Status().Quorum })
	short, cancelShort := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancelShort()
	_, err := ap.Apply(short, regions.Command{Op: regions.OpAdd, Region: "sa", URL: "https://sa", From: "ap"})
	if !errors.Is(err, ErrNoQuorum) || !strings.Contains(err.Error(), "ap, eu, us") {
		t.Fatalf("a change in the minority: got %v, want ErrNoQuorum naming the voters", err)
	}
	res := apply(t, eu, regions.Command{Op: regions.OpRemove, Region: "ap", Force: true})
	if res.Lost != 0 {
		t.Fatalf("ap reported nothing shipped, yet %d counted lost", res.Lost)
	}
	if ap.Membership().State("ap") != regions.Active {
		t.Fatal("the minority applied a change it cannot have heard of")
	}
	eventually(t, "ap out of the voters", func() bool { return voters(us) == "eu,us" })
	if !us.Removed("ap") || us.Removed("eu") {
		t.Fatal("the majority must refuse the removed region's link, and only it")
	}

	// The leader goes: the other region cannot win alone (one of two).
	leader := us.Status().Leader
	nw.stop(leader)
	other := map[conflict.RegionID]*Node{"us": eu, "eu": us}[leader]
	eventually(t, "the survivor to lose its quorum", func() bool { return !other.Status().Quorum })
}

func TestTheNextLeaderTakesOverWhenTheLeaderStops(t *testing.T) {
	nw := newNetwork()
	nodes := map[conflict.RegionID]*Node{"us": nw.start(t, "us"), "eu": nw.start(t, "eu"), "ap": nw.start(t, "ap")}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	foundThree(t, ctx, nodes["us"])
	old := nodes["us"].Status()
	nw.stop(old.Leader)
	delete(nodes, old.Leader)
	var next *Node
	eventually(t, "a new leader", func() bool {
		for _, n := range nodes {
			if st := n.Status(); st.Role == "leader" && st.Term > old.Term {
				next = n
				return true
			}
		}
		return false
	})
	for _, n := range nodes {
		apply(t, n, regions.Command{Op: regions.OpAdd, Region: conflict.RegionID("x" + string(n.cfg.Region)), URL: "https://x", From: next.cfg.Region})
	}
	for _, n := range nodes {
		eventually(t, "both adds everywhere", func() bool { m := n.Membership(); return len(m.Members) == 5 })
	}
}

func TestARestartedRegionKnowsTheMembershipWithoutALeader(t *testing.T) {
	nw := newNetwork()
	dirs := map[conflict.RegionID]string{"us": t.TempDir(), "eu": t.TempDir(), "ap": t.TempDir()}
	var nodes []*Node
	for _, r := range []conflict.RegionID{"us", "eu", "ap"} {
		nodes = append(nodes, nw.startIn(t, r, dirs[r]))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	foundThree(t, ctx, nodes[0])
	apply(t, nodes[1], regions.Command{Op: regions.OpAdd, Region: "sa", URL: "https://sa", From: "us"})
	eventually(t, "every region to apply the add", func() bool {
		for _, n := range nodes {
			if n.Membership().State("sa") != regions.Joining {
				return false
			}
		}
		return true
	})
	eventually(t, "every region to snapshot the membership with sa", func() bool {
		for _, n := range nodes {
			if last := n.snapped.Load(); last == nil || n.shape() != *last {
				return false
			}
		}
		return true
	})
	for _, r := range []conflict.RegionID{"us", "eu", "ap"} {
		nw.stop(r)
		nw.mu.Lock()
		stop := nw.stops[r]
		nw.mu.Unlock()
		stop()
	}
	// us comes back alone: no leader, yet it knows sa was added.
	us := nw.startIn(t, "us", dirs["us"])
	if m := us.Membership(); m.State("sa") != regions.Joining || m.Epoch().Number != 1 {
		t.Fatalf("a region restarted without a majority knows membership %s (epoch %d)", m.Describe(), m.Epoch().Number)
	}
	if us.Status().Quorum {
		t.Fatal("one of three voters claims a quorum")
	}
}

// A region whose log lags (it hears no raft traffic, though it reaches the
// leader) cannot confirm its membership current: Current fails rather than
// answer with a membership missing a region added meanwhile. Once it
// applies the log, Current holds the added region, on the leader and on a
// follower alike.
func TestCurrentHoldsEveryChangeCommittedBeforeIt(t *testing.T) {
	nw := newNetwork()
	us, eu, ap := nw.start(t, "us"), nw.start(t, "eu"), nw.start(t, "ap")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	foundThree(t, ctx, us)
	nodes := map[conflict.RegionID]*Node{"us": us, "eu": eu, "ap": ap}
	eventually(t, "every founder to apply the init and one to lead", func() bool {
		return eu.Membership().Epoch().Number == 1 && ap.Membership().Epoch().Number == 1 && us.Status().Leader != ""
	})
	leader := nodes[us.Status().Leader]
	var lagging *Node
	for id, n := range nodes {
		if n != leader {
			lagging = n
			nw.silence(id, true)
			break
		}
	}
	apply(t, leader, regions.Command{Op: regions.OpAdd, Region: "sa", URL: "https://sa", From: leader.cfg.Region})
	if lagging.Membership().State("sa") != "" {
		t.Fatal("a region that hears no raft traffic applied the add")
	}
	short, cancelShort := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancelShort()
	if m, err := lagging.Current(short); err == nil {
		t.Fatalf("a lagging region confirmed membership %s as current, without sa", m.Describe())
	}
	nw.silence(lagging.cfg.Region, false)
	for _, n := range []*Node{leader, lagging} {
		m, err := n.Current(ctx)
		if err != nil {
			t.Fatalf("%s: %v", n.cfg.Region, err)
		}
		if m.State("sa") != regions.Joining {
			t.Fatalf("%s: Current returned %s, without the added sa", n.cfg.Region, m.Describe())
		}
	}
}
