package integration

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// peerToken returns the token region from presents to region to.
func peerToken(t *testing.T, from *Region, to string) string {
	t.Helper()
	b, err := os.ReadFile(from.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	var c RegionConfig
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	for _, p := range c.Peers {
		if p.ID == to {
			return p.Token
		}
	}
	t.Fatalf("%s has no peer %s", from.Name, to)
	return ""
}

// linkRequest sends one request to r's link server as peer with token, the
// way a misbehaving peer holding valid credentials could, and returns the
// status and the start of the body.
func linkRequest(t *testing.T, r *Region, method, pathQuery, token, fingerprint string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+r.Listen+pathQuery, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if fingerprint != "" {
		req.Header.Set("X-Polyregion-Fingerprint", fingerprint)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, pathQuery, err)
	}
	defer resp.Body.Close()
	// A stream that was accepted never ends: read only its start.
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b)
}

// refusedMetric returns the polyregion_link_refused_total line of r's
// metrics for peer and reason ("" when absent).
func refusedMetric(t *testing.T, r *Region, peer, reason string) string {
	t.Helper()
	_, body := opsFetch(t, r, "GET", "/metrics")
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "polyregion_link_refused_total{") && strings.Contains(l, `peer="`+peer+`"`) && strings.Contains(l, `reason="`+reason+`"`) {
			return l
		}
	}
	return ""
}

// TestForgedAckIsRefusedAndChangesNothing: a peer holding valid
// credentials that acknowledges (or asks to resume after) a transaction
// never shipped to it is refused with a 4xx naming the position, counted
// and logged once; its recorded position is unchanged and it keeps
// receiving later rows. A position recorded beyond anything ever assigned
// (by an earlier version) is lowered at startup.
func TestForgedAckIsRefusedAndChangesNothing(t *testing.T) {
	tables := []TableSpec{{Name: "public.kv"}}
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: kvSchema, Tables: tables})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]

	for i := 1; i <= 3; i++ {
		mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES ($1, 'before')`, i)
	}
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv`, 3)
	const newestSQL = `SELECT coalesce((SELECT next_seq - 1 FROM polyregion.reader_state), 0)`
	const ackSQL = `SELECT coalesce((SELECT seq FROM polyregion.peer_ack WHERE peer = 'eu'), 0)`
	// eu acknowledges everything us assigned: its position is settled.
	deadline := time.Now().Add(time.Minute)
	for queryInt(t, ctx, us, ackSQL) != queryInt(t, ctx, us, newestSQL) {
		if time.Now().After(deadline) {
			t.Fatalf("eu's position at us %d never reached us's newest %d", queryInt(t, ctx, us, ackSQL), queryInt(t, ctx, us, newestSQL))
		}
		time.Sleep(100 * time.Millisecond)
	}
	before := queryInt(t, ctx, us, ackSQL)

	token := peerToken(t, eu, "us")
	const forged = "9223372036854775807"
	for range 3 {
		code, body := linkRequest(t, us, "POST", "/v1/ack?peer=eu&seq="+forged, token, "")
		if code < 400 || code >= 500 || !strings.Contains(body, "ack of seq "+forged+" from region eu is beyond") {
			t.Fatalf("forged ack: HTTP %d %q, want a 4xx naming the seq and the peer", code, body)
		}
	}
	// The stream's resume position is an acknowledgement too.
	code, body := linkRequest(t, us, "GET", "/v1/stream?peer=eu&after=0", token, "")
	var hello struct{ Fingerprint string }
	if err := json.Unmarshal([]byte(body), &hello); code != http.StatusConflict || err != nil || hello.Fingerprint == "" {
		t.Fatalf("stream without a fingerprint: HTTP %d %q, want 409 with us's fingerprint", code, body)
	}
	code, body = linkRequest(t, us, "GET", "/v1/stream?peer=eu&after="+forged, token, hello.Fingerprint)
	if code < 400 || code >= 500 || !strings.Contains(body, "resume after seq "+forged+" from region eu is beyond") {
		t.Fatalf("stream after the forged seq: HTTP %d %q, want a 4xx naming the seq and the peer", code, body)
	}

	if got := queryInt(t, ctx, us, ackSQL); got != before {
		t.Fatalf("eu's recorded position changed from %d to %d", before, got)
	}
	if l := refusedMetric(t, us, "eu", "ack_beyond_shipped"); !strings.HasSuffix(l, " 3") {
		t.Errorf("refused acks counted as %q, want 3", l)
	}
	if l := refusedMetric(t, us, "eu", "resume_beyond_newest"); !strings.HasSuffix(l, " 1") {
		t.Errorf("refused resumes counted as %q, want 1", l)
	}
	logs := us.Logs(1 << 22)
	if n := strings.Count(logs, "ack_beyond_shipped"); n != 1 {
		t.Errorf("the refused ack was logged %d times, want once", n)
	}
	if strings.Contains(logs, token) {
		t.Errorf("us's log shows the token")
	}

	// eu keeps receiving us's later rows.
	for i := 4; i <= 6; i++ {
		mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES ($1, 'after')`, i)
	}
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv WHERE val = 'after'`, 3)

	// An installation hit before the fix: the position is lowered at startup
	// and eu goes on receiving.
	if err := us.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := us.Cluster.Exec(ctx, AppDB, `UPDATE polyregion.peer_ack SET seq = `+forged+` WHERE peer = 'eu'`); err != nil {
		t.Fatal(err)
	}
	startReady(t, ctx, us)
	if got, newest := queryInt(t, ctx, us, ackSQL), queryInt(t, ctx, us, newestSQL); got > newest {
		t.Fatalf("eu's position %d left beyond us's newest %d after a restart", got, newest)
	}
	if !strings.Contains(us.Logs(1<<22), "lowered a peer's recorded acknowledgement") {
		t.Errorf("the repair was not logged")
	}
	mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES (7, 'after the repair')`)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv WHERE id = 7`, 1)
}
