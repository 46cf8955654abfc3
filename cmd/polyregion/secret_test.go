package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The planted secrets: a database password with characters a URL must
// encode, and a link token.
const (
	plantedPassword = "Planted@Secret/42"
	plantedToken    = "PlantedToken_0123456789"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func writeRegionConfig(t *testing.T, database string, httpPort int) string {
	t.Helper()
	cfg := fmt.Sprintf(`region: us
database: %q
listen: 127.0.0.1:%d
regions: [us, eu]
peers:
  - id: eu
    url: http://127.0.0.1:%d
    token: %s
tables:
  - name: public.profiles
http: {listen: 127.0.0.1:%d}
health: {probe_interval: 200ms, probe_timeout: 1s, hold: 0s}
shutdown_timeout: 5s
`, database, freePort(t), freePort(t), plantedToken, httpPort)
	path := filepath.Join(t.TempDir(), "us.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// leaks returns the forms of the planted secrets found in out.
func leaks(out string) []string {
	var found []string
	for _, s := range []string{plantedPassword, url.QueryEscape(plantedPassword), url.PathEscape(plantedPassword), "Secret/42", "Secret%2F42", "Secret42", plantedToken} {
		if strings.Contains(out, s) {
			found = append(found, s)
		}
	}
	return found
}

// A password with an unencoded '@' used to be split at the '@': the rest
// was looked up as a host name and shown by /health, /status and the logs.
// Now the configuration is refused, naming the fix and not the password.
func TestUnencodedAtInThePasswordIsRefusedWithoutShowingIt(t *testing.T) {
	bin := buildBinary(t)
	dsn := "postgres://app:" + plantedPassword + "@127.0.0.1:1/app"
	path := writeRegionConfig(t, dsn, freePort(t))
	for _, cmd := range []string{"run", "check"} {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		c := exec.CommandContext(ctx, bin, cmd, "--config", path)
		out, err := c.CombinedOutput()
		timedOut := ctx.Err() != nil
		cancel()
		if err == nil || timedOut {
			t.Fatalf("%s accepted a connection string with an unencoded @ in its password:\n%s", cmd, out)
		}
		if c.ProcessState.ExitCode() != exitConfig {
			t.Errorf("%s exited %d, want the configuration error code %d:\n%s", cmd, c.ProcessState.ExitCode(), exitConfig, out)
		}
		if !strings.Contains(string(out), "percent-encode") {
			t.Errorf("%s's message does not say how to fix it:\n%s", cmd, out)
		}
		if l := leaks(string(out)); len(l) > 0 {
			t.Errorf("%s's output shows %q:\n%s", cmd, l, out)
		}
	}
}

// With the database unreachable, every output of a running replicator (its
// logs, /health in both forms, /status, /live, /metrics) is read and none
// may carry the planted password or token.
func TestNoOutputOfARunningRegionCarriesASecret(t *testing.T) {
	bin := buildBinary(t)
	httpPort := freePort(t)
	dsn := "postgres://app:" + url.QueryEscape(plantedPassword) + "@127.0.0.1:" + fmt.Sprint(freePort(t)) + "/app?connect_timeout=1"
	path := writeRegionConfig(t, dsn, httpPort)
	var logs bytes.Buffer
	c := exec.Command(bin, "run", "--config", path)
	c.Stdout, c.Stderr = &logs, &logs
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- c.Wait() }()
	defer func() {
		_ = c.Process.Kill()
	}()
	base := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	get := func(p string) (int, string) {
		resp, err := http.Get(base + p)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := get("/health")
		if code == http.StatusServiceUnavailable && strings.Contains(body, "unreachable") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/health never said the database is unreachable: %d %s\nlogs:\n%s", code, body, logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	var all strings.Builder
	for _, p := range []string{"/health", "/health?format=json", "/status", "/live", "/metrics"} {
		code, body := get(p)
		fmt.Fprintf(&all, "== %s (%d)\n%s\n", p, code, body)
	}
	_ = c.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		t.Fatal("the replicator did not stop on SIGTERM")
	}
	all.WriteString("== logs\n" + logs.String())
	if l := leaks(all.String()); len(l) > 0 {
		t.Fatalf("outputs show %q:\n%s", l, all.String())
	}
	if !strings.Contains(all.String(), "unreachable") {
		t.Fatalf("no reason was read:\n%s", all.String())
	}
}
