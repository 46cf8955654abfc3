package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
// until every local write to some keys committed before a barrier has a
// recorded version (see reader_key_barrier.go). Implemented by *Reader.
type Versioner interface {
	ExpectBarrier() (token uint64, done func())
	WaitBarrier(ctx context.Context, lsn pglogrepl.LSN, token uint64) error
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
	// ReaderWaitsEnd, closed as the data plane stops (half its deadline
	// in), ends a wait for the local reader with ErrApplyStopped: the
	// apply transaction waiting is rolled back and comes again at the next
	// start. Such a wait can outlast any deadline (a region that just
	// joined has its reader pass every row it loaded first).
	ReaderWaitsEnd <-chan struct{}
	// OnCommit, when set, is called after each apply transaction commits
	// (for metrics); it must not block.
	OnCommit func(CommitStats)
	// OnReaderWait, when set, is called after each wait for the local
	// reader (see barrier), with its duration and whether the apply
	// transaction held application rows locked meanwhile; it must not
	// block.
	OnReaderWait func(d time.Duration, holdingRows bool)
	// Claims, shared by every applier of a process, keeps them off each
	// other's rows (see claimRows); nil: this applier claims none.
	Claims *replicator.Claims
	// OnClaimWait, when set, is called after each apply transaction that
	// waited for its claim, with how long; it must not block.
	OnClaimWait func(d time.Duration)
	// Order is the order in which rows of different tables are locked;
	// every applier of a process shares one (nil: one of its own).
	Order *replicator.TableOrder
	// LockTimeout bounds each wait for a row lock an application holds
	// (default 200ms, and always below the server's deadlock_timeout): the
	// applier gives way instead of holding its rows while it waits, and
	// retries in smaller transactions (see Apply and contention).
	LockTimeout time.Duration
	// Waiting maps tables the cluster added that are not replicated here
	// yet (missing, say) to the reason their changes are parked with: they
	// are applied once the table is seeded here and replicated (the next
	// run of the data plane).
	Waiting map[string]string
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

// ConflictStat names one logged conflict: the table, what collided, the
// table's policy and what it cost the losing write (conflict.Outcome).
type ConflictStat struct {
	Table, Kind, Policy string
	Outcome             conflict.Outcome
	row                 *conflictRow // Outcome is read from it once the local image is known
}

// Applier applies one source region's transactions to the local database.
// Apply is not safe for concurrent use; run one Applier per source region.
type Applier struct {
	cfg    ApplierConfig
	conn   *pgx.Conn
	side   *pgx.Conn // emits barriers (opened when first needed)
	shapes map[string]replicator.Shape
	// full: the local table has REPLICA IDENTITY FULL (loaded with shapes).
	full map[string]bool
	// alone: what the table's writes commute with (commutes), as found at
	// aloneAt.
	alone   map[string]commuting
	aloneAt time.Time
	// paused holds the shapes of the source's changes that differ from the
	// local table, with the reason: changes of those shapes are parked (and
	// only those; see parked.go).
	paused parkedShapes
	// readAll: an attempt failed and none has committed since, so the next
	// one reads every row it touches (see applyChanges).
	readAll bool
	// gate sizes local transactions under lock contention (see Apply).
	gate contention
	// owners maps a table to the function its writes run through (see
	// ownerexec.go).
	owners map[string]string
	// epochs are each table's policies by configuration epoch, known the
	// latest epoch this region knows (see conflict/epochs.go).
	epochs map[string]conflict.Epochs
	known  uint64
	// dropped: tables a change dropped, whose changes are skipped;
	// skipped: those skipped so far (logged once each).
	dropped, skipped map[string]bool
	// droppedSetAside: the parked changes of the dropped tables were set
	// aside (see setAsideDropped).
	droppedSetAside bool
	// replayThrough: up to this transaction of the source, a change may be
	// one the region's join loaded already (see apply_replay.go).
	replayThrough replicator.Seq
	// unitKeys: each table's primary key as the join's units ordered it.
	unitKeys map[string][]chunkKey
	// liveKeys: keys found with a live version recorded, which their
	// counter updates fold into (see apply_fold_versions.go).
	liveKeys map[metaKey]struct{}
}

// Errors an operator may need to act on.
var (
	// ErrGap: the source's next transaction is not the one after the last
	// applied here; applying it would skip transactions.
	ErrGap = errors.New("transaction sequence gap")
	// ErrEpochUnknown: the source shipped a transaction under a
	// configuration epoch this region has not learned of yet; it is
	// applied once the epoch is known here (from the control plane, or
	// from the hello of a peer's stream: see regions/learn.go).
	ErrEpochUnknown = errors.New("configuration epoch not known here yet")
)

// ErrApplyStopped ends an Apply that waited for the local reader when the
// data plane stopped (ApplierConfig.ReaderWaitsEnd): of its batch, only the
// chunks before the one waiting are committed.
var ErrApplyStopped = errors.New("stopping: the wait for the local reader was given up")

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
	if err := takeOrigin(ctx, conn, OriginName(string(cfg.Source))); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("applier for %s: set up replication origin: %w", cfg.Source, err)
	}
	epochs := map[string]conflict.Epochs{}
	for _, t := range cfg.Cluster.Tables {
		e, err := cfg.Cluster.TableEpochs(t.Name)
		if err != nil {
			conn.Close(context.Background())
			return nil, fmt.Errorf("applier for %s: %w", cfg.Source, err)
		}
		epochs[t.Name] = e
	}
	var replay int64
	if err := conn.QueryRow(ctx, `SELECT coalesce((SELECT seq FROM polyregion.join_replay WHERE source = $1), 0)`, string(cfg.Source)).Scan(&replay); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("applier for %s: %w", cfg.Source, err)
	}
	return &Applier{cfg: cfg, conn: conn, shapes: map[string]replicator.Shape{}, full: map[string]bool{}, alone: map[string]commuting{}, paused: newParkedShapes(),
		gate: newContention(cfg.LockTimeout, deadlockTimeout), epochs: epochs, known: cfg.Cluster.KnownEpoch(), dropped: cfg.Cluster.DroppedTables(), skipped: map[string]bool{},
		replayThrough: replicator.Seq(max(replay, 0))}, nil
}

// withoutDropped returns txns without their changes of tables a change
// dropped (a peer that has not learned of the change yet still ships
// them): they are no longer applied here.
func (a *Applier) withoutDropped(txns []*replicator.Txn) []*replicator.Txn {
	if len(a.dropped) == 0 {
		return txns
	}
	out := make([]*replicator.Txn, len(txns))
	for i, t := range txns {
		out[i] = t
		var kept []replicator.Change
		for j, c := range t.Changes {
			if tbl := t.Shapes[c.T].Table; a.dropped[tbl] {
				if kept == nil {
					kept = append(make([]replicator.Change, 0, len(t.Changes)), t.Changes[:j]...)
				}
				if !a.skipped[tbl] {
					a.skipped[tbl] = true
					a.cfg.Logger.Info("changes of a table the cluster dropped are no longer applied", "table", tbl, "source", a.cfg.Source)
				}
			} else if kept != nil {
				kept = append(kept, c)
			}
		}
		if kept != nil {
			cp := *t
			cp.Changes = kept
			out[i] = &cp
		}
	}
	return out
}

// Close ends the applier's session.
func (a *Applier) Close() error {
	if a.side != nil {
		a.side.Close(context.Background())
	}
	return a.conn.Close(context.Background())
}

// ReadEveryRow makes the next apply read every row it touches, as a retry
// does (see readAll): for a transaction whose last attempt failed on
// another Applier (a large transaction is retried on a new stream, and so
// on a new Applier).
func (a *Applier) ReadEveryRow() { a.readAll = true }

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
	// baseDeferred: the row's image as read from the table is not loaded
	// yet; pending holds every write of the batch to it since. It is read
	// when first needed: by ensureImage, or by loadImages for a conflict
	// record (see defersImage).
	baseDeferred bool
}

// imageWrite is a write to a row, to be folded into its image (rowImage).
type imageWrite struct {
	sh  replicator.Shape
	row []replicator.Value
}

// imageKnown reports whether the row's image is known (read, or made from
// this batch's writes).
func (s *rowState) imageKnown() bool { return s.image != nil || len(s.pending) > 0 || s.baseDeferred }

// foldImage brings image up to date with the pending writes; while the
// row as read is not loaded (baseDeferred) they wait for it.
func (s *rowState) foldImage() {
	if s.baseDeferred {
		return
	}
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

// ownVersion is version with the vector the row's write was made with
// (meta.ownVV): how the write is named to others.
func (s *rowState) ownVersion() conflict.Version {
	v := s.version()
	if s.meta != nil {
		v.Vector = s.meta.ownVector()
	}
	return v
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
// skips what was applied. Before each local transaction begins, its rows
// are claimed from the process's other appliers (see claimRows): those
// wait for each other there, not for row locks.
func (a *Applier) Apply(ctx context.Context, txns []*replicator.Txn) (replicator.Seq, error) {
	if err := a.gate.sync(ctx, a.conn); err != nil {
		return 0, err
	}
	// A transaction shipped under an epoch not known here waits for it
	// (applied once the control plane or a peer brings it); those before
	// it go in.
	var unknown error
	for i, t := range txns {
		if t.Known > a.known {
			unknown = fmt.Errorf("%w: %s shipped transaction %d knowing epoch %d, this region knows epoch %d; it waits for the control plane or a peer to bring it", ErrEpochUnknown, t.Origin, t.Seq, t.Known, a.known)
			txns = txns[:i]
			break
		}
	}
	txns = a.withoutDropped(txns)
	// A retry reads every row until the whole batch is in, not only in
	// the chunk that failed: the chunks after it would otherwise assume
	// again what failed (a new key absent here that another source's
	// applier wrote meanwhile) and fail one after the other. So readAll
	// is cleared only once every chunk is in, and only if one of them
	// committed here.
	committedAny := false
	var last replicator.Seq
	for len(txns) > 0 {
		n := a.gate.chunk(len(txns))
		release, err := a.claimRows(ctx, txns[:n])
		if err != nil {
			return last, err
		}
		seq, committed, err := a.applyChunk(ctx, txns[:n])
		release()
		if err != nil {
			a.readAll = true
			a.liveKeys = nil
			if isLockFailure(err) {
				a.gate.failed(n)
			}
			return last, err
		}
		// A chunk an earlier attempt committed is skipped without a
		// transaction: it does not count as a commit without contention
		// (the chunk that failed comes after it, and must read every row).
		if committed {
			committedAny = true
			a.gate.succeeded()
		}
		last, txns = seq, txns[n:]
	}
	if committedAny {
		a.readAll = false
	}
	return last, unknown
}

// applyChunk applies txns in one local transaction (change by change
// after a data error); committed is false when every one of them was
// applied already.
func (a *Applier) applyChunk(ctx context.Context, txns []*replicator.Txn) (last replicator.Seq, committed bool, err error) {
	last, committed, err = a.apply(ctx, txns, false)
	if err != nil && isDataError(err) {
		a.cfg.Logger.Warn("apply batch hit a data error; re-applying change by change", "source", a.cfg.Source, "err", err)
		last, committed, err = a.apply(ctx, txns, true)
	}
	return last, committed, err
}

// isDataError reports whether the local database refused a change for
// what the change holds, here: a constraint (class 23), a value (22), an
// application's row trigger raising an error (P0), a value too large for
// an index (54000). Such a change is parked with the reason and retried,
// and the rest of the stream goes on; any other error stops the stream
// until it passes (a lock, a connection, a server going down, a privilege
// missing, which would otherwise park every change of the tables it
// covers).
func isDataError(err error) bool {
	var r retryable
	if errors.As(err, &r) {
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return strings.HasPrefix(pe.Code, "23") || strings.HasPrefix(pe.Code, "22") || strings.HasPrefix(pe.Code, "P0") || pe.Code == "54000"
	}
	return false
}

func (a *Applier) apply(ctx context.Context, txns []*replicator.Txn, careful bool) (replicator.Seq, bool, error) {
	started := time.Now()
	tx, applied, err := a.begin(ctx)
	if err != nil {
		return 0, false, err
	}
	defer tx.Rollback(context.Background())
	var todo []*replicator.Txn
	for _, t := range txns {
		if t.Origin != a.cfg.Source {
			return 0, false, fmt.Errorf("apply: transaction from %s on the link from %s", t.Origin, a.cfg.Source)
		}
		if t.More || t.Part > 0 {
			return 0, false, fmt.Errorf("apply: transaction %s/%d arrives in parts; use ApplyLarge", t.Origin, t.Seq)
		}
		if int64(t.Seq) <= applied {
			continue
		}
		if int64(t.Seq) != applied+1+int64(len(todo)) {
			return replicator.Seq(applied), false, fmt.Errorf("apply from %s: %w: next is %d, got %d", a.cfg.Source, ErrGap, applied+1+int64(len(todo)), t.Seq)
		}
		todo = append(todo, t)
	}
	if len(todo) == 0 {
		return replicator.Seq(applied), false, nil
	}
	if todo, err = a.withoutLoaded(ctx, tx, todo); err != nil {
		return replicator.Seq(applied), false, err
	}

	ex := a.executor(tx, careful, started, len(todo))
	maxHLC, err := a.applyChanges(ctx, ex, todo)
	if err != nil {
		return 0, false, err
	}
	seq, err := a.commit(ctx, ex, todo[len(todo)-1], maxHLC)
	return seq, err == nil, err
}

// commit records the source's progress (last applied transaction) with the
// rows it covers, then commits the local transaction.
func (a *Applier) commit(ctx context.Context, ex *executor, last *replicator.Txn, maxHLC conflict.Timestamp) (replicator.Seq, error) {
	ex.queue(stmt{sql: `INSERT INTO polyregion.applied (source, seq, lsn, hlc, applied_at) VALUES ($1, $2, $3::pg_lsn, $4, pg_catalog.now())
		ON CONFLICT (source) DO UPDATE SET seq = excluded.seq, lsn = excluded.lsn, hlc = excluded.hlc, applied_at = excluded.applied_at`,
		args: []any{string(a.cfg.Source), int64(last.Seq), last.LSN, int64(maxHLC)}, want: -1})
	ex.final = true
	if err := ex.flush(ctx); err != nil {
		return 0, err
	}
	if err := ex.tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("apply: commit: %w", err)
	}
	for i := range ex.conflicts {
		ex.conflicts[i].Outcome = ex.conflicts[i].row.outcome()
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
	skip := false
	defer func() {
		// Skipping a transaction applied already clears nothing (see Apply).
		switch {
		case err != nil:
			a.readAll = true
		case !skip:
			a.readAll = false
		}
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
	skip = int64(first.Seq) <= applied
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
			parts, err := a.withoutLoaded(ctx, tx, []*replicator.Txn{part})
			if err != nil {
				return 0, err
			}
			h, err := a.applyChanges(ctx, ex, parts)
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
