package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
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

// relation builds a table's shape as the stream describes it at this point
// (columns and types from the relation message, so transactions decoded
// from before a DDL keep their own columns) and its key from the catalog's
// primary key.
func (r *Reader) relation(ctx context.Context, conn *pgx.Conn, msg *pglogrepl.RelationMessage) (*relation, error) {
	name := msg.Namespace + "." + msg.RelationName
	if _, ok := r.tables[name]; !ok {
		// Not replicated: only its name is needed (to skip its changes).
		return &relation{msg: msg, name: name}, nil
	}
	sh, err := StreamShape(ctx, conn, msg)
	if err != nil {
		return nil, fmt.Errorf("reader: %w", err)
	}
	return &relation{msg: msg, name: name, shape: sh}, nil
}

func tupleValues(rel *relation, t *pglogrepl.TupleData) []replicator.Value {
	return TupleValues(len(rel.shape.Columns), t)
}

// TupleValues converts a stream tuple of a relation with n columns to values
// in text form: SQL NULL as Null, an unchanged TOASTed value as Unchanged.
// Columns the tuple lacks are NULL.
func TupleValues(n int, t *pglogrepl.TupleData) []replicator.Value {
	vals := make([]replicator.Value, n)
	for i := range vals {
		vals[i].Null = true
	}
	if t == nil {
		return vals
	}
	for i, c := range t.Columns {
		if i >= n {
			break
		}
		v := &vals[i]
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
			*v = replicator.Value{Null: true}
		case pglogrepl.TupleDataTypeToast:
			*v = replicator.Value{Unchanged: true}
		default:
			*v = replicator.Value{Text: string(c.Data)}
		}
	}
	return vals
}

// fillUnchanged gives an update's unchanged TOASTed values from the full
// old row (REPLICA IDENTITY FULL logs it, detoasted). Shipped whole, such
// an update can win a conflict in a region whose concurrent version holds
// a different value for the untouched column and still converge; shipped
// as "unchanged" it would leave that region's value in place.
func fillUnchanged(newT, oldT *pglogrepl.TupleData) {
	if newT == nil || oldT == nil {
		return
	}
	for i, c := range newT.Columns {
		if c.DataType == pglogrepl.TupleDataTypeToast && i < len(oldT.Columns) && oldT.Columns[i].DataType != pglogrepl.TupleDataTypeToast {
			newT.Columns[i] = oldT.Columns[i]
		}
	}
}

func (r *Reader) addChange(cur *pendingTxn, rels map[uint32]*relation, relID uint32, op conflict.Op, newT, oldT *pglogrepl.TupleData) error {
	if cur == nil {
		return fmt.Errorf("reader: row change outside a transaction")
	}
	if cur.remote {
		return nil
	}
	rel := rels[relID]
	if rel == nil {
		return fmt.Errorf("reader: change for unknown relation %d", relID)
	}
	if _, ok := r.tables[rel.name]; !ok {
		return nil
	}
	switch op {
	case conflict.OpDelete:
		key, err := rel.shape.KeyOf(tupleValues(rel, oldT))
		if err != nil {
			return fmt.Errorf("reader: delete: %w", err)
		}
		cur.changes = append(cur.changes, rawChange{rel: rel, op: op, key: key})
	default:
		row := tupleValues(rel, newT)
		key, err := rel.shape.KeyOf(row)
		if err != nil {
			return fmt.Errorf("reader: %s: %w", op, err)
		}
		if op == conflict.OpUpdate && oldT != nil {
			// The primary key changed: the old key is deleted and the new
			// one written.
			oldKey, err := rel.shape.KeyOf(tupleValues(rel, oldT))
			if err != nil {
				return fmt.Errorf("reader: update: %w", err)
			}
			if oldKey != key {
				cur.changes = append(cur.changes, rawChange{rel: rel, op: conflict.OpDelete, key: oldKey})
				op = conflict.OpInsert
			}
		}
		ch := rawChange{rel: rel, op: op, key: key, row: row}
		if op == conflict.OpUpdate && oldT != nil {
			ch.old = tupleValues(rel, oldT)
		}
		cur.changes = append(cur.changes, ch)
	}
	return nil
}

// addTruncated turns one part of a TRUNCATE capture ("table\n" and a JSON
// array of key value arrays, see polyregion.capture_truncate) into deletes
// of the current transaction.
func (r *Reader) addTruncated(ctx context.Context, conn *pgx.Conn, cur *pendingTxn, rels map[uint32]*relation, content []byte) error {
	if cur == nil {
		return fmt.Errorf("reader: TRUNCATE capture outside a transaction")
	}
	if cur.remote {
		return nil
	}
	name, body, ok := strings.Cut(string(content), "\n")
	if !ok {
		return fmt.Errorf("reader: malformed TRUNCATE capture (no table name) in transaction %d", cur.xid)
	}
	if _, ok := r.tables[name]; !ok {
		return nil
	}
	var rel *relation
	for _, c := range rels {
		if c.name == name && len(c.shape.Columns) > 0 {
			rel = c
			break
		}
	}
	if rel == nil {
		// The stream describes a relation before its first change; the
		// capture comes before the TRUNCATE itself.
		sh, err := LoadShape(ctx, conn, name)
		if err != nil {
			return fmt.Errorf("reader: TRUNCATE of %s: %w", name, err)
		}
		rel = &relation{name: name, shape: sh}
	}
	var keys [][]string
	if err := json.Unmarshal([]byte(body), &keys); err != nil {
		return fmt.Errorf("reader: malformed TRUNCATE capture of %s in transaction %d: %w", name, cur.xid, err)
	}
	for _, parts := range keys {
		if len(parts) != len(rel.shape.Key) {
			return fmt.Errorf("reader: TRUNCATE capture of %s carries %d key values, the table's key has %d columns", name, len(parts), len(rel.shape.Key))
		}
		key, err := json.Marshal(parts)
		if err != nil {
			return err
		}
		cur.changes = append(cur.changes, rawChange{rel: rel, op: conflict.OpDelete, key: string(key)})
	}
	if cur.truncated == nil {
		cur.truncated = map[string]bool{}
	}
	cur.truncated[name] = true
	return nil
}

func (r *Reader) loadState(ctx context.Context, conn *pgx.Conn) (readerState, error) {
	st := readerState{nextSeq: 1}
	var lsn string
	var next, hlc int64
	err := conn.QueryRow(ctx, `SELECT lsn::text, next_seq, hlc FROM polyregion.reader_state WHERE slot = $1`, SlotName(string(r.cfg.Region))).Scan(&lsn, &next, &hlc)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		var maxSeq int64
		if err := conn.QueryRow(ctx, `SELECT coalesce(max(seq), 0) FROM polyregion.outbox`).Scan(&maxSeq); err != nil {
			return st, fmt.Errorf("reader: load state: %w", err)
		}
		st.nextSeq = replicator.Seq(maxSeq + 1)
		return st, nil
	case err != nil:
		return st, fmt.Errorf("reader: load state: %w", err)
	}
	l, err := pglogrepl.ParseLSN(lsn)
	if err != nil {
		return st, fmt.Errorf("reader: load state: %w", err)
	}
	st.lsn, st.nextSeq, st.hlc = l, replicator.Seq(next), conflict.Timestamp(hlc)
	return st, nil
}

// meta is a row's recorded version.
type meta struct {
	version  conflict.Version
	xid      string // "" when NULL
	counters map[string]string
	// srcSeq is the origin region's outbox sequence number of the write.
	srcSeq int64
	// tupleXmin is the transaction that last wrote the row_version tuple
	// itself, as loaded: an update conditioned on it finds out whether
	// anybody changed the version since.
	tupleXmin string
}

type metaKey struct{ tbl, key string }

func loadMeta(ctx context.Context, q querier, keys []metaKey) (map[metaKey]*meta, error) {
	return loadMetaLocked(ctx, q, keys, false)
}

// loadTombstones is loadMeta for keys where only a tombstone can be
// recorded (a probe of the tombstones' index, far smaller than all
// versions).
func loadTombstones(ctx context.Context, q querier, keys []metaKey) (map[metaKey]*meta, error) {
	if len(keys) == 0 {
		return map[metaKey]*meta{}, nil
	}
	// Most tables have no tombstone at all: their keys need no probe. (A
	// tombstone recorded after this check fails the caller's COPY.)
	var tbls []string
	for _, k := range keys {
		if len(tbls) == 0 || tbls[len(tbls)-1] != k.tbl {
			tbls = append(tbls, k.tbl)
		}
	}
	rows, err := q.Query(ctx, `SELECT t.tbl FROM pg_catalog.unnest($1::text[]) AS t(tbl)
		WHERE EXISTS (SELECT FROM polyregion.row_version v WHERE v.deleted AND v.tbl = t.tbl)`, tbls)
	if err != nil {
		return nil, fmt.Errorf("load tombstones: %w", err)
	}
	has := map[string]bool{}
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load tombstones: %w", err)
		}
		has[t] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load tombstones: %w", err)
	}
	var probe []metaKey
	for _, k := range keys {
		if has[k.tbl] {
			probe = append(probe, k)
		}
	}
	return loadMetaWhere(ctx, q, probe, false, " AND v.deleted")
}

// loadMetaLocked is loadMeta, optionally locking the versions it finds
// until the transaction ends, in the order of keys.
func loadMetaLocked(ctx context.Context, q querier, keys []metaKey, lock bool) (map[metaKey]*meta, error) {
	return loadMetaWhere(ctx, q, keys, lock, "")
}

func loadMetaWhere(ctx context.Context, q querier, keys []metaKey, lock bool, cond string) (map[metaKey]*meta, error) {
	// One index probe per key, whatever the planner thinks of the table's
	// size (LIMIT keeps the subquery a nested loop: a join would be hashed
	// over a scan of every version once the batch is large or the
	// statistics stale). Locks are taken in the order of keys.
	forUpdate := ""
	if lock {
		forUpdate = " FOR UPDATE"
	}
	out := make(map[metaKey]*meta, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	tbls := make([]string, len(keys))
	ks := make([]string, len(keys))
	for i, k := range keys {
		tbls[i], ks[i] = k.tbl, k.key
	}
	rows, err := q.Query(ctx, `SELECT m.tbl, m.key, m.vv, m.hlc, m.origin, m.deleted, coalesce(m.xid::text, ''), m.counters, m.src_seq, m.tuple_xmin
		FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS k(tbl, key)
		CROSS JOIN LATERAL (SELECT v.tbl, v.key, v.vv, v.hlc, v.origin, v.deleted, v.xid, v.counters, v.src_seq, v.xmin::text AS tuple_xmin
			FROM polyregion.row_version v WHERE v.tbl = k.tbl AND v.key = k.key`+cond+` LIMIT 1`+forUpdate+`) m`, tbls, ks)
	if err != nil {
		return nil, fmt.Errorf("load row versions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var k metaKey
		var vv, origin, xid, tupleXmin string
		var hlc int64
		var deleted bool
		var counters map[string]string
		var srcSeq int64
		if err := rows.Scan(&k.tbl, &k.key, &vv, &hlc, &origin, &deleted, &xid, &counters, &srcSeq, &tupleXmin); err != nil {
			return nil, fmt.Errorf("load row versions: %w", err)
		}
		vec, err := conflict.ParseVector(vv)
		if err != nil {
			return nil, fmt.Errorf("load row versions: %s %s: %w", k.tbl, k.key, err)
		}
		out[k] = &meta{
			version:   conflict.Version{Vector: vec, HLC: conflict.Timestamp(hlc), Origin: conflict.RegionID(origin), Deleted: deleted},
			xid:       xid,
			counters:  counters,
			srcSeq:    srcSeq,
			tupleXmin: tupleXmin,
		}
	}
	return out, rows.Err()
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// metaWriter accumulates row_version upserts for one statement.
type metaWriter struct {
	tbl, key, vv, origin, xid []string
	hlc, srcSeq               []int64
	deleted                   []bool
	counters                  []*string
	// tupleXmin: for updateMetaSQL, each version's tuple xmin as read.
	tupleXmin []string
}

func (w *metaWriter) add(k metaKey, m *meta) {
	w.tbl = append(w.tbl, k.tbl)
	w.key = append(w.key, k.key)
	w.vv = append(w.vv, m.version.Vector.String())
	w.hlc = append(w.hlc, int64(m.version.HLC))
	w.origin = append(w.origin, string(m.version.Origin))
	w.deleted = append(w.deleted, m.version.Deleted)
	w.xid = append(w.xid, m.xid)
	w.srcSeq = append(w.srcSeq, m.srcSeq)
	if len(m.counters) > 0 {
		b, _ := json.Marshal(m.counters)
		s := string(b)
		w.counters = append(w.counters, &s)
	} else {
		w.counters = append(w.counters, nil)
	}
}

const upsertMetaSQL = `INSERT INTO polyregion.row_version AS m (tbl, key, vv, hlc, origin, deleted, xid, counters, src_seq, deleted_at)
	SELECT tbl, key, vv, hlc, origin, deleted,
	       CASE WHEN xid = '@' THEN pg_catalog.pg_current_xact_id()::xid ELSE NULLIF(xid, '')::xid END,
	       counters::jsonb, src_seq, CASE WHEN deleted THEN pg_catalog.now() END
	FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::bigint[]),
	     pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::bool[]), pg_catalog.unnest($7::text[]), pg_catalog.unnest($8::text[]), pg_catalog.unnest($9::bigint[]))
	     AS u(tbl, key, vv, hlc, origin, deleted, xid, counters, src_seq)
	ON CONFLICT (tbl, key) DO UPDATE SET vv = excluded.vv, hlc = excluded.hlc, origin = excluded.origin,
	   deleted = excluded.deleted, xid = excluded.xid, counters = excluded.counters, src_seq = excluded.src_seq,
	   deleted_at = CASE WHEN excluded.deleted THEN coalesce(m.deleted_at, excluded.deleted_at) END`

// updateMetaSQL replaces versions that exist, each only if its tuple is
// still the one read (xmin, $10); the caller compares the row count. An
// xid of '@' (appliers only) is the writing transaction's.
const updateMetaSQL = `UPDATE polyregion.row_version AS m SET vv = u.vv, hlc = u.hlc, origin = u.origin, deleted = u.deleted,
	   xid = CASE WHEN u.xid = '@' THEN pg_catalog.pg_current_xact_id()::xid ELSE NULLIF(u.xid, '')::xid END, counters = u.counters::jsonb, src_seq = u.src_seq,
	   deleted_at = CASE WHEN u.deleted THEN coalesce(m.deleted_at, pg_catalog.now()) END
	FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::bigint[]),
	     pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::bool[]), pg_catalog.unnest($7::text[]), pg_catalog.unnest($8::text[]), pg_catalog.unnest($9::bigint[]),
	     pg_catalog.unnest($10::text[]))
	     AS u(tbl, key, vv, hlc, origin, deleted, xid, counters, src_seq, tuple_xmin)
	WHERE m.tbl = u.tbl AND m.key = u.key AND m.xmin = u.tuple_xmin::xid`

// metaCopyColumns are the row_version columns copyRow fills.
var metaCopyColumns = []string{"tbl", "key", "vv", "hlc", "origin", "deleted", "xid", "counters", "src_seq", "deleted_at"}

// copyRow is a new version as a COPY row (the reader's: xid is a number or
// empty, never this transaction's).
func copyRow(k metaKey, m *meta) ([]any, error) {
	var xid any
	if m.xid != "" {
		x, err := strconv.ParseUint(m.xid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("reader: version of %s %s: xid %q: %w", k.tbl, k.key, m.xid, err)
		}
		xid = uint32(x)
	}
	var counters, deletedAt any
	if len(m.counters) > 0 {
		b, err := json.Marshal(m.counters)
		if err != nil {
			return nil, fmt.Errorf("reader: version of %s %s: %w", k.tbl, k.key, err)
		}
		counters = string(b)
	}
	if m.version.Deleted {
		deletedAt = time.Now()
	}
	return []any{k.tbl, k.key, m.version.Vector.String(), int64(m.version.HLC), string(m.version.Origin), m.version.Deleted,
		xid, counters, m.srcSeq, deletedAt}, nil
}

// errVersionRace: a version the reader was about to create was recorded
// by an applier meanwhile; the batch must be versioned again.
var errVersionRace = errors.New("reader: a row version changed while versioning; retrying")

// retryablePersist reports errors after which versioning the same batch
// again is right.
func retryablePersist(err error) bool {
	if errors.Is(err, errVersionRace) {
		return true
	}
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}

func (w *metaWriter) args() []any {
	return []any{w.tbl, w.key, w.vv, w.hlc, w.origin, w.deleted, w.xid, w.counters, w.srcSeq}
}

// persist versions a batch of local transactions and appends them to the
// outbox, with the reader's new position, in one local transaction.
func (r *Reader) persist(ctx context.Context, conn *pgx.Conn, st *readerState, batch []*pendingTxn) error {
	for attempt := 1; ; attempt++ {
		// The first attempt reads versions without locking them and
		// writes each only if nobody changed it meanwhile; after a race,
		// attempts lock what they read, so they cannot lose again.
		err := r.persistOnce(ctx, conn, st, batch, attempt > 1)
		if err == nil || !retryablePersist(err) || attempt == 10 {
			return err
		}
		r.cfg.Logger.Debug("versioning retried", "attempt", attempt, "err", err)
	}
}

func (r *Reader) persistOnce(ctx context.Context, conn *pgx.Conn, st *readerState, batch []*pendingTxn, lock bool) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("reader: persist: %w", err)
	}
	defer tx.Rollback(context.Background())
	next := *st
	if err := r.persistIn(ctx, tx, &next, batch, lock); err != nil {
		return err
	}
	last := batch[len(batch)-1]
	if err := r.saveState(ctx, tx, &next, last.endLSN); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("reader: persist commit: %w", err)
	}
	*st = next
	return nil
}

// saveState records the reader's position in tx.
func (r *Reader) saveState(ctx context.Context, tx pgx.Tx, st *readerState, lsn pglogrepl.LSN) error {
	if _, err := tx.Exec(ctx, `INSERT INTO polyregion.reader_state (slot, lsn, next_seq, hlc) VALUES ($1, $2::pg_lsn, $3, $4)
		ON CONFLICT (slot) DO UPDATE SET lsn = excluded.lsn, next_seq = excluded.next_seq, hlc = excluded.hlc`,
		SlotName(string(r.cfg.Region)), lsn.String(), int64(st.nextSeq), int64(st.hlc)); err != nil {
		return fmt.Errorf("reader: save position: %w", err)
	}
	st.lsn = lsn
	return nil
}

// persistIn versions a batch of local transactions (or one part of a large
// one) and appends them to the outbox, inside tx. st.nextSeq advances past
// each transaction whose last part is in the batch. With lock, the versions
// it replaces are locked as they are read; without, a version changed by an
// applier between the read and the write fails the batch with
// errVersionRace. Either way no version is written from a stale read.
func (r *Reader) persistIn(ctx context.Context, tx pgx.Tx, st *readerState, batch []*pendingTxn, lock bool) error {
	var keys []metaKey
	// inserted: keys whose first change in the batch is an insert. The row
	// was absent, so the only version it can have is a tombstone: without
	// lock, only those are looked up, and any other version recorded for
	// the key fails the COPY of its new one (a retry then reads them all).
	inserted := map[metaKey]bool{}
	for _, t := range batch {
		for _, c := range t.changes {
			k := metaKey{c.rel.name, c.key}
			if _, seen := inserted[k]; !seen {
				inserted[k] = c.op == conflict.OpInsert && !lock
				keys = append(keys, k)
			}
		}
	}
	// Read the versions this batch replaces (in key order, as appliers
	// lock them).
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].tbl != keys[j].tbl {
			return keys[i].tbl < keys[j].tbl
		}
		return keys[i].key < keys[j].key
	})
	var probe, full []metaKey
	for _, k := range keys {
		if inserted[k] {
			probe = append(probe, k)
		} else {
			full = append(full, k)
		}
	}
	metas, err := loadMetaLocked(ctx, tx, full, lock)
	if err != nil {
		return fmt.Errorf("reader: persist: %w", err)
	}
	tombs, err := loadTombstones(ctx, tx, probe)
	if err != nil {
		return fmt.Errorf("reader: persist: %w", err)
	}
	for k, m := range tombs {
		metas[k] = m
	}
	existed := make(map[metaKey]string, len(metas)) // key -> tuple xmin as read
	for k, m := range metas {
		existed[k] = m.tupleXmin
	}

	var (
		seqs     []int64
		parts    []int32
		mores    []bool
		lsns     []string
		commits  []time.Time
		nrows    []int32
		payloads [][]byte
	)
	next := st.nextSeq
	var maxHLC conflict.Timestamp
	for _, t := range batch {
		out := replicator.Txn{
			Origin:     r.cfg.Region,
			Seq:        next,
			LSN:        t.commitLSN.String(),
			CommitUnix: t.commitTime.UnixMicro(),
			Part:       t.part,
			More:       t.more,
		}
		shapeIdx := map[string]int{}
		for _, c := range t.changes {
			k := metaKey{c.rel.name, c.key}
			prior := metas[k]
			if prior == nil {
				prior = &meta{}
			}
			// The write's hybrid timestamp is its commit time, moved past
			// the version it overwrote: causally later writes to a row
			// always carry larger timestamps, whatever the clocks say, and
			// the value does not depend on when the reader got to it.
			hlc := conflict.Next(t.commitTime, prior.version.HLC)
			if hlc > maxHLC {
				maxHLC = hlc
			}
			nm := &meta{
				version: conflict.Version{
					Vector:  prior.version.Vector.Tick(r.cfg.Region),
					HLC:     hlc,
					Origin:  r.cfg.Region,
					Deleted: c.op == conflict.OpDelete,
				},
				xid:    strconv.FormatUint(uint64(t.xid), 10),
				srcSeq: int64(next),
			}
			ch := replicator.Change{Op: c.op, Key: c.key, Row: c.row, Version: nm.version}
			pol := r.tables[c.rel.name].Policy
			// With REPLICA IDENTITY FULL an update carries the row as this
			// write found it: the counters' deltas come from there, exact
			// whatever the recorded version says, and the recorded sums
			// move by the deltas (appliers add peers' increments to the
			// recorded sums of counter-only rows in place, see the
			// applier's foldRows, possibly before this write is versioned).
			oldRow := c.old
			if c.rel.msg == nil || c.rel.msg.ReplicaIdentity != 'f' {
				oldRow = nil
			}
			if len(pol.Counters) > 0 && c.op == conflict.OpDelete {
				// A tombstone keeps the counters' sums: deltas that arrive
				// while the row is deleted still count.
				nm.counters = prior.counters
			}
			if len(pol.Counters) > 0 && c.op != conflict.OpDelete {
				nm.counters = map[string]string{}
				ch.Deltas = map[string]string{}
				for _, col := range pol.Counters {
					i := indexOf(c.rel.shape.Columns, col)
					if i < 0 {
						continue
					}
					v := c.row[i]
					oldV, known := prior.counters[col]
					sum := oldV // the recorded sum the delta moves
					switch {
					case oldRow != nil && i < len(oldRow) && !oldRow[i].Unchanged:
						oldV = oldRow[i].Text // "" for NULL
						if !known {
							sum = oldV
						}
					case !known && c.old != nil && !c.old[i].Null && !c.old[i].Unchanged:
						// A row written before replication started: its
						// old value comes from the WAL (REPLICA IDENTITY FULL).
						oldV = c.old[i].Text
						sum = oldV
					}
					if v.Unchanged {
						nm.counters[col] = sum
						ch.Deltas[col] = "0"
						continue
					}
					newV := ""
					if !v.Null {
						newV = v.Text
					}
					d, err := conflict.CounterDelta(oldV, newV)
					if err != nil {
						return fmt.Errorf("reader: counter %s.%s of key %s: %w", c.rel.name, col, c.key, err)
					}
					nm.counters[col] = newV
					if oldRow != nil {
						if nm.counters[col], err = conflict.MergeCounter(sum, d); err != nil {
							return fmt.Errorf("reader: counter %s.%s of key %s: %w", c.rel.name, col, c.key, err)
						}
					}
					ch.Deltas[col] = d
				}
			}
			if c.op == conflict.OpDelete {
				nm.xid = ""
			}
			metas[k] = nm
			si, ok := shapeIdx[c.rel.name]
			if !ok {
				si = len(out.Shapes)
				shapeIdx[c.rel.name] = si
				out.Shapes = append(out.Shapes, c.rel.shape)
			}
			ch.T = si
			out.Changes = append(out.Changes, ch)
		}
		payload, err := out.Encode()
		if err != nil {
			return fmt.Errorf("reader: encode transaction: %w", err)
		}
		seqs = append(seqs, int64(next))
		parts = append(parts, int32(t.part))
		mores = append(mores, t.more)
		lsns = append(lsns, t.commitLSN.String())
		commits = append(commits, t.commitTime)
		nrows = append(nrows, int32(len(out.Changes)))
		payloads = append(payloads, payload)
		if !t.more {
			next++
		}
	}
	hlcNow := max(maxHLC, st.hlc)

	// Versions that existed are updated only where nobody (an applier)
	// rewrote them since they were read; new ones are inserted only if
	// nobody recorded one meanwhile. Otherwise the batch is versioned again
	// on top of what is there now.
	var upd metaWriter
	var ins [][]any
	for _, k := range keys {
		if xmin, ok := existed[k]; ok {
			upd.add(k, metas[k])
			upd.tupleXmin = append(upd.tupleXmin, xmin)
		} else {
			row, err := copyRow(k, metas[k])
			if err != nil {
				return err
			}
			ins = append(ins, row)
		}
	}
	if len(upd.key) > 0 {
		tag, err := tx.Exec(ctx, updateMetaSQL, append(upd.args(), upd.tupleXmin)...)
		if err != nil {
			return fmt.Errorf("reader: persist row versions: %w", err)
		}
		if tag.RowsAffected() != int64(len(upd.key)) {
			return errVersionRace
		}
	}
	if len(ins) > 0 {
		// COPY: several times cheaper per row than INSERT ... ON CONFLICT.
		// A version recorded meanwhile is a unique violation.
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"polyregion", "row_version"}, metaCopyColumns, pgx.CopyFromRows(ins)); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "23505" {
				return errVersionRace
			}
			return fmt.Errorf("reader: persist row versions: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO polyregion.outbox (seq, part, more, lsn, commit_ts, rows, payload)
		SELECT * FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::int[]), pg_catalog.unnest($3::bool[]),
			pg_catalog.unnest($4::pg_lsn[]), pg_catalog.unnest($5::timestamptz[]), pg_catalog.unnest($6::int[]), pg_catalog.unnest($7::bytea[]))`,
		seqs, parts, mores, lsns, commits, nrows, payloads); err != nil {
		return fmt.Errorf("reader: append outbox: %w", err)
	}
	st.nextSeq, st.hlc = next, hlcNow
	return nil
}

func (r *Reader) saveBarrier(ctx context.Context, conn *pgx.Conn, st *readerState, lsn pglogrepl.LSN) error {
	_, err := conn.Exec(ctx, `INSERT INTO polyregion.reader_state (slot, lsn, next_seq, hlc) VALUES ($1, $2::pg_lsn, $3, $4)
		ON CONFLICT (slot) DO UPDATE SET lsn = excluded.lsn`,
		SlotName(string(r.cfg.Region)), lsn.String(), int64(st.nextSeq), int64(st.hlc))
	if err != nil {
		return fmt.Errorf("reader: save barrier position: %w", err)
	}
	st.lsn = lsn
	return nil
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}

// Connect opens a regular session with the settings every replicator
// session uses: search_path pinned to pg_catalog, ISO dates, exact floats.
func Connect(ctx context.Context, connString string) (*pgx.Conn, error) {
	return connect(ctx, connString, nil)
}

// connectDataPlane is Connect for the sessions that version and apply rows.
// Their statements look rows up by arrays of keys, one to tens of
// thousands, in tables that grow fast: joined by hash (or merge), a lookup
// scans the whole table every time, and the planner picks that whenever the
// statistics are stale (row_version grows faster than it is analyzed) or a
// batch is large. Index probes cost in proportion to the batch, not the
// table, so these sessions use nested loops only.
func connectDataPlane(ctx context.Context, connString string) (*pgx.Conn, error) {
	return connect(ctx, connString, map[string]string{"enable_hashjoin": "off", "enable_mergejoin": "off"})
}

// SetTextForms sets the session parameters that fix values' text forms, so
// that keys, row images (handed to custom resolvers, logged with conflicts)
// and search documents read the same in every region, whatever each
// server's or role's defaults: every session that reads rows or the change
// stream uses them.
func SetTextForms(params map[string]string) {
	params["DateStyle"] = "ISO"
	params["IntervalStyle"] = "postgres"
	params["extra_float_digits"] = "3"
	params["TimeZone"] = "UTC"
}

func connect(ctx context.Context, connString string, params map[string]string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("parse connection string: %w", err)
	}
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	cfg.RuntimeParams["search_path"] = "pg_catalog, pg_temp"
	SetTextForms(cfg.RuntimeParams)
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "polyregion"
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s:%d/%s: %w", cfg.Host, cfg.Port, cfg.Database, err)
	}
	return conn, nil
}

// skippableRowMessage reports whether a pgoutput message is a row change
// (insert, update or delete), which a transaction the reader does not
// version can skip undecoded.
func skippableRowMessage(data []byte) bool {
	if len(data) == 0 {
		return false
	}
	switch pglogrepl.MessageType(data[0]) {
	case pglogrepl.MessageTypeInsert, pglogrepl.MessageTypeUpdate, pglogrepl.MessageTypeDelete:
		return true
	}
	return false
}
