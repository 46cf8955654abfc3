// Package link ships a region's outbox to its peers over HTTP/2, with TLS
// or mutual TLS, and a per-peer bearer token.
//
// A peer asks for every transaction after the last one it durably applied;
// the stream resumes from exactly there after any disconnect, so nothing is
// lost or shipped twice across reconnects (the applier also drops
// duplicates by sequence number). A peer can acknowledge (or resume after)
// only what could have been shipped to it: a position beyond that is
// refused and changes nothing, so a forged or corrupt acknowledgement can
// neither trim transactions a peer still needs nor hold its position above
// what it will ever apply. Before any transaction is sent, both sides
// compare the fingerprint of the agreed configuration (regions and
// policies) and refuse to exchange changes when they differ.
package link

import (
	"bufio"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
)

// Entry is one outbox transaction (or one part of a large one), encoded.
type Entry struct {
	Seq     replicator.Seq
	Part    int
	More    bool // more parts of the same transaction follow
	Rows    int  // row changes in this entry (for metrics; 0 when unknown)
	Payload []byte
}

// Outbox is what the server reads from. Implementations must return entries
// in increasing Seq order with no gaps.
type Outbox interface {
	// Read returns up to limit entries after (seq, part), in (Seq, Part)
	// order, and whether more may be there already: true when it stopped
	// at limit or at a bound of its own, false when it returned every
	// entry there was (the server then waits for Changed instead of
	// reading again). Parts of a transaction become visible all at once.
	Read(ctx context.Context, seq replicator.Seq, part int, limit int) (entries []Entry, more bool, err error)
	// Changed returns a channel closed when new entries may exist.
	Changed() <-chan struct{}
	// Ack records that peer durably applied every entry up to seq.
	Ack(ctx context.Context, peer conflict.RegionID, seq replicator.Seq) error
	// Retained returns the oldest entry still kept (0 when none) and the
	// newest sequence number ever assigned.
	Retained(ctx context.Context) (oldest, newest replicator.Seq, err error)
}

// Hello is the first frame of a stream: who is speaking and what it agreed to.
type Hello struct {
	Region      conflict.RegionID `json:"region"`
	Fingerprint string            `json:"fingerprint"`
	Describe    map[string]string `json:"describe"`
	// Epochs are the policy changes the speaker knows (regions.Cluster.Offer):
	// a region cut off from the control plane learns from them an epoch
	// its peer ships under (see regions/learn.go). Absent from releases
	// before policy changes, and while none was made.
	Epochs []regions.Epoch `json:"epochs,omitempty"`
	// Encoding is the encoding the speaker's database sessions exchange
	// text in (see postgres.TextEncoding): the bytes of every text value it
	// ships are in it (postgres.KeepTextEncoding). Absent from releases
	// before it was sent.
	Encoding string `json:"encoding,omitempty"`
}

// Frame types.
const (
	frameHello     = 'H'
	frameTxn       = 'T'
	frameKeepalive = 'K'
)

// ErrConfigMismatch is returned when a peer's agreed configuration differs.
var ErrConfigMismatch = errors.New("peer's replication config differs")

// ErrUnauthorized is returned when a peer refuses this region's credentials.
var ErrUnauthorized = errors.New("peer refused credentials")

// ErrTooFarBehind is returned when the transactions a region needs from a
// peer are no longer in the peer's outbox (it exceeded its retention cap):
// the region must be re-seeded from a live one.
var ErrTooFarBehind = errors.New("peer no longer holds the transactions this region needs")

// ErrRefused is returned when a peer refuses a position this region sent
// it: an acknowledgement or a resume position beyond what it shipped.
var ErrRefused = errors.New("peer refused a position beyond what it shipped")

// Reasons a Server refuses a peer's request, as ServerConfig.Refused
// reports them.
const (
	// RefusedAckBeyondShipped: an acknowledgement of a transaction never
	// shipped to the peer.
	RefusedAckBeyondShipped = "ack_beyond_shipped"
	// RefusedResumeBeyondNewest: a stream asked to resume after a
	// transaction this region never assigned.
	RefusedResumeBeyondNewest = "resume_beyond_newest"
)

// RefusalReasons lists every reason ServerConfig.Refused may report.
var RefusalReasons = []string{RefusedAckBeyondShipped, RefusedResumeBeyondNewest}

// MismatchError names what differs.
type MismatchError struct {
	Peer        conflict.RegionID
	Differences []string
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("%s: region %s: %s", ErrConfigMismatch, e.Peer, strings.Join(e.Differences, "; "))
}
func (e *MismatchError) Unwrap() error { return ErrConfigMismatch }

// ServerConfig configures the serving side of the links.
type ServerConfig struct {
	Region  conflict.RegionID
	Cluster regions.Cluster
	// Tokens holds, per peer, the secret it must present.
	Tokens map[conflict.RegionID]string
	Outbox Outbox
	Logger *slog.Logger
	// BatchSize bounds entries read from the outbox at once.
	BatchSize int
	// Keepalive is the interval between keepalive frames (sent whether or
	// not transactions flow).
	Keepalive time.Duration
	// Advert, when set, returns the payload carried by keepalive frames: the
	// region's replication watermark, which peers use to collect tombstones.
	Advert func() []byte
	// Shipped, when set, is called for each entry written to a peer's
	// stream (for metrics); it must not block.
	Shipped func(peer conflict.RegionID, e Entry)
	// Refused, when set, is called for each request refused for claiming a
	// position beyond what was shipped, with one of RefusalReasons (for
	// metrics); it must not block.
	Refused func(peer conflict.RegionID, reason string)
	// Snapshot, when set, writes a consistent snapshot of this region for
	// a joining peer (see /v1/snapshot).
	Snapshot func(ctx context.Context, peer conflict.RegionID, w io.Writer) error
	// Control, when set, is the region's control plane: peers reach it
	// over the link (/v1/control/...), and peers it removed are refused.
	Control Control
	// Encoding is the text encoding of this region's database sessions,
	// sent in each stream's hello (see Hello.Encoding).
	Encoding string
}

// Server serves /v1/stream, /v1/ack and /v1/snapshot.
type Server struct {
	cfg ServerConfig

	mu sync.Mutex
	// shipped holds, per peer that opened a stream from this process, the
	// highest transaction the peer may have applied: the largest position a
	// stream resumed after, or transaction written whole to its stream.
	shipped map[conflict.RegionID]replicator.Seq
	// refusals rate-limits the log line of refused requests.
	refusals map[refusalKey]*refusalLog
}

type refusalKey struct {
	peer   conflict.RegionID
	reason string
}

type refusalLog struct {
	last       time.Time
	suppressed int
}

// refusalLogEvery is the least time between two log lines for the same
// peer and reason (each refusal is counted whatever is logged).
const refusalLogEvery = time.Minute

// NewServer returns a Server; mount Handler on an http.Server.
func NewServer(cfg ServerConfig) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 500
	}
	if cfg.Keepalive <= 0 {
		cfg.Keepalive = 2 * time.Second
	}
	return &Server{cfg: cfg, shipped: map[conflict.RegionID]replicator.Seq{}, refusals: map[refusalKey]*refusalLog{}}
}

// noteShipped records that peer may have applied every transaction up to
// seq.
func (s *Server) noteShipped(peer conflict.RegionID, seq replicator.Seq) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.shipped[peer]; !ok || seq > cur {
		s.shipped[peer] = seq
	}
}

// ackBound returns the highest transaction peer may acknowledge, and
// whether it is what this process shipped (else the newest assigned).
//
// The rule: once the peer has opened a stream from this process, the bound
// is the largest position one of its streams resumed after (checked against
// the newest sequence assigned when the stream opened) or the last
// transaction written whole to one of them. Before that (this process has
// just started), a previous process may have shipped anything up to the
// newest sequence ever assigned, and the peer's acknowledgement of it may
// arrive before its stream reconnects: the bound is that newest sequence.
// An honest peer acknowledges only what it applied, and resumes after that
// too, so it is never refused; and no acknowledgement beyond the newest
// sequence ever assigned is recorded, in any case.
func (s *Server) ackBound(ctx context.Context, peer conflict.RegionID) (replicator.Seq, bool, error) {
	s.mu.Lock()
	bound, streamed := s.shipped[peer]
	s.mu.Unlock()
	if streamed {
		return bound, true, nil
	}
	_, newest, err := s.cfg.Outbox.Retained(ctx)
	return newest, false, err
}

// refuse answers a request that claims a position beyond what was shipped:
// 422 with msg, counted for every refusal, logged for the first of each
// peer and reason and then at most once per refusalLogEvery.
func (s *Server) refuse(w http.ResponseWriter, peer conflict.RegionID, reason, msg string) {
	if s.cfg.Refused != nil {
		s.cfg.Refused(peer, reason)
	}
	s.mu.Lock()
	k := refusalKey{peer, reason}
	l := s.refusals[k]
	if l == nil {
		l = &refusalLog{}
		s.refusals[k] = l
	}
	due := l.last.IsZero() || time.Since(l.last) >= refusalLogEvery
	suppressed := l.suppressed
	if due {
		l.last, l.suppressed = time.Now(), 0
	} else {
		l.suppressed++
	}
	s.mu.Unlock()
	if due {
		s.cfg.Logger.Error("link: refused a position beyond what was shipped to the peer; nothing recorded",
			"peer", string(peer), "reason", reason, "detail", msg, "refused_since_last_logged", suppressed)
	}
	http.Error(w, msg, http.StatusUnprocessableEntity)
}

// Handler returns the HTTP handler for the link endpoints.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/stream", s.stream)
	mux.HandleFunc("POST /v1/ack", s.ack)
	mux.HandleFunc("GET /v1/snapshot", s.snapshot)
	mux.HandleFunc("GET /v1/control/conn", s.controlConn)
	mux.HandleFunc("POST /v1/control/forward", s.controlForward)
	return mux
}

func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (conflict.RegionID, bool) {
	peer := conflict.RegionID(r.URL.Query().Get("peer"))
	want, ok := s.cfg.Tokens[peer]
	got, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || want == "" || subtle.ConstantTimeCompare([]byte(want), []byte(got)) != 1 {
		s.cfg.Logger.Warn("link: refused request with bad credentials", "peer", string(peer), "remote", r.RemoteAddr)
		http.Error(w, "unknown peer or wrong token", http.StatusUnauthorized)
		return "", false
	}
	if s.removed(w, peer) {
		return "", false
	}
	return peer, true
}

// sameConfig answers 409 with this region's configuration, and returns
// false, when the peer's differs.
func (s *Server) sameConfig(w http.ResponseWriter, r *http.Request, peer conflict.RegionID) bool {
	fp := r.Header.Get("X-Polyregion-Fingerprint")
	if fp == s.cfg.Cluster.Fingerprint() {
		return true
	}
	s.cfg.Logger.Error("link: peer's replication config differs; refusing to replicate with it",
		"peer", string(peer), "here", s.cfg.Cluster.Fingerprint(), "peer_fingerprint", fp)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusConflict)
	_ = json.NewEncoder(w).Encode(Hello{Region: s.cfg.Region, Fingerprint: s.cfg.Cluster.Fingerprint(), Describe: s.cfg.Cluster.Describe()})
	return false
}

func (s *Server) ack(w http.ResponseWriter, r *http.Request) {
	peer, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	seq, err := strconv.ParseUint(r.URL.Query().Get("seq"), 10, 64)
	if err != nil {
		http.Error(w, "seq: "+err.Error(), http.StatusBadRequest)
		return
	}
	bound, streamed, err := s.ackBound(r.Context(), peer)
	if err != nil {
		s.cfg.Logger.Error("link: read outbox retention", "err", err)
		http.Error(w, "outbox unavailable", http.StatusServiceUnavailable)
		return
	}
	if replicator.Seq(seq) > bound {
		what := "the last transaction shipped to it"
		if !streamed {
			what = "the newest transaction " + string(s.cfg.Region) + " ever assigned"
		}
		s.refuse(w, peer, RefusedAckBeyondShipped, fmt.Sprintf("ack of seq %d from region %s is beyond %s (%d); refused", seq, peer, what, bound))
		return
	}
	if err := s.cfg.Outbox.Ack(r.Context(), peer, replicator.Seq(seq)); err != nil {
		s.cfg.Logger.Error("link: record ack", "peer", string(peer), "err", err)
		http.Error(w, "record ack failed", http.StatusInternalServerError)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) stream(w http.ResponseWriter, r *http.Request) {
	peer, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	after, err := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
	if err != nil {
		http.Error(w, "after: "+err.Error(), http.StatusBadRequest)
		return
	}
	if !s.sameConfig(w, r, peer) {
		return
	}
	ctx := r.Context()
	// Nothing after the newest sequence ever assigned was shipped to anyone:
	// a peer resuming beyond it is refused before anything is recorded.
	_, newest, err := s.cfg.Outbox.Retained(ctx)
	if err != nil {
		s.cfg.Logger.Error("link: read outbox retention", "err", err)
		http.Error(w, "outbox unavailable", http.StatusServiceUnavailable)
		return
	}
	if replicator.Seq(after) > newest {
		s.refuse(w, peer, RefusedResumeBeyondNewest, fmt.Sprintf("resume after seq %d from region %s is beyond the newest transaction %s ever assigned (%d); refused",
			after, peer, s.cfg.Region, newest))
		return
	}
	// Asking for entries after N means N was durably applied.
	if err := s.cfg.Outbox.Ack(ctx, peer, replicator.Seq(after)); err != nil {
		s.cfg.Logger.Error("link: record ack", "peer", string(peer), "err", err)
	}
	// Read again: recording the ack may have trimmed the outbox.
	oldest, newest, err := s.cfg.Outbox.Retained(ctx)
	if err != nil {
		s.cfg.Logger.Error("link: read outbox retention", "err", err)
		http.Error(w, "outbox unavailable", http.StatusServiceUnavailable)
		return
	}
	if replicator.Seq(after) < newest && (oldest == 0 || oldest > replicator.Seq(after)+1) {
		msg := fmt.Sprintf("region %s needs transactions after %d from %s, but its outbox only keeps %d..%d (retention cap exceeded); re-seed %s from a live region",
			peer, after, s.cfg.Region, oldest, newest, peer)
		s.cfg.Logger.Error("link: peer is too far behind", "peer", string(peer), "after", after, "oldest_kept", uint64(oldest))
		http.Error(w, msg, http.StatusGone)
		return
	}
	s.noteShipped(peer, replicator.Seq(after))
	w.Header().Set("Content-Type", "application/x-polyregion-stream")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	bw := bufio.NewWriterSize(w, 256<<10)
	hello, _ := json.Marshal(Hello{Region: s.cfg.Region, Fingerprint: s.cfg.Cluster.Fingerprint(), Describe: s.cfg.Cluster.Describe(), Epochs: s.cfg.Cluster.Offer(),
		Encoding: s.cfg.Encoding})
	if err := replicator.WriteFrame(bw, frameHello, hello); err != nil {
		return
	}
	// Position: the last entry sent. A whole transaction "after" is
	// (after, past its last part).
	pos, posPart, posMore := replicator.Seq(after), math.MaxInt32, false
	lastKeepalive := time.Time{}
	keepalive := func() error {
		var payload []byte
		if s.cfg.Advert != nil {
			payload = s.cfg.Advert()
		}
		lastKeepalive = time.Now()
		return replicator.WriteFrame(bw, frameKeepalive, payload)
	}
	for {
		changed := s.cfg.Outbox.Changed()
		entries, more, err := s.cfg.Outbox.Read(ctx, pos, posPart, s.cfg.BatchSize)
		if err != nil {
			if ctx.Err() == nil {
				s.cfg.Logger.Error("link: read outbox", "peer", string(peer), "err", err)
			}
			return
		}
		for _, e := range entries {
			next := (!posMore && e.Seq == pos+1 && e.Part == 0) || (posMore && e.Seq == pos && e.Part == posPart+1)
			if !next {
				s.cfg.Logger.Error("link: outbox gap; the peer would miss transactions", "peer", string(peer),
					"after_seq", uint64(pos), "after_part", posPart, "got_seq", uint64(e.Seq), "got_part", e.Part)
				return
			}
			if !e.More {
				// Before the write: a fast peer may apply and acknowledge
				// it before the loop comes back here.
				s.noteShipped(peer, e.Seq)
			}
			if err := replicator.WriteFrame(bw, frameTxn, e.Payload); err != nil {
				return
			}
			if s.cfg.Shipped != nil {
				s.cfg.Shipped(peer, e)
			}
			pos, posPart, posMore = e.Seq, e.Part, e.More
		}
		due := time.Since(lastKeepalive) >= s.cfg.Keepalive
		if due {
			if err := keepalive(); err != nil {
				return
			}
		}
		if more && !due {
			continue // flush once drained or when the buffer fills
		}
		if err := bw.Flush(); err != nil {
			return
		}
		if err := rc.Flush(); err != nil {
			return
		}
		if more {
			continue
		}
		// Drained: an entry appended since the read began closes changed
		// (taken before the read), so nothing is left waiting.
		timer := time.NewTimer(s.cfg.Keepalive)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-changed:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// maxFrame bounds one frame (one source transaction's encoding).
const maxFrame = 1 << 30

// TLSFiles names PEM files for a link endpoint. All empty means plaintext
// HTTP/2 (for loopback tests and private networks only).
type TLSFiles struct {
	CertFile string // this side's certificate
	KeyFile  string
	// CAFile verifies the other side: the server's certificate (client side)
	// or client certificates (server side, which makes it mutual TLS).
	CAFile string
	// ServerName overrides the name checked in the server's certificate.
	ServerName string
}

func (f TLSFiles) enabled() bool { return f.CertFile != "" || f.CAFile != "" }

func loadPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificates found", file)
	}
	return pool, nil
}

// ServerTLS builds the server's TLS config (nil for plaintext).
func ServerTLS(f TLSFiles) (*tls.Config, error) {
	if !f.enabled() {
		return nil, nil
	}
	if f.CertFile == "" || f.KeyFile == "" {
		return nil, fmt.Errorf("link tls: cert_file and key_file are both required to serve TLS")
	}
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("link tls: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}}
	if f.CAFile != "" {
		pool, err := loadPool(f.CAFile)
		if err != nil {
			return nil, fmt.Errorf("link tls: client CA: %w", err)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// ClientTLS builds a client's TLS config (nil for plaintext).
func ClientTLS(f TLSFiles) (*tls.Config, error) {
	if !f.enabled() {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.ServerName, NextProtos: []string{"h2"}}
	if f.CAFile != "" {
		pool, err := loadPool(f.CAFile)
		if err != nil {
			return nil, fmt.Errorf("link tls: CA: %w", err)
		}
		cfg.RootCAs = pool
	}
	if f.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("link tls: client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// NewHTTPServer returns an http.Server speaking HTTP/2 (over TLS when tlsCfg
// is set, cleartext HTTP/2 otherwise). The server gets its own copy of
// tlsCfg: net/http adds its protocols to the configuration it serves with,
// which would race with any other server started from the same one.
func NewHTTPServer(addr string, h http.Handler, tlsCfg *tls.Config) *http.Server {
	if tlsCfg != nil {
		tlsCfg = tlsCfg.Clone()
	}
	srv := &http.Server{Addr: addr, Handler: h, TLSConfig: tlsCfg, ReadHeaderTimeout: 10 * time.Second}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	p.SetUnencryptedHTTP2(true)
	srv.Protocols = &p
	return srv
}

// Serve serves on ln until the server is shut down.
func Serve(srv *http.Server, ln net.Listener) error {
	var err error
	if srv.TLSConfig != nil {
		err = srv.ServeTLS(ln, "", "")
	} else {
		err = srv.Serve(ln)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ClientConfig configures the following side of one link.
type ClientConfig struct {
	Region  conflict.RegionID // this region
	Peer    conflict.RegionID
	URL     string // peer's base URL
	Token   string
	TLS     *tls.Config
	Cluster regions.Cluster
	// IdleTimeout: no bytes (of a frame or a keepalive) for this long, while
	// the receiver waits for the next frame, ends the stream so it can be
	// re-established.
	IdleTimeout time.Duration
	// OnAdvert, when set, receives each non-empty keepalive payload.
	OnAdvert func(payload []byte)
	// OnConnected, when set, is called once a stream's hello was accepted
	// (the link is up until Stream returns).
	OnConnected func()
	// OnEpochs, when set, receives the policy changes the peer knows, from
	// each stream's hello that names some, before any transaction of that
	// stream.
	OnEpochs func(epochs []regions.Epoch)
	// Encoding is the text encoding of this region's database sessions: a
	// stream whose hello names another is refused (see replicator.EncodingDifference).
	Encoding string
}

// Client follows one peer's outbox.
type Client struct {
	cfg  ClientConfig
	http *http.Client
}

// NewClient returns a Client.
func NewClient(cfg ClientConfig) (*Client, error) {
	if _, err := cfg.peerURL(); err != nil {
		return nil, err
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 15 * time.Second
	}
	tr := &http.Transport{
		TLSClientConfig:     cfg.TLS,
		ForceAttemptHTTP2:   true,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		// A connection that received nothing for IdleTimeout is pinged,
		// and closed when the ping is not answered within IdleTimeout
		// either: a request sent on a connection whose path went silent
		// (an ack, the wait for a stream's headers) fails after that
		// instead of waiting for the kernel to give up on it (about 15
		// minutes). A live peer answers pings however quiet the
		// request.
		HTTP2: &http.HTTP2Config{SendPingTimeout: cfg.IdleTimeout, PingTimeout: cfg.IdleTimeout},
	}
	var p http.Protocols
	if cfg.TLS != nil {
		p.SetHTTP2(true)
	} else {
		p.SetUnencryptedHTTP2(true)
	}
	tr.Protocols = &p
	return &Client{cfg: cfg, http: &http.Client{Transport: tr}}, nil
}

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

func (c *Client) request(ctx context.Context, method, path string, q url.Values) (*http.Response, error) {
	q.Set("peer", string(c.cfg.Region))
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.cfg.URL, "/")+path+"?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.cfg.Token)
	req.Header.Set("X-Polyregion-Fingerprint", c.cfg.Cluster.Fingerprint())
	return c.http.Do(req)
}

// Ack tells the peer that every transaction up to seq is durably applied.
func (c *Client) Ack(ctx context.Context, seq replicator.Seq) error {
	resp, err := c.request(ctx, http.MethodPost, "/v1/ack", url.Values{"seq": {strconv.FormatUint(uint64(seq), 10)}})
	if err != nil {
		return fmt.Errorf("ack to %s: %w", c.cfg.Peer, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnprocessableEntity {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("ack to %s: %w: %s", c.cfg.Peer, ErrRefused, strings.TrimSpace(string(b)))
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode == http.StatusUnauthorized {
		return fmt.Errorf("ack to %s: %w", c.cfg.Peer, ErrUnauthorized)
	}
	if resp.StatusCode == http.StatusForbidden {
		return fmt.Errorf("ack to %s: %w", c.cfg.Peer, ErrRemoved)
	}
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("ack to %s: HTTP %d", c.cfg.Peer, resp.StatusCode)
	}
	return nil
}

// refusal is the error a non-200 answer to a request for what means (nil
// for 200).
func (c *Client) refusal(resp *http.Response, what string) error {
	body := func() string {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return strings.TrimSpace(string(b))
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return nil
	case http.StatusUnauthorized:
		return fmt.Errorf("%s from %s: %w", what, c.cfg.Peer, ErrUnauthorized)
	case http.StatusGone:
		return fmt.Errorf("%s from %s: %w: %s", what, c.cfg.Peer, ErrTooFarBehind, body())
	case http.StatusForbidden:
		return fmt.Errorf("%s from %s: %w: %s", what, c.cfg.Peer, ErrRemoved, body())
	case http.StatusUnprocessableEntity:
		return fmt.Errorf("%s from %s: %w: %s", what, c.cfg.Peer, ErrRefused, body())
	case http.StatusNotFound:
		return fmt.Errorf("%s from %s: %w: %s", what, c.cfg.Peer, ErrNotServed, body())
	case http.StatusConflict:
		var h Hello
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&h)
		return &MismatchError{Peer: c.cfg.Peer, Differences: regions.Diff(c.cfg.Cluster.Describe(), h.Describe)}
	default:
		return fmt.Errorf("%s from %s: HTTP %d: %s", what, c.cfg.Peer, resp.StatusCode, body())
	}
}

// Stream follows the peer's outbox from after, calling fn for each
// transaction in order. It returns when ctx ends, fn fails, or the stream
// breaks (the caller reconnects from its durable position).
func (c *Client) Stream(ctx context.Context, after replicator.Seq, fn func(*replicator.Txn) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var conn streamConn
	resp, err := c.request(conn.trace(ctx), http.MethodGet, "/v1/stream", url.Values{"after": {strconv.FormatUint(uint64(after), 10)}})
	if err != nil {
		return fmt.Errorf("stream from %s: %w", c.cfg.Peer, err)
	}
	defer resp.Body.Close()
	if err := c.refusal(resp, "stream"); err != nil {
		return err
	}
	// A watchdog ends a stream that went silent (half-open connection), and
	// drops its connection (see silent.go). It times only the waits for
	// frames: while the receiver holds a transaction (backpressure) the
	// clock is stopped. Any bytes arriving count, not only whole frames: a
	// frame of a large transaction may take longer than IdleTimeout to
	// arrive over a slow link, and ending its stream would only have it
	// sent again, from its start, for ever.
	activity := make(chan struct{}, 1)
	waiting := make(chan bool) // true: waiting for a frame; false: busy in fn
	go func() {
		t := time.NewTimer(c.cfg.IdleTimeout)
		defer t.Stop()
		busy := false
		for {
			select {
			case <-ctx.Done():
				return
			case <-activity:
				if !busy { // a signal left over from before fn began restarts nothing
					t.Reset(c.cfg.IdleTimeout)
				}
			case w := <-waiting:
				busy = !w
				if w {
					t.Reset(c.cfg.IdleTimeout)
				} else {
					t.Stop()
				}
			case <-t.C:
				cancel()
				conn.drop()
				return
			}
		}
	}()
	setWaiting := func(w bool) {
		select {
		case waiting <- w:
		case <-ctx.Done():
		}
	}
	br := bufio.NewReaderSize(activeReader{resp.Body, activity}, 256<<10)
	next, nextPart := after+1, 0
	for {
		typ, payload, err := replicator.ReadFrame(br, maxFrame)
		if err != nil {
			if ctx.Err() != nil && context.Cause(ctx) != nil {
				return fmt.Errorf("stream from %s: idle or cancelled: %w", c.cfg.Peer, ctx.Err())
			}
			return fmt.Errorf("stream from %s: %w", c.cfg.Peer, err)
		}
		switch typ {
		case frameHello:
			var h Hello
			if err := json.Unmarshal(payload, &h); err != nil {
				return fmt.Errorf("stream from %s: hello: %w", c.cfg.Peer, err)
			}
			if h.Region != c.cfg.Peer {
				return fmt.Errorf("stream from %s: the endpoint says it is region %q", c.cfg.Peer, h.Region)
			}
			if h.Fingerprint != c.cfg.Cluster.Fingerprint() {
				return &MismatchError{Peer: c.cfg.Peer, Differences: regions.Diff(c.cfg.Cluster.Describe(), h.Describe)}
			}
			if d := replicator.EncodingDifference(c.cfg.Encoding, h.Encoding, string(c.cfg.Peer)); d != "" {
				return &MismatchError{Peer: c.cfg.Peer, Differences: []string{d}}
			}
			if len(h.Epochs) > 0 && c.cfg.OnEpochs != nil {
				c.cfg.OnEpochs(h.Epochs)
			}
			if c.cfg.OnConnected != nil {
				c.cfg.OnConnected()
			}
		case frameKeepalive:
			if len(payload) > 0 && c.cfg.OnAdvert != nil {
				c.cfg.OnAdvert(payload)
			}
		case frameTxn:
			t, err := replicator.DecodeTxn(payload)
			if err != nil {
				return fmt.Errorf("stream from %s: %w", c.cfg.Peer, err)
			}
			if t.Seq != next || t.Part != nextPart || t.Origin != c.cfg.Peer {
				return fmt.Errorf("stream from %s: got %s/%d part %d, want %s/%d part %d", c.cfg.Peer, t.Origin, t.Seq, t.Part, c.cfg.Peer, next, nextPart)
			}
			if t.More {
				nextPart++
			} else {
				next, nextPart = next+1, 0
			}
			setWaiting(false)
			err = fn(t)
			setWaiting(true)
			if err != nil {
				return err
			}

		default:
			return fmt.Errorf("stream from %s: unknown frame type %q", c.cfg.Peer, typ)
		}
	}
}
