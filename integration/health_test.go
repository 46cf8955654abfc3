package integration

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

var healthSchema = []string{`CREATE TABLE public.notes (id bigint PRIMARY KEY, body text NOT NULL)`}
var healthTables = []TableSpec{{Name: "public.notes"}}

// opsGet fetches a path from a region's operations server and checks the
// answer came within 100 ms. A slow answer is asked again at once: on a
// loaded two-core machine one request can wait for the scheduler, but a
// handler that blocks (on the database, say) is slow every time.
func opsGet(t *testing.T, r *Region, path string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	var took [2]time.Duration
	for i := range took {
		start := time.Now()
		resp, err := client.Get("http://" + r.HTTPListen + path)
		if err != nil {
			return 0, err.Error()
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		took[i] = time.Since(start)
		if took[i] <= 100*time.Millisecond || path == "/metrics" {
			return resp.StatusCode, string(b)
		}
		if i == 1 {
			t.Errorf("%s %s took %s and %s (want < 100ms)", r.Name, path, took[0], took[1])
			return resp.StatusCode, string(b)
		}
	}
	return 0, ""
}

// waitHealth polls /health until ok accepts the answer.
func waitHealth(t *testing.T, r *Region, within time.Duration, what string, ok func(code int, body string) bool) (int, string) {
	t.Helper()
	deadline := time.Now().Add(within)
	var code int
	var body string
	for time.Now().Before(deadline) {
		code, body = opsGet(t, r, "/health")
		if ok(code, body) {
			return code, body
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: /health did not become %s within %s; last answer %d:\n%s", r.Name, what, within, code, body)
	return code, body
}

func isServing(code int, body string) bool {
	return code == 200 && strings.HasPrefix(body, "serving\n")
}

type opsStatus struct {
	Status      string   `json:"status"`
	Reasons     []string `json:"reasons"`
	Observed    string   `json:"observed"`
	HoldSeconds float64  `json:"hold_seconds"`
	Joining     string   `json:"joining"`
}

func opsSnapshot(t *testing.T, r *Region) opsStatus {
	t.Helper()
	code, body := opsGet(t, r, "/status")
	var s opsStatus
	if code != 200 || json.Unmarshal([]byte(body), &s) != nil {
		t.Fatalf("%s /status: %d %s", r.Name, code, body)
	}
	return s
}

// metricValue sums the samples of a series whose labels contain every
// label=value given (e.g. `peer="eu"`); ok is false when none exists.
func metricValue(exposition, name string, labels ...string) (float64, bool) {
	sum, found := 0.0, false
	sc := bufio.NewScanner(strings.NewReader(exposition))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(line, l)
		}
		if !match {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum, found = sum+v, true
		}
	}
	return sum, found
}

// rewriteConfig changes a region's config file in place.
func rewriteConfig(t *testing.T, r *Region, change func(c *RegionConfig)) {
	t.Helper()
	b, err := os.ReadFile(r.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	var c RegionConfig
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	change(&c)
	if b, err = yaml.Marshal(c); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.ConfigPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestHealthForDNSFailover runs two regions and checks /health the way a
// DNS health checker sees it: serving normally; still serving (degraded,
// naming the peer) when the peer's replicator dies; serving through a local
// PostgreSQL restart shorter than the hold; 503 while the local PostgreSQL
// is down, and serving again once it is back. /metrics carries the lag and
// applied-rows series, and every series the shipped dashboard and alerts
// use.
func TestHealthForDNSFailover(t *testing.T) {
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: healthSchema, Tables: healthTables,
		Configure: func(region string, c *RegionConfig) {
			c.Health = map[string]string{"hold": "2s", "probe_interval": "250ms"}
		}})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]

	// Normal operation.
	_, body := waitHealth(t, us, 30*time.Second, "serving", isServing)
	t.Logf("us /health:\n%s", body)
	if code, body := opsGet(t, us, "/live"); code != 200 {
		t.Fatalf("/live: %d %s", code, body)
	}

	// Writes in eu reach us; the metrics say so.
	for i := 0; i < 50; i++ {
		mustExec(t, ctx, eu, `INSERT INTO public.notes VALUES ($1, 'from eu')`, i)
	}
	if err := h.WaitConverged(ctx, tableNames(healthTables), time.Minute); err != nil {
		t.Fatal(err)
	}
	var metrics string
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, metrics = opsGet(t, us, "/metrics")
		if v, _ := metricValue(metrics, "polyregion_applied_rows_total", `peer="eu"`); v >= 50 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("us /metrics: polyregion_applied_rows_total{peer=\"eu\"} below 50:\n%s", grepLines(metrics, "polyregion_applied"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, series := range []string{"polyregion_peer_lag_seconds", "polyregion_peer_lag_transactions", "polyregion_applied_transactions_total", "polyregion_apply_batch_duration_seconds_count"} {
		if _, ok := metricValue(metrics, series, `peer="eu"`); !ok {
			t.Errorf("us /metrics lacks %s{peer=\"eu\"}", series)
		}
	}
	if v, _ := metricValue(metrics, "polyregion_apply_batch_duration_seconds_count", `peer="eu"`); v == 0 {
		t.Errorf("no apply batch latency observed")
	}
	_, euMetrics := opsGet(t, eu, "/metrics")
	if v, _ := metricValue(euMetrics, "polyregion_shipped_rows_total", `peer="us"`); v < 50 {
		t.Errorf("eu shipped %v rows to us, want >= 50", v)
	}
	checkDeploySeries(t, metrics, false)
	st := liveStatus(t, us)
	if st.Replicator == nil || st.Replicator.Status != "serving" || len(st.Replicator.Peers) != 1 || !st.Replicator.Peers[0].LinkUp {
		t.Errorf("status --json: %+v, want the replicator serving with eu's link up", st.Replicator)
	}

	// The peer's replicator dies: still serving, degraded, naming the peer;
	// the lag to it grows.
	if err := eu.StopReplicator(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, body = waitHealth(t, us, 15*time.Second, "degraded", func(code int, body string) bool {
		return code == 200 && strings.HasPrefix(body, "serving degraded") && strings.Contains(body, "peer eu: link down")
	})
	t.Logf("us /health with eu's replicator down:\n%s", body)
	_, metrics = opsGet(t, us, "/metrics")
	if v, ok := metricValue(metrics, "polyregion_peer_link_up", `peer="eu"`); !ok || v != 0 {
		t.Errorf("polyregion_peer_link_up{peer=\"eu\"} = %v, want 0", v)
	}
	if v, _ := metricValue(metrics, "polyregion_peer_lag_seconds", `peer="eu"`); v <= 0 {
		t.Errorf("polyregion_peer_lag_seconds{peer=\"eu\"} = %v with the link down, want > 0", v)
	}
	out, err := exec.CommandContext(ctx, binary, "status", "--config", us.ConfigPath).CombinedOutput()
	if err != nil || !regexp.MustCompile(`(?m)^eu\s.*DOWN \d+s\s+\d+\.\ds, \d+ transactions`).Match(out) || !strings.Contains(string(out), "serving degraded") && !strings.Contains(string(out), "degraded since") {
		t.Errorf("status with eu's link down: %v\n%s", err, out)
	} else {
		t.Logf("status with eu's link down:\n%s", out)
	}
	if err := eu.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, us, 30*time.Second, "serving again", isServing)

	// A blip shorter than the hold: the local PostgreSQL restarts. The probe
	// sees it, /health never reports it. The hold is raised by a reload.
	rewriteConfig(t, us, func(c *RegionConfig) { c.Health["hold"] = "12s" })
	if err := us.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); opsSnapshot(t, us).HoldSeconds != 12; time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("SIGHUP did not raise the hold to 12s: %+v", opsSnapshot(t, us))
		}
	}
	blipDone := make(chan error, 1)
	blipStart := time.Now()
	go func() {
		if err := us.Cluster.Stop(ctx, "fast"); err != nil {
			blipDone <- err
			return
		}
		time.Sleep(1500 * time.Millisecond) // down for a few probes
		blipDone <- us.Cluster.Start(ctx)
	}()
	sawDown, polls := false, 0
	for watching := true; watching || time.Since(blipStart) < 4*time.Second; {
		select {
		case err := <-blipDone:
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("local postgres stopped and started again in %s", time.Since(blipStart).Round(time.Millisecond))
			watching = false
		default:
		}
		code, body := opsGet(t, us, "/health")
		polls++
		if code != 200 || !strings.HasPrefix(body, "serving") {
			t.Fatalf("/health flapped during a %s blip: %d\n%s", time.Since(blipStart).Round(time.Millisecond), code, body)
		}
		if strings.Contains(body, "pending: unavailable") {
			sawDown = true
		}
		time.Sleep(50 * time.Millisecond)
	}
	if time.Since(blipStart) > 10*time.Second {
		t.Fatalf("the blip took %s, not shorter than the hold", time.Since(blipStart))
	}
	if !sawDown {
		t.Fatalf("the prober never saw the local postgres down during the restart (%d polls): the blip test proves nothing", polls)
	}
	// Replication resumes after the restart.
	mustExec(t, ctx, us, `INSERT INTO public.notes VALUES (1000, 'after the blip')`)
	if err := h.WaitConverged(ctx, tableNames(healthTables), time.Minute); err != nil {
		t.Fatal(err)
	}

	// The local PostgreSQL stays down: 503, naming it; /live stays 200.
	rewriteConfig(t, us, func(c *RegionConfig) { c.Health["hold"] = "2s" })
	if err := us.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); opsSnapshot(t, us).HoldSeconds != 2; time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 5*time.Second {
			t.Fatal("SIGHUP did not lower the hold")
		}
	}
	if err := us.Cluster.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	_, body = waitHealth(t, us, 15*time.Second, "503", func(code int, body string) bool {
		return code == http.StatusServiceUnavailable && strings.HasPrefix(body, "unavailable") && strings.Contains(body, "local postgres")
	})
	t.Logf("us /health with its postgres stopped:\n%s", body)
	if strings.Contains(body, "serving") {
		t.Errorf("a 503 body must not contain 'serving' (a string-matching checker would pass it):\n%s", body)
	}
	if code, body := opsGet(t, us, "/live"); code != 200 {
		t.Errorf("/live with the database down: %d %s (a supervisor would restart a healthy process)", code, body)
	}
	if !us.Running() {
		t.Fatalf("the replicator exited when its database stopped:\n%s", us.Logs(3000))
	}
	if err := us.Cluster.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, us, 30*time.Second, "serving after the database came back", isServing)
	mustExec(t, ctx, us, `INSERT INTO public.notes VALUES (1001, 'after the outage')`)
	mustExec(t, ctx, eu, `INSERT INTO public.notes VALUES (1002, 'from eu after the outage')`)
	if err := h.WaitConverged(ctx, tableNames(healthTables), time.Minute); err != nil {
		t.Fatal(err)
	}
}

type liveStatusJSON struct {
	Replicator *struct {
		Status string `json:"status"`
		Peers  []struct {
			Peer       string  `json:"peer"`
			LinkUp     bool    `json:"link_up"`
			LagSeconds float64 `json:"lag_seconds"`
		} `json:"peers"`
	} `json:"replicator"`
	ReplicatorError string `json:"replicator_error"`
}

// liveStatus runs `status --json`, which asks the running replicator too.
func liveStatus(t *testing.T, r *Region) liveStatusJSON {
	t.Helper()
	out, err := exec.Command(binary, "status", "--json", "--config", r.ConfigPath).Output()
	if err != nil {
		t.Fatalf("status %s: %v", r.Name, err)
	}
	var st liveStatusJSON
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("status %s: %v\n%s", r.Name, err, out)
	}
	return st
}

var deploySeries = regexp.MustCompile(`\bpolyregion_[a-z0-9_]+\b`)

// checkDeploySeries checks that every polyregion_* name the shipped
// dashboard and alert rules use is in a real /metrics answer.
//
// Series named polyregion_control_* exist only in a region with control:
// set: with control false they are left out, with control true only they
// are checked (a region that runs the control plane).
func checkDeploySeries(t *testing.T, exposition string, control bool) {
	t.Helper()
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range []string{"deploy/grafana/polyregion-dashboard.json", "deploy/prometheus/alerts.yml"} {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range deploySeries.FindAllString(string(b), -1) {
			names[n] = true
		}
	}
	for n := range names {
		if strings.HasPrefix(n, "polyregion_control_") != control {
			continue
		}
		if !regexp.MustCompile(`(?m)^` + n + `[{ ]`).MatchString(exposition) {
			t.Errorf("%s is used by the dashboard or alerts but absent from /metrics", n)
		}
	}
	if len(names) < 15 && !control {
		t.Errorf("only %d series names found in the deploy files", len(names))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
