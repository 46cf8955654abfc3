package postgres

// One run of the reader: the decoded transactions waiting to be versioned,
// the persister that versions them a batch at a time while decoding goes
// on, large transactions versioned part by part, and the position confirmed
// to the slot.

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// readSession is what Run keeps between messages.
type readSession struct {
	r      *Reader
	ctx    context.Context
	conn   *pgx.Conn // catalog lookups, barriers' positions
	stream *ChangeStream
	pconn  *pgx.Conn   // the persister's session
	st     readerState // as last persisted

	rels          map[uint32]*relation
	cur           *pendingTxn // the transaction being decoded
	batch         []*pendingTxn
	batchChanges  int
	confirmed     pglogrepl.LSN // reported to the server as flushed
	flushDeadline time.Time

	// Versioning runs in its own goroutine, one batch at a time, while the
	// loop goes on decoding the next batch: under a backlog batches grow to
	// the limit, when idle each commit is versioned within FlushInterval.
	jobs          chan []*pendingTxn
	results       chan persistResult
	inflight      bool
	inflightBatch []*pendingTxn // the batch the persister is versioning
	pcancel       context.CancelFunc
	persisterDone chan struct{}

	// A transaction larger than PartChanges is versioned part by part in
	// bigTx (on the persister's session, which is idle meanwhile: the
	// stream is sequential and earlier batches are flushed first).
	bigTx pgx.Tx
	bigSt readerState
}

type persistResult struct {
	st  readerState
	err error
}

func (s *readSession) startPersister() {
	s.jobs, s.results, s.persisterDone = make(chan []*pendingTxn), make(chan persistResult, 1), make(chan struct{})
	var pctx context.Context
	pctx, s.pcancel = context.WithCancel(s.ctx)
	go func() {
		defer close(s.persisterDone)
		for b := range s.jobs {
			// s.st is not written while a batch is in flight.
			next := s.st
			err := s.r.persist(pctx, s.pconn, &next, b)
			s.results <- persistResult{next, err}
		}
	}()
}

// close stops the persister and rolls back a large transaction left open.
func (s *readSession) close() {
	close(s.jobs)
	s.pcancel()
	<-s.persisterDone
	if s.bigTx != nil {
		_ = s.bigTx.Rollback(context.Background())
	}
}

func (s *readSession) finish(res persistResult) error {
	s.inflight, s.inflightBatch = false, nil
	if res.err != nil {
		return res.err
	}
	s.st = res.st
	s.confirmed = max(s.confirmed, s.st.lsn)
	s.r.advance(s.st.lsn)
	s.r.noteAppended()
	return nil
}

// await waits for the batch in flight, if any.
func (s *readSession) await() error {
	if !s.inflight {
		return nil
	}
	return s.finish(<-s.results)
}

// start hands the batch to the persister unless one is in flight.
func (s *readSession) start() {
	if s.inflight || len(s.batch) == 0 {
		return
	}
	s.jobs <- s.batch
	s.inflight, s.inflightBatch = true, s.batch
	s.batch, s.batchChanges = nil, 0
}

// flush versions everything decoded so far.
func (s *readSession) flush() error {
	if err := s.await(); err != nil {
		return err
	}
	s.start()
	return s.await()
}

// streamPart versions the current transaction's changes so far as one part
// of it, in bigTx.
func (s *readSession) streamPart(last bool) error {
	if s.bigTx == nil {
		if err := s.flush(); err != nil {
			return err
		}
		tx, err := s.pconn.Begin(s.ctx)
		if err != nil {
			return fmt.Errorf("reader: large transaction: %w", err)
		}
		s.bigTx, s.bigSt = tx, s.st
	}
	cur := s.cur
	part := &pendingTxn{xid: cur.xid, commitLSN: cur.commitLSN, endLSN: cur.endLSN, commitTime: cur.commitTime,
		changes: cur.changes, part: cur.part, more: !last}
	for attempt := 1; ; attempt++ {
		if _, err := s.bigTx.Exec(s.ctx, "SAVEPOINT part"); err != nil {
			return fmt.Errorf("reader: large transaction: %w", err)
		}
		next := s.bigSt
		err := s.r.persistIn(s.ctx, s.bigTx, &next, []*pendingTxn{part}, attempt > 1)
		if err == nil {
			s.bigSt = next
			if _, err := s.bigTx.Exec(s.ctx, "RELEASE SAVEPOINT part"); err != nil {
				return fmt.Errorf("reader: large transaction: %w", err)
			}
			break
		}
		if !retryablePersist(err) || attempt == 10 {
			return err
		}
		if _, err := s.bigTx.Exec(s.ctx, "ROLLBACK TO SAVEPOINT part"); err != nil {
			return fmt.Errorf("reader: large transaction: %w", err)
		}
	}
	cur.part++
	cur.changes = nil
	return nil
}

// streamIfLarge versions the current transaction's changes as a part once
// they reach PartChanges.
func (s *readSession) streamIfLarge() error {
	if s.cur != nil && !s.cur.remote && len(s.cur.changes) >= s.r.cfg.PartChanges {
		return s.streamPart(false)
	}
	return nil
}

// commitLarge versions the last part of a large transaction, records the
// position after it and commits.
func (s *readSession) commitLarge() error {
	if err := s.streamPart(true); err != nil {
		return err
	}
	if err := s.r.saveState(s.ctx, s.bigTx, &s.bigSt, s.cur.endLSN); err != nil {
		return err
	}
	if err := s.bigTx.Commit(s.ctx); err != nil {
		return fmt.Errorf("reader: large transaction commit: %w", err)
	}
	s.bigTx, s.cur = nil, nil
	s.st = s.bigSt
	s.confirmed = max(s.confirmed, s.st.lsn)
	s.r.advance(s.st.lsn)
	s.r.noteAppended()
	return nil
}

func (s *readSession) sendStatus() error { return s.stream.Confirm(s.ctx, s.confirmed) }

// finishStop versions what was decoded, confirms it and ends the run.
func (s *readSession) finishStop() error {
	if err := s.flush(); err != nil {
		return err
	}
	if err := s.sendStatus(); err != nil {
		return err
	}
	s.r.cfg.Logger.Info("reader stopped: decoded transactions versioned and confirmed", "confirmed", s.confirmed.String(), "next_seq", uint64(s.st.nextSeq))
	return nil
}

// tick runs between messages: takes a finished batch's result, starts the
// next batch when it is full or due, and reports the position when due.
func (s *readSession) tick() error {
	if s.inflight {
		select {
		case res := <-s.results:
			if err := s.finish(res); err != nil {
				return err
			}
		default:
		}
	}
	cfg := s.r.cfg
	if len(s.batch) > 0 && (s.batchChanges >= cfg.BatchChanges || len(s.batch) >= cfg.BatchTxns || time.Now().After(s.flushDeadline)) {
		if s.inflight && s.batchChanges >= 4*cfg.BatchChanges {
			if err := s.await(); err != nil {
				return err
			}
		}
		s.start()
	}
	if s.stream.SinceStatus() >= cfg.StatusInterval {
		return s.sendStatus()
	}
	return nil
}

// wait is how long to wait for the next message before tick is due again.
func (s *readSession) wait() time.Duration {
	wait := s.r.cfg.StatusInterval - s.stream.SinceStatus()
	if s.inflight && wait > 2*time.Millisecond {
		wait = 2 * time.Millisecond
	}
	if len(s.batch) > 0 {
		if d := time.Until(s.flushDeadline); d < wait {
			wait = d
		}
	}
	return max(wait, time.Millisecond)
}
