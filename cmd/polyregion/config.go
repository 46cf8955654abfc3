package main

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator/link"
	"github.com/polyregion/polyregion/replicator/node"
	"github.com/polyregion/polyregion/replicator/obs"
)

// fileConfig is the YAML layout of one region's configuration file.
type fileConfig struct {
	Region   string     `yaml:"region"`
	Database string     `yaml:"database"`
	Listen   string     `yaml:"listen"`
	TLS      tlsConfig  `yaml:"tls"`
	Regions  []string   `yaml:"regions"`
	Peers    []peerFile `yaml:"peers"`
	// Witnesses are control-plane voters with no database.
	Witnesses []peerFile  `yaml:"witnesses"`
	Tables    []tableFile `yaml:"tables"`
	// Sequences interleaves the numbers of the sequences that fill the
	// replicated tables' keys (agreed: identical in every region).
	Sequences *sequencesFile `yaml:"sequences"`
	// OutboxMaxTransactions caps what is kept for a peer that is away.
	OutboxMaxTransactions int64   `yaml:"outbox_max_transactions"`
	Log                   logFile `yaml:"log"`
	// HTTP is the operations server: /health, /live, /status, /metrics.
	HTTP struct {
		Listen string `yaml:"listen"`
	} `yaml:"http"`
	Health healthFile `yaml:"health"`
	// ShutdownTimeout bounds a graceful stop (SIGTERM).
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// Search is the regional search index the replicator feeds.
	Search *searchFile `yaml:"search"`
	// Control enables the control plane (membership agreed through raft).
	Control *controlFile `yaml:"control"`
	// Join tunes the snapshots this region serves to regions joining from it.
	Join joinFile `yaml:"join"`
	// ConflictLog is the conflict_log: section.
	ConflictLog conflictLogFile `yaml:"conflict_log"`
}

// conflictLogFile is the conflict_log: section.
type conflictLogFile struct {
	// Retention is how long the region keeps its conflict log records
	// (default node.DefaultConflictRetention; 0s keeps them for good).
	Retention *time.Duration `yaml:"retention"`
}

// joinFile is the join: section.
type joinFile struct {
	// Spool bounds how much of a table one pass over it writes to this
	// host's disk (TMPDIR) for a joining region: a size such as 512MiB or
	// 2GiB, or bytes (default 1GiB; see postgres.DefaultSpoolBytes).
	Spool string `yaml:"spool"`
}

// minSpoolBytes is the smallest join.spool taken.
const minSpoolBytes = 1 << 20

// controlFile is the control: section.
type controlFile struct {
	// Dir keeps the control plane's log; it must survive restarts.
	Dir              string        `yaml:"dir"`
	HeartbeatTimeout time.Duration `yaml:"heartbeat_timeout"`
	ElectionTimeout  time.Duration `yaml:"election_timeout"`
	// ReportInterval is how often the region reports its positions to
	// the cluster (what a region's removal waits for); default 10s.
	ReportInterval time.Duration `yaml:"report_interval"`
	// AdminToken (or AdminTokenFile) is what the change commands present
	// to the operations server; without one it takes changes from
	// loopback only.
	AdminToken     string `yaml:"admin_token"`
	AdminTokenFile string `yaml:"admin_token_file"`
}

// healthFile is the health check's settings (durations like 5s, 2m).
type healthFile struct {
	ProbeInterval time.Duration  `yaml:"probe_interval"`
	ProbeTimeout  time.Duration  `yaml:"probe_timeout"`
	Hold          *time.Duration `yaml:"hold"` // 0s: no hysteresis
	MaxLag        time.Duration  `yaml:"max_lag"`
	MaxIndexLag   time.Duration  `yaml:"max_index_lag"`
	StallAfter    time.Duration  `yaml:"stall_after"`
}

func (h healthFile) toObs() (obs.HealthConfig, error) {
	c := obs.HealthConfig{ProbeInterval: h.ProbeInterval, ProbeTimeout: h.ProbeTimeout, MaxLag: h.MaxLag, MaxIndexLag: h.MaxIndexLag, StallAfter: h.StallAfter}
	for key, d := range map[string]time.Duration{"probe_interval": h.ProbeInterval, "probe_timeout": h.ProbeTimeout, "max_lag": h.MaxLag, "max_index_lag": h.MaxIndexLag, "stall_after": h.StallAfter} {
		if d < 0 {
			return c, fmt.Errorf("health.%s: must be positive, got %s", key, d)
		}
	}
	if h.Hold != nil {
		switch {
		case *h.Hold < 0:
			return c, fmt.Errorf("health.hold: must be 0 or positive, got %s", *h.Hold)
		case *h.Hold == 0:
			c.Hold = obs.NoHold
		default:
			c.Hold = *h.Hold
		}
	}
	return c, nil
}

type tlsConfig struct {
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	CAFile     string `yaml:"ca_file"`
	ServerName string `yaml:"server_name"`
}

func (t tlsConfig) files() link.TLSFiles {
	return link.TLSFiles{CertFile: t.CertFile, KeyFile: t.KeyFile, CAFile: t.CAFile, ServerName: t.ServerName}
}

type peerFile struct {
	ID        string    `yaml:"id"`
	URL       string    `yaml:"url"`
	Token     string    `yaml:"token"`
	TokenFile string    `yaml:"token_file"`
	TLS       tlsConfig `yaml:"tls"`
}

// sequencesFile is the sequences: section.
type sequencesFile struct {
	Stride  int64            `yaml:"stride"`
	Offsets map[string]int64 `yaml:"offsets"`
}

type tableFile struct {
	Name     string   `yaml:"name"`
	Policy   string   `yaml:"policy"`
	Priority []string `yaml:"priority"`
	Deletes  string   `yaml:"deletes"`
	Counters []string `yaml:"counters"`
	Max      []string `yaml:"max"`
	Min      []string `yaml:"min"`
	Resolver string   `yaml:"resolver"`
	Columns  string   `yaml:"columns"`
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// expandEnv replaces ${NAME} with the environment variable's value; an unset
// variable is an error (a silently empty secret is worse than a refusal).
func expandEnv(b []byte) ([]byte, error) {
	var missing []string
	out := envRef.ReplaceAllFunc(b, func(m []byte) []byte {
		name := string(envRef.FindSubmatch(m)[1])
		v, ok := os.LookupEnv(name)
		if !ok {
			missing = append(missing, name)
		}
		return []byte(v)
	})
	if len(missing) > 0 {
		return nil, fmt.Errorf("environment variable(s) referenced by the config are not set: %s", strings.Join(missing, ", "))
	}
	return out, nil
}

// loadConfig reads, expands and validates a region's config file.
func loadConfig(path string) (node.Config, fileConfig, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return node.Config{}, fileConfig{}, fmt.Errorf("config: %w", err)
	}
	raw, err = expandEnv(raw)
	if err != nil {
		return node.Config{}, fileConfig{}, fmt.Errorf("config %s: %w", path, err)
	}
	var fc fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&fc); err != nil {
		return node.Config{}, fileConfig{}, fmt.Errorf("config %s: %w", path, err)
	}
	// The log section is the command's, not the node's: checked here so
	// that check, run and a reload refuse the same files.
	if err := fc.Log.validate(); err != nil {
		return node.Config{}, fileConfig{}, fmt.Errorf("config %s: %w", path, err)
	}
	cfg, err := fc.toNode()
	if err != nil {
		return node.Config{}, fileConfig{}, fmt.Errorf("config %s: %w", path, err)
	}
	if err := cfg.Validate(); err != nil {
		return node.Config{}, fileConfig{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, fc, nil
}

func (fc fileConfig) toNode() (node.Config, error) {
	cfg := node.Config{
		Region:   conflict.RegionID(fc.Region),
		Database: fc.Database,
		Listen:   fc.Listen,
		TLS:      fc.TLS.files(),

		OutboxMaxTxns: fc.OutboxMaxTransactions,

		HTTPListen:      fc.HTTP.Listen,
		ShutdownTimeout: fc.ShutdownTimeout,

		ConflictRetention: node.DefaultConflictRetention,
	}
	if fc.ConflictLog.Retention != nil {
		cfg.ConflictRetention = *fc.ConflictLog.Retention
	}
	health, err := fc.Health.toObs()
	if err != nil {
		return cfg, err
	}
	if cfg.Search, err = fc.Search.toNode(); err != nil {
		return cfg, err
	}
	cfg.Health = health
	if fc.ShutdownTimeout < 0 {
		return cfg, fmt.Errorf("shutdown_timeout: must be positive, got %s", fc.ShutdownTimeout)
	}
	if fc.OutboxMaxTransactions < 0 {
		return cfg, fmt.Errorf("outbox_max_transactions: must be 0 (no cap) or positive, got %d", fc.OutboxMaxTransactions)
	}
	if fc.Join.Spool != "" {
		n, err := parseSize(fc.Join.Spool)
		if err != nil {
			return cfg, fmt.Errorf("join.spool: %w", err)
		}
		if n < minSpoolBytes {
			return cfg, fmt.Errorf("join.spool: must be at least 1MiB, got %q", fc.Join.Spool)
		}
		cfg.SpoolBytes = n
	}
	for _, r := range fc.Regions {
		cfg.Cluster.Regions = append(cfg.Cluster.Regions, conflict.RegionID(r))
	}
	if cfg.Peers, err = peersOf("peers", fc.Peers); err != nil {
		return cfg, err
	}
	if cfg.Witnesses, err = peersOf("witnesses", fc.Witnesses); err != nil {
		return cfg, err
	}
	if cfg.Control, err = fc.Control.toNode(); err != nil {
		return cfg, err
	}
	if fc.Sequences != nil {
		plan := &regions.SequencePlan{Stride: fc.Sequences.Stride, Offsets: map[conflict.RegionID]int64{}}
		for r, off := range fc.Sequences.Offsets {
			plan.Offsets[conflict.RegionID(r)] = off
		}
		cfg.Cluster.Sequences = plan
	}
	for _, t := range fc.Tables {
		pol := conflict.Policy{Kind: conflict.PolicyKind(t.Policy), Deletes: conflict.DeleteRule(t.Deletes), Counters: t.Counters, Max: t.Max, Min: t.Min, Resolver: t.Resolver, Columns: t.Columns}
		for _, r := range t.Priority {
			pol.Priority = append(pol.Priority, conflict.RegionID(r))
		}
		cfg.Cluster.Tables = append(cfg.Cluster.Tables, regions.Table{Name: t.Name, Policy: pol})
	}
	return cfg, nil
}

// peersOf reads a list of peers (key names it in errors), each token given
// inline or read from token_file.
func peersOf(key string, list []peerFile) ([]node.Peer, error) {
	var out []node.Peer
	for i, p := range list {
		tok := p.Token
		if p.TokenFile != "" {
			if tok != "" {
				return nil, fmt.Errorf("%s[%d] (%s): set token or token_file, not both", key, i, p.ID)
			}
			b, err := os.ReadFile(p.TokenFile)
			if err != nil {
				return nil, fmt.Errorf("%s[%d] (%s): token_file: %w", key, i, p.ID, err)
			}
			tok = strings.TrimSpace(string(b))
		}
		out = append(out, node.Peer{ID: conflict.RegionID(p.ID), URL: p.URL, Token: tok, TLS: p.TLS.files()})
	}
	return out, nil
}

// controlConfig reads the control: section.
func (c *controlFile) toNode() (*node.ControlConfig, error) {
	if c == nil {
		return nil, nil
	}
	if c.Dir == "" {
		return nil, fmt.Errorf("control.dir: a directory for the control plane's log is required")
	}
	if c.HeartbeatTimeout < 0 || c.ElectionTimeout < 0 || c.ReportInterval < 0 {
		return nil, fmt.Errorf("control: heartbeat_timeout, election_timeout and report_interval must be positive")
	}
	hb, el := c.HeartbeatTimeout, c.ElectionTimeout
	if hb == 0 {
		hb = time.Second
	}
	if el == 0 {
		el = time.Second
	}
	if el < hb {
		return nil, fmt.Errorf("control.election_timeout: %s is below control.heartbeat_timeout (%s); raft needs it at least as long", el, hb)
	}
	if hb < 50*time.Millisecond {
		return nil, fmt.Errorf("control.heartbeat_timeout: %s is below 50ms", hb)
	}
	tok := c.AdminToken
	if c.AdminTokenFile != "" {
		if tok != "" {
			return nil, fmt.Errorf("control: set admin_token or admin_token_file, not both")
		}
		b, err := os.ReadFile(c.AdminTokenFile)
		if err != nil {
			return nil, fmt.Errorf("control.admin_token_file: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	if tok != "" && len(tok) < 16 {
		return nil, fmt.Errorf("control.admin_token: too short (%d characters, want at least 16)", len(tok))
	}
	return &node.ControlConfig{Dir: c.Dir, HeartbeatTimeout: c.HeartbeatTimeout, ElectionTimeout: c.ElectionTimeout, ReportInterval: c.ReportInterval, AdminToken: tok}, nil
}
