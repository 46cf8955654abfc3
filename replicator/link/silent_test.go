package link

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/polyregion/polyregion/replicator"
)

// silentProxy forwards TCP connections to target until silence: from then
// on the connections it already carries forward nothing in either
// direction but stay open (a path that went silent: no reset, no FIN),
// while new connections are forwarded as before.
type silentProxy struct {
	ln       net.Listener
	target   string
	accepted atomic.Int32
	// paced forwards at most 16 KB every 10 ms (about 1.6 MB/s: a slow
	// path, not a silent one).
	paced bool

	mu    sync.Mutex
	pairs []*proxied
}

type proxied struct {
	client, server net.Conn
	silent         atomic.Bool
}

func newSilentProxy(t *testing.T, target string, paced bool) *silentProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &silentProxy{ln: ln, target: target, paced: paced}
	go p.accept()
	t.Cleanup(p.close)
	return p
}

func (p *silentProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		pair := &proxied{client: c, server: s}
		p.mu.Lock()
		p.pairs = append(p.pairs, pair)
		p.mu.Unlock()
		go pair.forward(c, s, p.paced)
		go pair.forward(s, c, p.paced)
	}
}

// forward copies src to dst until the pair goes silent, then reads and
// drops what src sends (so neither side sees its writes fail).
func (p *proxied) forward(src, dst net.Conn, paced bool) {
	buf := make([]byte, 32<<10)
	if paced {
		buf = buf[:16<<10]
	}
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.silent.Load() {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
			if paced {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if err != nil {
			return
		}
	}
}

// silence makes every connection carried so far go silent.
func (p *silentProxy) silence() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pair := range p.pairs {
		pair.silent.Store(true)
	}
}

func (p *silentProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pair := range p.pairs {
		pair.client.Close()
		pair.server.Close()
	}
}

// silentClient serves ob and returns a client that reaches it through a
// proxy whose path can go silent, with a short idle timeout.
func silentClient(t *testing.T, ob *memOutbox) (*Client, *silentProxy) {
	return proxiedClient(t, ob, false)
}

// proxiedClient is silentClient with the path paced when paced is set.
func proxiedClient(t *testing.T, ob *memOutbox, paced bool) (*Client, *silentProxy) {
	t.Helper()
	target := serve(t, ob, TLSFiles{}, cluster)
	px := newSilentProxy(t, strings.TrimPrefix(target, "http://"), paced)
	cl, err := NewClient(ClientConfig{Region: "eu", Peer: "us", URL: "http://" + px.ln.Addr().String(), Token: secret,
		Cluster: cluster, IdleTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl, px
}

// After the idle watchdog ended a stream whose path went silent, the next
// stream reaches the peer again (over a new connection) instead of waiting
// on the dead one until the kernel gives up on it (about 15 minutes).
func TestStreamAfterASilentPathReachesThePeerAgain(t *testing.T) {
	ob := newMemOutbox()
	ob.add(txn(1))
	cl, px := silentClient(t, ob)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := cl.Stream(ctx, 0, func(*replicator.Txn) error {
		px.silence()
		return nil
	})
	if err == nil || ctx.Err() != nil {
		t.Fatalf("stream over a silent path: %v (test context: %v), want the idle watchdog to end it", err, ctx.Err())
	}

	ob.add(txn(2))
	start := time.Now()
	got, err := collect(t, cl, 1, 1)
	if took := time.Since(start); err != nil || len(got) != 1 || got[0] != 2 || took > 3*time.Second {
		t.Fatalf("next stream after a silent path: %v, %v after %s; want transaction 2 within 3s", got, err, took.Round(time.Millisecond))
	}
	if n := px.accepted.Load(); n < 2 {
		t.Fatalf("%d connection(s) dialled, want a new one after the silent path", n)
	}
}

// A request sent on a connection whose path went silent, with no stream
// and so no watchdog to notice, fails once the connection's ping goes
// unanswered instead of waiting for the kernel; the next one dials anew.
func TestAckOnASilentPathFailsAfterAnUnansweredPing(t *testing.T) {
	ob := newMemOutbox()
	ob.add(txn(1))
	cl, px := silentClient(t, ob)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := cl.Ack(ctx, 0); err != nil {
		t.Fatal(err)
	}

	px.silence()
	start := time.Now()
	err := cl.Ack(ctx, 0)
	if took := time.Since(start); err == nil || ctx.Err() != nil || took > 3*time.Second {
		t.Fatalf("ack over a silent path: %v after %s, want it to fail within 3s", err, took.Round(time.Millisecond))
	}
	if err := cl.Ack(ctx, 0); err != nil {
		t.Fatalf("the ack after: %v", err)
	}
	if n := px.accepted.Load(); n < 2 {
		t.Fatalf("%d connection(s) dialled, want a new one after the silent path", n)
	}
}

// A transaction whose frame takes longer than the idle timeout to arrive
// over a slow path (here about 1 s for 1.5 MB, against a 300 ms timeout)
// still arrives: bytes arriving keep the stream alive, not only whole
// frames. Before, the watchdog ended the stream mid-frame and the next
// stream started the same frame again, never getting past it.
func TestAFrameSlowerThanTheIdleTimeoutArrives(t *testing.T) {
	ob := newMemOutbox()
	big := txn(1)
	text := make([]byte, 768<<10)
	if _, err := rand.Read(text); err != nil {
		t.Fatal(err)
	}
	big.Changes[0].Row[0].Text = hex.EncodeToString(text) // 1.5 MB that no compression shrinks
	ob.add(big)
	ob.add(txn(2))
	cl, _ := proxiedClient(t, ob, true)
	start := time.Now()
	got, err := collect(t, cl, 0, 2)
	if err != nil || len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("stream over a slow path: %v, %v after %s; want transactions 1 and 2", got, err, time.Since(start).Round(time.Millisecond))
	}
	if took := time.Since(start); took < 600*time.Millisecond {
		t.Fatalf("the path was not slow: the frame arrived in %s, under twice the idle timeout", took.Round(time.Millisecond))
	}
}
