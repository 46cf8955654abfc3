package indexer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/replicator"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// relState is what the stream knows of one relation: the indices it
// feeds (none when the table is not indexed; several when more than one
// index is built from it).
type relState struct {
	name    string
	targets []indexTarget
}

// indexTarget is one index a relation feeds: its columns mapped from the
// relation's, and the engine's name of the index's current generation.
type indexTarget struct {
	tm   *tableMap
	spec IndexSpec
	phys string
}

// pendingCommit is a transaction whose changes are batched but not yet
// acknowledged by the engine.
type pendingCommit struct {
	end  pglogrepl.LSN
	time time.Time
}

type streamer struct {
	f    *Feed
	g    *generation
	conn *pgx.Conn // lookups (unchanged TOASTed values), dead letters, lag
	repl *postgres.ChangeStream
	rels map[uint32]*relState
	// record saves refused rows to the dead-letter table.
	record func(context.Context, []deadLetter) error

	ops     []Op
	opBytes int // documents and ids in ops
	dls     []deadLetter
	commits []pendingCommit
	inTxn   bool
	txnLSN  pglogrepl.LSN // commit position of the transaction being decoded
	txnTime time.Time
	acked   pglogrepl.LSN
	sent    pglogrepl.LSN // last position reported to the server
	due     time.Time     // flush deadline of the oldest batched change
	// until is where a ready generation's catch-up ends (0 for the live
	// generation): it leaves the feed's status alone and looks for no
	// newer generation.
	until pglogrepl.LSN
}

// stream feeds a generation's indices from its slot: the live generation
// (until 0) until ctx ends, step has a newer generation to see to, or an
// error; a ready one (catching up) until its slot has confirmed until.
func (f *Feed) stream(ctx context.Context, g *generation, until pglogrepl.LSN) error {
	conn, err := postgres.Connect(ctx, f.cfg.Database)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var acked pglogrepl.LSN
	if err := conn.QueryRow(ctx, `SELECT confirmed_flush_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, g.Slot).Scan(&acked); err != nil {
		return fmt.Errorf("index feed: slot %s: %w", g.Slot, err)
	}
	if until != 0 && acked >= until {
		return nil
	}
	// The search index follows every write, applied ones included: no
	// origin filter.
	repl, err := postgres.StartChangeStream(ctx, f.cfg.Database, "polyregion-index", "index feed", g.Slot, 0,
		PublicationName(f.cfg.Region), false, false)
	if err != nil {
		return err
	}
	defer repl.Close()
	s := &streamer{f: f, g: g, conn: conn, repl: repl, rels: map[uint32]*relState{}, acked: acked, sent: acked, until: until,
		record: func(ctx context.Context, dls []deadLetter) error { return saveDeadLetters(ctx, conn, dls) }}
	if until != 0 {
		if err := s.run(ctx); err != nil {
			return err
		}
		// The slot is free for the switch once its session is gone.
		repl.Close()
		return waitSlotReleased(ctx, conn, g.Slot)
	}
	f.mu.Lock()
	f.status.Generation, f.status.AckedLSN = g.Gen, s.acked.String()
	f.mu.Unlock()
	f.setError(nil, false)
	f.cfg.Logger.Info("index feed streaming", "generation", g.Gen, "slot", g.Slot, "from", s.acked.String())
	return s.run(ctx)
}

func (s *streamer) run(ctx context.Context) error {
	cfg := &s.f.cfg
	nextPoll := time.Now()
	nextStatus := time.Now().Add(10 * time.Second)
	for {
		now := time.Now()
		if s.until != 0 && s.acked >= s.until {
			return s.sendStatus(ctx)
		}
		if !now.Before(nextPoll) && s.until == 0 {
			ready, err := s.poll(ctx)
			if err != nil {
				return err
			}
			if ready {
				// A rebuilt generation is ready: hand over what is batched,
				// then let step see to it.
				return s.flush(ctx)
			}
		}
		if !now.Before(nextPoll) {
			nextPoll = now.Add(cfg.PollInterval)
		}
		if err := s.flushIfDue(ctx, now); err != nil {
			return err
		}
		if !now.Before(nextStatus) || s.acked > s.sent {
			if err := s.sendStatus(ctx); err != nil {
				return err
			}
			nextStatus = time.Now().Add(10 * time.Second)
		}
		wait := time.Until(nextPoll)
		if s.pending() {
			wait = min(wait, time.Until(s.due))
		}
		wait = max(wait, time.Millisecond)
		ev, ok, err := s.repl.Receive(ctx, wait)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		switch {
		case !ok:
		case ev.Keepalive:
			if !s.inTxn && !s.pending() && len(s.commits) == 0 && ev.WALEnd > s.acked {
				// Nothing pending: everything up to the server's end is
				// in the engine.
				s.acked = ev.WALEnd
			}
			if ev.ReplyRequested {
				nextStatus = time.Now()
			}
		default:
			if err := s.handle(ctx, ev.Data); err != nil {
				return err
			}
		}
	}
}

// poll refreshes the lag and reports whether step has a newer generation
// to see to: one ready and caught up (to switch to), or one building or
// ready that nothing builds or catches up (an attempt failed: step tries
// again). While another process holds the build lock (`index rebuild`
// builds), the live stream runs on: step would only find it held again.
func (s *streamer) poll(ctx context.Context) (bool, error) {
	var behind int64
	var pending bool
	err := s.conn.QueryRow(ctx, `SELECT coalesce((SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
			FROM pg_catalog.pg_replication_slots WHERE slot_name = $1), 0),
		EXISTS (SELECT 1 FROM polyregion.index_generation WHERE state IN ('building', 'ready') AND gen > $2)
		AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND granted
			AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
			AND classid = $3::oid AND objid = $4::oid AND objsubid = 1)`,
		s.g.Slot, s.g.Gen, uint32(buildLockKey>>32), uint32(buildLockKey&0xffffffff)).Scan(&behind, &pending)
	if err != nil {
		return false, fmt.Errorf("index feed: lag: %w", err)
	}
	// Handed back once this feed's build or catch-up has ended (caught
	// up, or to be started or retried): its last round may still be going
	// when the slot passes the target it started with.
	ready := pending && !s.f.building.Load()
	f := s.f
	// An idle feed asks the engine too, so an engine that went away shows
	// (as an unknown lag) before a change needs it.
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, perr := f.be.Describe(pctx)
	cancel()
	if perr != nil && ctx.Err() == nil {
		f.setError(fmt.Errorf("search engine unreachable: %w", perr), true)
	} else if perr == nil {
		f.mu.Lock()
		if f.status.EngineDown {
			f.status.EngineDown, f.status.LastError = false, ""
		}
		f.mu.Unlock()
	}
	f.mu.Lock()
	f.status.BytesBehind = max(behind, 0)
	f.status.AckedLSN = s.acked.String()
	f.status.Updated = time.Now()
	f.mu.Unlock()
	return ready, nil
}

func (s *streamer) sendStatus(ctx context.Context) error {
	if err := s.repl.Confirm(ctx, s.acked); err != nil {
		return err
	}
	s.sent = s.acked
	return nil
}

func (s *streamer) handle(ctx context.Context, data []byte) error {
	msg, err := pglogrepl.Parse(data)
	if err != nil {
		return fmt.Errorf("index feed: decode: %w", err)
	}
	switch m := msg.(type) {
	case *pglogrepl.BeginMessage:
		s.inTxn, s.txnLSN, s.txnTime = true, m.FinalLSN, m.CommitTime
		if s.until != 0 {
			return nil
		}
		s.f.mu.Lock()
		if s.f.oldest.IsZero() {
			s.f.oldest = m.CommitTime
		}
		s.f.mu.Unlock()
	case *pglogrepl.CommitMessage:
		s.inTxn = false
		s.commits = append(s.commits, pendingCommit{end: m.TransactionEndLSN, time: m.CommitTime})
		if !s.pending() {
			return s.ackCommits()
		}
		if len(s.ops) >= s.f.cfg.BatchDocs {
			return s.flush(ctx)
		}
	case *pglogrepl.RelationMessage:
		return s.relation(ctx, m)
	case *pglogrepl.InsertMessage:
		return s.row(ctx, m.RelationID, m.Tuple, nil, false)
	case *pglogrepl.UpdateMessage:
		return s.row(ctx, m.RelationID, m.NewTuple, m.OldTuple, false)
	case *pglogrepl.DeleteMessage:
		return s.row(ctx, m.RelationID, nil, m.OldTuple, true)
	case *pglogrepl.TruncateMessage:
		if err := s.flush(ctx); err != nil {
			return err
		}
		for _, id := range m.RelationIDs {
			rs := s.rels[id]
			if rs == nil {
				continue
			}
			for _, t := range rs.targets {
				if err := s.truncate(ctx, rs.name, t); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (s *streamer) relation(ctx context.Context, m *pglogrepl.RelationMessage) error {
	name := m.Namespace + "." + m.RelationName
	rs := &relState{name: name}
	var shape replicator.Shape
	for _, spec := range s.f.cfg.Indices {
		if spec.Table != name {
			continue
		}
		if len(rs.targets) == 0 {
			var err error
			if shape, err = postgres.StreamShape(ctx, s.conn, m); err != nil {
				return fmt.Errorf("index feed: %w", err)
			}
		}
		tm, err := newTableMap(spec, shape)
		if err != nil {
			return fmt.Errorf("index feed: %w", err)
		}
		rs.targets = append(rs.targets, indexTarget{tm: tm, spec: spec, phys: s.g.Indices[spec.Index]})
	}
	s.rels[m.RelationID] = rs
	return nil
}

// row feeds one change of a relation to every index built from it.
func (s *streamer) row(ctx context.Context, relID uint32, newT, oldT *pglogrepl.TupleData, del bool) error {
	rs := s.rels[relID]
	if rs == nil {
		return fmt.Errorf("index feed: change for unknown relation %d", relID)
	}
	for _, t := range rs.targets {
		if err := s.rowInto(ctx, rs.name, t, newT, oldT, del); err != nil {
			return err
		}
	}
	return nil
}

// rowInto writes one change to one index: a delete of the old key's
// document when the key changed or the row went, and the new document.
func (s *streamer) rowInto(ctx context.Context, table string, t indexTarget, newT, oldT *pglogrepl.TupleData, del bool) error {
	tm := t.tm
	version := int64(s.txnLSN)
	var row []replicator.Value
	var key string
	if !del {
		row = tm.values(newT, false)
		var err error
		if key, err = tm.shape.KeyOf(row); err != nil {
			return fmt.Errorf("index feed: %w", err)
		}
	}
	if oldT != nil {
		oldKey, err := tm.shape.KeyOf(tm.values(oldT, false))
		if err != nil {
			return fmt.Errorf("index feed: %w", err)
		}
		if del || key != oldKey {
			id, err := idFromKey(oldKey)
			if err != nil {
				return err
			}
			if err := s.add(ctx, Op{Index: t.phys, ID: id, Version: version, Delete: true, Table: table, Key: oldKey}); err != nil {
				return err
			}
		}
	}
	if del {
		return nil
	}
	id, err := tm.id(row)
	if err != nil {
		return err
	}
	limit := s.f.cfg.MaxDocumentBytes
	lens := tupleLens(len(tm.shape.Columns), newT)
	if why := tm.oversize(limit, lens); why != "" {
		return s.refuse(ctx, table, t.phys, key, id, why)
	}
	tm.convert(row, newT, false, true) // the key columns are in already
	if miss := tm.unchanged(row); len(miss) > 0 {
		found, err := s.fill(ctx, tm, row, lens, miss)
		if err != nil {
			return err
		}
		if !found {
			// The row is gone already: its delete follows in the stream.
			return nil
		}
		if why := tm.oversize(limit, lens); why != "" {
			return s.refuse(ctx, table, t.phys, key, id, why)
		}
	}
	doc, err := tm.doc(row)
	if err != nil {
		// A value the document cannot hold (a timestamp before the
		// common era or past year 9999).
		return s.refuse(ctx, table, t.phys, key, id, err.Error())
	}
	if why := docOversize(doc, limit); why != "" {
		return s.refuse(ctx, table, t.phys, key, id, why)
	}
	return s.add(ctx, Op{Index: t.phys, ID: id, Version: version, Doc: doc, Table: table, Key: key})
}

// refuse records a row whose document is over the size limit or cannot be
// rendered, and removes the row's older document from the index: a search
// must not go on finding content the row no longer has.
func (s *streamer) refuse(ctx context.Context, table, phys, key, id, why string) error {
	if err := s.add(ctx, Op{Index: phys, ID: id, Version: int64(s.txnLSN), Delete: true, Table: table, Key: key}); err != nil {
		return err
	}
	return s.deadLetter(ctx, deadLetter{index: phys, table: table, key: key, id: id, version: s.txnLSN, reason: why})
}

// fill reads the values the stream did not carry (unchanged TOASTed
// columns) from the table, and their lengths into lens. A value longer
// than any document could hold is not read (the row is refused on its
// length). The row may be newer than this change; the changes after it
// follow in the stream and replace the document in turn.
func (s *streamer) fill(ctx context.Context, tm *tableMap, row []replicator.Value, lens []int, miss []int) (bool, error) {
	readable := int64(renderFactor) * int64(s.f.cfg.MaxDocumentBytes)
	sel := make([]string, 0, 2*len(miss))
	for _, c := range miss {
		v := quoteIdent(tm.shape.Columns[c]) + "::text"
		sel = append(sel, fmt.Sprintf("CASE WHEN octet_length(%s) <= %d THEN %s END", v, readable, v), fmt.Sprintf("coalesce(octet_length(%s), 0)", v))
	}
	where := make([]string, len(tm.shape.Key))
	args := make([]any, len(tm.shape.Key))
	for i, k := range tm.shape.Key {
		where[i] = fmt.Sprintf("%s = $%d::%s", quoteIdent(tm.shape.Columns[k]), i+1, tm.shape.Types[k])
		args[i] = row[k].Text
	}
	vals := make([]*string, len(miss))
	sizes := make([]int64, len(miss))
	dest := make([]any, 0, 2*len(miss))
	for i := range vals {
		dest = append(dest, &vals[i], &sizes[i])
	}
	err := s.conn.QueryRow(ctx, "SELECT "+strings.Join(sel, ", ")+" FROM "+qualified(tm.shape.Table)+" WHERE "+strings.Join(where, " AND "), args...).Scan(dest...)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("index feed: read unchanged values of %s: %w", tm.shape.Table, err)
	}
	for i, c := range miss {
		lens[c] = int(sizes[i])
		if vals[i] == nil {
			// NULL, or too long to be read (oversize refuses the row).
			row[c] = replicator.Value{Null: true}
		} else {
			row[c] = replicator.Value{Text: *vals[i]}
		}
	}
	return true, nil
}

// pending reports whether operations or dead letters wait for a flush.
// Either holds back the acknowledgement of their transaction.
func (s *streamer) pending() bool { return len(s.ops) > 0 || len(s.dls) > 0 }

// startDue starts the flush deadline when the first operation or dead
// letter is batched.
func (s *streamer) startDue() {
	if !s.pending() {
		s.due = time.Now().Add(s.f.cfg.FlushInterval)
	}
}

// add batches an operation, writing the batch once it is full.
func (s *streamer) add(ctx context.Context, op Op) error {
	s.startDue()
	s.ops = append(s.ops, op)
	s.opBytes += len(op.Doc) + len(op.ID) + len(op.Key)
	return s.flushIfFull(ctx)
}

// deadLetter records a refused row with the batch it belongs to.
func (s *streamer) deadLetter(ctx context.Context, d deadLetter) error {
	s.startDue()
	s.dls = append(s.dls, d)
	return s.flushIfFull(ctx)
}

// flushIfDue writes the batch once its oldest change has waited
// FlushInterval. Dead letters alone count: a refused row is the last
// change of a quiet table as often as any other, and its transaction is
// acknowledged only once its dead letter is recorded.
func (s *streamer) flushIfDue(ctx context.Context, now time.Time) error {
	if s.pending() && !now.Before(s.due) {
		return s.flush(ctx)
	}
	return nil
}

// flushIfFull writes the batch once it holds BatchDocs operations or dead
// letters, or BatchBytes of documents, also within a transaction: what the
// feed holds is bounded whatever the transaction's size. Writing part of a
// transaction is safe: its documents carry its commit position, and it is
// acknowledged only once all of it is written.
func (s *streamer) flushIfFull(ctx context.Context) error {
	cfg := &s.f.cfg
	if len(s.ops) >= cfg.BatchDocs || len(s.dls) >= cfg.BatchDocs || s.opBytes >= cfg.BatchBytes {
		return s.flush(ctx)
	}
	return nil
}

// flush writes the batched changes (the last write of each document),
// records refusals, and acknowledges every transaction whose changes were
// all in the batch.
func (s *streamer) flush(ctx context.Context) error {
	if len(s.ops) > 0 {
		ops := dedupe(s.ops)
		// A catch-up's writes (into indices nothing searches yet) leave
		// the feed's health to the live stream.
		var onDown func(error)
		if s.until == 0 {
			onDown = func(err error) { s.f.setError(err, true) }
		}
		rej, err := bulkRetry(ctx, s.f.cfg, s.f.be, ops, onDown)
		if err != nil {
			return err
		}
		if s.until == 0 {
			s.f.setError(nil, false)
		}
		for _, r := range rej {
			op := ops[r.Op]
			s.dls = append(s.dls, deadLetter{index: op.Index, table: op.Table, key: op.Key, id: op.ID, version: pglogrepl.LSN(op.Version), status: r.Status, reason: r.Reason, doc: op.Doc})
		}
		s.f.docs.Add(int64(len(ops) - len(rej)))
		clear(s.ops) // let the documents go
		s.ops, s.opBytes = s.ops[:0], 0
	}
	if len(s.dls) > 0 {
		if err := s.record(ctx, s.dls); err != nil {
			return err
		}
		for _, d := range s.dls {
			s.f.cfg.Logger.Warn("document refused: recorded in polyregion.index_dead_letter", "index", d.index, "table", d.table, "key", d.key, "status", d.status, "reason", d.reason)
		}
		s.f.dead.Add(int64(len(s.dls)))
		clear(s.dls)
		s.dls = s.dls[:0]
	}
	return s.ackCommits()
}

// ackCommits acknowledges the completed transactions (nothing of theirs is
// batched any more).
func (s *streamer) ackCommits() error {
	if len(s.commits) > 0 {
		s.acked = max(s.acked, s.commits[len(s.commits)-1].end)
		s.commits = s.commits[:0]
	}
	if s.until != 0 {
		return nil
	}
	s.f.mu.Lock()
	if s.inTxn {
		s.f.oldest = s.txnTime
	} else {
		s.f.oldest = time.Time{}
	}
	s.f.status.AckedLSN = s.acked.String()
	s.f.mu.Unlock()
	return nil
}

// dedupe keeps the last operation on each document, in batch order.
func dedupe(ops []Op) []Op {
	last := make(map[string]int, len(ops))
	for i, op := range ops {
		last[op.Index+"\x00"+op.ID] = i
	}
	if len(last) == len(ops) {
		return append([]Op(nil), ops...)
	}
	out := make([]Op, 0, len(last))
	for i, op := range ops {
		if last[op.Index+"\x00"+op.ID] == i {
			out = append(out, op)
		}
	}
	return out
}
