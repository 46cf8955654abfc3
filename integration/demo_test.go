package integration

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// demoRun is the quickstart demo (`polyregion demo`) running as its own
// process, its output collected line by line.
type demoRun struct {
	cmd    *exec.Cmd
	tmp    string // TMPDIR of the demo: its directory is made inside
	stderr bytes.Buffer
	done   chan struct{}
	err    error // the process's exit, once done is closed

	mu    sync.Mutex
	lines []string
	more  chan struct{} // signalled on each new line
}

func startDemo(t *testing.T, args ...string) *demoRun {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs PostgreSQL clusters (run without -short)")
	}
	d := &demoRun{tmp: testDir(t), done: make(chan struct{}), more: make(chan struct{}, 1)}
	d.cmd = exec.Command(binary, append([]string{"demo"}, args...)...)
	d.cmd.Env = append(os.Environ(), "TMPDIR="+d.tmp)
	d.cmd.Stderr = &d.stderr
	out, err := d.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			d.mu.Lock()
			d.lines = append(d.lines, sc.Text())
			d.mu.Unlock()
			select {
			case d.more <- struct{}{}:
			default:
			}
		}
		_, _ = io.Copy(io.Discard, out)
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			_ = d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.done:
			case <-time.After(time.Minute):
				_ = d.cmd.Process.Kill()
				<-d.done
			}
		}
		if t.Failed() {
			t.Logf("demo output:\n%s\ndemo stderr:\n%s", d.output(), d.stderr.String())
		}
	})
	return d
}

func (d *demoRun) output() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strings.Join(d.lines, "\n")
}

// waitLine waits for a line matching re and returns its submatches.
func (d *demoRun) waitLine(t *testing.T, re *regexp.Regexp, within time.Duration) []string {
	t.Helper()
	deadline := time.After(within)
	for seen := 0; ; {
		d.mu.Lock()
		lines := d.lines[seen:]
		seen = len(d.lines)
		d.mu.Unlock()
		for _, l := range lines {
			if m := re.FindStringSubmatch(l); m != nil {
				return m
			}
		}
		select {
		case <-d.more:
		case <-d.done:
			// Lines may have arrived between the check and the exit.
			d.mu.Lock()
			n := len(d.lines)
			d.mu.Unlock()
			if n == seen {
				t.Fatalf("demo exited (%v) before printing a line matching %s", d.err, re)
			}
		case <-deadline:
			t.Fatalf("demo printed no line matching %s within %s", re, within)
		}
	}
}

// stop sends sig and waits for the demo to exit.
func (d *demoRun) stop(t *testing.T, sig syscall.Signal, within time.Duration) error {
	t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
		return d.err
	case <-time.After(within):
		t.Fatalf("demo did not exit within %s of %v", within, sig)
		return nil
	}
}

var demoDirLine = regexp.MustCompile(`starting 3 regions \(us, eu, ap\) in (\S+)`)

// checkCleanedUp checks the demo's directory is gone and no process of it
// (cluster or replicator) is left.
func checkCleanedUp(t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("demo directory %s still there (%v)", dir, err)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(dir)) {
			t.Errorf("process %s still runs from the demo directory: %s", filepath.Dir(p), bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}

// TestDemoEndToEnd runs `polyregion demo --serve` as a person would: it
// must print each step, the counters, the conflict summary, every region's
// health and index, the URLs (which must answer while it serves), end its
// output with VERDICT: CONVERGED, and on Ctrl-C stop everything, remove its
// directory and exit 0.
func TestDemoEndToEnd(t *testing.T) {
	start := time.Now()
	d := startDemo(t, "--duration", "4s", "--serve")
	dir := d.waitLine(t, demoDirLine, 10*time.Second)[1]
	verdict := d.waitLine(t, regexp.MustCompile(`^VERDICT: .*`), 3*time.Minute)[0]
	t.Logf("verdict after %s", time.Since(start).Round(time.Second))
	out := d.output()
	if !strings.HasPrefix(verdict, "VERDICT: CONVERGED") {
		t.Fatalf("verdict: %s", verdict)
	}
	if !strings.HasSuffix(out, verdict) {
		t.Fatalf("the verdict is not the last line")
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`writing in all three regions at once`),
		regexp.MustCompile(`converged [0-9.]+s after the last write`),
		regexp.MustCompile(`(?m)^    region us: \d+ counter rows, 8 profiles; counters total (\d+) of (\d+) increments issued \(ok\)$`),
		regexp.MustCompile(`conflict summary`),
		regexp.MustCompile(`(?m)^    [1-9]\d* writes lost \(overwritten by a concurrent write\), \d+ conflicts merged with nothing lost$`),
		regexp.MustCompile(`(?m)^    [1-9]\d* distinct conflicts \(\d+ conflict log records`),
		regexp.MustCompile(`(?m)^    by table: .*public\.profiles \d+`),
		regexp.MustCompile(`(?m)^    by winner region: `),
		regexp.MustCompile(`(?m)^    region us: /health 200 serving`),
		regexp.MustCompile(`(?m)^    region eu: /health 200 serving`),
		regexp.MustCompile(`(?m)^    region ap: /health 200 serving`),
		regexp.MustCompile(`(?m)^    region ap: search index profiles holds 8 documents for 8 rows; .*\(in step\)$`),
	} {
		if !want.MatchString(out) {
			t.Errorf("demo output lacks %s", want)
		}
	}
	// Every URL it prints answers while it serves.
	urls := regexp.MustCompile(`(?m)^ +(?:region \w+ +)?(metrics|conflicts|search|health) +(http://\S+)$`).FindAllStringSubmatch(out, -1)
	if len(urls) != 12 {
		t.Fatalf("want 4 URLs for each of 3 regions, found %d", len(urls))
	}
	for _, u := range urls {
		resp, err := http.Get(u[2])
		if err != nil {
			t.Fatalf("%s: %v", u[2], err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := map[string]string{"metrics": "polyregion_applied_rows_total", "conflicts": "<html", "search": `"total":`, "health": "serving"}[u[1]]
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("%s: %d, want 200 with %q:\n%.300s", u[2], resp.StatusCode, want, b)
		}
	}
	if t.Failed() {
		return
	}
	if err := d.stop(t, syscall.SIGINT, time.Minute); err != nil {
		t.Fatalf("demo --serve ended by Ctrl-C: %v, want exit 0", err)
	}
	checkCleanedUp(t, dir)
	if !strings.Contains(d.stderr.String(), "removed "+dir) {
		t.Errorf("stderr does not say the directory was removed:\n%s", d.stderr.String())
	}
}

// TestDemoInterruptedCleansUp stops the demo with Ctrl-C in the middle of
// its workload: the replicators and clusters stop and its directory goes.
func TestDemoInterruptedCleansUp(t *testing.T) {
	d := startDemo(t, "--duration", "2m")
	dir := d.waitLine(t, demoDirLine, 10*time.Second)[1]
	d.waitLine(t, regexp.MustCompile(`writing in all three regions at once`), 2*time.Minute)
	time.Sleep(time.Second)
	began := time.Now()
	err := d.stop(t, syscall.SIGINT, time.Minute)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(d.stderr.String(), "interrupted") {
		t.Fatalf("demo interrupted: %v, want exit 1 saying interrupted", err)
	}
	t.Logf("stopped and cleaned up in %s", time.Since(began).Round(100*time.Millisecond))
	if strings.Contains(d.output(), "VERDICT") {
		t.Errorf("an interrupted demo printed a verdict")
	}
	checkCleanedUp(t, dir)
}
