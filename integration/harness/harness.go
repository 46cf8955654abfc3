// Package harness starts local multi-region setups for the demo, the
// integration tests and the benchmarks: one PostgreSQL cluster per region made
// from the installed server binaries, one replicator process per region with
// the config the harness writes for it, the demo's workload, and the checks
// that tell when the regions have converged (WaitReady, WaitConverged,
// Compare).
//
// Close stops everything a Harness started and leaves its files (data
// directories, configs, logs) in Spec.Dir. The harness injects no faults:
// network faults, process crashes, clock offsets and the validators of runs
// under them are in package integration, which only the tests link.
package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"gopkg.in/yaml.v3"
)

// TableSpec is one replicated table in a harness run, as it appears in the
// regions' config files.
type TableSpec struct {
	Name     string   `yaml:"name"`
	Policy   string   `yaml:"policy,omitempty"`
	Priority []string `yaml:"priority,omitempty"`
	Deletes  string   `yaml:"deletes,omitempty"`
	Counters []string `yaml:"counters,omitempty"`
	Max      []string `yaml:"max,omitempty"`
	Min      []string `yaml:"min,omitempty"`
	Resolver string   `yaml:"resolver,omitempty"`
	Columns  string   `yaml:"columns,omitempty"`
}

// Spec describes a local multi-region setup.
type Spec struct {
	// Regions names the regions, e.g. us, eu, ap.
	Regions []string
	// SchemaSQL creates the application's tables; it runs in every region as
	// the application role, which therefore owns them.
	SchemaSQL []string
	Tables    []TableSpec
	// Dir holds data directories, configs and logs. Required.
	Dir string
	// Binary is the replicator executable.
	Binary string
	// ClusterOptions applies to every region's cluster.
	ClusterOptions ClusterOptions
	// LogLevel for the replicators (default info).
	LogLevel string
	// Configure, when set, may change a region's config before it is written
	// (to inject a disagreement, say).
	Configure func(region string, c *RegionConfig)
	// Encodings gives regions' application databases an encoding other
	// than the cluster's (UTF8), by region name ("WIN1252", say).
	Encodings map[string]string
}

// Region is one region of a harness: its PostgreSQL cluster and its
// replicator process.
type Region struct {
	Name       string
	Cluster    *Cluster
	Listen     string
	ConfigPath string
	LogPath    string
	// HTTPListen is the replicator's operations server (/health, /metrics).
	HTTPListen string

	h    *Harness
	mu   sync.Mutex
	proc *exec.Cmd
	done chan struct{}
	pool *pgxpool.Pool
	// lastExit is the exit status of the last replicator process stopped.
	lastExit *os.ProcessState
}

// Harness is a running multi-region setup.
type Harness struct {
	Spec    Spec
	Regions []*Region
}

// AppDB is the application database in every region.
const AppDB = "app"

// BuildBinary builds the replicator into dir and returns its path; with
// POLYREGION_TEST_RACE set, with the race detector (see Region.RaceReport).
func BuildBinary(ctx context.Context, dir string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "polyregion")
	args := []string{"build", "-o", out}
	if os.Getenv("POLYREGION_TEST_RACE") != "" {
		args = append(args, "-race")
	}
	cmd := exec.CommandContext(ctx, "go", append(args, "./cmd/polyregion")...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build replicator: %w\n%s", err, b)
	}
	return out, nil
}

// ModuleRoot finds the repository root (the directory holding go.mod).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found above the working directory")
		}
		dir = parent
	}
}

func token() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Start creates every region's cluster, roles, database and schema, writes
// the replicators' configs (it does not start the replicators).
func Start(ctx context.Context, spec Spec) (*Harness, error) {
	if spec.Dir == "" || spec.Binary == "" {
		return nil, errors.New("harness: Dir and Binary are required")
	}
	h := &Harness{Spec: spec}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, len(spec.Regions))
	for i, name := range spec.Regions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := NewCluster(ctx, spec.Dir, name, spec.ClusterOptions)
			if err != nil {
				stopStray(spec.Dir, name)
				errs[i] = err
				return
			}
			r := &Region{Name: name, Cluster: c, h: h}
			mu.Lock()
			h.Regions = append(h.Regions, r)
			mu.Unlock()
			errs[i] = r.setupDatabase(ctx, spec.SchemaSQL, spec.Encodings[name])
		}()
	}
	wg.Wait()
	sort.Slice(h.Regions, func(i, j int) bool {
		return indexOf(spec.Regions, h.Regions[i].Name) < indexOf(spec.Regions, h.Regions[j].Name)
	})
	if err := errors.Join(errs...); err != nil {
		h.Close()
		return nil, err
	}
	if err := h.writeConfigs(); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// stopStray stops a server that NewCluster started before it failed (its
// context ended while pg_ctl waited for the server, say), so nothing is left
// running when Start fails.
func stopStray(dir, name string) {
	data := filepath.Join(dir, name)
	if _, err := os.Stat(filepath.Join(data, "postmaster.pid")); err != nil {
		return
	}
	bin, err := PGBinDir()
	if err != nil {
		return
	}
	cred, uid, gid, err := runAs()
	if err != nil {
		return
	}
	c := &Cluster{Name: name, Dir: data, BinDir: bin, cred: cred, uid: uid, gid: gid}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = c.Stop(ctx, "immediate")
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// Roles: "app" owns the application's tables; "polyregion" replicates. It
// has REPLICATION and membership in app (PostgreSQL requires table
// ownership to add tables to a publication) and nothing of a superuser's.
func (r *Region) setupDatabase(ctx context.Context, schema []string, encoding string) error {
	c := r.Cluster
	create := `CREATE DATABASE app OWNER app`
	if encoding != "" {
		create += ` ENCODING '` + encoding + `' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`
	}
	if err := c.Exec(ctx, "postgres",
		`CREATE ROLE app LOGIN`,
		`CREATE ROLE polyregion LOGIN REPLICATION IN ROLE app`,
		create,
	); err != nil {
		return err
	}
	stmts := []string{
		`GRANT CREATE ON DATABASE app TO polyregion`,
		`GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_session_setup(text),
			pg_catalog.pg_replication_origin_create(text),
			pg_catalog.pg_replication_origin_xact_setup(pg_lsn, timestamptz) TO polyregion`,
		`SET ROLE app`,
	}
	stmts = append(stmts, schema...)
	return c.Exec(ctx, AppDB, stmts...)
}

// RegionConfig is the YAML config file the harness writes for a region.
type RegionConfig struct {
	Region   string      `yaml:"region"`
	Database string      `yaml:"database"`
	Listen   string      `yaml:"listen"`
	Regions  []string    `yaml:"regions"`
	Peers    []PeerEntry `yaml:"peers"`
	Tables   []TableSpec `yaml:"tables"`
	// OutboxMaxTransactions caps the outbox (0: no cap).
	OutboxMaxTransactions int64 `yaml:"outbox_max_transactions,omitempty"`
	Log                   struct {
		Format string `yaml:"format"`
		Level  string `yaml:"level"`
	} `yaml:"log"`
	HTTP struct {
		Listen string `yaml:"listen,omitempty"`
	} `yaml:"http,omitempty"`
	// Health holds health.* settings (e.g. "hold": "2s").
	Health          map[string]string `yaml:"health,omitempty"`
	ShutdownTimeout string            `yaml:"shutdown_timeout,omitempty"`
	// Search is the search: section (the regional index feed), if any.
	Search *SearchSection `yaml:"search,omitempty"`
	// Sequences is the sequences: section, if any.
	Sequences *SequencesSection `yaml:"sequences,omitempty"`
	// Control is the control: section, if any.
	Control *ControlSection `yaml:"control,omitempty"`
	// Join is the join: section (spool).
	Join map[string]string `yaml:"join,omitempty"`
	// Witnesses are control-plane voters with no database.
	Witnesses []PeerEntry `yaml:"witnesses,omitempty"`
	// ConflictLog is the conflict_log: section (retention).
	ConflictLog map[string]string `yaml:"conflict_log,omitempty"`
}

// ControlSection is the control: section (the control plane).
type ControlSection struct {
	Dir              string `yaml:"dir"`
	HeartbeatTimeout string `yaml:"heartbeat_timeout,omitempty"`
	ElectionTimeout  string `yaml:"election_timeout,omitempty"`
	ReportInterval   string `yaml:"report_interval,omitempty"`
}

// SequencesSection is the sequences: section: a stride and each region's
// offset.
type SequencesSection struct {
	Stride  int64            `yaml:"stride"`
	Offsets map[string]int64 `yaml:"offsets"`
}

// SearchSection is a region's search: settings.
type SearchSection struct {
	Kind          string        `yaml:"kind,omitempty"`
	URLs          []string      `yaml:"urls,omitempty"`
	Dir           string        `yaml:"dir,omitempty"`
	BatchDocs     int           `yaml:"batch_docs,omitempty"`
	FlushInterval string        `yaml:"flush_interval,omitempty"`
	Indices       []SearchIndex `yaml:"indices"`
}

// SearchIndex maps a table to an index in a SearchSection.
type SearchIndex struct {
	Table   string            `yaml:"table"`
	Index   string            `yaml:"index,omitempty"`
	Columns []string          `yaml:"columns,omitempty"`
	Exclude []string          `yaml:"exclude,omitempty"`
	Rename  map[string]string `yaml:"rename,omitempty"`
}

// PeerEntry is one peer in a RegionConfig.
type PeerEntry struct {
	ID    string `yaml:"id"`
	URL   string `yaml:"url"`
	Token string `yaml:"token"`
}

func (h *Harness) writeConfigs() error {
	for _, r := range h.Regions {
		port, err := FreePort()
		if err != nil {
			return err
		}
		r.Listen = fmt.Sprintf("127.0.0.1:%d", port)
		if port, err = FreePort(); err != nil {
			return err
		}
		r.HTTPListen = fmt.Sprintf("127.0.0.1:%d", port)
	}
	tokens := map[string]string{}
	pair := func(a, b string) string {
		if a > b {
			a, b = b, a
		}
		k := a + "|" + b
		if tokens[k] == "" {
			tokens[k] = token()
		}
		return tokens[k]
	}
	for _, r := range h.Regions {
		f := RegionConfig{Region: r.Name, Database: r.Cluster.URL("polyregion", AppDB), Listen: r.Listen, Regions: h.Spec.Regions, Tables: h.Spec.Tables}
		f.Log.Format = "json"
		f.HTTP.Listen = r.HTTPListen
		f.Log.Level = h.Spec.LogLevel
		if f.Log.Level == "" {
			f.Log.Level = "info"
		}
		for _, p := range h.Regions {
			if p == r {
				continue
			}
			f.Peers = append(f.Peers, PeerEntry{ID: p.Name, URL: "http://" + p.Listen, Token: pair(r.Name, p.Name)})
		}
		if h.Spec.Configure != nil {
			h.Spec.Configure(r.Name, &f)
		}
		b, err := yaml.Marshal(f)
		if err != nil {
			return err
		}
		r.ConfigPath = filepath.Join(h.Spec.Dir, r.Name+".yaml")
		r.LogPath = filepath.Join(h.Spec.Dir, r.Name+"-replicator.log")
		if err := os.WriteFile(r.ConfigPath, b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// Region returns the named region.
func (h *Harness) Region(name string) *Region {
	for _, r := range h.Regions {
		if r.Name == name {
			return r
		}
	}
	return nil
}

// StartReplicators starts every region's replicator.
func (h *Harness) StartReplicators() error {
	for _, r := range h.Regions {
		if err := r.StartReplicator(); err != nil {
			return err
		}
	}
	return nil
}

// StartReplicator starts this region's replicator process.
func (r *Region) StartReplicator() error { return r.StartReplicatorWith() }

// StartReplicatorWith starts this region's replicator process with further
// arguments to run (--join PEER, say).
func (r *Region) StartReplicatorWith(args ...string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil {
		return fmt.Errorf("replicator %s already running", r.Name)
	}
	logf, err := os.OpenFile(r.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(r.h.Spec.Binary, append([]string{"run", "--config", r.ConfigPath}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start replicator %s: %w", r.Name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	r.proc, r.done = cmd, done
	return nil
}

// Signal sends sig to the replicator process.
func (r *Region) Signal(sig syscall.Signal) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return fmt.Errorf("replicator %s is not running", r.Name)
	}
	return r.proc.Process.Signal(sig)
}

// StopReplicator ends the replicator: SIGTERM (graceful) or SIGKILL
// (crash), and waits for it to exit.
func (r *Region) StopReplicator(sig syscall.Signal) error {
	r.mu.Lock()
	proc, done := r.proc, r.done
	r.proc = nil
	r.mu.Unlock()
	if proc == nil {
		return nil
	}
	// A stopped (frozen) process acts on sig only once continued.
	_ = proc.Process.Signal(syscall.SIGCONT)
	_ = proc.Process.Signal(sig)
	select {
	case <-done:
		r.mu.Lock()
		r.lastExit = proc.ProcessState
		r.mu.Unlock()
		return nil
	case <-time.After(20 * time.Second):
		_ = proc.Process.Kill()
		<-done
		return fmt.Errorf("replicator %s did not exit within 20s of %v; killed", r.Name, sig)
	}
}

// LastExit returns the exit status of the last replicator process
// StopReplicator stopped (nil before any).
func (r *Region) LastExit() *os.ProcessState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastExit
}

// Running reports whether the replicator process is alive.
func (r *Region) Running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil {
		return false
	}
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

// Pool returns a connection pool to the region's application database as
// the application role.
func (r *Region) Pool(ctx context.Context) (*pgxpool.Pool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pool != nil {
		return r.pool, nil
	}
	cfg, err := pgxpool.ParseConfig(r.Cluster.URL("app", AppDB))
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 8
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	r.pool = p
	return p, nil
}

// Conn opens a single session to the application database as the superuser.
func (r *Region) Conn(ctx context.Context) (*pgx.Conn, error) {
	return r.Cluster.Connect(ctx, AppDB)
}

// Logs returns the tail of the replicator's log.
func (r *Region) Logs(maxBytes int) string {
	b, _ := os.ReadFile(r.LogPath)
	if len(b) > maxBytes {
		b = b[len(b)-maxBytes:]
	}
	return string(b)
}

// RaceReport returns the first data race the replicator's log holds (a
// binary built with the race detector writes its reports there), or "".
func (r *Region) RaceReport() string {
	b, _ := os.ReadFile(r.LogPath)
	const start, sep = "WARNING: DATA RACE", "=================="
	i := bytes.Index(b, []byte(start))
	if i < 0 {
		return ""
	}
	b = b[i:]
	if j := bytes.Index(b, []byte(sep)); j >= 0 {
		b = b[:j]
	}
	return string(b)
}

// Close stops every replicator and cluster. Files stay in Spec.Dir.
func (h *Harness) Close() {
	for _, r := range h.Regions {
		_ = r.StopReplicator(syscall.SIGKILL)
		r.mu.Lock()
		if r.pool != nil {
			r.pool.Close()
			r.pool = nil
		}
		r.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, r := range h.Regions {
		_ = r.Cluster.Stop(ctx, "immediate")
	}
}

// Describe is a short text naming where everything is, for failure output.
func (h *Harness) Describe() string {
	var b strings.Builder
	for _, r := range h.Regions {
		fmt.Fprintf(&b, "region %s: postgres 127.0.0.1:%d (log %s), replicator %s (log %s)\n", r.Name, r.Cluster.Port, r.Cluster.LogFile, r.Listen, r.LogPath)
	}
	return b.String()
}

// PID returns the replicator process id (0 when not running).
func (r *Region) PID() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc == nil || r.proc.Process == nil {
		return 0
	}
	return r.proc.Process.Pid
}

// PeakRSS returns the replicator process's peak resident memory in bytes
// (VmHWM), read from /proc.
func (r *Region) PeakRSS() (int64, error) {
	pid := r.PID()
	if pid == 0 {
		return 0, fmt.Errorf("replicator %s is not running", r.Name)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%d kB", &kb); err != nil {
				return 0, err
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("VmHWM not found for pid %d", pid)
}
