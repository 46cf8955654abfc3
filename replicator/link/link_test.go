package link

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
)

// memOutbox is an in-memory Outbox for testing the link protocol alone.
type memOutbox struct {
	mu      sync.Mutex
	entries []Entry
	acks    map[conflict.RegionID]replicator.Seq
	changed chan struct{}
	trimmed replicator.Seq
	// assigned, when above the last entry, is the newest sequence assigned
	// (entries past the last one are not visible yet).
	assigned replicator.Seq
	// ackCalls records every Ack call, refused positions included.
	ackCalls []replicator.Seq
	// reads counts Read calls.
	reads int
}

func newMemOutbox() *memOutbox {
	return &memOutbox{acks: map[conflict.RegionID]replicator.Seq{}, changed: make(chan struct{})}
}

func (m *memOutbox) add(t *replicator.Txn) {
	b, _ := t.Encode()
	m.mu.Lock()
	m.entries = append(m.entries, Entry{Seq: t.Seq, Part: t.Part, More: t.More, Payload: b})
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
}

func (m *memOutbox) Read(_ context.Context, after replicator.Seq, part int, limit int) ([]Entry, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reads++
	var out []Entry
	more := false
	for _, e := range m.entries {
		if e.Seq > after || (e.Seq == after && e.Part > part) {
			if len(out) == limit {
				more = true
				break
			}
			out = append(out, e)
		}
	}
	return out, more, nil
}

func (m *memOutbox) Retained(context.Context) (replicator.Seq, replicator.Seq, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.entries) == 0 {
		return 0, max(m.trimmed, m.assigned), nil
	}
	return m.entries[0].Seq, max(m.entries[len(m.entries)-1].Seq, m.assigned), nil
}

func (m *memOutbox) trim(upTo replicator.Seq) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(m.entries) > 0 && m.entries[0].Seq <= upTo {
		m.entries = m.entries[1:]
	}
	m.trimmed = upTo
}

func (m *memOutbox) Changed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

func (m *memOutbox) Ack(_ context.Context, peer conflict.RegionID, seq replicator.Seq) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ackCalls = append(m.ackCalls, seq)
	if seq > m.acks[peer] {
		m.acks[peer] = seq
	}
	return nil
}

var cluster = regions.Cluster{
	Regions: []conflict.RegionID{"us", "eu"},
	Tables:  []regions.Table{{Name: "public.kv"}},
}

const secret = "0123456789abcdef0123"

type pki struct {
	dir                string
	caFile             string
	serverCrt, serverK string
	clientCrt, clientK string
	expiredCrt         string
	expiredK           string
	otherCA            string
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newCA(t *testing.T, dir, name string) (*x509.Certificate, *ecdsa.PrivateKey, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	path := filepath.Join(dir, name+".crt")
	writePEM(t, path, "CERTIFICATE", der)
	return cert, key, path
}

func issue(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage, notAfter time.Time) (string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter,
		ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	crt, k := filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	writePEM(t, crt, "CERTIFICATE", der)
	kd, _ := x509.MarshalECPrivateKey(key)
	writePEM(t, k, "EC PRIVATE KEY", kd)
	return crt, k
}

func newPKI(t *testing.T) pki {
	dir := t.TempDir()
	ca, caKey, caFile := newCA(t, dir, "ca")
	p := pki{dir: dir, caFile: caFile}
	p.serverCrt, p.serverK = issue(t, dir, "server", ca, caKey, x509.ExtKeyUsageServerAuth, time.Now().Add(time.Hour))
	p.clientCrt, p.clientK = issue(t, dir, "client", ca, caKey, x509.ExtKeyUsageClientAuth, time.Now().Add(time.Hour))
	p.expiredCrt, p.expiredK = issue(t, dir, "expired", ca, caKey, x509.ExtKeyUsageClientAuth, time.Now().Add(-time.Hour))
	_, _, p.otherCA = newCA(t, dir, "other-ca")
	return p
}

// serve starts a link server for region us over ob; serverTLS may be zero.
func serve(t *testing.T, ob Outbox, serverTLS TLSFiles, c regions.Cluster) string {
	t.Helper()
	return serveWith(t, ServerConfig{Outbox: ob, Cluster: c}, serverTLS)
}

// serveWith starts a link server for region us with cfg (region, token and
// keepalive filled in).
func serveWith(t *testing.T, cfg ServerConfig, serverTLS TLSFiles) string {
	t.Helper()
	tlsCfg, err := ServerTLS(serverTLS)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Region, cfg.Tokens, cfg.Keepalive = "us", map[conflict.RegionID]string{"eu": secret}, 100*time.Millisecond
	s := NewServer(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewHTTPServer(ln.Addr().String(), s.Handler(), tlsCfg)
	go Serve(srv, ln)
	t.Cleanup(func() { srv.Close() })
	scheme := "http"
	if tlsCfg != nil {
		scheme = "https"
	}
	return scheme + "://" + ln.Addr().String()
}

func client(t *testing.T, url, token string, files TLSFiles, c regions.Cluster) *Client {
	t.Helper()
	tlsCfg, err := ClientTLS(files)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := NewClient(ClientConfig{Region: "eu", Peer: "us", URL: url, Token: token, TLS: tlsCfg, Cluster: c, IdleTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

func txn(seq int) *replicator.Txn {
	return &replicator.Txn{Origin: "us", Seq: replicator.Seq(seq), LSN: "0/1",
		Shapes:  []replicator.Shape{{Table: "public.kv", Columns: []string{"id"}, Types: []string{"integer"}, Key: []int{0}}},
		Changes: []replicator.Change{{T: 0, Op: conflict.OpInsert, Key: fmt.Sprintf(`["%d"]`, seq), Row: []replicator.Value{{Text: fmt.Sprint(seq)}}}}}
}

// collect streams from after until n transactions arrived.
func collect(t *testing.T, cl *Client, after replicator.Seq, n int) ([]replicator.Seq, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var got []replicator.Seq
	errDone := errors.New("done")
	err := cl.Stream(ctx, after, func(tx *replicator.Txn) error {
		got = append(got, tx.Seq)
		if len(got) == n {
			return errDone
		}
		return nil
	})
	if errors.Is(err, errDone) {
		err = nil
	}
	return got, err
}

func TestStreamResumesFromAppliedPositionAndRecordsAcks(t *testing.T) {
	ob := newMemOutbox()
	for i := 1; i <= 5; i++ {
		ob.add(txn(i))
	}
	url := serve(t, ob, TLSFiles{}, cluster)
	cl := client(t, url, secret, TLSFiles{}, cluster)
	got, err := collect(t, cl, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[3 4 5]" {
		t.Fatalf("after 2 got %v, want [3 4 5]", got)
	}
	// New entries reach a waiting stream.
	go func() { time.Sleep(200 * time.Millisecond); ob.add(txn(6)) }()
	got, err = collect(t, cl, 5, 1)
	if err != nil || fmt.Sprint(got) != "[6]" {
		t.Fatalf("live tail: got %v, %v", got, err)
	}
	if err := cl.Ack(context.Background(), 6); err != nil {
		t.Fatal(err)
	}
	if ob.acks["eu"] != 6 {
		t.Fatalf("ack recorded %d, want 6", ob.acks["eu"])
	}
}

// A stream reads the outbox once for each append, not a second time to
// find nothing more: after a read that returned every entry there was, it
// waits for the next append.
func TestStreamReadsTheOutboxOnceForEachAppend(t *testing.T) {
	ob := newMemOutbox()
	ob.add(txn(1))
	url := serve(t, ob, TLSFiles{}, cluster)
	cl := client(t, url, secret, TLSFiles{}, cluster)
	const n = 50
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	began := time.Now()
	errDone := errors.New("done")
	// Each transaction is appended once the previous one arrived, so the
	// stream has drained the outbox every time.
	err := cl.Stream(ctx, 0, func(tx *replicator.Txn) error {
		if tx.Seq == n {
			return errDone
		}
		ob.add(txn(int(tx.Seq) + 1))
		return nil
	})
	if !errors.Is(err, errDone) {
		t.Fatalf("stream: %v", err)
	}
	ob.mu.Lock()
	reads := ob.reads
	ob.mu.Unlock()
	// One read per append, one per keepalive (100 ms here), and one more
	// when an append lands between taking the wake channel and reading.
	bound := n + int(time.Since(began)/(100*time.Millisecond)) + 2
	t.Logf("%d reads for %d appends in %s", reads, n, time.Since(began).Round(time.Millisecond))
	if reads > bound {
		t.Fatalf("%d outbox reads for %d appends, more than %d: the stream reads again after a read that returned everything", reads, n, bound)
	}
}

func TestWrongTokenIsRefused(t *testing.T) {
	ob := newMemOutbox()
	ob.add(txn(1))
	url := serve(t, ob, TLSFiles{}, cluster)
	_, err := collect(t, client(t, url, "not-the-secret-at-all", TLSFiles{}, cluster), 0, 1)
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong token: %v, want ErrUnauthorized", err)
	}
	if err := client(t, url, "not-the-secret-at-all", TLSFiles{}, cluster).Ack(context.Background(), 1); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("ack with wrong token: %v", err)
	}
	if len(ob.acks) != 0 {
		t.Fatalf("a refused request recorded acks: %v", ob.acks)
	}
}

func TestPolicyMismatchIsRefusedNamingTheDifference(t *testing.T) {
	ob := newMemOutbox()
	ob.add(txn(1))
	url := serve(t, ob, TLSFiles{}, cluster)
	other := regions.Cluster{Regions: cluster.Regions, Tables: []regions.Table{{Name: "public.kv", Policy: conflict.Policy{Deletes: conflict.DeleteWins}}}}
	_, err := collect(t, client(t, url, secret, TLSFiles{}, other), 0, 1)
	var mm *MismatchError
	if !errors.As(err, &mm) || !errors.Is(err, ErrConfigMismatch) {
		t.Fatalf("mismatch: %v", err)
	}
	if !strings.Contains(err.Error(), "table public.kv") {
		t.Fatalf("error does not name the table: %v", err)
	}
}

// TestStreamFromADatabaseOfAnotherEncodingIsRefused: a peer whose
// database sessions exchange text in another encoding is refused before
// any of its transactions is applied, naming both encodings; the same
// encoding (told in any case), or a peer or region that does not say
// (a release before it was sent), streams.
func TestStreamFromADatabaseOfAnotherEncodingIsRefused(t *testing.T) {
	ob := newMemOutbox()
	ob.add(txn(1))
	for _, c := range []struct {
		here, there string
		refused     bool
	}{
		{"UTF8", "WIN1252", true},
		{"SQL_ASCII", "UTF8", true},
		{"UTF8", "UTF8", false},
		{"LATIN1", "latin1", false},
		{"UTF8", "", false},
		{"", "LATIN1", false},
	} {
		url := serveWith(t, ServerConfig{Outbox: ob, Cluster: cluster, Encoding: c.there}, TLSFiles{})
		tlsCfg, _ := ClientTLS(TLSFiles{})
		cl, err := NewClient(ClientConfig{Region: "eu", Peer: "us", URL: url, Token: secret, TLS: tlsCfg, Cluster: cluster, Encoding: c.here})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var applied int
		errDone := errors.New("done")
		err = cl.Stream(ctx, 0, func(*replicator.Txn) error { applied++; return errDone })
		cancel()
		cl.Close()
		var mm *MismatchError
		switch {
		case c.refused && (!errors.As(err, &mm) || applied != 0):
			t.Errorf("%s here, %q there: %v after %d transactions applied, want a mismatch before any", c.here, c.there, err, applied)
		case c.refused && (!strings.Contains(err.Error(), c.here) || !strings.Contains(err.Error(), c.there) || !strings.Contains(err.Error(), "client_encoding")):
			t.Errorf("%s here, %q there: %v does not name both encodings and what to set", c.here, c.there, err)
		case !c.refused && !errors.Is(err, errDone):
			t.Errorf("%s here, %q there: %v, want the stream", c.here, c.there, err)
		}
	}
}

// TestHelloTellsThePolicyChangesTheServerKnows: a stream's hello carries
// the epochs the serving region knows, before its first transaction (a
// region cut off from the control plane learns from them the epoch its
// peer ships under); a region that knows none offers none.
func TestHelloTellsThePolicyChangesTheServerKnows(t *testing.T) {
	ob := newMemOutbox()
	ob.add(txn(1))
	changed := cluster
	changed.Changes = []regions.Epoch{{Number: 2, Fingerprint: "f2", Index: 9, Effective: 12,
		Policies: map[string]conflict.Policy{"public.kv": {Kind: conflict.RegionPriority, Priority: []conflict.RegionID{"us", "eu"}}},
		Fences:   map[conflict.RegionID]uint64{"us": 3}}}
	for _, c := range []struct {
		name   string
		server regions.Cluster
	}{
		{"a change", changed},
		{"none", cluster},
	} {
		tlsCfg, _ := ClientTLS(TLSFiles{})
		var events []string
		cl, err := NewClient(ClientConfig{Region: "eu", Peer: "us", URL: serve(t, ob, TLSFiles{}, c.server), Token: secret, TLS: tlsCfg, Cluster: cluster,
			OnEpochs: func(es []regions.Epoch) {
				for _, e := range es {
					events = append(events, fmt.Sprintf("epoch %d %s %s fences %d effective %d", e.Number, e.Fingerprint, e.Policies["public.kv"].Kind, len(e.Fences), e.Effective))
				}
			}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		errDone := errors.New("done")
		err = cl.Stream(ctx, 0, func(tx *replicator.Txn) error {
			events = append(events, fmt.Sprintf("txn %d", tx.Seq))
			return errDone
		})
		cancel()
		cl.Close()
		if !errors.Is(err, errDone) {
			t.Fatalf("%s: %v", c.name, err)
		}
		want := []string{"txn 1"}
		if c.name == "a change" {
			want = []string{"epoch 2 f2 region_priority fences 0 effective 0", "txn 1"}
		}
		if fmt.Sprint(events) != fmt.Sprint(want) {
			t.Fatalf("%s: %q, want %q", c.name, events, want)
		}
	}
}

func TestMutualTLS(t *testing.T) {
	p := newPKI(t)
	ob := newMemOutbox()
	ob.add(txn(1))
	url := serve(t, ob, TLSFiles{CertFile: p.serverCrt, KeyFile: p.serverK, CAFile: p.caFile}, cluster)

	good := TLSFiles{CAFile: p.caFile, CertFile: p.clientCrt, KeyFile: p.clientK}
	if got, err := collect(t, client(t, url, secret, good, cluster), 0, 1); err != nil || len(got) != 1 {
		t.Fatalf("mutual TLS with valid certificates: %v %v", got, err)
	}
	cases := map[string]TLSFiles{
		"no client certificate":      {CAFile: p.caFile},
		"expired client certificate": {CAFile: p.caFile, CertFile: p.expiredCrt, KeyFile: p.expiredK},
		"wrong CA for the server":    {CAFile: p.otherCA, CertFile: p.clientCrt, KeyFile: p.clientK},
	}
	for name, files := range cases {
		if _, err := collect(t, client(t, url, secret, files, cluster), 0, 1); err == nil {
			t.Errorf("%s: stream succeeded, want a TLS refusal", name)
		}
	}
	// Plaintext against the TLS endpoint is refused too.
	if _, err := collect(t, client(t, strings.Replace(url, "https", "http", 1), secret, TLSFiles{}, cluster), 0, 1); err == nil {
		t.Errorf("plaintext client reached a TLS server")
	}
}

func TestPeerBehindRetentionIsToldToReseed(t *testing.T) {
	ob := newMemOutbox()
	for i := 1; i <= 9; i++ {
		ob.add(txn(i))
	}
	ob.trim(5) // the cap dropped 1..5 before eu applied them
	url := serve(t, ob, TLSFiles{}, cluster)
	cl := client(t, url, secret, TLSFiles{}, cluster)
	_, err := collect(t, cl, 2, 1)
	if !errors.Is(err, ErrTooFarBehind) || !strings.Contains(err.Error(), "re-seed eu") {
		t.Fatalf("after 2 with 1..5 trimmed: %v, want ErrTooFarBehind naming eu", err)
	}
	// A peer that had applied everything trimmed is served normally.
	if got, err := collect(t, cl, 5, 4); err != nil || fmt.Sprint(got) != "[6 7 8 9]" {
		t.Fatalf("after 5: %v %v", got, err)
	}
	// Everything trimmed and nothing new: a caught-up peer just waits.
	ob.trim(9)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := cl.Stream(ctx, 9, func(*replicator.Txn) error { return nil }); errors.Is(err, ErrTooFarBehind) {
		t.Fatalf("caught-up peer told it is behind: %v", err)
	}
}

func TestLargeTransactionPartsArriveInOrder(t *testing.T) {
	ob := newMemOutbox()
	ob.add(txn(1))
	for p := 0; p < 3; p++ {
		tx := txn(2)
		tx.Part, tx.More = p, p < 2
		ob.add(tx)
	}
	ob.add(txn(3))
	url := serve(t, ob, TLSFiles{}, cluster)
	cl := client(t, url, secret, TLSFiles{}, cluster)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var got []string
	errDone := errors.New("done")
	err := cl.Stream(ctx, 0, func(tx *replicator.Txn) error {
		got = append(got, fmt.Sprintf("%d.%d", tx.Seq, tx.Part))
		if len(got) == 5 {
			return errDone
		}
		return nil
	})
	if !errors.Is(err, errDone) || strings.Join(got, " ") != "1.0 2.0 2.1 2.2 3.0" {
		t.Fatalf("got %v (%v), want 1.0 2.0 2.1 2.2 3.0", got, err)
	}
	// Resuming after transaction 2 starts at 3, not inside 2.
	if seqs, err := collect(t, cl, 2, 1); err != nil || fmt.Sprint(seqs) != "[3]" {
		t.Fatalf("after 2: %v %v", seqs, err)
	}
}

func (m *memOutbox) acked(peer conflict.RegionID) (replicator.Seq, []replicator.Seq) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.acks[peer], append([]replicator.Seq(nil), m.ackCalls...)
}

// raw sends one link request as region eu with the valid token, the way a
// misbehaving peer could, and returns the status and body.
func raw(t *testing.T, method, base, path, query string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, base+path+"?peer=eu&"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	req.Header.Set("X-Polyregion-Fingerprint", cluster.Fingerprint())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("%s %s?%s: %v", method, path, query, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}

func TestAckBeyondWhatWasShippedIsRefusedAndChangesNothing(t *testing.T) {
	ob := newMemOutbox()
	for i := 1; i <= 5; i++ {
		ob.add(txn(i))
	}
	ob.assigned = 10 // 6..10 assigned, not shipped yet
	url := serve(t, ob, TLSFiles{}, cluster)

	// Before any stream from eu, nothing beyond the newest sequence assigned
	// can have been shipped to it.
	for _, seq := range []string{"9223372036854775807", "18446744073709551615", "11"} {
		code, body := raw(t, "POST", url, "/v1/ack", "seq="+seq)
		if code < 400 || code >= 500 || !strings.Contains(body, "ack of seq "+seq+" from region eu is beyond") || !strings.Contains(body, "(10)") {
			t.Fatalf("ack of %s before any stream: %d %q, want a 4xx naming the seq, the peer and the bound 10", seq, code, body)
		}
	}
	if acked, calls := ob.acked("eu"); acked != 0 || len(calls) != 0 {
		t.Fatalf("refused acks reached the outbox: acked %d, calls %v", acked, calls)
	}

	// eu streams and receives 1..5: it may acknowledge up to 5, not 7.
	if got, err := collect(t, client(t, url, secret, TLSFiles{}, cluster), 0, 5); err != nil || fmt.Sprint(got) != "[1 2 3 4 5]" {
		t.Fatalf("stream: %v %v", got, err)
	}
	code, body := raw(t, "POST", url, "/v1/ack", "seq=7")
	if code < 400 || code >= 500 || !strings.Contains(body, "ack of seq 7 from region eu is beyond the last transaction shipped to it (5)") {
		t.Fatalf("ack of 7 after 1..5 were shipped: %d %q", code, body)
	}
	// Legitimate acks still work.
	if code, body := raw(t, "POST", url, "/v1/ack", "seq=5"); code != http.StatusNoContent {
		t.Fatalf("ack of 5: %d %q", code, body)
	}
	acked, calls := ob.acked("eu")
	if acked != 5 {
		t.Fatalf("recorded ack %d, want 5", acked)
	}
	for _, c := range calls {
		if c > 5 {
			t.Fatalf("the outbox was asked to record an ack of %d (calls %v)", c, calls)
		}
	}
}

func TestResumeBeyondNewestIsRefusedBeforeAnyAck(t *testing.T) {
	ob := newMemOutbox()
	for i := 1; i <= 5; i++ {
		ob.add(txn(i))
	}
	url := serve(t, ob, TLSFiles{}, cluster)
	code, body := raw(t, "GET", url, "/v1/stream", "after=9")
	if code < 400 || code >= 500 || !strings.Contains(body, "resume after seq 9 from region eu is beyond") || !strings.Contains(body, "(5)") {
		t.Fatalf("stream after 9 with 1..5 assigned: %d %q, want a 4xx naming the seq, the peer and 5", code, body)
	}
	if acked, calls := ob.acked("eu"); acked != 0 || len(calls) != 0 {
		t.Fatalf("a refused stream recorded acks: acked %d, calls %v", acked, calls)
	}
	// Resuming at the newest position is fine (a caught-up peer).
	if got, err := collect(t, client(t, url, secret, TLSFiles{}, cluster), 4, 1); err != nil || fmt.Sprint(got) != "[5]" {
		t.Fatalf("after 4: %v %v", got, err)
	}
	if acked, _ := ob.acked("eu"); acked != 4 {
		t.Fatalf("resume after 4 recorded %d, want 4", acked)
	}
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestRefusalsAreCountedEachTimeAndLoggedOnce(t *testing.T) {
	ob := newMemOutbox()
	for i := 1; i <= 3; i++ {
		ob.add(txn(i))
	}
	var logs syncBuffer
	var mu sync.Mutex
	counted := map[string]int{}
	url := serveWith(t, ServerConfig{Outbox: ob, Cluster: cluster, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Refused: func(peer conflict.RegionID, reason string) {
			mu.Lock()
			counted[string(peer)+"/"+reason]++
			mu.Unlock()
		}}, TLSFiles{})
	cl := client(t, url, secret, TLSFiles{}, cluster)
	for range 3 {
		err := cl.Ack(context.Background(), 9223372036854775807)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "ack of seq 9223372036854775807 from region eu is beyond") {
			t.Fatalf("forged ack: %v, want ErrRefused naming the seq", err)
		}
		if err := cl.Stream(context.Background(), 4, func(*replicator.Txn) error { return nil }); !errors.Is(err, ErrRefused) ||
			!strings.Contains(err.Error(), "resume after seq 4 from region eu") {
			t.Fatalf("stream after 4 of 3: %v, want ErrRefused naming the seq", err)
		}
	}
	mu.Lock()
	got := fmt.Sprint(counted)
	mu.Unlock()
	if want := "map[eu/ack_beyond_shipped:3 eu/resume_beyond_newest:3]"; got != want {
		t.Errorf("refusals counted %s, want %s", got, want)
	}
	out := logs.String()
	for _, reason := range RefusalReasons {
		if n := strings.Count(out, "reason="+reason); n != 1 {
			t.Errorf("%s logged %d times, want once:\n%s", reason, n, out)
		}
	}
	if strings.Contains(out, secret) {
		t.Errorf("the log shows the token:\n%s", out)
	}
	if acked, calls := ob.acked("eu"); acked != 0 || len(calls) != 0 {
		t.Fatalf("refused requests reached the outbox: acked %d, calls %v", acked, calls)
	}
	// The peer's legitimate position still works afterwards.
	if got, err := collect(t, cl, 0, 3); err != nil || fmt.Sprint(got) != "[1 2 3]" {
		t.Fatalf("after 0: %v %v", got, err)
	}
	if err := cl.Ack(context.Background(), 3); err != nil {
		t.Fatal(err)
	}
}

func TestLargeTransactionIsAcknowledgeableOnlyOnceWhollyShipped(t *testing.T) {
	ob := newMemOutbox()
	ob.add(txn(1))
	for p := 0; p < 2; p++ { // transaction 2's last part is not written yet
		tx := txn(2)
		tx.Part, tx.More = p, true
		ob.add(tx)
	}
	url := serve(t, ob, TLSFiles{}, cluster)
	cl := client(t, url, secret, TLSFiles{}, cluster)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n := 0
	errDone := errors.New("done")
	if err := cl.Stream(ctx, 0, func(*replicator.Txn) error {
		if n++; n == 3 {
			return errDone
		}
		return nil
	}); !errors.Is(err, errDone) {
		t.Fatal(err)
	}
	if err := cl.Ack(context.Background(), 2); !errors.Is(err, ErrRefused) {
		t.Fatalf("ack of a transaction shipped in part: %v, want ErrRefused", err)
	}
	if err := cl.Ack(context.Background(), 1); err != nil {
		t.Fatalf("ack of 1: %v", err)
	}
}
