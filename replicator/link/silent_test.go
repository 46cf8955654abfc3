package link

import (
	"context"
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

	mu    sync.Mutex
	pairs []*proxied
}

type proxied struct {
	client, server net.Conn
	silent         atomic.Bool
}

func newSilentProxy(t *testing.T, target string) *silentProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &silentProxy{ln: ln, target: target}
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
		go pair.forward(c, s)
		go pair.forward(s, c)
	}
}

// forward copies src to dst until the pair goes silent, then reads and
// drops what src sends (so neither side sees its writes fail).
func (p *proxied) forward(src, dst net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.silent.Load() {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
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
	t.Helper()
	target := serve(t, ob, TLSFiles{}, cluster)
	px := newSilentProxy(t, strings.TrimPrefix(target, "http://"))
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
