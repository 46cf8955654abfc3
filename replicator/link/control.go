package link

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/polyregion/polyregion/conflict"
)

// Control is the region's control plane as the link serves it to peers.
// The link authenticates every request (the peer's token, TLS as
// configured) before any method is called.
type Control interface {
	// Conn takes over an authenticated peer's control-plane connection;
	// it owns conn from then on (closes it when done).
	Conn(peer conflict.RegionID, conn net.Conn)
	// Forward handles a request a peer forwarded (the command, JSON) and
	// returns the answer (JSON). It must not block past ctx.
	Forward(ctx context.Context, peer conflict.RegionID, body []byte) ([]byte, error)
	// Removed reports whether peer was removed from the cluster: its
	// streams, acknowledgements, snapshots and control connections are
	// refused from then on.
	Removed(peer conflict.RegionID) bool
}

// ErrRemoved is returned when a peer refuses this region because the
// cluster removed it.
var ErrRemoved = errors.New("the cluster removed this region")

// controlUpgrade is the protocol a control-plane connection upgrades to.
const controlUpgrade = "polyregion-control"

// removed answers 403 and returns true when peer was removed.
func (s *Server) removed(w http.ResponseWriter, peer conflict.RegionID) bool {
	if s.cfg.Control == nil || !s.cfg.Control.Removed(peer) {
		return false
	}
	http.Error(w, fmt.Sprintf("region %s was removed from the cluster; its link is refused", peer), http.StatusForbidden)
	return true
}

// controlPeer authenticates a control-plane request: false (answered)
// when the peer is refused or this region runs no control plane.
func (s *Server) controlPeer(w http.ResponseWriter, r *http.Request) (conflict.RegionID, bool) {
	peer, ok := s.authenticate(w, r)
	if !ok {
		return "", false
	}
	if s.cfg.Control == nil {
		http.Error(w, "region "+string(s.cfg.Region)+" runs no control plane", http.StatusNotFound)
		return "", false
	}
	return peer, true
}

// controlConn serves GET /v1/control/conn: an authenticated peer's
// connection, upgraded and handed to the control plane.
func (s *Server) controlConn(w http.ResponseWriter, r *http.Request) {
	peer, ok := s.controlPeer(w, r)
	if !ok {
		return
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), controlUpgrade) {
		http.Error(w, "want Upgrade: "+controlUpgrade, http.StatusUpgradeRequired)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "control connections need HTTP/1.1", http.StatusHTTPVersionNotSupported)
		return
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		s.cfg.Logger.Warn("link: control connection not taken over", "peer", string(peer), "err", err)
		return
	}
	_ = conn.SetDeadline(time.Time{})
	if _, err := buf.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + controlUpgrade + "\r\nConnection: Upgrade\r\n\r\n"); err != nil {
		conn.Close()
		return
	}
	if err := buf.Flush(); err != nil {
		conn.Close()
		return
	}
	s.cfg.Control.Conn(peer, &bufferedConn{Conn: conn, r: buf.Reader})
}

// controlForward serves POST /v1/control/forward: a command a peer
// forwarded to this region (the control plane's leader, it believed).
func (s *Server) controlForward(w http.ResponseWriter, r *http.Request) {
	peer, ok := s.controlPeer(w, r)
	if !ok {
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "read: "+err.Error(), http.StatusBadRequest)
		return
	}
	out, err := s.cfg.Control.Forward(r.Context(), peer, body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

// bufferedConn reads what the HTTP exchange had buffered first.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// DialControl opens a control-plane connection to a peer's link: the same
// address, TLS and token as its stream, upgraded from one HTTP/1.1
// request. The peer authenticates it like any link request.
func DialControl(ctx context.Context, cfg ClientConfig) (net.Conn, error) {
	u, err := cfg.peerURL()
	if err != nil {
		return nil, err
	}
	host := u.Host
	if u.Port() == "" {
		if u.Scheme == "https" {
			host = net.JoinHostPort(u.Hostname(), "443")
		} else {
			host = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	d := &net.Dialer{KeepAlive: 15 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, fmt.Errorf("control connection to %s: %w", cfg.Peer, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if u.Scheme == "https" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.TLS != nil {
			tc = cfg.TLS.Clone()
		}
		if tc.ServerName == "" {
			tc.ServerName = u.Hostname()
		}
		tc.NextProtos = []string{"http/1.1"}
		tlsConn := tls.Client(conn, tc)
		if err := tlsConn.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, fmt.Errorf("control connection to %s: %w", cfg.Peer, err)
		}
		conn = tlsConn
	}
	q := url.Values{"peer": {string(cfg.Region)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(cfg.URL, "/")+"/v1/control/conn?"+q.Encode(), nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+cfg.Token)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", controlUpgrade)
	if err := req.Write(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("control connection to %s: %w", cfg.Peer, err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("control connection to %s: %w", cfg.Peer, err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		conn.Close()
		err := fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
		switch resp.StatusCode {
		case http.StatusUnauthorized:
			err = ErrUnauthorized
		case http.StatusForbidden:
			err = fmt.Errorf("%w: %s", ErrRemoved, strings.TrimSpace(string(b)))
		}
		return nil, fmt.Errorf("control connection to %s: %w", cfg.Peer, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return &bufferedConn{Conn: conn, r: br}, nil
}

// Forward sends a control-plane request to the peer (its leader, the
// caller believes) and returns the answer.
func (c *Client) Forward(ctx context.Context, body []byte) ([]byte, error) {
	q := url.Values{"peer": {string(c.cfg.Region)}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(c.cfg.URL, "/")+"/v1/control/forward?"+q.Encode(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.cfg.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("forward to %s: %w", c.cfg.Peer, err)
	}
	defer resp.Body.Close()
	if err := c.refusal(resp, "forward"); err != nil {
		return nil, err
	}
	return io.ReadAll(io.LimitReader(resp.Body, 1<<20))
}
