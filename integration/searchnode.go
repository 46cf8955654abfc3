package integration

// Real search nodes for the tests: one Elasticsearch 8 node or one
// OpenSearch 2.x node in its own JVM, built from the server jars published
// to Maven Central by the Maven project in searchnode/ (see its pom.xml).
// .ci/setup-search installs Java and Maven and builds it; when the build
// is missing or older than its sources, the first use here builds it
// (offline first, from the local Maven repository).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// SearchKind names a search engine.
type SearchKind string

const (
	SearchElasticsearch SearchKind = "elasticsearch" // Elasticsearch 8.x
	SearchOpenSearch    SearchKind = "opensearch"    // OpenSearch 2.x
)

// SearchNode is one running (or stopped) search node. Everything it writes
// is under Dir: data/, logs/, home/, tmp/ and the JVM's output in LogPath.
type SearchNode struct {
	Kind          SearchKind
	URL           string // http://127.0.0.1:PORT, no trailing slash
	Version       string // the server's version number, e.g. 8.19.0
	Dir           string
	LogPath       string
	HTTPPort      int
	TransportPort int

	mu    sync.Mutex
	cmd   *exec.Cmd
	stdin io.WriteCloser // held open; the JVM stops when it closes
	done  chan struct{}  // closed when the JVM has exited
	err   error          // the JVM's exit, valid after done
}

// searchBuild is what the Maven build of one engine left behind.
type searchBuild struct {
	java       string
	launcher   string   // the launcher jar
	classpath  []string // the server's jars
	modulesDir string   // Elasticsearch only: modules/ for the plugin loader
}

var (
	searchBuildMu    sync.Mutex
	searchBuildCache = map[SearchKind]*searchBuild{}
	searchBuildErr   = map[SearchKind]error{}
)

// SearchAvailable reports why nodes of this kind cannot be started here, or
// nil when they can: Java 17 or newer is there, and the launcher is built
// (it builds it when needed, which needs Maven and, the first time, the
// artifacts from Maven Central; .ci/setup-search fetches them).
func SearchAvailable(kind SearchKind) error {
	_, err := searchEnsureBuilt(kind)
	return err
}

// StartSearchNode starts one node of the given kind with its data under dir
// (created if missing; an existing dir keeps its indices), on free loopback
// ports, and returns once cluster health is yellow or green. On failure the
// node is stopped and the error carries the end of its log.
func StartSearchNode(ctx context.Context, kind SearchKind, dir string) (*SearchNode, error) {
	if _, err := searchEnsureBuilt(kind); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	httpPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	transportPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	n := &SearchNode{
		Kind:          kind,
		URL:           fmt.Sprintf("http://127.0.0.1:%d", httpPort),
		Dir:           dir,
		LogPath:       filepath.Join(dir, "searchnode.log"),
		HTTPPort:      httpPort,
		TransportPort: transportPort,
	}
	if err := n.start(ctx); err != nil {
		return nil, err
	}
	return n, nil
}

// Restart stops the node gracefully if it is running and starts it again on
// the same ports with the same data directory.
func (n *SearchNode) Restart(ctx context.Context) error {
	if err := n.Stop(); err != nil {
		return err
	}
	return n.start(ctx)
}

// Stop asks the node to close (SIGTERM) and waits for the JVM to exit. It
// returns an error if the JVM did not close cleanly within a minute (it is
// then killed). Stopping a stopped node does nothing.
func (n *SearchNode) Stop() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return nil
	}
	defer n.forget()
	select {
	case <-n.done:
		return nil // it had already exited (e.g. killed)
	default:
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(time.Minute):
		_ = n.cmd.Process.Kill()
		<-n.done
		return fmt.Errorf("%s node did not stop within a minute of SIGTERM; killed\n%s", n.Kind, n.logsLocked(4000))
	}
	if searchCleanExit(n.err) {
		return nil
	}
	return fmt.Errorf("%s node exited uncleanly on SIGTERM: %v\n%s", n.Kind, n.err, n.logsLocked(4000))
}

// Kill ends the JVM with SIGKILL (no chance to flush or close) and waits for
// it to be gone. Restart brings the node back on the same data.
func (n *SearchNode) Kill() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return nil
	}
	defer n.forget()
	select {
	case <-n.done:
		return nil
	default:
	}
	if err := n.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	<-n.done
	return nil
}

// Running reports whether the node's JVM is alive.
func (n *SearchNode) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// Logs returns the last maxBytes of the node's log (JVM standard output and
// error, across restarts); maxBytes <= 0 means all of it.
func (n *SearchNode) Logs(maxBytes int) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.logsLocked(maxBytes)
}

func (n *SearchNode) logsLocked(maxBytes int) string {
	b, err := os.ReadFile(n.LogPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if maxBytes > 0 && len(b) > maxBytes {
		b = b[len(b)-maxBytes:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 && i < len(b)-1 {
			b = b[i+1:]
		}
	}
	return string(b)
}

// forget drops the handle of an exited JVM; n.mu is held.
func (n *SearchNode) forget() {
	if n.stdin != nil {
		n.stdin.Close()
	}
	n.cmd, n.stdin = nil, nil
}

func (n *SearchNode) start(ctx context.Context) error {
	b, err := searchEnsureBuilt(n.Kind)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		return fmt.Errorf("%s node is already running", n.Kind)
	}
	for _, d := range []string{n.Dir, filepath.Join(n.Dir, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	logf, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	fmt.Fprintf(logf, "=== %s starting %s node: http %d, transport %d\n", time.Now().Format(time.RFC3339), n.Kind, n.HTTPPort, n.TransportPort)

	args := []string{
		"-Xms256m", "-Xmx768m", "-Xss1m",
		"-XX:+UseSerialGC", "-XX:-UsePerfData", "-XX:TieredStopAtLevel=1",
		"-Djava.awt.headless=true", "-Dfile.encoding=UTF-8",
		"-Djava.io.tmpdir=" + filepath.Join(n.Dir, "tmp"),
		"-Dlog4j.shutdownHookEnabled=false", "-Dlog4j2.disable.jmx=true", "-Dlog4j2.formatMsgNoLookups=true",
		"-Dio.netty.noUnsafe=true", "-Dio.netty.noKeySetOptimization=true", "-Dio.netty.recycler.maxCapacityPerThread=0",
		"-Dsearchnode.exitOnStdinEOF=true",
	}
	port, tport := strconv.Itoa(n.HTTPPort), strconv.Itoa(n.TransportPort)
	cp := strings.Join(b.classpath, string(os.PathListSeparator))
	switch n.Kind {
	case SearchElasticsearch:
		// Elasticsearch 8 runs its server jars as modules (its plugin loader
		// needs a named server module); the launcher stays on the class path.
		args = append(args, "--module-path", cp, "--add-modules", "ALL-MODULE-PATH",
			"-cp", b.launcher, "polyregion.searchnode.ElasticsearchNode", port, tport, n.Dir, b.modulesDir)
	case SearchOpenSearch:
		args = append(args, "-cp", b.launcher+string(os.PathListSeparator)+cp,
			"polyregion.searchnode.OpenSearchNode", port, tport, n.Dir)
	}
	cmd := exec.Command(b.java, args...)
	cmd.Dir = n.Dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		stdin.Close()
		return fmt.Errorf("starting %s node: %w", n.Kind, err)
	}
	n.cmd, n.stdin = cmd, stdin
	n.done = make(chan struct{})
	done := n.done
	go func() {
		err := cmd.Wait()
		n.err = err
		close(done)
	}()

	if err := n.waitReady(ctx, done); err != nil {
		_ = cmd.Process.Kill()
		<-done
		n.forget()
		return fmt.Errorf("%s node did not come up: %w\n--- log %s (end) ---\n%s", n.Kind, err, n.LogPath, n.logsLocked(6000))
	}
	return nil
}

// waitReady polls until cluster health is yellow or green and reads the
// server's version; n.mu is held.
func (n *SearchNode) waitReady(ctx context.Context, done <-chan struct{}) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 4*time.Minute)
		defer cancel()
	}
	client := &http.Client{Timeout: 10 * time.Second}
	var last error
	for {
		select {
		case <-done:
			return fmt.Errorf("the JVM exited: %v", n.err)
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
		var health struct {
			Status string `json:"status"`
		}
		if last = searchGetJSON(ctx, client, n.URL+"/_cluster/health?wait_for_status=yellow&timeout=2s", &health); last != nil {
			continue
		}
		if health.Status != "yellow" && health.Status != "green" {
			last = fmt.Errorf("cluster health %q", health.Status)
			continue
		}
		var root struct {
			Version struct {
				Number string `json:"number"`
			} `json:"version"`
		}
		if last = searchGetJSON(ctx, client, n.URL+"/", &root); last != nil {
			continue
		}
		if root.Version.Number == "" {
			last = errors.New("GET / gave no version.number")
			continue
		}
		n.Version = root.Version.Number
		return nil
	}
}

func searchGetJSON(ctx context.Context, client *http.Client, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(body))
	}
	return json.Unmarshal(body, v)
}

// searchCleanExit: the JVM exits 143 (128+SIGTERM) after running its
// shutdown hooks, or 0 when its standard input closed.
func searchCleanExit(err error) bool {
	if err == nil {
		return true
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode() == 143
	}
	return false
}

// SearchNodeProjectDir is the Maven project that builds the launchers.
func SearchNodeProjectDir() string {
	if d := os.Getenv("POLYREGION_SEARCHNODE_DIR"); d != "" {
		return d
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		d := filepath.Join(filepath.Dir(file), "searchnode")
		if _, err := os.Stat(filepath.Join(d, "pom.xml")); err == nil {
			return d
		}
	}
	return filepath.Join("integration", "searchnode")
}

// searchEnsureBuilt returns the build of one engine, building it when it is
// missing or older than its sources. A failure is remembered for the
// process, so that every test reports it at once.
func searchEnsureBuilt(kind SearchKind) (*searchBuild, error) {
	if kind != SearchElasticsearch && kind != SearchOpenSearch {
		return nil, fmt.Errorf("unknown search kind %q (want %q or %q)", kind, SearchElasticsearch, SearchOpenSearch)
	}
	searchBuildMu.Lock()
	defer searchBuildMu.Unlock()
	if b := searchBuildCache[kind]; b != nil {
		return b, nil
	}
	if err := searchBuildErr[kind]; err != nil {
		return nil, err
	}
	b, err := searchBuildOnce(kind)
	if err != nil {
		searchBuildErr[kind] = err
		return nil, err
	}
	searchBuildCache[kind] = b
	return b, nil
}

func searchBuildOnce(kind SearchKind) (*searchBuild, error) {
	java, err := searchJava()
	if err != nil {
		return nil, err
	}
	project := SearchNodeProjectDir()
	if _, err := os.Stat(filepath.Join(project, "pom.xml")); err != nil {
		return nil, fmt.Errorf("search node launcher project not found: %w", err)
	}
	if b, reason := searchReadBuild(project, kind); reason == "" {
		b.java = java
		return b, nil
	} else if err := searchMaven(project, kind, reason); err != nil {
		return nil, err
	}
	b, reason := searchReadBuild(project, kind)
	if reason != "" {
		return nil, fmt.Errorf("%s launcher: after building, %s", kind, reason)
	}
	b.java = java
	return b, nil
}

// searchReadBuild reads the build output of one engine; the reason it is
// not usable (missing, stale) is non-empty when it is not.
func searchReadBuild(project string, kind SearchKind) (*searchBuild, string) {
	mod := filepath.Join(project, string(kind))
	target := filepath.Join(mod, "target")
	b := &searchBuild{launcher: filepath.Join(target, "searchnode-"+string(kind)+"-1.jar")}
	li, err := os.Stat(b.launcher)
	if err != nil {
		return nil, "the launcher is not built"
	}
	raw, err := os.ReadFile(filepath.Join(target, "classpath.txt"))
	if err != nil {
		return nil, "its class path is not written"
	}
	for _, p := range strings.Split(strings.TrimSpace(string(raw)), string(os.PathListSeparator)) {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return nil, "a jar of its class path is gone: " + p
		}
		b.classpath = append(b.classpath, p)
	}
	if len(b.classpath) == 0 {
		return nil, "its class path is empty"
	}
	if kind == SearchElasticsearch {
		b.modulesDir = filepath.Join(target, "modules")
		for _, m := range []string{"transport-netty4", "rest-root"} {
			if _, err := os.Stat(filepath.Join(b.modulesDir, m, "plugin-descriptor.properties")); err != nil {
				return nil, "module " + m + " is not laid out"
			}
		}
	}
	// Stale when a pom or a source is newer than the launcher jar.
	stale := ""
	check := func(p string) {
		if fi, err := os.Stat(p); err == nil && fi.ModTime().After(li.ModTime()) && stale == "" {
			stale = "it is older than " + p
		}
	}
	check(filepath.Join(project, "pom.xml"))
	check(filepath.Join(mod, "pom.xml"))
	_ = filepath.Walk(filepath.Join(mod, "src"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			check(p)
		}
		return nil
	})
	if stale != "" {
		return nil, stale
	}
	return b, ""
}

// searchMaven builds one engine's launcher: offline first (the local Maven
// repository usually has everything), then online.
func searchMaven(project string, kind SearchKind, reason string) error {
	mvn, err := exec.LookPath("mvn")
	if err != nil {
		return fmt.Errorf("%s launcher needs building (%s) and Maven is not installed (run .ci/setup-search)", kind, reason)
	}
	base := []string{"-B", "-q", "-pl", string(kind), "-am", "package"}
	var out []byte
	for _, offline := range []bool{true, false} {
		args := base
		if offline {
			args = append([]string{"-o"}, base...)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		cmd := exec.CommandContext(ctx, mvn, args...)
		cmd.Dir = project
		out, err = cmd.CombinedOutput()
		cancel()
		if err == nil {
			return nil
		}
	}
	tail := out
	if len(tail) > 4000 {
		tail = tail[len(tail)-4000:]
	}
	return fmt.Errorf("building the %s launcher (%s) failed: %v (run .ci/setup-search)\n%s", kind, reason, err, tail)
}

var (
	searchJavaOnce sync.Once
	searchJavaPath string
	searchJavaErr  error
)

// searchJava finds java 17 or newer: $JAVA_HOME/bin/java, else the one on
// PATH.
func searchJava() (string, error) {
	searchJavaOnce.Do(func() {
		java := ""
		if h := os.Getenv("JAVA_HOME"); h != "" {
			if _, err := os.Stat(filepath.Join(h, "bin", "java")); err == nil {
				java = filepath.Join(h, "bin", "java")
			}
		}
		if java == "" {
			p, err := exec.LookPath("java")
			if err != nil {
				searchJavaErr = errors.New("java is not installed (Java 17 or newer; run .ci/setup-search)")
				return
			}
			java = p
		}
		out, err := exec.Command(java, "-version").CombinedOutput()
		if err != nil {
			searchJavaErr = fmt.Errorf("%s -version: %v: %s", java, err, out)
			return
		}
		m := regexp.MustCompile(`version "(\d+)`).FindSubmatch(out)
		if m == nil {
			searchJavaErr = fmt.Errorf("cannot read the version of %s: %s", java, out)
			return
		}
		if major, _ := strconv.Atoi(string(m[1])); major < 17 {
			searchJavaErr = fmt.Errorf("%s is Java %d; the search nodes need Java 17 or newer", java, major)
			return
		}
		searchJavaPath = java
	})
	return searchJavaPath, searchJavaErr
}
