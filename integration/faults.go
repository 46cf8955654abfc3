package integration

// Fault injection for runs of package harness. It lives here, not in the
// harness, so that the shipped binary (whose demo uses the harness) does
// not link it.
//
// Network faults use toxiproxy (github.com/Shopify/toxiproxy/v2) as a
// library: one in-process TCP proxy on 127.0.0.1 per directed link, placed
// by rewriting the peer URLs in the regions' configs. Toxiproxy works on TCP
// streams, so it has no packet loss as such; what loss does to a TCP
// connection is modelled instead: delay and jitter (latency), a narrow pipe
// (bandwidth), data arriving in dribbles (slicer), a stall in which nothing
// flows until the connection is given up (timeout), connections cut after a
// number of bytes (limit_data) or reset (reset_peer). Every fault keeps the
// byte stream intact up to the point where the connection ends, as TCP does.
// Whole-host faults (network namespaces with tc netem) are not used: they
// need root and leave state behind when a test dies.
//
// Direction. A region's follower pulls each peer's outbox: region A's
// replicator opens an HTTP/2 connection to peer B's link server and receives
// B's transactions on it; its acknowledgements to B travel on the same
// connection. So the link Link{From: A, To: B} is "A can reach B", and it
// carries B's changes to A (and A's acks back to B). A one-way partition
// Cut(Link{A, B}) means: A no longer receives B's changes (and B's outbox
// for A is not acknowledged), while B still receives A's changes over
// Link{B, A}. Toxics on a link apply to both directions of its connections
// unless a helper says otherwise ("upstream" is A's requests to B,
// "downstream" is B's stream to A).
//
// Process faults: kill -9 and SIGSTOP/SIGCONT of a replicator (the harness
// runs it as a child process) and of a PostgreSQL server (the postmaster,
// taken from postmaster.pid, and its children).
//
// Clock offset: a replicator's hybrid clock comes from the commit
// timestamps in its region's change stream, so a region's clock is its
// PostgreSQL server's clock. SetClockOffset restarts a cluster with
// libfaketime preloaded (Debian package faketime, installed by
// .ci/setup-faults) so that every timestamp it produces is shifted.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// Link is a directed link: From's follower connecting to To's link server.
// It carries To's transactions to From, and From's acknowledgements to To.
type Link struct{ From, To string }

func (l Link) String() string { return l.From + "->" + l.To }

// NetFaults holds a proxy for every directed link between regions.
type NetFaults struct {
	mu      sync.Mutex
	server  *toxiproxy.ApiServer
	proxies map[Link]*toxiproxy.Proxy
	seq     int
}

// NewNetFaults returns an empty set of link proxies. Install it with
// Spec.Configure = nf.Configure(nil) (or wrapping another Configure) before
// Start; Close it after the harness.
func NewNetFaults() *NetFaults {
	// Toxiproxy's toxics log through zerolog's global logger at trace
	// level; nothing else in the test binaries uses zerolog.
	zerolog.SetGlobalLevel(zerolog.ErrorLevel)
	return &NetFaults{
		server:  toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop()),
		proxies: map[Link]*toxiproxy.Proxy{},
	}
}

// Configure returns a Spec.Configure hook that puts a proxy in front of
// every peer URL of every region (after calling next, if set). A config
// hook cannot return an error: a proxy that fails to start is reported by
// Check (and the region then points at a dead address).
func (n *NetFaults) Configure(next func(region string, c *RegionConfig)) func(region string, c *RegionConfig) {
	return func(region string, c *RegionConfig) {
		if next != nil {
			next(region, c)
		}
		// Every region's listen address is chosen but not yet bound: a
		// proxy must not take one of those ports.
		reserved := map[string]bool{c.Listen: true}
		for _, p := range c.Peers {
			if u, err := url.Parse(p.URL); err == nil {
				reserved[u.Host] = true
			}
		}
		for i, p := range c.Peers {
			u, err := url.Parse(p.URL)
			if err != nil {
				continue
			}
			addr, err := n.add(Link{From: region, To: p.ID}, u.Host, reserved)
			if err != nil {
				continue
			}
			u.Host = addr
			c.Peers[i].URL = u.String()
		}
	}
}

func (n *NetFaults) add(l Link, upstream string, reserved map[string]bool) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if p, ok := n.proxies[l]; ok {
		p.Stop()
	}
	var listen string
	for {
		port, err := FreePort()
		if err != nil {
			return "", err
		}
		listen = fmt.Sprintf("127.0.0.1:%d", port)
		if !reserved[listen] {
			break
		}
	}
	p := toxiproxy.NewProxy(n.server, l.String(), listen, upstream)
	if err := p.Start(); err != nil {
		return "", fmt.Errorf("proxy %s: %w", l, err)
	}
	n.proxies[l] = p
	return p.Listen, nil
}

// Links lists the proxied links in a stable order.
func (n *NetFaults) Links() []Link {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]Link, 0, len(n.proxies))
	for l := range n.proxies {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// Check reports whether every link between the given regions has a proxy.
func (n *NetFaults) Check(regions []string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	var missing []string
	for _, a := range regions {
		for _, b := range regions {
			if a != b && n.proxies[Link{a, b}] == nil {
				missing = append(missing, Link{a, b}.String())
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("no proxy on links %s", strings.Join(missing, ", "))
	}
	return nil
}

func (n *NetFaults) proxy(l Link) (*toxiproxy.Proxy, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	p := n.proxies[l]
	if p == nil {
		return nil, fmt.Errorf("no proxy on link %s", l)
	}
	return p, nil
}

// Toxic adds a toxic to a link. stream is "upstream" (From's requests to
// To), "downstream" (To's responses and stream to From) or "both". It
// returns the names of the toxics added, for RemoveToxic.
func (n *NetFaults) Toxic(l Link, typ, stream string, attrs map[string]any) ([]string, error) {
	p, err := n.proxy(l)
	if err != nil {
		return nil, err
	}
	streams := []string{stream}
	if stream == "both" {
		streams = []string{"upstream", "downstream"}
	}
	var names []string
	for _, s := range streams {
		n.mu.Lock()
		n.seq++
		name := fmt.Sprintf("%s_%s_%d", typ, s, n.seq)
		n.mu.Unlock()
		b, err := json.Marshal(map[string]any{"name": name, "type": typ, "stream": s, "toxicity": 1.0, "attributes": attrs})
		if err != nil {
			return names, err
		}
		if _, err := p.Toxics.AddToxicJson(strings.NewReader(string(b))); err != nil {
			return names, fmt.Errorf("link %s: add %s toxic: %w", l, typ, err)
		}
		names = append(names, name)
	}
	return names, nil
}

// RemoveToxic removes toxics added by Toxic.
func (n *NetFaults) RemoveToxic(l Link, names ...string) error {
	p, err := n.proxy(l)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		if err := p.Toxics.RemoveToxic(context.Background(), name); err != nil {
			errs = append(errs, fmt.Errorf("link %s: remove toxic %s: %w", l, name, err))
		}
	}
	return errors.Join(errs...)
}

// Latency delays data both ways on a link by latency ± jitter (so a round
// trip costs about twice latency).
func (n *NetFaults) Latency(l Link, latency, jitter time.Duration) ([]string, error) {
	return n.Toxic(l, "latency", "both", map[string]any{"latency": latency.Milliseconds(), "jitter": jitter.Milliseconds()})
}

// Bandwidth caps the link at kbps kilobytes per second each way.
func (n *NetFaults) Bandwidth(l Link, kbps int64) ([]string, error) {
	return n.Toxic(l, "bandwidth", "both", map[string]any{"rate": kbps})
}

// Dribble slices the peer's stream into small pieces with a delay between
// them: what retransmissions after loss look like to the receiver.
func (n *NetFaults) Dribble(l Link, avgBytes int, delay time.Duration) ([]string, error) {
	return n.Toxic(l, "slicer", "downstream", map[string]any{"average_size": avgBytes, "size_variation": avgBytes / 2, "delay": delay.Microseconds()})
}

// Stall stops all data on the link's connections, existing and new, as
// heavy loss does; after `after` (0: never) the proxy closes each stalled
// connection. Removing the toxic (RemoveToxic or Heal) closes them too.
func (n *NetFaults) Stall(l Link, after time.Duration) ([]string, error) {
	return n.Toxic(l, "timeout", "both", map[string]any{"timeout": after.Milliseconds()})
}

// ResetAfter resets (TCP RST) each connection on the link once data has
// flowed on it and after more passed, until removed.
func (n *NetFaults) ResetAfter(l Link, after time.Duration) ([]string, error) {
	return n.Toxic(l, "reset_peer", "downstream", map[string]any{"timeout": after.Milliseconds()})
}

// LimitData closes each connection on the link after the peer sent bytes
// bytes on it, until removed.
func (n *NetFaults) LimitData(l Link, bytes int64) ([]string, error) {
	return n.Toxic(l, "limit_data", "downstream", map[string]any{"bytes": bytes})
}

// ResetConnections closes every open connection on the link once; new ones
// are accepted right away.
func (n *NetFaults) ResetConnections(l Link) error {
	p, err := n.proxy(l)
	if err != nil {
		return err
	}
	p.Stop()
	return startProxy(p)
}

// startProxy starts a stopped proxy on its old address; the port was just
// released, so a failed bind is retried briefly.
func startProxy(p *toxiproxy.Proxy) error {
	var err error
	for i := 0; i < 50; i++ {
		if err = p.Start(); err == nil || errors.Is(err, toxiproxy.ErrProxyAlreadyStarted) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("restart proxy %s: %w", p.Name, err)
}

// Cut disables a link: From can no longer reach To (connections are refused
// and open ones closed). To's changes stop reaching From; From's changes
// still reach To unless Link{To, From} is cut too.
func (n *NetFaults) Cut(l Link) error {
	p, err := n.proxy(l)
	if err != nil {
		return err
	}
	p.Stop()
	return nil
}

// Partition cuts both directions between a and b.
func (n *NetFaults) Partition(a, b string) error {
	return errors.Join(n.Cut(Link{a, b}), n.Cut(Link{b, a}))
}

// Isolate cuts every link to and from region r.
func (n *NetFaults) Isolate(r string) error {
	var errs []error
	for _, l := range n.Links() {
		if l.From == r || l.To == r {
			errs = append(errs, n.Cut(l))
		}
	}
	return errors.Join(errs...)
}

// Heal removes every toxic from a link and enables it again.
func (n *NetFaults) Heal(l Link) error {
	p, err := n.proxy(l)
	if err != nil {
		return err
	}
	p.Toxics.ResetToxics(context.Background())
	return startProxy(p)
}

// HealAll heals every link.
func (n *NetFaults) HealAll() error {
	var errs []error
	for _, l := range n.Links() {
		errs = append(errs, n.Heal(l))
	}
	return errors.Join(errs...)
}

// Close stops every proxy.
func (n *NetFaults) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range n.proxies {
		p.Stop()
	}
}

// ---- process faults ----

// CrashReplicator kills r's replicator with SIGKILL and starts it again
// after pause.
func CrashReplicator(r *Region, pause time.Duration) error {
	if err := r.StopReplicator(syscall.SIGKILL); err != nil {
		return err
	}
	time.Sleep(pause)
	return r.StartReplicator()
}

// PauseReplicator freezes r's replicator (SIGSTOP).
func PauseReplicator(r *Region) error { return r.Signal(syscall.SIGSTOP) }

// ResumeReplicator resumes r's frozen replicator (SIGCONT).
func ResumeReplicator(r *Region) error { return r.Signal(syscall.SIGCONT) }

// EnsureReplicator starts r's replicator again if its process has exited
// (as a service manager would) and reports whether it had to.
func EnsureReplicator(r *Region) (bool, error) {
	if r.Running() {
		return false, nil
	}
	_ = r.StopReplicator(syscall.SIGKILL) // reap the exited process
	return true, r.StartReplicator()
}

// KillServer sends SIGKILL to c's postmaster (a crash) and waits for its
// children to go. It does not start the server again (CrashServer does).
func KillServer(ctx context.Context, c *Cluster) error {
	pid, err := c.PID()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return err
	}
	// Children exit once they notice the postmaster is gone.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if !c.Running(ctx) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	return nil
}

// CrashServer kills c's PostgreSQL server with SIGKILL (postmaster, then
// its children notice) and starts it again after pause.
func CrashServer(ctx context.Context, c *Cluster, pause time.Duration) error {
	if err := KillServer(ctx, c); err != nil {
		return err
	}
	time.Sleep(pause)
	return c.Start(ctx)
}

// signalServer signals c's postmaster and every child of it (each backend
// runs in a session of its own, so there is no process group to signal).
// The postmaster goes first, so that no new child escapes a SIGSTOP.
func signalServer(c *Cluster, sig syscall.Signal) error {
	pid, err := c.PID()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, sig); err != nil {
		return err
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at the last ')'.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			_ = syscall.Kill(child, sig)
		}
	}
	return nil
}

// PauseServer freezes c's server and every backend (SIGSTOP).
func PauseServer(c *Cluster) error { return signalServer(c, syscall.SIGSTOP) }

// ResumeServer resumes c's frozen server (SIGCONT).
func ResumeServer(c *Cluster) error { return signalServer(c, syscall.SIGCONT) }

// FaketimeLib finds libfaketime (Debian package faketime).
func FaketimeLib() (string, error) {
	for _, p := range []string{
		"/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
		"/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
		"/usr/lib/faketime/libfaketime.so.1",
		"/usr/local/lib/faketime/libfaketime.so.1",
	} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("libfaketime not found: install the faketime package (.ci/setup-faults)")
}

// SetClockOffset restarts cluster c with its clock shifted by offset
// (libfaketime); 0 restores the real clock. The replicator of the region
// must reconnect afterwards (it does so on its own, or is not running yet).
func SetClockOffset(ctx context.Context, c *Cluster, offset time.Duration) error {
	var env []string
	if offset != 0 {
		lib, err := FaketimeLib()
		if err != nil {
			return err
		}
		env = []string{
			"LD_PRELOAD=" + lib,
			fmt.Sprintf("FAKETIME=%+d", int64(offset/time.Second)),
			"FAKETIME_DONT_FAKE_MONOTONIC=1",
			"FAKETIME_DONT_RESET=1",
		}
	}
	if err := c.Stop(ctx, "fast"); err != nil {
		return err
	}
	c.Env = env
	return c.Start(ctx)
}
