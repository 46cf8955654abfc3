package postgres

// The reader's messages: keepalives, pgoutput messages, and what each one
// does to the transaction being decoded and the batch.

import (
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/polyregion/polyregion/conflict"
)

// receive handles one message of the change stream.
func (s *readSession) receive(ev StreamEvent) error {
	if ev.Keepalive {
		// Every commit before the server's send position has reached us.
		s.passedIdle(ev.WALEnd)
		if ev.ReplyRequested {
			return s.sendStatus()
		}
		return nil
	}
	if s.cur != nil && s.cur.remote && skippableRowMessage(ev.Data) {
		// A row of an applied transaction (or of one versioned before a
		// restart): nothing to version or ship, so it is not decoded. Up
		// to PostgreSQL 15 most of what a receiving region's stream
		// carries is such rows (see reader_origin.go).
		return nil
	}
	msg, err := pglogrepl.Parse(ev.Data)
	if err != nil {
		return fmt.Errorf("reader: decode pgoutput message at %s: %w", ev.WALStart, err)
	}
	return s.decoded(msg)
}

// decoded handles one pgoutput message.
func (s *readSession) decoded(msg pglogrepl.Message) error {
	switch msg := msg.(type) {
	case *pglogrepl.RelationMessage:
		if _, ok := s.r.tables[msg.Namespace+"."+msg.RelationName]; ok {
			// Its key and column types are read from the catalog.
			if err := s.catalogSeesCurrent(); err != nil {
				return err
			}
		}
		rel, err := s.r.relation(s.ctx, s.conn, msg)
		if err != nil {
			return err
		}
		s.rels[msg.RelationID] = rel
	case *pglogrepl.TypeMessage:
		// Values travel in text form; type messages need no action.
	case *pglogrepl.BeginMessage:
		// A transaction committed before the recorded position was
		// versioned before a restart: decode, don't ship.
		s.cur = &pendingTxn{xid: msg.Xid, commitLSN: msg.FinalLSN, commitTime: msg.CommitTime, remote: msg.FinalLSN < s.st.lsn}
	case *pglogrepl.OriginMessage:
		if s.cur != nil {
			s.cur.remote = true
		}
	case *pglogrepl.InsertMessage:
		if err := s.r.addChange(s.cur, s.rels, msg.RelationID, conflict.OpInsert, msg.Tuple, nil); err != nil {
			return err
		}
		return s.streamIfLarge()
	case *pglogrepl.UpdateMessage:
		if msg.OldTupleType == pglogrepl.UpdateMessageTupleTypeOld {
			fillUnchanged(msg.NewTuple, msg.OldTuple)
		}
		if err := s.r.addChange(s.cur, s.rels, msg.RelationID, conflict.OpUpdate, msg.NewTuple, msg.OldTuple); err != nil {
			return err
		}
		return s.streamIfLarge()
	case *pglogrepl.DeleteMessage:
		if err := s.r.addChange(s.cur, s.rels, msg.RelationID, conflict.OpDelete, nil, msg.OldTuple); err != nil {
			return err
		}
		return s.streamIfLarge()
	case *pglogrepl.TruncateMessage:
		s.truncated(msg)
	case *pglogrepl.LogicalDecodingMessage:
		return s.message(msg)
	case *pglogrepl.CommitMessage:
		return s.commit(msg)
	}
	return nil
}

// truncated logs a TRUNCATE of replicated tables whose capture trigger did
// not fire (their rows would stay in the other regions).
func (s *readSession) truncated(msg *pglogrepl.TruncateMessage) {
	if s.cur == nil || s.cur.remote {
		return
	}
	var missed []string
	for _, id := range msg.RelationIDs {
		rel := s.rels[id]
		if rel == nil {
			continue
		}
		if _, ok := s.r.tables[rel.name]; ok && !s.cur.truncated[rel.name] {
			missed = append(missed, rel.name)
		}
	}
	if len(missed) > 0 {
		s.r.cfg.Logger.Error("TRUNCATE without its capture trigger (disabled, dropped, or session_replication_role = replica): other regions keep these tables' rows; restart the replicator to put the trigger back", "tables", missed, "xid", s.cur.xid, "trigger", TruncateTrigger)
	}
}

// message handles a logical decoding message: the keys a TRUNCATE removed
// or the rows of a table added (inside its transaction), or an applier's
// barrier.
func (s *readSession) message(msg *pglogrepl.LogicalDecodingMessage) error {
	switch {
	case msg.Prefix == TruncatePrefix && msg.Transactional:
		if err := s.catalogSeesCurrent(); err != nil {
			return err
		}
		if err := s.r.addTruncated(s.ctx, s.conn, s.cur, s.rels, msg.Content); err != nil {
			return err
		}
		return s.streamIfLarge()
	case msg.Prefix == SeedPrefix && msg.Transactional:
		if err := s.catalogSeesCurrent(); err != nil {
			return err
		}
		if err := s.r.addSeeded(s.ctx, s.conn, s.cur, s.rels, msg.Content); err != nil {
			return err
		}
		return s.streamIfLarge()
	case msg.Prefix == KeyBarrierPrefix && !msg.Transactional:
		kb, err := decodeKeyBarrier(msg.Content)
		if err != nil {
			return fmt.Errorf("reader: barrier at %s: %w", msg.LSN, err)
		}
		if s.holdsUnversioned(kb.keys) {
			return s.versionThrough(msg.LSN, false)
		}
		// Every local write to its keys before it is versioned: what is
		// held waits for FlushInterval, as it would without the barrier.
		s.passedIdle(msg.LSN)
		s.r.passBarrier(kb.token, msg.LSN)
	case (msg.Prefix == BarrierPrefix || msg.Prefix == RecordedBarrierPrefix) && !msg.Transactional:
		return s.versionThrough(msg.LSN, msg.Prefix == RecordedBarrierPrefix)
	}
	return nil
}

// passedIdle notes that every commit before lsn has been decoded: with
// nothing held unversioned, every local one is versioned and the slot may
// move on.
func (s *readSession) passedIdle(lsn pglogrepl.LSN) {
	if s.cur == nil && len(s.batch) == 0 && !s.inflight && lsn > s.confirmed {
		s.confirmed = lsn
		s.r.advance(lsn)
	}
}

// versionThrough passes a barrier at lsn by versioning every local commit
// before it (everything decoded so far). Only a waiter in another session
// needs the position written (record): the appliers' barriers, about one
// per applied batch at a light rate, are waited for in this process.
// Unwritten, reader_state.lsn stays at the last local transaction
// versioned, which is what a restart and the checks of a lost slot or a
// re-seed need; the slot, confirmed past the barrier, does not send again
// what lies between.
func (s *readSession) versionThrough(lsn pglogrepl.LSN, record bool) error {
	if err := s.flush(); err != nil {
		return err
	}
	if record && lsn > s.st.lsn {
		if err := s.r.saveBarrier(s.ctx, s.conn, &s.st, lsn); err != nil {
			return err
		}
	}
	if lsn > s.confirmed && s.cur == nil {
		s.confirmed = lsn
	}
	s.r.advance(lsn)
	return nil
}

// commit ends the transaction being decoded: a large one is committed with
// its last part; a local one joins the batch; one with nothing to ship
// (applied from a peer, or no replicated change) only moves the position.
func (s *readSession) commit(msg *pglogrepl.CommitMessage) error {
	if s.cur == nil {
		return fmt.Errorf("reader: commit at %s without begin", msg.CommitLSN)
	}
	s.cur.endLSN = msg.TransactionEndLSN
	if s.bigTx != nil {
		return s.commitLarge()
	}
	done := s.cur
	s.cur = nil
	if done.endLSN <= s.st.lsn {
		return nil // versioned before a restart
	}
	if done.remote || len(done.changes) == 0 {
		if len(s.batch) == 0 && !s.inflight {
			s.confirmed = done.endLSN
			s.r.advance(done.endLSN)
		}
		return nil
	}
	if len(s.batch) == 0 {
		s.flushDeadline = time.Now().Add(s.r.cfg.FlushInterval)
	}
	s.batch = append(s.batch, done)
	s.batchChanges += len(done.changes)
	return nil
}
