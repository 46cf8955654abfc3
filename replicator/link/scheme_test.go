package link

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A peer configured with TLS but given an http:// URL would be reached in
// cleartext, its token included: the client and the control connection
// refuse it before anything is dialled.
func TestTLSConfigWithAnHTTPURLIsRefused(t *testing.T) {
	p := newPKI(t)
	tlsCfg, err := ClientTLS(TLSFiles{CAFile: p.caFile, CertFile: p.clientCrt, KeyFile: p.clientK})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var dialled atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dialled.Add(1)
			c.Close()
		}
	}()
	cfg := ClientConfig{Region: "eu", Peer: "us", URL: "http://" + ln.Addr().String(), Token: secret, TLS: tlsCfg, Cluster: cluster}

	cl, err := NewClient(cfg)
	if err == nil {
		cl.Close()
		t.Error("NewClient took a TLS configuration with an http:// URL")
	} else if !strings.Contains(err.Error(), "https://") || strings.Contains(err.Error(), secret) {
		t.Errorf("NewClient: %v, want the refusal to name https:// and not the token", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := DialControl(ctx, cfg)
	if err == nil {
		conn.Close()
		t.Error("DialControl took a TLS configuration with an http:// URL")
	} else if !strings.Contains(err.Error(), "https://") || strings.Contains(err.Error(), secret) {
		t.Errorf("DialControl: %v, want the refusal to name https:// and not the token", err)
	}
	time.Sleep(50 * time.Millisecond)
	if n := dialled.Load(); n != 0 {
		t.Errorf("%d connection(s) reached the peer's address in cleartext", n)
	}
}
