package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "polyregion-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := checkServerVersion(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	binary, err = BuildBinary(ctx, dir)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// checkServerVersion names the PostgreSQL the tests run on and, when
// POLYREGION_TEST_PG_MAJOR is set, refuses any other major version (a run
// meant for a newer server must not pass on the system's).
func checkServerVersion() error {
	bin, err := PGBinDir()
	if err != nil {
		return err
	}
	out, err := exec.Command(filepath.Join(bin, "postgres"), "--version").Output()
	if err != nil {
		return fmt.Errorf("%s --version: %w", filepath.Join(bin, "postgres"), err)
	}
	version := strings.TrimSpace(string(out))
	major := ""
	if m := regexp.MustCompile(`\(PostgreSQL\) (\d+)`).FindStringSubmatch(version); m != nil {
		major = m[1]
	}
	if want := os.Getenv("POLYREGION_TEST_PG_MAJOR"); want != "" && want != major {
		return fmt.Errorf("POLYREGION_TEST_PG_MAJOR=%s, but %s runs %s", want, bin, version)
	}
	fmt.Fprintf(os.Stderr, "integration tests on %s (%s)\n", version, bin)
	return nil
}

// testDir makes a directory the clusters' unprivileged user can enter; it is
// removed when the test passes and kept (and named) when it fails.
func testDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "polyregion-"+strings.ReplaceAll(t.Name(), "/", "_")+"-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("files and logs kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

// startRegions starts a harness and its replicators, and waits until the
// replicators are up. On failure it prints where the logs are and their tails.
func startRegions(t *testing.T, spec Spec) *Harness {
	t.Helper()
	return startRegionsWith(t, spec, false)
}

// startWithNetFaults is startRegions with every link through NetFaults,
// which the test cuts and heals.
func startWithNetFaults(t *testing.T, spec Spec) (*Harness, *NetFaults) {
	t.Helper()
	nf := NewNetFaults()
	t.Cleanup(nf.Close) // runs after the harness is closed
	spec.Configure = nf.Configure(nil)
	h := startRegions(t, spec)
	if err := nf.Check(spec.Regions); err != nil {
		t.Fatal(err)
	}
	return h, nf
}

// waitExited waits until r's replicator has ended on its own (a refusal
// at start), failing the test if it still runs after within.
func waitExited(t *testing.T, r *Region, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for r.Running() {
		if time.Now().After(deadline) {
			t.Fatalf("replicator %s still runs after %s:\n%s", r.Name, within, r.Logs(3000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startClusters is startRegions without starting the replicators.
func startClusters(t *testing.T, spec Spec) *Harness {
	t.Helper()
	return startRegionsWith(t, spec, true)
}

func startRegionsWith(t *testing.T, spec Spec, noReplicators bool) *Harness {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: needs PostgreSQL clusters (run without -short)")
	}
	spec.Dir = testDir(t)
	if spec.Binary == "" {
		spec.Binary = binary
	}
	if len(spec.Regions) == 0 {
		spec.Regions = []string{"us", "eu", "ap"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h, err := Start(ctx, spec)
	if err != nil {
		t.Fatalf("start regions: %v", err)
	}
	t.Cleanup(func() {
		// With POLYREGION_TEST_RACE set the replicators are built with the
		// race detector, which reports a race in the replicator's log and
		// lets it run on.
		for _, r := range h.Regions {
			if race := r.RaceReport(); race != "" {
				t.Errorf("replicator %s: %s", r.Name, race)
			}
		}
		if t.Failed() {
			t.Log(h.Describe())
			for _, r := range h.Regions {
				t.Logf("---- replicator %s (tail) ----\n%s", r.Name, r.Logs(3000))
			}
		}
		h.Close()
	})
	if noReplicators {
		return h
	}
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(spec.Tables), time.Minute); err != nil {
		t.Fatalf("replicators did not come up: %v", err)
	}
	return h
}

func tableNames(ts []TableSpec) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.Name
	}
	return out
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustExec(t *testing.T, ctx context.Context, r *Region, sql string, args ...any) {
	t.Helper()
	pool, err := r.Pool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %s: %v", r.Name, sql, err)
	}
}

func queryInt(t *testing.T, ctx context.Context, r *Region, sql string, args ...any) int64 {
	t.Helper()
	conn, err := r.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int64
	if err := conn.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %s: %v", r.Name, sql, err)
	}
	return n
}

func queryString(t *testing.T, ctx context.Context, r *Region, sql string, args ...any) string {
	t.Helper()
	conn, err := r.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var s *string
	if err := conn.QueryRow(ctx, sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %s: %v", r.Name, sql, err)
	}
	if s == nil {
		return "<null>"
	}
	return *s
}
