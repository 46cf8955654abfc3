package link

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/regions/control"
)

// tlsRegion is one region of a two-region control plane whose raft traffic
// goes through link servers with mutual TLS and per-peer tokens.
type tlsRegion struct {
	id   conflict.RegionID
	node *control.Node
	url  string
}

// startTLSRegions starts us and eu: each a control-plane node served by
// its own link server (mutual TLS, the peer's token), dialling the other
// through DialControl with a client certificate.
func startTLSRegions(t *testing.T, p pki) map[conflict.RegionID]*tlsRegion {
	t.Helper()
	serverTLS, err := ServerTLS(TLSFiles{CertFile: p.serverCrt, KeyFile: p.serverK, CAFile: p.caFile})
	if err != nil {
		t.Fatal(err)
	}
	clientTLS, err := ClientTLS(TLSFiles{CAFile: p.caFile, CertFile: p.clientCrt, KeyFile: p.clientK})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	rs := map[conflict.RegionID]*tlsRegion{"us": {id: "us"}, "eu": {id: "eu"}}
	other := map[conflict.RegionID]conflict.RegionID{"us": "eu", "eu": "us"}
	peerCfg := func(from, to conflict.RegionID) (ClientConfig, error) {
		mu.Lock()
		defer mu.Unlock()
		if rs[to] == nil {
			return ClientConfig{}, errors.New("no region " + string(to) + " runs here")
		}
		return ClientConfig{Region: from, Peer: to, URL: rs[to].url, Token: secret, TLS: clientTLS}, nil
	}
	for id, r := range rs {
		n, err := control.Open(control.Config{
			Region: id, Dir: t.TempDir(),
			Dial: func(ctx context.Context, to conflict.RegionID) (net.Conn, error) {
				cfg, err := peerCfg(id, to)
				if err != nil {
					return nil, err
				}
				return DialControl(ctx, cfg)
			},
			Forward: func(ctx context.Context, to conflict.RegionID, body []byte) ([]byte, error) {
				cfg, err := peerCfg(id, to)
				if err != nil {
					return nil, err
				}
				cl, err := NewClient(cfg)
				if err != nil {
					return nil, err
				}
				defer cl.Close()
				return cl.Forward(ctx, body)
			},
			HeartbeatTimeout: 300 * time.Millisecond, ElectionTimeout: 300 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		r.node = n
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { n.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done; n.Close() })

		s := NewServer(ServerConfig{Region: id, Tokens: map[conflict.RegionID]string{other[id]: secret}, Control: n, Keepalive: 100 * time.Millisecond})
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := NewHTTPServer(ln.Addr().String(), s.Handler(), serverTLS)
		go Serve(srv, ln)
		t.Cleanup(func() { srv.Close() })
		mu.Lock()
		r.url = "https://" + ln.Addr().String()
		mu.Unlock()
	}
	return rs
}

// Raft runs between two regions over their links with mutual TLS: the
// founding region adds the other, the other votes, and a change made from
// the follower's side is forwarded to the leader over the link.
func TestControlPlaneRunsOverMutualTLS(t *testing.T) {
	rs := startTLSRegions(t, newPKI(t))
	us, eu := rs["us"].node, rs["eu"].node
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := us.Init(ctx, regions.Command{Members: []regions.Member{{ID: "us", URL: rs["us"].url}, {ID: "eu", URL: rs["eu"].url}}, Fingerprint: "fp1"}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if strings.Join(us.Status().Voters, ",") == "eu,us" && eu.Membership().Epoch().Number == 1 && eu.Status().Leader != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("raft over mutual TLS did not form: us %+v, eu %+v", us.Status(), eu.Status())
		}
	}
	follower := eu
	if eu.Status().Leader == "eu" {
		follower = us
	}
	if _, err := follower.Apply(ctx, regions.Command{Op: regions.OpAdd, Region: "ap", URL: "https://ap.example:7480", From: "us"}); err != nil {
		t.Fatalf("a change forwarded to the leader over the link: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); us.Membership().State("ap") != regions.Joining || eu.Membership().State("ap") != regions.Joining; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the forwarded change did not reach both regions: us %s, eu %s", us.Membership().Describe(), eu.Membership().Describe())
		}
	}
}

// A control connection is refused without the peer's client certificate,
// with a wrong token, and in plaintext against the TLS endpoint.
func TestControlConnectionsAreRefusedWithoutTheLinksCredentials(t *testing.T) {
	p := newPKI(t)
	rs := startTLSRegions(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	good, err := ClientTLS(TLSFiles{CAFile: p.caFile, CertFile: p.clientCrt, KeyFile: p.clientK})
	if err != nil {
		t.Fatal(err)
	}
	noCert, err := ClientTLS(TLSFiles{CAFile: p.caFile})
	if err != nil {
		t.Fatal(err)
	}
	base := ClientConfig{Region: "eu", Peer: "us", URL: rs["us"].url, Token: secret, TLS: good}
	conn, err := DialControl(ctx, base)
	if err != nil {
		t.Fatalf("with the certificate and token: %v", err)
	}
	conn.Close()

	cases := map[string]func(*ClientConfig){
		"no client certificate": func(c *ClientConfig) { c.TLS = noCert },
		"wrong token":           func(c *ClientConfig) { c.Token = "not-the-secret-at-all" },
		"unknown region":        func(c *ClientConfig) { c.Region = "ap" },
		"plaintext":             func(c *ClientConfig) { c.URL = strings.Replace(c.URL, "https", "http", 1) },
	}
	for name, change := range cases {
		cfg := base
		change(&cfg)
		conn, err := DialControl(ctx, cfg)
		if err == nil {
			// A TLS 1.3 server checks the client's certificate after the
			// client's handshake ends: the refusal arrives on first read.
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = conn.Read(make([]byte, 1))
			conn.Close()
			if err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
				t.Errorf("%s: control connection taken", name)
			}
			continue
		}
		if name == "wrong token" || name == "unknown region" {
			if !errors.Is(err, ErrUnauthorized) {
				t.Errorf("%s: %v, want ErrUnauthorized", name, err)
			}
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
