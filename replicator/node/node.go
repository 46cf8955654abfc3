// Package node runs one region's replicator: the change-stream reader, the
// link server that ships the region's outbox, and one follower per peer that
// applies the peer's transactions. Each part is owned here; Run returns only
// when all of them have stopped.
package node

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator/link"
	"github.com/polyregion/polyregion/replicator/obs"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// Peer is one peer region's link settings.
type Peer struct {
	ID  conflict.RegionID
	URL string
	// Token is the secret shared by this region and the peer; each presents
	// it to the other.
	Token string
	TLS   link.TLSFiles
}

// Config is one region's replicator configuration.
type Config struct {
	Region   conflict.RegionID
	Database string // connection string of the local primary
	Listen   string // host:port of the link server
	TLS      link.TLSFiles
	Peers    []Peer
	Cluster  regions.Cluster
	// ApplyBatchTxns bounds how many source transactions one local apply
	// transaction covers.
	ApplyBatchTxns int
	// ApplyGather is how long a follower receiving more than gatherAbove
	// source transactions per second waits for more before it applies a
	// small batch (default 20ms; see follower.collect). It adds at most
	// that much to replication lag, and only at such rates.
	ApplyGather time.Duration
	// AckInterval is how often a follower reports its applied position.
	AckInterval time.Duration
	// OutboxMaxTxns caps the transactions kept for a peer that is away
	// (0: no cap). Past it the peer must be re-seeded; status shows the
	// backlog per peer so operators see it coming.
	OutboxMaxTxns int64
	// SpoolBytes bounds how much of a table one pass over it spools on
	// this host's disk when a region joins from this one (0: the default,
	// postgres.DefaultSpoolBytes).
	SpoolBytes int64
	// ParkedRetryInterval is how often parked changes are retried.
	ParkedRetryInterval time.Duration
	// TombstoneInterval is how often the region refreshes its watermark
	// and collects tombstones every region has seen.
	TombstoneInterval time.Duration
	Logger            *slog.Logger

	// HTTPListen, when set, is the host:port of the operations server:
	// GET /health (for DNS failover), /live (for process supervisors),
	// /status (JSON) and /metrics (Prometheus). Plain HTTP: bind it to a
	// private address.
	HTTPListen string
	// Health tunes the health check (zero values take the defaults).
	Health obs.HealthConfig
	// Search, when set, feeds the region's search index from every local
	// commit (local writes and applied changes alike).
	Search *SearchConfig
	// IndexLag, when set, reports how far the regional search index is
	// behind; health and metrics use it. nil: no index.
	IndexLag IndexLag
	// ConflictRetention is how long conflict log records are kept (0: for
	// good); older ones are deleted as the region runs. A reload applies
	// it.
	ConflictRetention time.Duration
	// ShutdownTimeout bounds a graceful stop (default 30s): past it, work in
	// flight is abandoned (it is redone after a restart) and Run returns
	// ErrShutdownDeadline.
	ShutdownTimeout time.Duration
	// JoinFrom, when set, names the peer a new region loads its first
	// state from (see join.go); a region that joined, or applies peers'
	// transactions already, ignores it.
	JoinFrom conflict.RegionID
	// Control, when set, runs the control plane.
	Control *ControlConfig
	// Witnesses are control-plane voters with no database (polyregion
	// witness): reached for the control plane only, never replicated with.
	Witnesses []Peer
	// Reload, when set, delivers a re-read configuration (on SIGHUP, say):
	// settings that can change while running are applied, the others are
	// kept and the refusal is logged.
	Reload <-chan Config

	// waiting: the tables the cluster added that this run of the data
	// plane leaves out, and the reason their changes are parked with.
	waiting map[string]string
	// encoding: the text encoding this run's database sessions exchange
	// text in (postgres.TextEncoding), sent to peers and compared with
	// theirs.
	encoding string
}

// Secrets returns every secret the configuration holds (the database
// password, link tokens, search credentials): no log line, error or HTTP
// body may show them.
func (c *Config) Secrets() []string {
	out := postgres.ConnSecrets(c.Database)
	for _, p := range c.Peers {
		out = append(out, p.Token)
	}
	for _, w := range c.Witnesses {
		out = append(out, w.Token)
	}
	if c.Control != nil {
		out = append(out, c.Control.AdminToken)
	}
	if c.Search != nil {
		out = append(out, c.Search.Backend.Password, c.Search.Backend.APIKey)
	}
	return out
}

// Validate reports the first configuration problem, naming the setting.
func (c *Config) Validate() error {
	if err := c.Region.Validate(); err != nil {
		return fmt.Errorf("region: %w", err)
	}
	if c.Database == "" {
		return errors.New("database: a connection string is required")
	}
	if c.Listen == "" {
		return errors.New("listen: an address (host:port) is required")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if c.ConflictRetention < 0 {
		return fmt.Errorf("conflict_log.retention: must be 0 (keep every record) or positive, got %s", c.ConflictRetention)
	}
	if c.HTTPListen != "" {
		if _, _, err := net.SplitHostPort(c.HTTPListen); err != nil {
			return fmt.Errorf("http.listen: %w", err)
		}
		if c.HTTPListen == c.Listen {
			return errors.New("http.listen: must differ from listen (the link server's address)")
		}
	}
	h := c.Health
	h.Defaults()
	if err := h.Validate(); err != nil {
		return err
	}
	if c.ShutdownTimeout < 0 {
		return fmt.Errorf("shutdown_timeout: must be positive, got %s", c.ShutdownTimeout)
	}
	if err := c.Cluster.Validate(); err != nil {
		return err
	}
	inCluster := map[conflict.RegionID]bool{}
	for _, r := range c.Cluster.Regions {
		inCluster[r] = true
	}
	if !inCluster[c.Region] {
		return fmt.Errorf("regions: this region %q is not listed", c.Region)
	}
	seen := map[conflict.RegionID]bool{}
	for i, p := range c.Peers {
		if !inCluster[p.ID] {
			return fmt.Errorf("peers[%d]: region %q is not listed in regions", i, p.ID)
		}
		if p.ID == c.Region {
			return fmt.Errorf("peers[%d]: a region cannot be its own peer", i)
		}
		if seen[p.ID] {
			return fmt.Errorf("peers[%d]: region %q listed twice", i, p.ID)
		}
		seen[p.ID] = true
		if p.URL == "" {
			return fmt.Errorf("peers[%d] (%s): url is required", i, p.ID)
		}
		if err := link.CheckURL(p.URL, p.TLS); err != nil {
			return fmt.Errorf("peers[%d] (%s): %w", i, p.ID, err)
		}
		if p.Token == "" {
			return fmt.Errorf("peers[%d] (%s): token is required (a shared secret, at least 16 characters)", i, p.ID)
		}
		if len(p.Token) < 16 {
			return fmt.Errorf("peers[%d] (%s): token is too short (%d characters, want at least 16)", i, p.ID, len(p.Token))
		}
	}
	for _, r := range c.Cluster.Regions {
		if r != c.Region && !seen[r] {
			return fmt.Errorf("peers: region %q is listed in regions but has no peer entry", r)
		}
	}
	if err := validateWitnesses(c.Witnesses, inCluster, c.Control != nil); err != nil {
		return err
	}
	// A witness is reached like a peer, with its token: the same rule.
	for i, w := range c.Witnesses {
		if err := link.CheckURL(w.URL, w.TLS); err != nil {
			return fmt.Errorf("witnesses[%d] (%s): %w", i, w.ID, err)
		}
	}
	if c.JoinFrom != "" && !seen[c.JoinFrom] {
		return fmt.Errorf("join: region %q is not one of this region's peers", c.JoinFrom)
	}
	// Last, so the structure is reported first whatever the string.
	if _, err := postgres.ParseConnString(c.Database); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	return nil
}

func (c *Config) defaults() {
	if c.ApplyBatchTxns <= 0 {
		c.ApplyBatchTxns = 500
	}
	if c.ApplyGather <= 0 {
		c.ApplyGather = 20 * time.Millisecond
	}
	if c.TombstoneInterval <= 0 {
		c.TombstoneInterval = 3 * time.Second
	}
	if c.ParkedRetryInterval <= 0 {
		c.ParkedRetryInterval = 2 * time.Second
	}
	if c.AckInterval <= 0 {
		c.AckInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	c.Health.Defaults()
}

// PeerNames lists the peers' region ids.
func (c *Config) PeerNames() []string {
	out := make([]string, len(c.Peers))
	for i, p := range c.Peers {
		out[i] = string(p.ID)
	}
	return out
}

// addedTables lists the founding tables and maps each table added by a
// change to the epoch that added it.
func (c *Config) addedTables() ([]string, map[string]uint64) {
	var founding []string
	added := map[string]uint64{}
	for _, t := range c.Cluster.Tables {
		if t.Added > 0 {
			added[t.Name] = t.Added
		} else {
			founding = append(founding, t.Name)
		}
	}
	return founding, added
}

// tablesPending: a table the cluster added cannot be replicated here yet
// (missing, without a primary key or privileges, or locked by the
// applications for longer than the seed waits): the data plane starts
// again after a while, as for an unavailable database.
type tablesPending struct{ err error }

func (e *tablesPending) Error() string {
	return fmt.Sprintf("a table the cluster added cannot be replicated here yet (create it as in the other regions; replication here waits until then): %v", e.err)
}
func (e *tablesPending) Unwrap() error { return e.err }

// tableToSeed is the table named t that the cluster added at epoch, to
// seed.
func (c *Config) tableToSeed(t string, epoch uint64) regions.Table {
	tbl, _ := c.Cluster.Table(t)
	tbl.Name, tbl.Added = t, epoch
	return tbl
}

// withoutTables is the configuration with the tables of w left out of the
// replicated ones.
func (c Config) withoutTables(w tablesWaiting) Config {
	if len(w) == 0 {
		return c
	}
	c.Cluster.Tables = slices.DeleteFunc(slices.Clone(c.Cluster.Tables), func(t regions.Table) bool {
		_, ok := w[t.Name]
		return ok
	})
	return c
}

// TableNames lists the replicated tables.
func (c *Config) TableNames() []string {
	out := make([]string, len(c.Cluster.Tables))
	for i, t := range c.Cluster.Tables {
		out[i] = t.Name
	}
	return out
}
