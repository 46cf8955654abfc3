package node

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator/link"
)

// links is the handler of the region's link address for the whole life of
// the process: control-plane requests (/v1/control/) are served whether
// or not the data plane runs, so a region whose database is away (or that
// is still loading its snapshot) keeps its vote; the data plane's streams,
// acknowledgements and snapshots are served while a run of it is up, and
// answered 503 otherwise.
type links struct {
	region  conflict.RegionID
	control atomic.Pointer[http.Handler] // nil: no control plane

	mu  sync.Mutex
	cur *dataLinks
}

// dataLinks is one run of the data plane's link handler and its requests.
type dataLinks struct {
	h      http.Handler
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func (l *links) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h := l.control.Load(); h != nil && strings.HasPrefix(r.URL.Path, "/v1/control/") {
		(*h).ServeHTTP(w, r)
		return
	}
	l.mu.Lock()
	cur := l.cur
	if cur != nil {
		cur.wg.Add(1)
	}
	l.mu.Unlock()
	if cur == nil {
		http.Error(w, "replication is not running in region "+string(l.region)+" (starting, loading a snapshot, or its database is unavailable)", http.StatusServiceUnavailable)
		return
	}
	defer cur.wg.Done()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	rc := http.NewResponseController(w)
	var mu sync.Mutex
	returned := false
	stop := context.AfterFunc(cur.ctx, func() {
		cancel()
		// A handler blocked writing to a peer that does not read (a
		// black-holed region) would not see the context: its next write
		// fails at once instead. Only while the handler runs: the
		// writer is gone once it returned.
		mu.Lock()
		defer mu.Unlock()
		if !returned {
			_ = rc.SetWriteDeadline(time.Now())
		}
	})
	defer func() {
		stop()
		mu.Lock()
		returned = true
		mu.Unlock()
	}()
	cur.h.ServeHTTP(w, r.WithContext(ctx))
}

// serve routes the data plane's requests to h until the returned stop is
// called: stop lets requests in flight go on for grace, then ends them
// and waits for their handlers to return. New requests are answered 503
// from the moment stop is called.
func (l *links) serve(h http.Handler) (stop func(grace time.Duration)) {
	ctx, cancel := context.WithCancel(context.Background())
	d := &dataLinks{h: h, ctx: ctx, cancel: cancel}
	l.mu.Lock()
	l.cur = d
	l.mu.Unlock()
	return func(grace time.Duration) {
		l.mu.Lock()
		if l.cur == d {
			l.cur = nil
		}
		l.mu.Unlock()
		done := make(chan struct{})
		go func() { d.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(grace):
		}
		d.cancel()
		select {
		case <-done:
		case <-time.After(handlersExit):
			// Not worth holding the data plane for: what such a handler
			// still holds is a connection, not data (positions are the
			// peers' to keep).
		}
	}
}

// handlersExit bounds the wait for the data plane's requests to end once
// they were told to.
const handlersExit = 5 * time.Second

// serveLinks listens on the link address for the life of the process and
// returns the function that stops serving it.
func (rt *runtime) serveLinks(cfg Config) (stop func(), err error) {
	srvTLS, err := link.ServerTLS(cfg.TLS)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	rt.links = &links{region: cfg.Region}
	rt.links.setControlTokens(rt, cfg)
	srv := link.NewHTTPServer(cfg.Listen, rt.links, srvTLS)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := link.Serve(srv, ln); err != nil {
			rt.log.Error("link server stopped: peers cannot reach this region until it restarts", "listen", cfg.Listen, "err", err)
		}
	}()
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		_ = srv.Close()
		<-done
	}, nil
}

// setControlTokens serves the control plane to cfg's peers, each
// authenticated by its token (nothing without a control plane).
func (l *links) setControlTokens(rt *runtime, cfg Config) {
	if rt.control == nil {
		return
	}
	h := link.NewServer(link.ServerConfig{
		Region: cfg.Region, Cluster: cfg.Cluster, Tokens: tokensOf(cfg.Peers, cfg.Witnesses), Logger: rt.log, Control: rt.control,
	}).Handler()
	l.control.Store(&h)
}

// peerIDs lists cfg's peers.
func peerIDs(cfg Config) []conflict.RegionID {
	out := make([]conflict.RegionID, len(cfg.Peers))
	for i, p := range cfg.Peers {
		out[i] = p.ID
	}
	return out
}

// tokensOf maps each peer to the token it presents.
func tokensOf(peers ...[]Peer) map[conflict.RegionID]string {
	tokens := map[conflict.RegionID]string{}
	for _, list := range peers {
		for _, p := range list {
			tokens[p.ID] = p.Token
		}
	}
	return tokens
}
