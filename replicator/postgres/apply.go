package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
)

// Versioner is what the applier needs from the local reader: a way to wait
// until every local write committed before a WAL position has a recorded
// version. Implemented by *Reader.
type Versioner interface {
	WaitVersioned(ctx context.Context, lsn pglogrepl.LSN) error
}

// ApplierConfig configures an Applier for one source region.
type ApplierConfig struct {
	Region     conflict.RegionID // this region
	Source     conflict.RegionID // the peer whose transactions are applied
	ConnString string
	Cluster    regions.Cluster
	Versioner  Versioner
	Logger     *slog.Logger
	// BarrierTimeout bounds the wait for the local reader.
	BarrierTimeout time.Duration
	// OnCommit, when set, is called after each apply transaction commits
	// (for metrics); it must not block.
	OnCommit func(CommitStats)
	// Order is the order in which rows of different tables are locked;
	// every applier of a process shares one (nil: one of its own).
	Order *replicator.TableOrder
	// LockTimeout bounds each wait for a row lock an application holds
	// (default 200ms, and always below the server's deadlock_timeout): the
	// applier gives way instead of holding its rows while it waits, and
	// retries in smaller transactions (see Apply and contention).
	LockTimeout time.Duration
}

// CommitStats describes one committed apply transaction.
type CommitStats struct {
	Txns      int // source transactions (a large one counts once)
	Changes   int // row changes taken in: applied, skipped as older, or parked
	Parked    int
	Conflicts []ConflictStat // one per conflict logged
	// Merged counts concurrent updates of counter-only rows: resolved with
	// nothing lost, so not logged (see applyChange).
	Merged  int
	LastSeq replicator.Seq
	// LastCommitUnix is the source commit time of the last transaction
	// (microseconds since the Unix epoch).
	LastCommitUnix int64
	Duration       time.Duration // from the local transaction's start to its commit
}

// ConflictStat names one logged conflict: the table, what collided and the
// table's policy.
type ConflictStat struct{ Table, Kind, Policy string }

// Applier applies one source region's transactions to the local database.
// Apply is not safe for concurrent use; run one Applier per source region.
type Applier struct {
	cfg    ApplierConfig
	conn   *pgx.Conn
	side   *pgx.Conn // emits barriers (opened when first needed)
	shapes map[string]replicator.Shape
	// full: the local table has REPLICA IDENTITY FULL (loaded with shapes).
	full map[string]bool
	// paused holds the shapes of the source's changes that differ from the
	// local table, with the reason: changes of those shapes are parked (and
	// only those; see parked.go).
	paused parkedShapes
	// readAll: the last attempt failed, so the next one reads every row it
	// touches (see applyChanges).
	readAll bool
	// gate sizes local transactions under lock contention (see Apply).
	gate contention
	// owners maps a table to the function its writes run through (see
	// ownerexec.go).
	owners map[string]string
}

// Errors an operator may need to act on.
var (
	// ErrGap: the source's next transaction is not the one after the last
	// applied here; applying it would skip transactions.
	ErrGap = errors.New("transaction sequence gap")
)

// retryable marks errors after which the same batch may simply be retried.
type retryable struct{ err error }

func (r retryable) Error() string { return r.err.Error() }
func (r retryable) Unwrap() error { return r.err }

// IsRetryable reports whether an Apply error is transient (lock conflict,
// deadlock, a local write racing the apply).
func IsRetryable(err error) bool {
	var r retryable
	if errors.As(err, &r) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "40001", "40P01", "55P03":
			return true
		}
	}
	return false
}

// NewApplier connects and sets the session up: replication origin (so the
// local reader never ships applied changes back out), pinned search_path.
func NewApplier(ctx context.Context, cfg ApplierConfig) (*Applier, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.BarrierTimeout <= 0 {
		cfg.BarrierTimeout = 30 * time.Second
	}
	if cfg.Order == nil {
		cfg.Order = replicator.NewTableOrder()
	}
	if cfg.LockTimeout <= 0 {
		cfg.LockTimeout = 200 * time.Millisecond
	}
	conn, deadlockTimeout, err := connectApplier(ctx, cfg.ConnString, string(cfg.Source))
	if err != nil {
		return nil, fmt.Errorf("applier for %s: %w", cfg.Source, err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_session_setup($1)`, OriginName(string(cfg.Source))); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("applier for %s: set up replication origin: %w", cfg.Source, err)
	}
	return &Applier{cfg: cfg, conn: conn, shapes: map[string]replicator.Shape{}, full: map[string]bool{}, paused: map[string]string{},
		gate: newContention(cfg.LockTimeout, deadlockTimeout)}, nil
}

// Close ends the applier's session.
func (a *Applier) Close() error {
	if a.side != nil {
		a.side.Close(context.Background())
	}
	return a.conn.Close(context.Background())
}

// Applied returns the sequence number of the last source transaction applied
// here (0 when none).
func (a *Applier) Applied(ctx context.Context) (replicator.Seq, error) {
	var seq int64
	err := a.conn.QueryRow(ctx, `SELECT seq FROM polyregion.applied WHERE source = $1`, string(a.cfg.Source)).Scan(&seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read applied position for %s: %w", a.cfg.Source, err)
	}
	return replicator.Seq(seq), nil
}

// rowState is what the applier knows of one local row during a batch.
type rowState struct {
	exists bool
	xmin   string
	values map[string]*string // column -> text value (nil = NULL); only columns read
	// image is the row as a JSON object (for the conflict log and custom
	// resolvers): read lazily, kept up to date with this batch's writes.
	image json.RawMessage
	// pending holds this batch's writes not yet folded into image: most
	// rows never need their image, so it is built only on demand.
	pending []imageWrite
	meta    *meta
	written bool // the data row was written by this transaction
	// versioned: a row_version tuple existed for the key when it was read
	// (a new version is then an update, else an insert).
	versioned bool
	// unlocked: the row was absent when read, so nothing held the key (see
	// executor.flush).
	unlocked bool
}

// imageWrite is a write to a row, to be folded into its image (rowImage).
type imageWrite struct {
	sh  replicator.Shape
	row []replicator.Value
}

// imageKnown reports whether the row's image is known (read, or made from
// this batch's writes).
func (s *rowState) imageKnown() bool { return s.image != nil || len(s.pending) > 0 }

// foldImage brings image up to date with the pending writes.
func (s *rowState) foldImage() {
	for _, w := range s.pending {
		s.image = rowImage(w.sh, w.row, s.image)
	}
	s.pending = nil
}

func (s *rowState) version() conflict.Version {
	if s.meta == nil {
		return conflict.Version{Deleted: false}
	}
	return s.meta.version
}

// Apply applies source transactions in order, atomically as one local
// transaction, with the source's progress. Transactions already applied are
// skipped; a gap is an error (ErrGap). On a data error (foreign key, unique
// violation on a secondary index, check constraint) the batch is re-applied
// change by change and the failing changes are parked with the error.
//
// Under lock contention with applications the batch goes in several local
// transactions, each atomic with its progress: a wait for a row lock longer
// than the lock timeout fails the attempt (the applier gives way to the
// application), and later attempts apply fewer source transactions at a
// time, down to one, and wait longer (see contention). A failed attempt may
// have committed a first part; calling Apply again with the same batch
// skips what was applied.
func (a *Applier) Apply(ctx context.Context, txns []*replicator.Txn) (replicator.Seq, error) {
	if err := a.gate.sync(ctx, a.conn); err != nil {
		return 0, err
	}
	var last replicator.Seq
	for len(txns) > 0 {
		n := a.gate.chunk(len(txns))
		seq, err := a.applyChunk(ctx, txns[:n])
		a.readAll = err != nil
		if err != nil {
			if isLockFailure(err) {
				a.gate.failed(n)
			}
			return last, err
		}
		a.gate.succeeded()
		last, txns = seq, txns[n:]
	}
	return last, nil
}

func (a *Applier) applyChunk(ctx context.Context, txns []*replicator.Txn) (replicator.Seq, error) {
	last, err := a.apply(ctx, txns, false)
	if err != nil && isDataError(err) {
		a.cfg.Logger.Warn("apply batch hit a data error; re-applying change by change", "source", a.cfg.Source, "err", err)
		last, err = a.apply(ctx, txns, true)
	}
	return last, err
}

func isDataError(err error) bool {
	var r retryable
	if errors.As(err, &r) {
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return strings.HasPrefix(pe.Code, "23") || strings.HasPrefix(pe.Code, "22")
	}
	return false
}

func (a *Applier) apply(ctx context.Context, txns []*replicator.Txn, careful bool) (replicator.Seq, error) {
	started := time.Now()
	tx, applied, err := a.begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.Background())
	var todo []*replicator.Txn
	for _, t := range txns {
		if t.Origin != a.cfg.Source {
			return 0, fmt.Errorf("apply: transaction from %s on the link from %s", t.Origin, a.cfg.Source)
		}
		if t.More || t.Part > 0 {
			return 0, fmt.Errorf("apply: transaction %s/%d arrives in parts; use ApplyLarge", t.Origin, t.Seq)
		}
		if int64(t.Seq) <= applied {
			continue
		}
		if int64(t.Seq) != applied+1+int64(len(todo)) {
			return replicator.Seq(applied), fmt.Errorf("apply from %s: %w: next is %d, got %d", a.cfg.Source, ErrGap, applied+1+int64(len(todo)), t.Seq)
		}
		todo = append(todo, t)
	}
	if len(todo) == 0 {
		return replicator.Seq(applied), nil
	}

	ex := a.executor(tx, careful, started, len(todo))
	maxHLC, err := a.applyChanges(ctx, ex, todo)
	if err != nil {
		return 0, err
	}
	return a.commit(ctx, ex, todo[len(todo)-1], maxHLC)
}

// commit records the source's progress (last applied transaction) with the
// rows it covers, then commits the local transaction.
func (a *Applier) commit(ctx context.Context, ex *executor, last *replicator.Txn, maxHLC conflict.Timestamp) (replicator.Seq, error) {
	ex.queue(stmt{sql: `INSERT INTO polyregion.applied (source, seq, lsn, hlc, applied_at) VALUES ($1, $2, $3::pg_lsn, $4, pg_catalog.now())
		ON CONFLICT (source) DO UPDATE SET seq = excluded.seq, lsn = excluded.lsn, hlc = excluded.hlc, applied_at = excluded.applied_at`,
		args: []any{string(a.cfg.Source), int64(last.Seq), last.LSN, int64(maxHLC)}, want: -1})
	if err := ex.flush(ctx); err != nil {
		return 0, err
	}
	if err := ex.fireDeferred(ctx); err != nil {
		return 0, err
	}
	if err := ex.tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("apply: commit: %w", err)
	}
	if a.cfg.OnCommit != nil {
		a.cfg.OnCommit(CommitStats{Txns: ex.txns, Changes: ex.changes, Parked: ex.parked, Conflicts: ex.conflicts, Merged: ex.merged,
			LastSeq: last.Seq, LastCommitUnix: last.CommitUnix, Duration: time.Since(ex.started)})
	}
	return last.Seq, nil
}

// begin opens an apply transaction and reads (and locks) the source's
// applied position in it.
func (a *Applier) begin(ctx context.Context) (pgx.Tx, int64, error) {
	tx, err := a.conn.Begin(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("apply: begin: %w", err)
	}
	var applied int64
	err = tx.QueryRow(ctx, `SELECT seq FROM polyregion.applied WHERE source = $1 FOR UPDATE`, string(a.cfg.Source)).Scan(&applied)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		_ = tx.Rollback(context.Background())
		return nil, 0, fmt.Errorf("apply: read progress: %w", err)
	}
	return tx, applied, nil
}

// ErrNeedsCareful reports that a large transaction hit a data error in the
// fast path; its parts must be streamed again and applied with
// ApplyLarge(careful=true), which parks the failing changes.
var ErrNeedsCareful = errors.New("large transaction needs a change-by-change apply")

// ApplyLarge applies one source transaction that arrives in parts (first,
// then whatever next returns until a part without More), in one local
// transaction with the source's progress, holding one part in memory at a
// time. A transaction already applied is consumed and skipped.
func (a *Applier) ApplyLarge(ctx context.Context, first *replicator.Txn, next func() (*replicator.Txn, error), careful bool) (seq replicator.Seq, err error) {
	defer func() {
		a.readAll = err != nil
		if isLockFailure(err) {
			a.gate.failed(1)
		}
	}()
	if err := a.gate.sync(ctx, a.conn); err != nil {
		return 0, err
	}
	if first.Origin != a.cfg.Source || first.Part != 0 {
		return 0, fmt.Errorf("apply: large transaction from %s must start at part 0 of the link's source %s (got %s/%d part %d)", first.Origin, a.cfg.Source, first.Origin, first.Seq, first.Part)
	}
	started := time.Now()
	tx, applied, err := a.begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.Background())
	skip := int64(first.Seq) <= applied
	if !skip && int64(first.Seq) != applied+1 {
		return replicator.Seq(applied), fmt.Errorf("apply from %s: %w: next is %d, got %d", a.cfg.Source, ErrGap, applied+1, first.Seq)
	}
	ex := a.executor(tx, careful, started, 1)
	// Rows folded in one part would be locked before the rows a later
	// part reads, whatever the lock order: parts read every row.
	ex.noFold = true
	var maxHLC conflict.Timestamp
	part := first
	for {
		if !skip {
			h, err := a.applyChanges(ctx, ex, []*replicator.Txn{part})
			if err == nil {
				err = ex.flush(ctx)
			}
			if err != nil {
				if !careful && isDataError(err) {
					return 0, fmt.Errorf("%w: %s/%d: %v", ErrNeedsCareful, first.Origin, first.Seq, err)
				}
				return 0, err
			}
			maxHLC = max(maxHLC, h)
		}
		if !part.More {
			break
		}
		prev := part.Part
		if part, err = next(); err != nil {
			return 0, err
		}
		if part.Seq != first.Seq || part.Part != prev+1 {
			return 0, fmt.Errorf("apply: large transaction %s/%d: got part %d of %d after part %d", first.Origin, first.Seq, part.Part, part.Seq, prev)
		}
	}
	if skip {
		return replicator.Seq(applied), nil
	}
	return a.commit(ctx, ex, first, maxHLC)
}

// applyChanges decides and queues every change of txns, in order, inside
// ex's transaction. It returns the largest hybrid timestamp seen.
func (a *Applier) applyChanges(ctx context.Context, ex *executor, txns []*replicator.Txn) (conflict.Timestamp, error) {
	if err := ex.limitLockWaits(ctx); err != nil {
		return 0, err
	}
	// Check each change's shape against the local table: a change whose
	// shape differs (a column, a type, the primary key) is parked with the
	// difference, and so is every change of that shape; changes of the
	// table in the shape it has here go on. Order stays safe even though a
	// later change may then overtake a parked one: every change carries
	// its row's version, and a parked change retried after a later change
	// of the same row was applied is skipped as older (or resolved as
	// concurrent, like any change), so the regions converge on the same
	// row whatever the order; a change that needs another row first (a
	// parent) is parked with a data error until that row is here. Then
	// read every touched row and its version, locking the rows that exist.
	n := 0
	for _, t := range txns {
		n += len(t.Changes)
	}
	states := make(map[metaKey]*rowState, n)
	byTable := map[string][]string{}
	// Keys whose first change here is an insert from the source: in the
	// fast path, unless the last attempt failed, they are assumed absent
	// here and only a tombstone is looked up for them. The writes check
	// the assumption: the insert affects no row if the row exists, and the
	// version's COPY fails if a version other than a tombstone is recorded;
	// either fails the batch, and the retry reads every row.
	probe := make(map[metaKey]bool, n)
	optimistic := !ex.careful && !a.readAll
	shapeOf := map[string]replicator.Shape{}
	mismatch := map[string]string{} // shapeKey -> difference ("" when equal)
	parkWhy := map[*replicator.Change]string{}
	uses := make(map[metaKey]keyUse, n)
	foldable := map[string]bool{} // table -> countersOnly
	var keys []metaKey            // in the order of their first change
	var written []string          // one transaction's tables, in the order it first wrote them
	for _, t := range txns {
		written = written[:0]
		for i := range t.Changes {
			if tbl := t.Shapes[t.Changes[i].T].Table; !slices.Contains(written, tbl) {
				written = append(written, tbl)
			}
		}
		a.cfg.Order.Observe(written)
		sigs := make([]string, len(t.Shapes))
		for i := range t.Changes {
			c := &t.Changes[i]
			sh := t.Shapes[c.T]
			if sigs[c.T] == "" {
				sigs[c.T] = shapeKey(sh)
			}
			why, ok := mismatch[sigs[c.T]]
			if !ok {
				var err error
				if why, err = a.checkShape(ctx, ex.tx, sh); err != nil {
					return 0, err
				}
				mismatch[sigs[c.T]] = why
				if err := a.noteShape(ctx, ex.tx, sh, sigs[c.T], why); err != nil {
					return 0, err
				}
			}
			if why != "" {
				parkWhy[c] = why
				continue
			}
			if _, ok := shapeOf[sh.Table]; !ok {
				shapeOf[sh.Table] = sh
			}
			k := metaKey{sh.Table, c.Key}
			folds := false
			if c.Op == conflict.OpUpdate {
				f, ok := foldable[sh.Table]
				if !ok {
					f = a.countersOnly(sh)
					foldable[sh.Table] = f
				}
				folds = f
			}
			if u, ok := uses[k]; ok {
				if u.folds && !folds {
					u.folds = false
					uses[k] = u
				}
			} else {
				uses[k] = keyUse{first: c.Op, folds: folds}
				keys = append(keys, k)
			}
		}
	}
	// Keys that only take updates of counter-only rows are not read: their
	// increments are added in place (see bulk.fold and foldRows). The others are read
	// and decided one change at a time.
	folded := map[metaKey]bool{}
	for _, k := range keys {
		u := uses[k]
		if optimistic && !ex.noFold && u.folds {
			folded[k] = true
			continue
		}
		states[k] = &rowState{}
		if optimistic && u.first == conflict.OpInsert {
			probe[k] = true
		} else {
			byTable[k.tbl] = append(byTable[k.tbl], k.key)
		}
	}
	if len(folded) > 0 && len(byTable) > 0 && !a.foldsAfterReads(folded, byTable) {
		// Folded rows are locked when the batch is written, after the rows
		// read now: that keeps the applications' lock order only if every
		// folded table comes after every table read. Otherwise read them
		// all, in order.
		for k := range folded {
			states[k] = &rowState{}
			byTable[k.tbl] = append(byTable[k.tbl], k.key)
		}
		folded = nil
	}
	if err := a.readRows(ctx, ex.tx, shapeOf, byTable, states, probe); err != nil {
		return 0, err
	}
	if len(folded) > 0 {
		// A probed key with a tombstone was read and locked too.
		locked := map[string][]string{}
		for k := range probe {
			if s := states[k]; s != nil && s.meta != nil {
				locked[k.tbl] = append(locked[k.tbl], k.key)
			}
		}
		if len(locked) > 0 && !a.foldsAfterReads(folded, locked) {
			return 0, retryable{errors.New("apply: a re-inserted key locked out of order with the counter rows taken in place; reading every row")}
		}
	}
	var maxHLC conflict.Timestamp
	for _, t := range txns {
		ex.changes += len(t.Changes)
		for i := range t.Changes {
			c := &t.Changes[i]
			sh := t.Shapes[c.T]
			if c.Version.HLC > maxHLC {
				maxHLC = c.Version.HLC
			}
			if reason, parked := parkWhy[c]; parked {
				if !ex.parkOnError {
					return 0, fmt.Errorf("apply: %s", reason)
				}
				ex.park(a.cfg.Source, t.Seq, sh, c, reason)
				continue
			}
			k := metaKey{sh.Table, c.Key}
			if folded[k] {
				if err := ex.bulk.fold(k, sh, c, int64(t.Seq)); err != nil {
					return 0, err
				}
				continue
			}
			if err := a.applyChange(ctx, ex, t, sh, c, states[k]); err != nil {
				return 0, err
			}
		}
	}
	return maxHLC, nil
}

// RetryParked re-applies this source's parked changes that are due, oldest
// first, each in its own local transaction: a child row whose parent has
// arrived since, a row whose unique-key clash was cleared, a shape that
// matches the table now. It first checks the shapes set aside against the
// local tables again (making the changes of one that matches due now).
// The changes of a shape that still differs are not tried: they are put
// back, counted, with a delay growing per shape. A change still failing
// stays parked with its retry count raised and a delay growing per change;
// its reason is logged only when it changes. Versions decide as usual, so
// a parked change that a later one superseded is simply skipped. It
// returns how many changes were resolved.
func (a *Applier) RetryParked(ctx context.Context, limit int) (int, error) {
	if err := a.gate.sync(ctx, a.conn); err != nil {
		return 0, err
	}
	// Shapes may have changed here since (DDL, an operator's fix).
	a.shapes = map[string]replicator.Shape{}
	a.full = map[string]bool{}
	var list []parkedChange
	differs := map[string]string{} // shapeKey -> difference here ("" when none)
	err := pgx.BeginFunc(ctx, a.conn, func(tx pgx.Tx) error {
		if err := a.recheckParkedShapes(ctx, tx); err != nil {
			return err
		}
		var err error
		if list, err = dueParked(ctx, tx, a.cfg.Source, limit); err != nil {
			return err
		}
		for _, p := range list {
			key := shapeKey(p.shape)
			if _, ok := differs[key]; ok {
				continue
			}
			why, err := a.checkShape(ctx, tx, p.shape)
			if err != nil {
				return err
			}
			differs[key] = why
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("retry parked: %w", err)
	}
	resolved := 0
	putBack := map[string]bool{}
	for _, p := range list {
		key := shapeKey(p.shape)
		if why := differs[key]; why != "" {
			// Not tried: every due change of the shape is put back at once.
			if putBack[key] {
				continue
			}
			putBack[key] = true
			if changed, _ := a.paused.note(key, why); changed && p.reason != why {
				a.cfg.Logger.Error("changes of this shape are parked: the table differs here; changes in the table's own shape go on",
					"table", p.shape.Table, "source", a.cfg.Source, "difference", why)
			}
			if _, err := a.deferShape(ctx, p, key, why); err != nil {
				return resolved, err
			}
			continue
		}
		p.change.T = 0
		t := &replicator.Txn{Origin: a.cfg.Source, Seq: replicator.Seq(p.seq), Shapes: []replicator.Shape{p.shape}, Changes: []replicator.Change{p.change}}
		err := pgx.BeginFunc(ctx, a.conn, func(tx pgx.Tx) error {
			ex := a.executor(tx, true, time.Now(), 1)
			ex.parkOnError = false
			if _, err := a.applyChanges(ctx, ex, []*replicator.Txn{t}); err != nil {
				return err
			}
			ex.queue(stmt{sql: `UPDATE polyregion.parked SET resolved_at = pg_catalog.now() WHERE id = $1`, args: []any{p.id}, want: 1})
			if err := ex.flush(ctx); err != nil {
				return err
			}
			return ex.fireDeferred(ctx)
		})
		if err == nil {
			resolved++
			continue
		}
		if ctx.Err() != nil {
			return resolved, ctx.Err()
		}
		// Still failing (data error, a shape changed meanwhile, a missing
		// TOAST value...): it stays parked with the latest reason; the
		// link goes on.
		open, uerr := a.deferChange(ctx, p, err.Error())
		if uerr != nil {
			return resolved, uerr
		}
		if open && err.Error() != p.reason {
			a.cfg.Logger.Warn("a parked change still cannot be applied", "id", p.id, "table", p.shape.Table, "source", a.cfg.Source, "reason", err.Error())
		}
	}
	return resolved, nil
}

// checkShape compares the source's shape of a table with the local one and
// names the difference ("" when none): a column, a type, the primary key.
// Only changes of a differing shape are parked; the table and other tables
// go on.
func (a *Applier) checkShape(ctx context.Context, tx pgx.Tx, src replicator.Shape) (string, error) {
	if _, ok := a.cfg.Cluster.Table(src.Table); !ok {
		return fmt.Sprintf("table %s is not replicated in region %s", src.Table, a.cfg.Region), nil
	}
	local, ok := a.shapes[src.Table]
	if !ok {
		var err error
		local, err = LoadShape(ctx, tx.Conn(), src.Table)
		if err != nil {
			if errors.Is(err, ErrNoTable) || errors.Is(err, ErrNoPrimaryKey) {
				return err.Error(), nil
			}
			return "", fmt.Errorf("apply: %w", err)
		}
		full, err := identityFull(ctx, tx, src.Table)
		if err != nil {
			return "", fmt.Errorf("apply: %w", err)
		}
		a.shapes[src.Table] = local
		a.full[src.Table] = full
	}
	if d := shapeDifference(local, src); d != "" {
		return fmt.Sprintf("shape of %s differs from region %s: %s", src.Table, a.cfg.Source, d), nil
	}
	return "", nil
}

// readRows loads, for every touched key, the local row (locked) and its
// recorded version. A row written locally whose version the reader has not
// recorded yet is waited for: the applier emits a barrier and waits until
// the reader has versioned every local commit before it.
//
// Keys in probe (see applyChanges) are assumed absent here: only a tombstone
// is looked up for them, and those that have one are read like the others
// (a tombstone can hide an insert not yet versioned, and the decision
// against it may write nothing that would check the assumption).
func (a *Applier) readRows(ctx context.Context, tx pgx.Tx, shapes map[string]replicator.Shape, byTable map[string][]string, states map[metaKey]*rowState, probe map[metaKey]bool) error {
	var keys, probed []metaKey
	for k := range states {
		if probe[k] {
			probed = append(probed, k)
		} else {
			keys = append(keys, k)
		}
	}
	tombs, err := loadTombstones(ctx, tx, probed)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	read := byTable
	if len(tombs) > 0 {
		read = map[string][]string{}
		for tbl, ks := range byTable {
			read[tbl] = append([]string(nil), ks...)
		}
		for k := range tombs {
			read[k.tbl] = append(read[k.tbl], k.key)
		}
	}
	if err := a.readTablesRows(ctx, tx, shapes, read, states); err != nil {
		return err
	}
	metas, err := loadMeta(ctx, tx, keys)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	for k, m := range tombs {
		metas[k] = m
	}
	var stale []metaKey
	for k, s := range states {
		s.unlocked = !s.exists
		s.meta = metas[k]
		s.versioned = s.meta != nil
		if unversioned(s) {
			stale = append(stale, k)
		}
	}
	for attempt := 1; len(stale) > 0; attempt++ {
		if attempt > 5 {
			return retryable{fmt.Errorf("apply: %d rows keep changing locally while their versions are read", len(stale))}
		}
		// Rows that exist are locked now: no local write to them can commit
		// until this transaction ends.
		lockedBefore := map[metaKey]bool{}
		for _, k := range stale {
			lockedBefore[k] = states[k].exists
		}
		if err := a.barrier(ctx, len(stale)); err != nil {
			return err
		}
		// Read the stale keys again: a row absent before may have been
		// inserted meanwhile (and is locked now).
		again := map[string][]string{}
		for _, k := range stale {
			again[k.tbl] = append(again[k.tbl], k.key)
		}
		if err := a.readTablesRows(ctx, tx, shapes, again, states); err != nil {
			return err
		}
		metas, err = loadMeta(ctx, tx, stale)
		if err != nil {
			return fmt.Errorf("apply: %w", err)
		}
		var still []metaKey
		for _, k := range stale {
			s := states[k]
			s.unlocked = !s.exists
			s.meta = metas[k]
			s.versioned = s.meta != nil
			if !unversioned(s) {
				continue
			}
			if !s.exists && !lockedBefore[k] {
				// Absent before and after the barrier, yet its last
				// recorded version is live: the row went without a
				// versioned delete (TRUNCATE is not replicated). Treat it
				// as deleted with that version.
				s.meta.version.Deleted = true
				continue
			}
			if s.exists && lockedBefore[k] {
				// Locked since before the barrier, so every write to it is
				// versioned by now: it was written before replication
				// started here (or in a subtransaction, or frozen). Its
				// version is what is recorded, or empty.
				if s.meta == nil {
					s.meta = &meta{xid: s.xmin}
				} else {
					s.meta.xid = s.xmin
				}
				continue
			}
			still = append(still, k)
		}
		stale = still
	}
	return nil
}

// barrier waits until the local reader has versioned every local commit
// that precedes it.
func (a *Applier) barrier(ctx context.Context, rows int) error {
	if a.cfg.Versioner == nil {
		return fmt.Errorf("apply: %d rows have local writes without recorded versions and no reader runs here", rows)
	}
	// Emitted from a session of its own, after everything tx has read or
	// written (so after it in the WAL), and flushed (see EmitBarrier).
	if a.side == nil {
		side, err := connectDataPlane(ctx, a.cfg.ConnString)
		if err != nil {
			return fmt.Errorf("apply: barrier session: %w", err)
		}
		a.side = side
	}
	l, err := EmitBarrier(ctx, a.side)
	if err != nil {
		a.side.Close(context.Background())
		a.side = nil
		return retryable{fmt.Errorf("apply: %w", err)}
	}
	wctx, cancel := context.WithTimeout(ctx, a.cfg.BarrierTimeout)
	err = a.cfg.Versioner.WaitVersioned(wctx, l)
	cancel()
	if err != nil {
		return retryable{fmt.Errorf("apply: %w", err)}
	}
	return nil
}

// unversioned reports whether a row was written locally after its version
// was recorded.
func unversioned(s *rowState) bool {
	if s.exists {
		return s.meta == nil || s.meta.xid != s.xmin
	}
	return s.meta != nil && !s.meta.version.Deleted
}

// readTablesRows reads (and locks) rows table by table in the order the
// applications write them (replicator.TableOrder), each table's in key
// order: every applier of the process takes row locks in the same order, so
// two appliers reading overlapping rows never deadlock each other, and an
// applier never closes a lock cycle with an application that writes its
// tables in that order.
func (a *Applier) readTablesRows(ctx context.Context, tx pgx.Tx, shapes map[string]replicator.Shape, byTable map[string][]string, states map[metaKey]*rowState) error {
	tables := make([]string, 0, len(byTable))
	for tbl := range byTable {
		tables = append(tables, tbl)
	}
	a.cfg.Order.Sort(tables)
	for _, tbl := range tables {
		keys := byTable[tbl]
		sort.Strings(keys)
		if err := a.readTableRows(ctx, tx, shapes[tbl], keys, states); err != nil {
			return err
		}
	}
	return nil
}

func (a *Applier) readTableRows(ctx context.Context, tx pgx.Tx, sh replicator.Shape, keys []string, states map[metaKey]*rowState) error {
	// One text[] parameter per key column, joined back by ordinality.
	args := make([]any, len(sh.Key))
	cols := make([][]string, len(sh.Key))
	for _, key := range keys {
		var parts []string
		if err := json.Unmarshal([]byte(key), &parts); err != nil || len(parts) != len(sh.Key) {
			return fmt.Errorf("apply: %s: malformed key %s", sh.Table, key)
		}
		for i, p := range parts {
			cols[i] = append(cols[i], p)
		}
	}
	var params, names, join []string
	for i, ki := range sh.Key {
		args[i] = cols[i]
		params = append(params, fmt.Sprintf("pg_catalog.unnest($%d::text[])", i+1))
		names = append(names, fmt.Sprintf("k%d", i))
		join = append(join, fmt.Sprintf("t.%s = k.k%d::%s", quoteIdent(sh.Columns[ki]), i, sh.Types[ki]))
	}
	pol := a.policy(sh.Table)
	sel := []string{"t.xmin::text AS xmin"}
	out := []string{"k.ord", "r.xmin"}
	for i, c := range pol.Counters {
		sel = append(sel, fmt.Sprintf("t.%s::text AS c%d", quoteIdent(c), i))
		out = append(out, fmt.Sprintf("r.c%d", i))
	}
	// One index probe per key, locking rows in the order of keys (LIMIT
	// keeps the subquery a nested loop: a join would be hashed over a scan
	// of the whole table once the batch is large or the statistics stale).
	q := fmt.Sprintf(`SELECT %s FROM ROWS FROM (%s) WITH ORDINALITY AS k(%s, ord)
		CROSS JOIN LATERAL (SELECT %s FROM %s t WHERE %s LIMIT 1 FOR UPDATE) r`,
		strings.Join(out, ", "), strings.Join(params, ", "), strings.Join(names, ", "), strings.Join(sel, ", "), qualified(sh.Table), strings.Join(join, " AND "))
	rows, err := tx.Query(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("apply: read %s: %w", sh.Table, err)
	}
	defer rows.Close()
	for _, key := range keys {
		s := states[metaKey{sh.Table, key}]
		s.exists, s.xmin, s.values, s.image, s.pending = false, "", nil, nil, nil
	}
	for rows.Next() {
		var ord int64
		var xmin string
		dest := []any{&ord, &xmin}
		counterVals := make([]*string, len(pol.Counters))
		for i := range counterVals {
			dest = append(dest, &counterVals[i])
		}
		if err := rows.Scan(dest...); err != nil {
			return fmt.Errorf("apply: read %s: %w", sh.Table, err)
		}
		s := states[metaKey{sh.Table, keys[ord-1]}]
		s.exists, s.xmin, s.image, s.pending = true, xmin, nil, nil
		s.values = map[string]*string{}
		for i, c := range pol.Counters {
			s.values[c] = counterVals[i]
		}
	}
	return rows.Err()
}

func (a *Applier) policy(table string) conflict.Policy {
	t, _ := a.cfg.Cluster.Table(table)
	return t.Policy
}

// applyChange decides one remote change against the local row and queues
// the writes it needs.
func (a *Applier) applyChange(ctx context.Context, ex *executor, t *replicator.Txn, sh replicator.Shape, c *replicator.Change, s *rowState) error {
	pol := a.policy(sh.Table)
	local := s.version()
	localExists := s.exists || s.meta != nil
	d := conflict.Decide(pol, local, localExists, c.Version, c.Op)
	// A concurrent update of a row whose columns are all key or counter
	// columns loses nothing, whichever write wins: both writes' increments
	// are kept (below) and there is nothing else to overwrite. It is
	// counted, not logged row by row (on the counters every region
	// increments, nearly every applied change is such a pair).
	merged := d.Conflict && d.Kind == conflict.UpdateUpdate && d.Action != conflict.External && onlyCounters(sh, pol)
	if d.Conflict && !merged {
		// The local row's image goes into the conflict log (and to a
		// custom resolver); it is read only when needed.
		if err := a.ensureImage(ctx, ex.tx, sh, c.Key, s); err != nil {
			return err
		}
	}
	if d.Action == conflict.External {
		winner, err := a.runResolver(ctx, ex.tx, pol, sh, c, s)
		if err != nil {
			return err
		}
		d = conflict.ResolveExternal(d, local, c.Version, winner)
	}
	// Counter columns are sums of deltas: every region adds every write's
	// delta exactly once, whatever the row's state (a tombstone keeps
	// accumulating), so the sums agree once all deltas have arrived. Only the
	// other columns follow the decision.
	acc := map[string]string{}
	countersChanged := false
	for _, col := range pol.Counters {
		if s.exists {
			if v := s.values[col]; v != nil {
				acc[col] = *v
			}
		} else if s.meta != nil {
			acc[col] = s.meta.counters[col]
		}
		if c.Op == conflict.OpDelete {
			continue
		}
		if delta := c.Deltas[col]; delta != "" && delta != "0" {
			nv, err := conflict.MergeCounter(acc[col], delta)
			if err != nil {
				return fmt.Errorf("apply: counter %s.%s key %s: %w", sh.Table, col, c.Key, err)
			}
			acc[col] = nv
			countersChanged = true
		}
	}
	if d.Action == conflict.Skip && !countersChanged {
		return nil
	}
	before := *s
	var ops []op
	counterRow := func(row []replicator.Value) {
		for i, col := range sh.Columns {
			if v, ok := acc[col]; ok && v != "" {
				row[i] = replicator.Value{Text: v}
			}
		}
	}
	switch {
	case d.Action == conflict.ApplyRemote && c.Op == conflict.OpDelete:
		if s.exists {
			ops = append(ops, op{kind: opDelete, sh: &sh, key: c.Key})
		}
		s.exists, s.values, s.image, s.pending = false, nil, nil, nil
	case d.Action == conflict.ApplyRemote:
		row := make([]replicator.Value, len(c.Row))
		copy(row, c.Row)
		counterRow(row)
		if s.exists {
			ops = append(ops, op{kind: opUpdate, sh: &sh, key: c.Key, row: row})
		} else {
			for i, v := range row {
				if v.Unchanged {
					reason := fmt.Sprintf("column %q was not sent (unchanged TOAST value) and the row does not exist here", sh.Columns[i])
					if !ex.parkOnError {
						return errors.New(reason)
					}
					ex.park(a.cfg.Source, t.Seq, sh, c, reason)
					return nil
				}
			}
			ops = append(ops, op{kind: opInsert, sh: &sh, key: c.Key, row: row})
		}
		s.pending = append(s.pending, imageWrite{sh, row})
		s.exists, s.written = true, true
	case s.exists && countersChanged:
		// The local row stays; only its counters move.
		row := make([]replicator.Value, len(sh.Columns))
		for i := range row {
			row[i] = replicator.Value{Unchanged: true}
		}
		counterRow(row)
		ops = append(ops, op{kind: opUpdate, sh: &sh, key: c.Key, row: row})
		if s.imageKnown() {
			s.pending = append(s.pending, imageWrite{sh, row})
		}
		s.written = true
	}
	if s.exists {
		s.values = map[string]*string{}
		for col, v := range acc {
			v := v
			s.values[col] = &v
		}
	}
	nm := &meta{version: d.Result, srcSeq: int64(t.Seq)}
	if d.Action == conflict.Skip || (d.Conflict && d.Winner == conflict.Local) {
		// The version stays (or ends) the local write's.
		nm.srcSeq = 0
		if s.meta != nil {
			nm.srcSeq = s.meta.srcSeq
		}
	}
	if d.Action == conflict.Skip {
		nm.version = local
	}
	switch {
	case !s.exists:
		nm.xid = ""
	case s.written:
		nm.xid = "@" // this transaction's xid, filled in by SQL
	default:
		nm.xid = s.xmin
	}
	if len(acc) > 0 {
		nm.counters = acc
	}
	// The version is written only over the tuple this decision read: an
	// absent row locks nothing, so another source's applier or the local
	// reader may have recorded a version for the key since.
	readXmin := ""
	if s.meta != nil {
		readXmin = s.meta.tupleXmin
	}
	ops = append(ops, op{kind: opMeta, key: c.Key, tbl: sh.Table, meta: nm, versioned: s.versioned, tupleXmin: readXmin})
	if s.unlocked {
		ex.unlockedKeys = true
	}
	if d.Conflict && !merged {
		ops = append(ops, op{kind: opOther, st: a.conflictStmt(pol, sh, t, c, before, d)})
	}
	nm.tupleXmin = ownTuple
	s.meta = nm
	if err := ex.run(ctx, ops); err != nil {
		if ex.careful && ex.parkOnError && isDataError(err) {
			*s = before
			ex.park(a.cfg.Source, t.Seq, sh, c, err.Error())
			return nil
		}
		return err
	}
	switch {
	case merged:
		ex.merged++
	case d.Conflict:
		ex.conflicts = append(ex.conflicts, ConflictStat{Table: sh.Table, Kind: string(d.Kind), Policy: policyLabel(pol)})
	}
	return nil
}

// onlyCounters reports whether every column of the table that is not in
// its primary key is a counter.
func onlyCounters(sh replicator.Shape, pol conflict.Policy) bool {
	if len(pol.Counters) == 0 {
		return false
	}
	for i, col := range sh.Columns {
		if !isKeyCol(sh, i) && !pol.IsCounter(col) {
			return false
		}
	}
	return true
}

// ensureImage loads the local row's image unless it is known. A row this
// batch wrote always has one, so the database (which has not seen the
// batch's queued writes yet) is read only for rows the batch has not touched.
func (a *Applier) ensureImage(ctx context.Context, tx pgx.Tx, sh replicator.Shape, key string, s *rowState) error {
	s.foldImage()
	if s.image != nil || !s.exists || s.written {
		return nil
	}
	// Values in their text form (each type's output function, as the
	// change stream sends them), so a row's image reads the same whichever
	// region logs or resolves it.
	names := make([]string, len(sh.Columns))
	vals := make([]string, len(sh.Columns))
	for i, c := range sh.Columns {
		names[i] = "'" + strings.ReplaceAll(c, "'", "''") + "'"
		vals[i] = fmt.Sprintf("CASE WHEN t.%[1]s IS NULL THEN NULL ELSE pg_catalog.format('%%s', t.%[1]s) END", quoteIdent(c))
	}
	where, args := keyWhere(sh, key, 0)
	q := fmt.Sprintf("SELECT pg_catalog.json_object(ARRAY[%s]::text[], ARRAY[%s]::text[]) FROM %s t WHERE %s",
		strings.Join(names, ", "), strings.Join(vals, ", "), qualified(sh.Table), where)
	err := tx.QueryRow(ctx, q, args...).Scan(&s.image)
	if err != nil {
		return fmt.Errorf("apply: read %s key %s: %w", sh.Table, key, err)
	}
	return nil
}

// rowImage returns prev (a JSON object, may be nil) with the columns row
// sets; unchanged TOAST values keep prev's value or are marked as such.
func rowImage(sh replicator.Shape, row []replicator.Value, prev json.RawMessage) json.RawMessage {
	m := map[string]any{}
	if prev != nil {
		_ = json.Unmarshal(prev, &m)
	}
	for i, col := range sh.Columns {
		v := row[i]
		switch {
		case v.Unchanged:
			if _, ok := m[col]; !ok {
				m[col] = map[string]bool{"unchanged_toast": true}
			}
		case v.Null:
			m[col] = nil
		default:
			m[col] = v.Text
		}
	}
	b, _ := json.Marshal(m)
	return b
}

type stmt struct {
	sql  string
	args []any
	// want is the number of rows the statement must affect (-1: any).
	want int64
	// table, for a write of an application table, names it: the write
	// runs with the table owner's privileges (see ownerexec.go).
	table string
	// counted: the statement returns the rows processed as its one value
	// (a call of an exec_as function) instead of in its command tag.
	counted bool
}

func insertStmt(sh replicator.Shape, row []replicator.Value) stmt {
	var cols, vals []string
	var args []any
	for i, col := range sh.Columns {
		cols = append(cols, quoteIdent(col))
		args = append(args, textArg(row[i]))
		vals = append(vals, fmt.Sprintf("$%d::%s", len(args), sh.Types[i]))
	}
	// Only a primary-key clash (a local insert racing the apply) is
	// absorbed; any other unique violation is a data error and gets parked.
	var key []string
	for _, k := range sh.Key {
		key = append(key, quoteIdent(sh.Columns[k]))
	}
	return stmt{
		sql: fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s) ON CONFLICT (%s) DO NOTHING", qualified(sh.Table),
			strings.Join(cols, ", "), strings.Join(vals, ", "), strings.Join(key, ", ")),
		args: args, want: 1, table: sh.Table,
	}
}

func updateStmt(sh replicator.Shape, key string, row []replicator.Value) stmt {
	var sets []string
	var args []any
	for i, col := range sh.Columns {
		if row[i].Unchanged || isKeyCol(sh, i) {
			continue
		}
		args = append(args, textArg(row[i]))
		sets = append(sets, fmt.Sprintf("%s = $%d::%s", quoteIdent(col), len(args), sh.Types[i]))
	}
	where, wargs := keyWhere(sh, key, len(args))
	args = append(args, wargs...)
	if len(sets) == 0 {
		// Only key columns: rewrite one to itself so the row's xmin moves.
		kc := quoteIdent(sh.Columns[sh.Key[0]])
		sets = append(sets, kc+" = "+kc)
	}
	return stmt{sql: fmt.Sprintf("UPDATE %s SET %s WHERE %s", qualified(sh.Table), strings.Join(sets, ", "), where), args: args, want: 1, table: sh.Table}
}

func deleteStmt(sh replicator.Shape, key string) stmt {
	where, args := keyWhere(sh, key, 0)
	return stmt{sql: fmt.Sprintf("DELETE FROM %s WHERE %s", qualified(sh.Table), where), args: args, want: 1, table: sh.Table}
}

func isKeyCol(sh replicator.Shape, i int) bool {
	for _, k := range sh.Key {
		if k == i {
			return true
		}
	}
	return false
}

func keyWhere(sh replicator.Shape, key string, offset int) (string, []any) {
	var parts []string
	_ = json.Unmarshal([]byte(key), &parts)
	var conds []string
	var args []any
	for i, ki := range sh.Key {
		var p string
		if i < len(parts) {
			p = parts[i]
		}
		args = append(args, p)
		conds = append(conds, fmt.Sprintf("%s = $%d::%s", quoteIdent(sh.Columns[ki]), offset+len(args), sh.Types[ki]))
	}
	return strings.Join(conds, " AND "), args
}

func textArg(v replicator.Value) any {
	if v.Null {
		return nil
	}
	return v.Text
}

// ownTuple marks a version tuple this transaction wrote (meta.tupleXmin).
const ownTuple = "@"

// metaStmt writes one key's version (careful mode): over the tuple as read
// (tupleXmin; retryable if it changed or went), as a new tuple (retryable
// if one was recorded meanwhile), or over this transaction's own.
func metaStmt(tbl, key string, m *meta, versioned bool, tupleXmin string) stmt {
	var mw metaWriter
	mw.add(metaKey{tbl, key}, m)
	switch {
	case tupleXmin == ownTuple:
		return stmt{sql: upsertMetaSQL, args: mw.args(), want: -1}
	case versioned:
		return stmt{sql: updateMetaSQL, args: append(mw.args(), []string{tupleXmin}), want: 1}
	}
	return stmt{sql: insertMetaSQL, args: mw.args(), want: 1}
}

// insertMetaSQL records versions of keys that had none; a version recorded
// meanwhile is left alone (the caller compares the row count).
var insertMetaSQL = upsertMetaSQL[:strings.Index(upsertMetaSQL, "ON CONFLICT")] + "ON CONFLICT (tbl, key) DO NOTHING"

func (a *Applier) conflictStmt(pol conflict.Policy, sh replicator.Shape, t *replicator.Txn, c *replicator.Change, before rowState, d conflict.Decision) stmt {
	winner := d.Winner.String()
	var localRow, remoteRow *string
	if before.image != nil {
		s := string(before.image)
		localRow = &s
	}
	if c.Row != nil {
		s := string(rowImage(sh, c.Row, nil))
		remoteRow = &s
	}
	lv := before.version()
	kind := policyLabel(pol)
	return stmt{sql: `INSERT INTO polyregion.conflict_log (region, tbl, key, kind, policy, winner, winner_origin, local_origin, remote_origin,
		local_version, remote_version, local_hlc, remote_hlc, local_row, remote_row, source_seq, reason)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb, $15::jsonb, $16, $17)`,
		args: []any{string(a.cfg.Region), sh.Table, c.Key, string(d.Kind), kind, winner, string(d.Result.Origin),
			string(lv.Origin), string(c.Version.Origin), lv.Vector.String(), c.Version.Vector.String(),
			int64(lv.HLC), int64(c.Version.HLC), localRow, remoteRow, int64(t.Seq), d.Reason},
		want: -1}
}

// policyLabel names a table's policy as the conflict log records it.
func policyLabel(pol conflict.Policy) string {
	kind := string(pol.Kind)
	if kind == "" {
		kind = string(conflict.LastWriterWins)
	}
	if pol.Deletes != "" {
		kind += "+" + string(pol.Deletes)
	}
	return kind
}

// runResolver calls a custom SQL resolver:
// fn(table text, key text, local jsonb, remote jsonb, local_version jsonb, remote_version jsonb) returns text
// answering 'local' or 'remote'. It must be deterministic: every region calls
// it with the same arguments for the same conflict.
func (a *Applier) runResolver(ctx context.Context, tx pgx.Tx, pol conflict.Policy, sh replicator.Shape, c *replicator.Change, s *rowState) (conflict.Side, error) {
	// Both regions must pass identical arguments: the row images are built
	// from the changes' own values, ordered by column name.
	localImg := "null"
	if s.image != nil {
		localImg = string(s.image)
	}
	remote := map[string]any{}
	for i, col := range sh.Columns {
		if c.Row == nil {
			break
		}
		if c.Row[i].Null {
			remote[col] = nil
		} else {
			remote[col] = c.Row[i].Text
		}
	}
	rb, _ := json.Marshal(remote)
	if c.Row == nil {
		rb = []byte("null")
	}
	lv, _ := json.Marshal(s.version())
	rv, _ := json.Marshal(c.Version)
	schema, fn, _ := strings.Cut(pol.Resolver, ".")
	q := fmt.Sprintf("SELECT %s.%s($1, $2, $3::jsonb, $4::jsonb, $5::jsonb, $6::jsonb)::text", quoteIdent(schema), quoteIdent(fn))
	if _, err := tx.Exec(ctx, "SAVEPOINT resolver"); err != nil {
		return 0, fmt.Errorf("apply: resolver: %w", err)
	}
	var answer string
	err := tx.QueryRow(ctx, q, sh.Table, c.Key, localImg, string(rb), string(lv), string(rv)).Scan(&answer)
	if err != nil {
		_, _ = tx.Exec(ctx, "ROLLBACK TO SAVEPOINT resolver")
		return 0, fmt.Errorf("apply: custom resolver %s for %s key %s: %w", pol.Resolver, sh.Table, c.Key, err)
	}
	if _, err := tx.Exec(ctx, "RELEASE SAVEPOINT resolver"); err != nil {
		return 0, fmt.Errorf("apply: resolver: %w", err)
	}
	switch answer {
	case "local":
		return conflict.Local, nil
	case "remote":
		return conflict.Remote, nil
	}
	return 0, fmt.Errorf("apply: custom resolver %s for %s key %s answered %q; it must answer 'local' or 'remote'", pol.Resolver, sh.Table, c.Key, answer)
}

// executor runs an apply batch's statements: pipelined in one round trip in
// the fast path, with consecutive row writes of the same kind merged into
// one set-based statement each; or one change at a time inside savepoints in
// careful mode.
type executor struct {
	tx      pgx.Tx
	careful bool
	// parkOnError: in careful mode, a change failing with a data error is
	// parked instead of failing the transaction.
	parkOnError bool
	bulk        bulk
	order       *replicator.TableOrder // for the rows foldStatements writes
	// lockTimeout is the session's lock timeout; relaxed: flush lifted it
	// for the rest of the transaction (see limitLockWaits).
	lockTimeout time.Duration
	relaxed     bool
	noFold      bool // ApplyLarge: no counter-only row is taken in place
	queued      []stmt
	n           int
	xid         uint32 // this transaction's xid, once asked for
	// unlockedKeys: a version is to be written for a key whose row was
	// absent when read; waitReader then runs before versions are written
	// (see flush). deferred holds, in careful mode, the version writes of
	// the changes already run.
	unlockedKeys bool
	waitReader   func(context.Context) error
	deferred     []stmt
	// execAs returns the function a table's writes run through ("" for
	// none; see ownerexec.go); ranAs lists those this transaction used.
	execAs func(ctx context.Context, tx pgx.Tx, table string) (string, error)
	ranAs  []string
	// What the transaction took in, for CommitStats.
	started       time.Time
	txns, changes int
	parked        int
	conflicts     []ConflictStat
	merged        int
}

// executor starts the writes of one apply transaction.
func (a *Applier) executor(tx pgx.Tx, careful bool, started time.Time, txns int) *executor {
	ex := &executor{tx: tx, careful: careful, parkOnError: true, started: started, txns: txns, order: a.cfg.Order, lockTimeout: a.gate.timeout,
		execAs: a.execAs}
	if a.cfg.Versioner != nil {
		ex.waitReader = func(ctx context.Context) error { return a.barrier(ctx, 0) }
	}
	return ex
}

func (e *executor) savepoint() string {
	e.n++
	return fmt.Sprintf("c%d", e.n)
}

func (e *executor) queue(s stmt) { e.queued = append(e.queued, s) }

func (e *executor) run(ctx context.Context, ops []op) error {
	if !e.careful {
		for _, o := range ops {
			e.bulk.add(o)
		}
		return nil
	}
	save := e.savepoint()
	if _, err := e.tx.Exec(ctx, "SAVEPOINT "+save); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	var metas []stmt
	for _, o := range ops {
		s := o.stmt()
		if o.kind == opMeta {
			metas = append(metas, s)
			continue
		}
		s, err := e.asOwner(ctx, s)
		var n int64
		if err == nil {
			n, err = e.exec(ctx, s)
		}
		if err == nil && s.want >= 0 && n != s.want {
			err = retryable{fmt.Errorf("apply: %q affected %d rows, want %d (a local write raced the apply)", firstLine(s.sql), n, s.want)}
		}
		if err != nil {
			if _, rerr := e.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT "+save); rerr != nil {
				return fmt.Errorf("apply: %w (after %v)", rerr, err)
			}
			return err
		}
	}
	if _, err := e.tx.Exec(ctx, "RELEASE SAVEPOINT "+save); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	e.deferred = append(e.deferred, metas...)
	return nil
}

func (e *executor) park(source conflict.RegionID, seq replicator.Seq, sh replicator.Shape, c *replicator.Change, reason string) {
	cb, _ := json.Marshal(c)
	sb, _ := json.Marshal(sh)
	e.parked++
	e.queue(stmt{sql: `INSERT INTO polyregion.parked (source, seq, tbl, key, change, shape, reason) VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7)`,
		args: []any{string(source), int64(seq), sh.Table, c.Key, string(cb), string(sb), reason}, want: -1})
}

// flush sends the merged row writes and everything queued, then the
// versions, in pipelines, and checks each statement's row count; then it
// copies in the versions of keys that had none.
//
// A key whose row was absent when read is held by nothing: it may hide
// local writes the reader has not versioned yet (a row inserted and
// deleted again looks like no row, or like the tombstone before it).
// Versioned on top of an applied insert, they would record the applied
// row as deleted. So when such a key gets a version, the rows are written
// first (an inserted row now holds the key: later local writes to it wait
// for this transaction), then the applier waits until the reader has
// versioned every local commit before that point, and only then writes
// the versions, each conditioned on the version the decision read: a key
// versioned meanwhile fails the batch (retryable) and it is decided again.
// No version row of this transaction exists while it waits, so the reader
// is never blocked by it.
func (e *executor) flush(ctx context.Context) error {
	rows := append(e.bulk.rowStatements(), e.queued...)
	folds := e.bulk.foldStatements(e.order)
	metas := append(e.deferred, e.bulk.metaStatements()...)
	newKeys, newMetas := e.bulk.newMetas(), e.bulk.metas
	wait := e.unlockedKeys && e.waitReader != nil
	e.bulk, e.queued, e.deferred, e.unlockedKeys = bulk{}, nil, nil, false
	if wait {
		if err := e.pipeline(ctx, rows); err != nil {
			return err
		}
		if err := e.waitReader(ctx); err != nil {
			return err
		}
		rows = nil
	}
	last := append(rows, folds...)
	if len(metas) > 0 || len(newKeys) > 0 {
		// Versions (and the logs) are written only by replicator sessions:
		// a wait for one of their locks is a wait for the reader or another
		// source's applier, which never wait for this transaction. Only
		// application rows get the lock timeout (see contention).
		last = append(last, stmt{sql: "SET LOCAL lock_timeout = 0", want: -1})
		last = append(last, metas...)
		e.relaxed = true
	}
	if err := e.pipeline(ctx, last); err != nil {
		return err
	}
	return e.copyMetas(ctx, newKeys, newMetas)
}

// limitLockWaits puts the lock timeout back after flush lifted it, before
// a large transaction's next part reads application rows.
func (e *executor) limitLockWaits(ctx context.Context) error {
	if !e.relaxed {
		return nil
	}
	if _, err := e.tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", e.lockTimeout.Milliseconds())); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	e.relaxed = false
	return nil
}

// copyMetas inserts new versions with COPY (several times cheaper per row
// than INSERT ... ON CONFLICT). A version the local reader recorded for one
// of these keys meanwhile is a unique violation: retryable, the batch is
// decided again on top of it.
func (e *executor) copyMetas(ctx context.Context, keys []metaKey, metas map[metaKey]*meta) error {
	if len(keys) == 0 {
		return nil
	}
	rows := make([][]any, 0, len(keys))
	for _, k := range keys {
		m := metas[k]
		var xid any
		switch m.xid {
		case "":
		case "@":
			// This transaction's xid: the xmin of the rows it writes (the
			// fast path runs no subtransactions).
			if e.xid == 0 {
				if err := e.tx.QueryRow(ctx, `SELECT pg_catalog.pg_current_xact_id()::xid`).Scan(&e.xid); err != nil {
					return fmt.Errorf("apply: transaction id: %w", err)
				}
			}
			xid = e.xid
		default:
			x, err := strconv.ParseUint(m.xid, 10, 32)
			if err != nil {
				return fmt.Errorf("apply: version of %s %s: xid %q: %w", k.tbl, k.key, m.xid, err)
			}
			xid = uint32(x)
		}
		var counters, deletedAt any
		if len(m.counters) > 0 {
			b, err := json.Marshal(m.counters)
			if err != nil {
				return fmt.Errorf("apply: version of %s %s: %w", k.tbl, k.key, err)
			}
			counters = string(b)
		}
		if m.version.Deleted {
			deletedAt = time.Now()
		}
		rows = append(rows, []any{k.tbl, k.key, m.version.Vector.String(), int64(m.version.HLC), string(m.version.Origin), m.version.Deleted,
			xid, counters, m.srcSeq, deletedAt})
	}
	if _, err := e.tx.CopyFrom(ctx, pgx.Identifier{"polyregion", "row_version"}, metaCopyColumns, pgx.CopyFromRows(rows)); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "23505" {
			return retryable{fmt.Errorf("apply: a row version was recorded locally while the batch was applied: %w", err)}
		}
		return fmt.Errorf("apply: row versions: %w", err)
	}
	return nil
}

// pipeline runs statements in one round trip and checks each one's row
// count.
func (e *executor) pipeline(ctx context.Context, stmts []stmt) error {
	if len(stmts) == 0 {
		return nil
	}
	var b pgx.Batch
	names := make([]string, len(stmts))
	for i, s := range stmts {
		names[i] = firstLine(s.sql)
		s, err := e.asOwner(ctx, s)
		if err != nil {
			return err
		}
		stmts[i] = s
		b.Queue(s.sql, s.args...)
	}
	br := e.tx.SendBatch(ctx, &b)
	var firstErr error
	for i, s := range stmts {
		var n int64
		var err error
		if s.counted {
			err = br.QueryRow().Scan(&n)
		} else {
			var tag pgconn.CommandTag
			tag, err = br.Exec()
			n = tag.RowsAffected()
		}
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("apply: %s: %w", names[i], err)
			}
			break
		}
		if s.want >= 0 && n != s.want && firstErr == nil {
			firstErr = retryable{fmt.Errorf("apply: statement %d (%s) affected %d rows, want %d (a local write raced the apply)", i, names[i], n, s.want)}
		}
	}
	if err := br.Close(); err != nil && firstErr == nil {
		firstErr = fmt.Errorf("apply: batch: %w", err)
	}
	return firstErr
}

type opKind int

const (
	opInsert opKind = iota + 1
	opUpdate
	opDelete
	opMeta
	opOther
)

// op is one write an applied change needs.
type op struct {
	kind opKind
	sh   *replicator.Shape // data ops
	key  string
	row  []replicator.Value
	tbl  string // opMeta
	meta *meta
	// versioned (opMeta): the key had a row_version tuple when read;
	// tupleXmin: that tuple's xmin as read (ownTuple once this transaction
	// wrote it).
	versioned bool
	tupleXmin string
	st        stmt // opOther
}

func (o op) stmt() stmt {
	switch o.kind {
	case opInsert:
		return insertStmt(*o.sh, o.row)
	case opUpdate:
		return updateStmt(*o.sh, o.key, o.row)
	case opDelete:
		return deleteStmt(*o.sh, o.key)
	case opMeta:
		return metaStmt(o.tbl, o.key, o.meta, o.versioned, o.tupleXmin)
	}
	return o.st
}

// setCols lists, for an update, the non-key columns it writes.
func (o op) setCols() []int {
	var cols []int
	for i := range o.sh.Columns {
		if !o.row[i].Unchanged && !isKeyCol(*o.sh, i) {
			cols = append(cols, i)
		}
	}
	return cols
}

// bulk merges row writes into set-based statements. Consecutive writes of
// the same kind to the same table (and, for updates, the same columns) form
// a group; a key seen twice starts a new group, so per-key order holds, and
// groups run in the order they were formed (parents before children). Row
// versions are written last, once per key.
type bulk struct {
	groups    []*group
	metaOrder []metaKey
	metas     map[metaKey]*meta
	metaNew   map[metaKey]bool   // keys without a row_version tuple when read
	metaXmin  map[metaKey]string // the others: their tuple's xmin as read
	metaFold  map[metaKey]bool   // folded into the recorded version (see fold)
	others    []stmt
	// folds: counter-only rows' updates, added in place (see fold).
	folds     map[metaKey]*foldRow
	foldOrder []metaKey
}

type group struct {
	kind opKind
	sh   *replicator.Shape
	cols []int // updates: the columns set
	keys map[string]bool
	ops  []op
}

func (b *bulk) add(o op) {
	switch o.kind {
	case opMeta:
		if b.metas == nil {
			b.metas, b.metaNew, b.metaXmin = map[metaKey]*meta{}, map[metaKey]bool{}, map[metaKey]string{}
		}
		k := metaKey{o.tbl, o.key}
		if _, ok := b.metas[k]; !ok {
			b.metaOrder = append(b.metaOrder, k)
			b.metaNew[k] = !o.versioned
			b.metaXmin[k] = o.tupleXmin
		}
		b.metas[k] = o.meta
		return
	case opOther:
		b.others = append(b.others, o.st)
		return
	}
	var cols []int
	if o.kind == opUpdate {
		cols = o.setCols()
	}
	var g *group
	if n := len(b.groups); n > 0 {
		g = b.groups[n-1]
	}
	if g == nil || g.kind != o.kind || g.sh.Table != o.sh.Table || !slices.Equal(g.cols, cols) || g.keys[o.key] {
		g = &group{kind: o.kind, sh: o.sh, cols: cols, keys: map[string]bool{}}
		b.groups = append(b.groups, g)
	}
	g.keys[o.key] = true
	g.ops = append(g.ops, o)
}

// rowStatements returns the batch's row writes; metaStatements what runs
// after them.
func (b *bulk) rowStatements() []stmt {
	var out []stmt
	for _, g := range b.groups {
		if len(g.ops) == 1 {
			out = append(out, g.ops[0].stmt())
			continue
		}
		out = append(out, g.stmt())
	}
	return out
}

// metaStatements returns the versions and the other statements; versions
// of keys that had none are left out (newMetas returns them, for COPY).
func (b *bulk) metaStatements() []stmt {
	var out []stmt
	if len(b.metaOrder) > 0 {
		// Key order, as the reader locks them: no deadlock between the two.
		sort.Slice(b.metaOrder, func(i, j int) bool {
			if b.metaOrder[i].tbl != b.metaOrder[j].tbl {
				return b.metaOrder[i].tbl < b.metaOrder[j].tbl
			}
			return b.metaOrder[i].key < b.metaOrder[j].key
		})
		// Each over its tuple as read: one that changed (or went) since
		// fails the batch, which is then decided again on what is there.
		var mw metaWriter
		var fold []bool
		anyFold := false
		for _, k := range b.metaOrder {
			if !b.metaNew[k] {
				mw.add(k, b.metas[k])
				mw.tupleXmin = append(mw.tupleXmin, b.metaXmin[k])
				fold = append(fold, b.metaFold[k])
				anyFold = anyFold || b.metaFold[k]
			}
		}
		switch {
		case anyFold:
			out = append(out, stmt{sql: foldMetaSQL, args: append(mw.args(), mw.tupleXmin, fold), want: int64(len(mw.key))})
		case len(mw.key) > 0:
			out = append(out, stmt{sql: updateMetaSQL, args: append(mw.args(), mw.tupleXmin), want: int64(len(mw.key))})
		}
	}
	return append(out, b.others...)
}

// newMetas returns the versions of keys that had none when read, in key
// order.
func (b *bulk) newMetas() []metaKey {
	var out []metaKey
	for _, k := range b.metaOrder {
		if b.metaNew[k] {
			out = append(out, k)
		}
	}
	return out
}

// stmt builds a group's set-based statement: every column travels as one
// text[] parameter, cast to its type in SQL.
func (g *group) stmt() stmt {
	sh := g.sh
	var args []any
	var unnest, alias []string
	param := func(vals []*string, name string) {
		args = append(args, vals)
		unnest = append(unnest, fmt.Sprintf("pg_catalog.unnest($%d::text[])", len(args)))
		alias = append(alias, name)
	}
	column := func(i int) []*string {
		vals := make([]*string, len(g.ops))
		for r, o := range g.ops {
			if v := o.row[i]; !v.Null {
				t := v.Text
				vals[r] = &t
			}
		}
		return vals
	}
	keyCols := func() {
		parts := make([][]string, len(g.ops))
		for r, o := range g.ops {
			_ = json.Unmarshal([]byte(o.key), &parts[r])
		}
		for j := range sh.Key {
			vals := make([]*string, len(g.ops))
			for r := range g.ops {
				if j < len(parts[r]) {
					p := parts[r][j]
					vals[r] = &p
				}
			}
			param(vals, fmt.Sprintf("k%d", j))
		}
	}
	keyMatch := func() string {
		var conds []string
		for j, ki := range sh.Key {
			conds = append(conds, fmt.Sprintf("t.%s = u.k%d::%s", quoteIdent(sh.Columns[ki]), j, sh.Types[ki]))
		}
		return strings.Join(conds, " AND ")
	}
	from := func() string {
		return "ROWS FROM (" + strings.Join(unnest, ", ") + ") AS u(" + strings.Join(alias, ", ") + ")"
	}
	want := int64(len(g.ops))
	switch g.kind {
	case opInsert:
		var cols, sel, key []string
		for i, c := range sh.Columns {
			param(column(i), fmt.Sprintf("v%d", i))
			cols = append(cols, quoteIdent(c))
			sel = append(sel, fmt.Sprintf("u.v%d::%s", i, sh.Types[i]))
		}
		for _, k := range sh.Key {
			key = append(key, quoteIdent(sh.Columns[k]))
		}
		return stmt{sql: fmt.Sprintf("INSERT INTO %s AS t (%s) SELECT %s FROM %s ON CONFLICT (%s) DO NOTHING",
			qualified(sh.Table), strings.Join(cols, ", "), strings.Join(sel, ", "), from(), strings.Join(key, ", ")), args: args, want: want, table: sh.Table}
	case opUpdate:
		keyCols()
		var sets []string
		for _, i := range g.cols {
			param(column(i), fmt.Sprintf("v%d", i))
			sets = append(sets, fmt.Sprintf("%s = u.v%d::%s", quoteIdent(sh.Columns[i]), i, sh.Types[i]))
		}
		if len(sets) == 0 {
			kc := quoteIdent(sh.Columns[sh.Key[0]])
			sets = append(sets, kc+" = t."+kc)
		}
		return stmt{sql: fmt.Sprintf("UPDATE %s AS t SET %s FROM %s WHERE %s", qualified(sh.Table), strings.Join(sets, ", "), from(), keyMatch()), args: args, want: want, table: sh.Table}
	default:
		keyCols()
		return stmt{sql: fmt.Sprintf("DELETE FROM %s AS t USING %s WHERE %s", qualified(sh.Table), from(), keyMatch()), args: args, want: want, table: sh.Table}
	}
}
