package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
)

// ReaderConfig configures a Reader.
type ReaderConfig struct {
	Region conflict.RegionID
	// ConnString reaches the local database (a replication connection is
	// derived from it).
	ConnString string
	Tables     []regions.Table
	// BatchTxns and FlushInterval bound how many decoded local transactions
	// are versioned together in one local transaction.
	BatchTxns     int
	BatchChanges  int
	FlushInterval time.Duration
	// StatusInterval is how often the slot's confirmed position is reported.
	StatusInterval time.Duration
	// PartChanges bounds the changes of one transaction held in memory: a
	// larger transaction is versioned and appended in parts, inside one
	// local transaction that commits with the source's commit.
	PartChanges int
	Logger      *slog.Logger
	// Known is the latest configuration epoch the region knows (0 or 1:
	// the founding one) and InEffect the epochs the control plane says
	// are in effect (see epochs.go).
	Known    uint64
	InEffect []uint64
	// Learned are the epochs up to Known taken from a peer rather than
	// from the control plane (see regions/learn.go): their policies are
	// recorded with their fences, so that a restart while the control
	// plane is still out of reach knows them (LearnedEpochs).
	Learned []regions.Epoch
}

func (c *ReaderConfig) defaults() {
	if c.BatchTxns <= 0 {
		c.BatchTxns = 2000
	}
	if c.BatchChanges <= 0 {
		c.BatchChanges = 20000
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = 20 * time.Millisecond
	}
	if c.PartChanges <= 0 {
		c.PartChanges = 20000
	}
	if c.StatusInterval <= 0 {
		c.StatusInterval = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Reader decodes the local change stream (pgoutput over the region's slot),
// gives every local write its version, and appends local-origin transactions
// to the outbox, in local commit order. Transactions that carry a
// replication origin (applied from peers) are never shipped: no loops.
//
// Versioning, outbox append and the reader's own position are written in one
// local transaction, and the slot is confirmed only past what that
// transaction covers, so a crash re-decodes and re-versions nothing twice.
type Reader struct {
	cfg    ReaderConfig
	tables map[string]regions.Table
	epochs readerEpochs // set by Run before anything is versioned
	// seeds are the WAL bounds of the seeds of added tables, finished or
	// running (see reader_seeds.go): set by the decoding goroutine, read
	// by the versioning one.
	seeds atomic.Pointer[map[string]seedWindow]

	mu        sync.Mutex
	versioned pglogrepl.LSN // every local commit before this is versioned
	changed   chan struct{} // closed and replaced on every advance
	appended  chan struct{} // closed and replaced when outbox entries commit
	// barriers are the key barriers expected (see reader_key_barrier.go),
	// each with the position the reader passed it at (0 until then).
	barriers  map[uint64]pglogrepl.LSN
	lastToken uint64

	stopOnce sync.Once
	stop     chan struct{} // closed by Stop
}

// NewReader returns a Reader; Run starts it.
func NewReader(cfg ReaderConfig) *Reader {
	cfg.defaults()
	r := &Reader{cfg: cfg, tables: map[string]regions.Table{}, changed: make(chan struct{}), appended: make(chan struct{}), stop: make(chan struct{})}
	for _, t := range cfg.Tables {
		r.tables[t.Name] = t
	}
	return r
}

// Appended returns a channel closed the next time the outbox gains
// entries (once they are committed). The reader moves on with every
// transaction it decodes, applied ones from peers included; the outbox's
// readers wake only for what they can send.
func (r *Reader) Appended() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.appended
}

// noteAppended wakes the outbox's readers: entries were committed (or,
// when the reader starts, may be there).
func (r *Reader) noteAppended() {
	r.mu.Lock()
	defer r.mu.Unlock()
	close(r.appended)
	r.appended = make(chan struct{})
}

// Versioned returns the position before which every local commit is
// versioned.
func (r *Reader) Versioned() pglogrepl.LSN {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.versioned
}

// Stop asks Run to return nil at the next transaction boundary (at once
// within a transaction it only passes over: applied from a peer), after
// versioning what it has decoded and confirming it to the slot.
func (r *Reader) Stop() { r.stopOnce.Do(func() { close(r.stop) }) }

func (r *Reader) stopping() bool {
	select {
	case <-r.stop:
		return true
	default:
		return false
	}
}

func (r *Reader) advance(lsn pglogrepl.LSN) {
	r.mu.Lock()
	if lsn > r.versioned {
		r.versioned = lsn
	}
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// WaitVersioned blocks until every local write committed before lsn has been
// versioned (is in row_version). Appliers call it when they find a row
// written locally whose version is not recorded yet.
func (r *Reader) WaitVersioned(ctx context.Context, lsn pglogrepl.LSN) error {
	return r.waitUntil(ctx, lsn, func() bool { return r.versioned >= lsn })
}

// waitUntil blocks until done (called with r.mu held, again after every
// advance or passed barrier) reports true; lsn names the wait in its error.
func (r *Reader) waitUntil(ctx context.Context, lsn pglogrepl.LSN, done func() bool) error {
	for {
		r.mu.Lock()
		ok, ch := done(), r.changed
		r.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for reader to version local writes up to %s: %w", lsn, ctx.Err())
		}
	}
}

type relation struct {
	msg   *pglogrepl.RelationMessage
	name  string
	shape replicator.Shape
	// keyLogged: the relation's old rows carry its key (identityLogsKey),
	// worked out once per relation message.
	keyLogged bool
}

type pendingTxn struct {
	xid        uint32
	commitLSN  pglogrepl.LSN
	endLSN     pglogrepl.LSN
	commitTime time.Time
	// remote: applied from a peer (or already versioned before a restart);
	// its changes are not shipped.
	remote  bool
	changes []rawChange
	// part numbers the parts of a large transaction; more is set on all but
	// the last.
	part int
	more bool
	// truncated names the tables whose TRUNCATE capture this transaction
	// carried (their rows became deletes).
	truncated map[string]bool
	// visible: the transaction is known visible to the reader's queries
	// (see reader_visible.go).
	visible bool
}

type rawChange struct {
	rel *relation
	op  conflict.Op
	key string
	row []replicator.Value
	// old is the full old row, sent for tables with REPLICA IDENTITY FULL.
	old []replicator.Value
}

// state persisted in reader_state.
type readerState struct {
	lsn     pglogrepl.LSN
	nextSeq replicator.Seq
	hlc     conflict.Timestamp
}

// Run decodes until ctx ends or an error occurs. It owns its connections.
func (r *Reader) Run(ctx context.Context) error {
	conn, err := Connect(ctx, r.cfg.ConnString)
	if err != nil {
		return fmt.Errorf("reader: %w", err)
	}
	defer conn.Close(context.Background())
	st, err := r.loadState(ctx, conn)
	if err != nil {
		return err
	}
	r.advance(st.lsn)
	r.noteAppended()
	if r.epochs, err = prepareEpochs(ctx, conn, r.cfg.Known, r.cfg.InEffect, r.cfg.Learned, st.nextSeq-1); err != nil {
		return err
	}
	if err := r.loadSeeds(ctx, conn); err != nil {
		return err
	}

	sctx, started := WithStop(ctx, r.stop)
	stream, err := StartChangeStream(sctx, r.cfg.ConnString, "polyregion-reader", "reader", SlotName(string(r.cfg.Region)), st.lsn,
		PublicationName(string(r.cfg.Region)), true, true)
	started()
	if err != nil {
		if r.stopping() && ctx.Err() == nil {
			return nil // stopped while waiting for its slot: nothing decoded, nothing to save
		}
		return err
	}
	defer stream.Close()
	pconn, err := connectDataPlane(ctx, r.cfg.ConnString)
	if err != nil {
		return fmt.Errorf("reader: %w", err)
	}
	defer pconn.Close(context.Background())
	if stream.FiltersOrigins() {
		// The walsender then skips what this session writes.
		if err := markVersionsSession(ctx, pconn); err != nil {
			return err
		}
	}
	r.cfg.Logger.Info("reader started", "slot", SlotName(string(r.cfg.Region)), "from", st.lsn.String(), "next_seq", uint64(st.nextSeq),
		"server_version", stream.ServerVersion(), "decodes_applied_changes", !stream.FiltersOrigins())

	s := &readSession{r: r, ctx: ctx, conn: conn, stream: stream, pconn: pconn, st: st, confirmed: st.lsn,
		rels: map[uint32]*relation{}}
	s.startPersister()
	defer s.close()

	// A stop request interrupts the wait for the next message.
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	go func() {
		select {
		case <-r.stop:
			scancel()
		case <-sctx.Done():
		}
	}()
	for {
		// A transaction in progress that has nothing to version (applied
		// from a peer, or versioned before a restart) is left: the
		// position stays before it. A region that just joined has its
		// reader pass every loaded row first, in transactions of 200,000.
		if r.stopping() && (s.cur == nil || s.cur.remote) && s.bigTx == nil {
			return s.finishStop()
		}
		if err := s.tick(); err != nil {
			return err
		}
		base := sctx
		if r.stopping() {
			base = ctx // finishing the transaction in progress
		}
		ev, ok, err := stream.Receive(base, s.wait())
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if sctx.Err() != nil && errors.Is(err, context.Canceled) {
				continue // asked to stop: finish the transaction in progress
			}
			return err
		}
		if !ok {
			continue
		}
		if err := s.receive(ev); err != nil {
			return err
		}
	}
}
