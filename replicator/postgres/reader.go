package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

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

	mu        sync.Mutex
	versioned pglogrepl.LSN // every local commit before this is versioned
	changed   chan struct{} // closed and replaced on every advance
	waiters   int

	stopOnce sync.Once
	stop     chan struct{} // closed by Stop
}

// NewReader returns a Reader; Run starts it.
func NewReader(cfg ReaderConfig) *Reader {
	cfg.defaults()
	r := &Reader{cfg: cfg, tables: map[string]regions.Table{}, changed: make(chan struct{}), stop: make(chan struct{})}
	for _, t := range cfg.Tables {
		r.tables[t.Name] = t
	}
	return r
}

// Changed returns a channel closed the next time the reader versions more
// of the stream (new outbox entries or a passed barrier).
func (r *Reader) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// Versioned returns the position before which every local commit is
// versioned.
func (r *Reader) Versioned() pglogrepl.LSN {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.versioned
}

// Stop asks Run to return nil at the next transaction boundary, after
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
	for {
		r.mu.Lock()
		done, ch := r.versioned >= lsn, r.changed
		r.mu.Unlock()
		if done {
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

	rconf, err := pgconn.ParseConfig(r.cfg.ConnString)
	if err != nil {
		return fmt.Errorf("reader: parse connection string: %w", err)
	}
	rconf.RuntimeParams["replication"] = "database"
	SetTextForms(rconf.RuntimeParams)
	rconf.RuntimeParams["application_name"] = "polyregion-reader"
	repl, err := pgconn.ConnectConfig(ctx, rconf)
	if err != nil {
		return fmt.Errorf("reader: replication connection: %w", err)
	}
	defer repl.Close(context.Background())

	slot := SlotName(string(r.cfg.Region))
	err = pglogrepl.StartReplication(ctx, repl, slot, st.lsn, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{
			"proto_version '1'",
			"publication_names '" + PublicationName(string(r.cfg.Region)) + "'",
			"messages 'true'",
		},
	})
	if err != nil {
		return fmt.Errorf("reader: start replication on slot %s: %w", slot, err)
	}
	r.cfg.Logger.Info("reader started", "slot", slot, "from", st.lsn.String(), "next_seq", uint64(st.nextSeq))

	rels := map[uint32]*relation{}
	var cur *pendingTxn
	var batch []*pendingTxn
	batchChanges := 0
	confirmed := st.lsn // reported to the server as flushed
	lastStatus := time.Now()
	var flushDeadline time.Time

	// Versioning runs in its own goroutine, one batch at a time, while the
	// loop goes on decoding the next batch: under a backlog batches grow to
	// the limit, when idle each commit is versioned within FlushInterval.
	type persistResult struct {
		st  readerState
		err error
	}
	jobs := make(chan []*pendingTxn)
	results := make(chan persistResult, 1)
	pconn, err := connectDataPlane(ctx, r.cfg.ConnString)
	if err != nil {
		return fmt.Errorf("reader: %w", err)
	}
	defer pconn.Close(context.Background())
	pctx, pcancel := context.WithCancel(ctx)
	persisterDone := make(chan struct{})
	go func() {
		defer close(persisterDone)
		for b := range jobs {
			next := st
			err := r.persist(pctx, pconn, &next, b)
			results <- persistResult{next, err}
		}
	}()
	defer func() {
		close(jobs)
		pcancel()
		<-persisterDone
	}()
	inflight := false
	finish := func(res persistResult) error {
		inflight = false
		if res.err != nil {
			return res.err
		}
		st = res.st
		confirmed = max(confirmed, st.lsn)
		r.advance(st.lsn)
		return nil
	}
	await := func() error {
		if !inflight {
			return nil
		}
		return finish(<-results)
	}
	start := func() {
		if inflight || len(batch) == 0 {
			return
		}
		jobs <- batch
		inflight = true
		batch, batchChanges = nil, 0
	}
	flush := func() error {
		if err := await(); err != nil {
			return err
		}
		start()
		return await()
	}
	// A transaction larger than PartChanges is versioned part by part in
	// bigTx (on the persister's session, which is idle meanwhile: the
	// stream is sequential and earlier batches are flushed first).
	var bigTx pgx.Tx
	var bigSt readerState
	defer func() {
		if bigTx != nil {
			_ = bigTx.Rollback(context.Background())
		}
	}()
	streamPart := func(last bool) error {
		if bigTx == nil {
			if err := flush(); err != nil {
				return err
			}
			tx, err := pconn.Begin(ctx)
			if err != nil {
				return fmt.Errorf("reader: large transaction: %w", err)
			}
			bigTx, bigSt = tx, st
		}
		part := &pendingTxn{xid: cur.xid, commitLSN: cur.commitLSN, endLSN: cur.endLSN, commitTime: cur.commitTime,
			changes: cur.changes, part: cur.part, more: !last}
		for attempt := 1; ; attempt++ {
			if _, err := bigTx.Exec(ctx, "SAVEPOINT part"); err != nil {
				return fmt.Errorf("reader: large transaction: %w", err)
			}
			next := bigSt
			err := r.persistIn(ctx, bigTx, &next, []*pendingTxn{part}, attempt > 1)
			if err == nil {
				bigSt = next
				if _, err := bigTx.Exec(ctx, "RELEASE SAVEPOINT part"); err != nil {
					return fmt.Errorf("reader: large transaction: %w", err)
				}
				break
			}
			if !retryablePersist(err) || attempt == 10 {
				return err
			}
			if _, err := bigTx.Exec(ctx, "ROLLBACK TO SAVEPOINT part"); err != nil {
				return fmt.Errorf("reader: large transaction: %w", err)
			}
		}
		cur.part++
		cur.changes = nil
		return nil
	}
	streamIfLarge := func() error {
		if cur != nil && !cur.remote && len(cur.changes) >= r.cfg.PartChanges {
			return streamPart(false)
		}
		return nil
	}
	sendStatus := func() error {
		lastStatus = time.Now()
		return pglogrepl.SendStandbyStatusUpdate(ctx, repl, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: confirmed, WALFlushPosition: confirmed, WALApplyPosition: confirmed,
		})
	}

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
		if r.stopping() && cur == nil && bigTx == nil {
			if err := flush(); err != nil {
				return err
			}
			if err := sendStatus(); err != nil {
				return fmt.Errorf("reader: send status: %w", err)
			}
			r.cfg.Logger.Info("reader stopped: decoded transactions versioned and confirmed", "confirmed", confirmed.String(), "next_seq", uint64(st.nextSeq))
			return nil
		}
		if inflight {
			select {
			case res := <-results:
				if err := finish(res); err != nil {
					return err
				}
			default:
			}
		}
		if len(batch) > 0 && (batchChanges >= r.cfg.BatchChanges || len(batch) >= r.cfg.BatchTxns || time.Now().After(flushDeadline)) {
			if inflight && batchChanges >= 4*r.cfg.BatchChanges {
				if err := await(); err != nil {
					return err
				}
			}
			start()
		}
		if time.Since(lastStatus) >= r.cfg.StatusInterval {
			if err := sendStatus(); err != nil {
				return fmt.Errorf("reader: send status: %w", err)
			}
		}
		wait := r.cfg.StatusInterval - time.Since(lastStatus)
		if inflight && wait > 2*time.Millisecond {
			wait = 2 * time.Millisecond
		}
		if len(batch) > 0 {
			if d := time.Until(flushDeadline); d < wait {
				wait = d
			}
		}
		if wait < time.Millisecond {
			wait = time.Millisecond
		}
		base := sctx
		if r.stopping() {
			base = ctx // finishing the transaction in progress
		}
		rctx, cancel := context.WithTimeout(base, wait)
		raw, err := repl.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) || (sctx.Err() != nil && errors.Is(err, context.Canceled)) {
				continue
			}
			return fmt.Errorf("reader: receive: %w", err)
		}
		switch m := raw.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("reader: server error: %w", pgconn.ErrorResponseToPgError(m))
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
				if err != nil {
					return fmt.Errorf("reader: keepalive: %w", err)
				}
				// Nothing in flight: every commit before the server's send
				// position has reached us, so the slot may move on.
				if cur == nil && len(batch) == 0 && !inflight && ka.ServerWALEnd > confirmed {
					confirmed = ka.ServerWALEnd
					r.advance(confirmed)
				}
				if ka.ReplyRequested {
					if err := sendStatus(); err != nil {
						return fmt.Errorf("reader: send status: %w", err)
					}
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(m.Data[1:])
				if err != nil {
					return fmt.Errorf("reader: xlogdata: %w", err)
				}
				if cur != nil && cur.remote && skippableRowMessage(xld.WALData) {
					// A row of an applied transaction (or of one versioned
					// before a restart): nothing to version or ship, so it
					// is not decoded. Most of what a receiving region's
					// stream carries is such rows.
					continue
				}
				msg, err := pglogrepl.Parse(xld.WALData)
				if err != nil {
					return fmt.Errorf("reader: decode pgoutput message at %s: %w", xld.WALStart, err)
				}
				switch msg := msg.(type) {
				case *pglogrepl.RelationMessage:
					rel, err := r.relation(ctx, conn, msg)
					if err != nil {
						return err
					}
					rels[msg.RelationID] = rel
				case *pglogrepl.TypeMessage:
					// Values travel in text form; type messages need no action.
				case *pglogrepl.BeginMessage:
					// A transaction committed before the recorded position
					// was versioned before a restart: decode, don't ship.
					cur = &pendingTxn{xid: msg.Xid, commitLSN: msg.FinalLSN, commitTime: msg.CommitTime, remote: msg.FinalLSN < st.lsn}
				case *pglogrepl.OriginMessage:
					if cur != nil {
						cur.remote = true
					}
				case *pglogrepl.InsertMessage:
					if err := r.addChange(cur, rels, msg.RelationID, conflict.OpInsert, msg.Tuple, nil); err != nil {
						return err
					}
					if err := streamIfLarge(); err != nil {
						return err
					}
				case *pglogrepl.UpdateMessage:
					if msg.OldTupleType == pglogrepl.UpdateMessageTupleTypeOld {
						fillUnchanged(msg.NewTuple, msg.OldTuple)
					}
					if err := r.addChange(cur, rels, msg.RelationID, conflict.OpUpdate, msg.NewTuple, msg.OldTuple); err != nil {
						return err
					}
					if err := streamIfLarge(); err != nil {
						return err
					}
				case *pglogrepl.DeleteMessage:
					if err := r.addChange(cur, rels, msg.RelationID, conflict.OpDelete, nil, msg.OldTuple); err != nil {
						return err
					}
					if err := streamIfLarge(); err != nil {
						return err
					}
				case *pglogrepl.TruncateMessage:
					if cur != nil && !cur.remote {
						var missed []string
						for _, id := range msg.RelationIDs {
							rel := rels[id]
							if rel == nil {
								continue
							}
							if _, ok := r.tables[rel.name]; ok && !cur.truncated[rel.name] {
								missed = append(missed, rel.name)
							}
						}
						if len(missed) > 0 {
							r.cfg.Logger.Error("TRUNCATE without its capture trigger (disabled, dropped, or session_replication_role = replica): other regions keep these tables' rows; restart the replicator to put the trigger back", "tables", missed, "xid", cur.xid, "trigger", TruncateTrigger)
						}
					}
				case *pglogrepl.LogicalDecodingMessage:
					if msg.Prefix == TruncatePrefix && msg.Transactional {
						if err := r.addTruncated(ctx, conn, cur, rels, msg.Content); err != nil {
							return err
						}
						if err := streamIfLarge(); err != nil {
							return err
						}
					} else if msg.Prefix == BarrierPrefix && !msg.Transactional {
						if err := flush(); err != nil {
							return err
						}
						if msg.LSN > st.lsn {
							// Record the position so others can see the
							// reader passed the barrier.
							if err := r.saveBarrier(ctx, conn, &st, msg.LSN); err != nil {
								return err
							}
						}
						if msg.LSN > confirmed && cur == nil {
							confirmed = msg.LSN
						}
						r.advance(msg.LSN)
					}
				case *pglogrepl.CommitMessage:
					if cur == nil {
						return fmt.Errorf("reader: commit at %s without begin", msg.CommitLSN)
					}
					cur.endLSN = msg.TransactionEndLSN
					if bigTx != nil {
						// The last part, the position, and the commit.
						if err := streamPart(true); err != nil {
							return err
						}
						if err := r.saveState(ctx, bigTx, &bigSt, cur.endLSN); err != nil {
							return err
						}
						if err := bigTx.Commit(ctx); err != nil {
							return fmt.Errorf("reader: large transaction commit: %w", err)
						}
						bigTx, cur = nil, nil
						st = bigSt
						confirmed = max(confirmed, st.lsn)
						r.advance(st.lsn)
						continue
					}
					done := cur
					cur = nil
					if done.endLSN <= st.lsn {
						continue // versioned before a restart
					}
					if done.remote || len(done.changes) == 0 {
						if len(batch) == 0 && !inflight {
							confirmed = done.endLSN
							r.advance(done.endLSN)
						}
						continue
					}
					if len(batch) == 0 {
						flushDeadline = time.Now().Add(r.cfg.FlushInterval)
					}
					batch = append(batch, done)
					batchChanges += len(done.changes)
				}
			}
		}
	}
}
