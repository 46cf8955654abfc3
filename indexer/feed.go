// Package indexer keeps a region's search indices in step with its local
// tables. It decodes the local change stream on a slot of its own (every
// origin: local writes and changes applied from peers alike), renders rows
// as documents and writes them to Elasticsearch, OpenSearch or the embedded
// index, each write versioned by the commit position of the local
// transaction that made it. The slot is confirmed only after the engine
// accepted a batch, so an engine that is away only makes WAL wait.
package indexer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// Config is one region's feed.
type Config struct {
	Region   string
	Database string // connection string of the local primary
	Indices  []IndexSpec
	// BackendKind is recorded with each generation: a different engine
	// means a rebuild.
	BackendKind string
	// BatchDocs bounds the documents of one bulk request (default 2000).
	BatchDocs int
	// BatchBytes bounds the documents held for one bulk request, in bytes
	// (default DefaultBatchBytes): a batch is written once it holds this
	// much, whatever its count, and a backfill page ends there.
	BatchBytes int
	// MaxDocumentBytes bounds one document (default
	// DefaultMaxDocumentBytes). A row whose document would be larger is
	// not sent: it goes to the dead-letter table with its size, any older
	// document of the row leaves the index, and the feed goes on.
	MaxDocumentBytes int
	// FlushInterval bounds how long a change waits for its batch to fill
	// (default 200ms).
	FlushInterval time.Duration
	// PollInterval is how often the feed looks for a rebuilt generation
	// and refreshes its lag (default 2s).
	PollInterval time.Duration
	Logger       *slog.Logger
	// Progress, when set, receives backfill progress.
	Progress func(BuildProgress)
}

// Size defaults. A search document is a view of a row for searching, not
// its archive. The engines take requests of up to 100 MB by default, but
// the embedded index needs some 50 to 130 times a document's size in
// memory while it indexes it: 1 MiB documents keep a replicator within its
// soft heap limit (raise it for an external engine whose documents are
// larger). A 4 MiB batch is a bulk request of the few MB the engines
// suggest; the embedded index takes it in parts (embeddedBatchBytes).
const (
	DefaultMaxDocumentBytes = 1 << 20
	DefaultBatchBytes       = 4 << 20
	// maxSizeSetting bounds both settings: the engines refuse a request
	// over 100 MB by default (http.max_content_length).
	maxSizeSetting = 100 << 20
)

// Validate reports the first configuration problem, naming it.
func (c *Config) Validate() error {
	if c.MaxDocumentBytes != 0 && (c.MaxDocumentBytes < 1024 || c.MaxDocumentBytes > maxSizeSetting) {
		return fmt.Errorf("%s: between 1024 and %d bytes, got %d", settingMaxDocumentBytes, maxSizeSetting, c.MaxDocumentBytes)
	}
	if c.BatchBytes != 0 && (c.BatchBytes < 1024 || c.BatchBytes > maxSizeSetting) {
		return fmt.Errorf("search.batch_bytes: between 1024 and %d bytes, got %d", maxSizeSetting, c.BatchBytes)
	}
	if c.Region == "" {
		return errors.New("indexer: region is required")
	}
	if c.Database == "" {
		return errors.New("indexer: database is required")
	}
	if len(c.Indices) == 0 {
		return errors.New("search.indices: at least one table to index is required")
	}
	names := map[string]bool{}
	for i := range c.Indices {
		if err := c.Indices[i].Validate(); err != nil {
			return fmt.Errorf("search.indices[%d]: %w", i, err)
		}
		if names[c.Indices[i].Index] {
			return fmt.Errorf("search.indices[%d]: index %q is named twice", i, c.Indices[i].Index)
		}
		names[c.Indices[i].Index] = true
	}
	return nil
}

func (c *Config) defaults() {
	if c.BatchDocs <= 0 {
		c.BatchDocs = 2000
	}
	if c.BatchBytes <= 0 {
		c.BatchBytes = DefaultBatchBytes
	}
	if c.MaxDocumentBytes <= 0 {
		c.MaxDocumentBytes = DefaultMaxDocumentBytes
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = 200 * time.Millisecond
	}
	if c.PollInterval <= 0 {
		c.PollInterval = 2 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Status is the feed's state for status output, metrics and health.
type Status struct {
	// Generation is the live generation (0 while the first is built).
	Generation int
	Building   int // generation being built, 0 when none
	// AckedLSN is the position up to which every change is in the engine.
	AckedLSN string
	// BytesBehind is the WAL the feed's slot has not confirmed.
	BytesBehind int64
	// SecondsBehind is the age of the oldest change not yet in the engine.
	SecondsBehind float64
	DocsWritten   int64
	DeadLetters   int64
	// EngineDown is set while the engine refuses or fails whole batches.
	EngineDown bool
	LastError  string
	Updated    time.Time
}

// Feed is one region's index feed.
type Feed struct {
	cfg Config
	be  Backend

	mu     sync.Mutex
	status Status
	// oldest is the commit time of the oldest change not yet acknowledged
	// (zero when none).
	oldest   time.Time
	building atomic.Bool

	docs, dead atomic.Int64
}

// New returns a feed writing to be.
func New(cfg Config, be Backend) (*Feed, error) {
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Feed{cfg: cfg, be: be}, nil
}

// Status returns the feed's latest state.
func (f *Feed) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.status
	if !f.oldest.IsZero() {
		s.SecondsBehind = time.Since(f.oldest).Seconds()
	}
	s.DocsWritten = f.docs.Load()
	s.DeadLetters = f.dead.Load()
	return s
}

// Lag is the index lag for metrics and health: WAL bytes not yet confirmed
// and the age of the oldest change not yet in the engine. ok is false until
// the feed has measured it, and while the engine is unreachable.
func (f *Feed) Lag() (bytesBehind int64, secondsBehind float64, ok bool) {
	s := f.Status()
	return s.BytesBehind, s.SecondsBehind, !s.Updated.IsZero() && !s.EngineDown
}

func (f *Feed) setError(err error, engineDown bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		f.status.LastError = ""
	} else {
		f.status.LastError = err.Error()
	}
	f.status.EngineDown = engineDown
}

// Run feeds the indices until ctx ends, recovering from errors (the
// database or the engine away) by retrying with backoff.
func (f *Feed) Run(ctx context.Context) error {
	// Documents are JSON, in UTF-8: every session of the feed receives its
	// text in it, whatever the database's encoding.
	ctx = postgres.WithUTF8Text(ctx)
	desc, err := f.be.Describe(ctx)
	if err != nil {
		f.cfg.Logger.Warn("search engine not reachable yet; the feed waits for it", "err", err)
	} else {
		f.cfg.Logger.Info("index feed starting", "engine", desc, "indices", len(f.cfg.Indices))
	}
	backoff := time.Second
	for {
		err := f.step(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			backoff = time.Second
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, perr := f.be.Describe(pctx)
		cancel()
		f.setError(err, perr != nil)
		f.cfg.Logger.Warn("index feed: retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff + time.Duration(rand.Int64N(int64(backoff/4+1)))):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// step does one thing: switch to a ready generation that has caught up,
// build the first one, or stream the live one (building a newer one
// alongside when the configuration changed, and streaming a ready one into
// its own indices until it has caught up) until something changes.
func (f *Feed) step(ctx context.Context) error {
	conn, err := postgres.Connect(ctx, f.cfg.Database)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if err := prepare(ctx, conn, f.cfg.Region, f.cfg.Indices); err != nil {
		return err
	}
	dropped, err := dropRetiredSlots(ctx, conn)
	if err != nil {
		return err
	}
	if len(dropped) > 0 {
		f.cfg.Logger.Info("slots of retired index generations dropped", "slots", dropped)
	}
	gens, err := loadGenerations(ctx, conn)
	if err != nil {
		return err
	}
	fp := fingerprint(f.cfg.BackendKind, f.cfg.Indices)
	var live, next *generation
	var superseded []*generation
	for _, g := range gens {
		switch {
		case g.State == stateLive:
			live = g
		case next != nil:
			superseded = append(superseded, next)
			next = g
		default:
			next = g
		}
	}
	// Only the newest generation is built or caught up; an older one left
	// ready or building (a rebuild asked for again meanwhile) would hold
	// its slot's WAL for ever, or be switched to after the newer one.
	// Not while this feed's own build or catch-up runs: it may be one of
	// them.
	if len(superseded) > 0 && !f.building.Load() {
		for _, g := range superseded {
			f.cfg.Logger.Info("index generation superseded by a newer one: abandoned", "generation", g.Gen, "newer", next.Gen)
			if err := f.retire(ctx, conn, g, true); err != nil {
				return err
			}
		}
	}
	if next != nil && next.Fingerprint != fp {
		f.cfg.Logger.Info("index generation built for an older configuration: abandoned", "generation", next.Gen)
		if err := f.retire(ctx, conn, next, true); err != nil {
			return err
		}
		next = nil
	}
	if next != nil && next.State == stateReady {
		// One whose index or slot went missing can never catch up, nor
		// go live: abandoned, not tried again for ever.
		gone, err := f.unusable(ctx, conn, next)
		if err != nil {
			return err
		}
		if gone != "" && !f.building.Load() {
			f.cfg.Logger.Warn("index generation abandoned before it went live: run `polyregion index rebuild` again", "generation", next.Gen, "missing", gone)
			if err := f.retire(ctx, conn, next, true); err != nil {
				return err
			}
			next = nil
		}
	}
	if next != nil && next.State == stateReady {
		caught, err := caughtUp(ctx, conn, next)
		if err != nil {
			return err
		}
		if live == nil || caught {
			if err := f.waitBackground(ctx); err != nil {
				return err
			}
			return f.switchTo(ctx, conn, live, next)
		}
	}
	if live != nil {
		missing, err := f.missingIndex(ctx, live)
		if err != nil {
			return err
		}
		if missing != "" {
			f.cfg.Logger.Warn("live index missing from the engine: rebuilding", "index", missing, "generation", live.Gen)
			if err := f.retire(ctx, conn, live, false); err != nil {
				return err
			}
			live = nil
		}
	}
	if next == nil && (live == nil || live.Fingerprint != fp) {
		if next, err = newGeneration(ctx, conn, f.cfg.Region, fp, f.cfg.Indices, strconv.FormatInt(time.Now().Unix(), 36)); err != nil {
			return err
		}
		f.cfg.Logger.Info("building index generation", "generation", next.Gen, "reason", map[bool]string{true: "first build", false: "configuration changed"}[live == nil])
	}
	if live == nil {
		// Nothing to serve yet: build in the foreground.
		f.mu.Lock()
		f.status.Building, f.status.Updated = next.Gen, time.Now()
		f.mu.Unlock()
		return f.buildLocked(ctx, next)
	}
	if next != nil && f.building.CompareAndSwap(false, true) {
		go func() {
			defer f.building.Store(false)
			err := f.prepareNext(ctx, next)
			if err == nil || ctx.Err() != nil {
				return
			}
			// The live stream hands back to step (which tries again)
			// when nothing builds or catches up the newest generation:
			// after a failure, not at once; while another process
			// builds it (index rebuild), once its build lock is free
			// (it finished, or died and this feed takes the build over).
			if errors.Is(err, errBuildElsewhere) {
				return
			}
			f.cfg.Logger.Warn("index rebuild interrupted; it resumes", "generation", next.Gen, "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Second):
			}
		}()
	}
	return f.stream(ctx, live, 0)
}

// prepareNext builds a newer generation (unless another process does) and
// then streams its slot into its own indices, the aliases staying on the
// live generation, until it has confirmed the WAL position of the end of
// its copy. The live stream then hands back to step, which switches.
//
// It catches up in rounds: the WAL written during a long round would
// otherwise be streamed by switchTo, with the live stream stopped (its
// searches lagging) meanwhile.
func (f *Feed) prepareNext(ctx context.Context, g *generation) error {
	if g.State == stateBuilding {
		if err := f.buildLocked(ctx, g); err != nil {
			return err
		}
	}
	conn, err := postgres.Connect(ctx, f.cfg.Database)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for {
		if g.CatchUpLSN == 0 {
			// Another round, or a generation made ready by an earlier
			// release: catch up to where the WAL is now.
			if g.CatchUpLSN, err = currentLSN(ctx, conn); err != nil {
				return err
			}
			if err := g.save(ctx, conn); err != nil {
				return err
			}
		}
		f.cfg.Logger.Info("index generation catching up", "generation", g.Gen, "to", g.CatchUpLSN.String())
		began := time.Now()
		if err := f.stream(ctx, g, g.CatchUpLSN); err != nil {
			return err
		}
		if time.Since(began) < catchUpRound {
			return nil
		}
		g.CatchUpLSN = 0
	}
}

// catchUpRound: a catch-up round this short leaves switchTo about as
// little to stream with the live stream stopped.
const catchUpRound = 10 * time.Second

// unusable names what a ready generation lacks for good: one of its
// indices, or its slot.
func (f *Feed) unusable(ctx context.Context, conn *pgx.Conn, g *generation) (string, error) {
	if g.State != stateReady {
		return "", nil
	}
	if alias, err := f.missingIndex(ctx, g); err != nil || alias != "" {
		return "index " + g.Indices[alias], err
	}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)`, g.Slot).Scan(&ok); err != nil {
		return "", fmt.Errorf("index generation %d: %w", g.Gen, err)
	}
	if !ok {
		return "slot " + g.Slot, nil
	}
	return "", nil
}

// waitBackground waits for the background build or catch-up to end (it
// is ending when step switches: the generation has caught up).
func (f *Feed) waitBackground(ctx context.Context) error {
	for f.building.Load() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// waitSlotReleased waits (a few seconds at most) until no session uses a
// slot.
func waitSlotReleased(ctx context.Context, conn *pgx.Conn, slot string) error {
	for range 100 {
		var active bool
		if err := conn.QueryRow(ctx, `SELECT coalesce((SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1), false)`, slot).Scan(&active); err != nil {
			return fmt.Errorf("slot %s: %w", slot, err)
		}
		if !active {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// caughtUp reports whether a ready generation's slot has confirmed its
// catch-up position.
func caughtUp(ctx context.Context, conn *pgx.Conn, g *generation) (bool, error) {
	if g.CatchUpLSN == 0 {
		return false, nil
	}
	var ok bool
	err := conn.QueryRow(ctx, `SELECT coalesce((SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = $1), false)`,
		g.Slot, g.CatchUpLSN.String()).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("index generation %d: %w", g.Gen, err)
	}
	return ok, nil
}

// buildLocked builds a generation holding the build lock.
func (f *Feed) buildLocked(ctx context.Context, g *generation) error {
	release, err := lockBuild(ctx, f.cfg.Database)
	if err != nil {
		return err
	}
	defer release()
	return build(ctx, f.cfg, f.be, g)
}

// lockBuild takes the build lock on a session of its own (errBuildElsewhere
// when another holds it); release ends the session and so the lock.
func lockBuild(ctx context.Context, database string) (release func(), err error) {
	lconn, err := postgres.Connect(ctx, database)
	if err != nil {
		return nil, err
	}
	ok, err := tryBuildLock(ctx, lconn)
	if err == nil && !ok {
		err = errBuildElsewhere
	}
	if err != nil {
		lconn.Close(context.Background())
		return nil, err
	}
	return func() { lconn.Close(context.Background()) }, nil
}

func (f *Feed) missingIndex(ctx context.Context, g *generation) (string, error) {
	for alias, phys := range g.Indices {
		ok, err := f.be.Exists(ctx, phys)
		if err != nil {
			return "", err
		}
		if !ok {
			return alias, nil
		}
	}
	return "", nil
}

// switchTo makes a ready generation live. With a live generation (its
// stream stopped, so its indices hold no change past the WAL position
// now), the new one first streams up to that position: the aliases never
// move to indices older than the ones they leave. Then the aliases move
// (searches follow at once), then the state, then the old generation's
// slot and indices go.
func (f *Feed) switchTo(ctx context.Context, conn *pgx.Conn, live, next *generation) error {
	if live != nil {
		to, err := currentLSN(ctx, conn)
		if err != nil {
			return err
		}
		if err := f.stream(ctx, next, to); err != nil {
			return err
		}
	}
	for alias, phys := range next.Indices {
		if err := f.be.SwapAlias(ctx, alias, phys); err != nil {
			return err
		}
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `UPDATE polyregion.index_generation SET state = 'retired', updated_at = now() WHERE state = 'live'`); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE polyregion.index_generation SET state = 'live', updated_at = now() WHERE gen = $1`, next.Gen); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("switch to index generation %d: %w", next.Gen, err)
	}
	f.cfg.Logger.Info("index generation live", "generation", next.Gen, "indices", next.Indices)
	if live != nil {
		return f.retire(ctx, conn, live, true)
	}
	return nil
}

// retire drops a generation's slot and (when dropIndices) its physical
// indices that no live alias uses.
func (f *Feed) retire(ctx context.Context, conn *pgx.Conn, g *generation, dropIndices bool) error {
	if _, err := conn.Exec(ctx, `UPDATE polyregion.index_generation SET state = 'retired', updated_at = now() WHERE gen = $1`, g.Gen); err != nil {
		return err
	}
	if err := dropSlot(ctx, conn, g.Slot); err != nil {
		return err
	}
	if dropIndices {
		for _, phys := range g.Indices {
			if err := f.be.DeleteIndex(ctx, phys); err != nil {
				return err
			}
		}
	}
	return nil
}

// Rebuild builds a new generation of the indices from the current tables
// (or resumes one an interrupted rebuild left), reporting progress through
// cfg.Progress. When it returns, the generation is ready: a running feed
// (a stopped one when it starts) streams the changes made since the copy
// began into it, and switches its aliases to it once it has caught up.
// Searches keep being served from the old generation, which keeps
// streaming, until then.
func Rebuild(ctx context.Context, cfg Config, be Backend) (int, error) {
	ctx = postgres.WithUTF8Text(ctx)
	cfg.defaults()
	if err := cfg.Validate(); err != nil {
		return 0, err
	}
	conn, err := postgres.Connect(ctx, cfg.Database)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	if err := prepare(ctx, conn, cfg.Region, cfg.Indices); err != nil {
		return 0, err
	}
	// The lock first: a running feed that saw the new generation before
	// this process held it would take the build over.
	release, err := lockBuild(ctx, cfg.Database)
	if err != nil {
		return 0, err
	}
	defer release()
	gens, err := loadGenerations(ctx, conn)
	if err != nil {
		return 0, err
	}
	fp := fingerprint(cfg.BackendKind, cfg.Indices)
	var g *generation
	for _, x := range gens {
		if x.State == stateBuilding && x.Fingerprint == fp {
			g = x
		}
	}
	if g == nil {
		if g, err = newGeneration(ctx, conn, cfg.Region, fp, cfg.Indices, strconv.FormatInt(time.Now().Unix(), 36)); err != nil {
			return 0, err
		}
	}
	if err := build(ctx, cfg, be, g); err != nil {
		return g.Gen, err
	}
	return g.Gen, nil
}

// Generation is one build of the indices, for status output.
type Generation struct {
	Gen       int               `json:"generation"`
	State     string            `json:"state"`
	Slot      string            `json:"slot"`
	StartLSN  string            `json:"start_lsn,omitempty"`
	Indices   map[string]string `json:"indices"`
	Progress  map[string]int64  `json:"rows_copied"`
	LagBytes  *int64            `json:"lag_bytes,omitempty"`
	SlotGone  bool              `json:"slot_missing,omitempty"`
	UpdatedAt time.Time         `json:"updated_at"`
}

// Report is the feed's durable state, read from the database.
type Report struct {
	Generations []Generation `json:"generations"`
	DeadLetters int64        `json:"dead_letters"`
	Recent      []DeadLetter `json:"recent_dead_letters"`
}

// DeadLetter is one refused document.
type DeadLetter struct {
	At     time.Time `json:"at"`
	Index  string    `json:"index"`
	Table  string    `json:"table"`
	Key    string    `json:"key"`
	Status int       `json:"status"`
	Reason string    `json:"reason"`
}

// ReadReport reads the generations, their slots' lag and the dead letters.
func ReadReport(ctx context.Context, conn *pgx.Conn) (Report, error) {
	var r Report
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.to_regclass('polyregion.index_generation') IS NOT NULL`).Scan(&exists); err != nil || !exists {
		return r, err
	}
	rows, err := conn.Query(ctx, `SELECT g.gen, g.state, g.slot, coalesce(g.start_lsn::text, ''), g.indices, g.progress, g.updated_at,
			pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint, s.slot_name IS NULL
		FROM polyregion.index_generation g LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = g.slot
		WHERE g.state <> 'retired' ORDER BY g.gen`)
	if err != nil {
		return r, fmt.Errorf("index report: %w", err)
	}
	for rows.Next() {
		var g Generation
		var prog map[string]tableProgress
		if err := rows.Scan(&g.Gen, &g.State, &g.Slot, &g.StartLSN, &g.Indices, &prog, &g.UpdatedAt, &g.LagBytes, &g.SlotGone); err != nil {
			rows.Close()
			return r, fmt.Errorf("index report: %w", err)
		}
		g.Progress = map[string]int64{}
		for k, p := range prog {
			g.Progress[k] = p.Rows
		}
		r.Generations = append(r.Generations, g)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return r, fmt.Errorf("index report: %w", err)
	}
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM polyregion.index_dead_letter`).Scan(&r.DeadLetters); err != nil {
		return r, fmt.Errorf("index report: %w", err)
	}
	rows, err = conn.Query(ctx, `SELECT logged_at, index, tbl, key, status, reason FROM polyregion.index_dead_letter ORDER BY id DESC LIMIT 10`)
	if err != nil {
		return r, fmt.Errorf("index report: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var d DeadLetter
		if err := rows.Scan(&d.At, &d.Index, &d.Table, &d.Key, &d.Status, &d.Reason); err != nil {
			return r, fmt.Errorf("index report: %w", err)
		}
		r.Recent = append(r.Recent, d)
	}
	return r, rows.Err()
}
