package postgres

// The executor runs one apply transaction's writes: savepoints in careful
// mode, pipelined set-based statements otherwise, versions last.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

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
	// alone reports what a table's writes commute with (see commutes and
	// bulk.add).
	alone  func(table string) commuting
	queued []stmt
	// ops is room for one change's writes, reused change after change
	// (see changeInput.ops).
	ops []op
	n   int
	xid uint32 // this transaction's xid, once asked for
	// floors are the region's tombstone floors, once a change needed them
	// (see settledTombstone).
	floors map[string]int64
	// unlocked lists the keys a version is to be written for whose row
	// was absent when read; waitReader then runs for them before versions
	// are written (see flush). deferred holds, in careful mode, the version
	// writes of the changes already run.
	unlocked   []metaKey
	waitReader func(context.Context, []metaKey) error
	deferred   []stmt
	// execAs returns the function a table's writes run through ("" for
	// none; see ownerexec.go); ranAs lists those this transaction used.
	execAs func(ctx context.Context, tx pgx.Tx, table string) (string, error)
	ranAs  []string
	// final: the next flush is the transaction's last (see deferredCheck).
	final bool
	// copyInserts: long runs of inserts may go by COPY (a batch's first
	// attempt; see apply_copy.go); inert: whether each table written so
	// far may take them.
	copyInserts bool
	inert       map[string]copyTarget
	// open names a savepoint the batch's rows were read under: pipeline
	// releases it with the first statements that write (until then only
	// reads run in it), so that the rows' writes and versions carry the
	// transaction's own id.
	open string
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
		execAs: a.execAs, alone: func(t string) commuting { return a.alone[t] }}
	if a.cfg.Versioner != nil {
		ex.waitReader = func(ctx context.Context, keys []metaKey) error { return a.barrier(ctx, keys, true) }
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
			e.bulk.add(o, e.alone)
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
	if err := e.loadImages(ctx); err != nil {
		return err
	}
	rows := append(e.bulk.rowStatements(), e.queued...)
	folds := e.bulk.foldStatements(e.order)
	metas := append(e.deferred, e.bulk.metaStatements()...)
	newMetas := e.bulk.newMetas()
	unlocked := e.unlocked
	wait := len(unlocked) > 0 && e.waitReader != nil
	e.bulk, e.queued, e.deferred, e.unlocked = bulk{}, nil, nil, nil
	if wait {
		if err := e.pipeline(ctx, rows); err != nil {
			return err
		}
		if err := e.waitReader(ctx, unlocked); err != nil {
			return err
		}
		rows = nil
	}
	last := append(rows, folds...)
	if len(metas) > 0 || len(newMetas) > 0 {
		// Versions (and the logs) are written only by replicator sessions:
		// a wait for one of their locks is a wait for the reader or another
		// source's applier, which never wait for this transaction. Only
		// application rows get the lock timeout (see contention).
		last = append(last, stmt{sql: "SET LOCAL lock_timeout = 0", want: -1})
		last = append(last, metas...)
		e.relaxed = true
	}
	if e.final {
		last = append(last, stmt{deferredCheck: true})
	}
	// The transaction's id, when a new version needs it (see copyMetas),
	// comes in the same round trip.
	var xid int64
	if e.xid == 0 && slices.ContainsFunc(newMetas, func(en *metaEntry) bool { return en.meta.xid == "@" }) {
		last = append(last, stmt{sql: `SELECT pg_catalog.pg_current_xact_id()::xid::text::int8`, counted: true, got: &xid, want: -1})
	}
	if err := e.pipeline(ctx, last); err != nil {
		return err
	}
	if xid != 0 {
		e.xid = uint32(xid)
	}
	return e.copyMetas(ctx, newMetas)
}

// flushRows sends the row writes merged so far (not the versions, nor what
// is queued): see insertEarly.
func (e *executor) flushRows(ctx context.Context) error {
	rows := e.bulk.rowStatements()
	e.bulk.groups = nil
	return e.pipeline(ctx, rows)
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

// releaseOpen releases the savepoint the rows were read under (open), in a
// round trip of its own, before a write that cannot go in pipeline's: the
// writes carry the transaction's own id.
func (e *executor) releaseOpen(ctx context.Context) error {
	if e.open == "" {
		return nil
	}
	if _, err := e.tx.Exec(ctx, "RELEASE SAVEPOINT "+e.open); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	e.open = ""
	return nil
}

// copyMetas inserts new versions with COPY (several times cheaper per row
// than INSERT ... ON CONFLICT). A version the local reader recorded for one
// of these keys meanwhile is a unique violation: retryable, the batch is
// decided again on top of it.
func (e *executor) copyMetas(ctx context.Context, entries []*metaEntry) error {
	if len(entries) == 0 {
		return nil
	}
	if err := e.releaseOpen(ctx); err != nil { // no statement went before: see pipeline
		return err
	}
	vc := newVersionCopy(len(entries))
	for _, en := range entries {
		k, m := en.key, en.meta
		var xid *uint32
		if m.xid == "@" {
			// This transaction's xid: the xmin of the rows it writes (the
			// fast path writes in no subtransaction: see executor.open).
			if e.xid == 0 {
				if err := e.tx.QueryRow(ctx, `SELECT pg_catalog.pg_current_xact_id()::xid`).Scan(&e.xid); err != nil {
					return fmt.Errorf("apply: transaction id: %w", err)
				}
			}
			xid = &e.xid
		} else {
			var err error
			if xid, err = parseXid(k, m.xid); err != nil {
				return fmt.Errorf("apply: %w", err)
			}
		}
		vc.add(k, m, xid)
	}
	if err := vc.write(ctx, e.tx); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "23505" {
			return retryable{fmt.Errorf("apply: a row version was recorded locally while the batch was applied: %w", err)}
		}
		return fmt.Errorf("apply: row versions: %w", err)
	}
	return nil
}

// pipeline runs statements in one round trip and checks each one's row
// count; the savepoint the rows were read under (open) is released first,
// in the same round trip. A run of inserts that goes by COPY (see
// apply_copy.go) splits the round trip in two, around it.
func (e *executor) pipeline(ctx context.Context, stmts []stmt) error {
	if e.copyInserts {
		from := 0
		for i, s := range stmts {
			if s.copy == nil {
				continue
			}
			if err := e.send(ctx, stmts[from:i]); err != nil {
				return err
			}
			done, err := e.copyInsert(ctx, s.copy)
			if err != nil {
				return err
			}
			from = i
			if done {
				from++
			}
		}
		stmts = stmts[from:]
	}
	return e.send(ctx, stmts)
}

// send runs statements in one round trip (see pipeline).
func (e *executor) send(ctx context.Context, stmts []stmt) error {
	if len(stmts) == 0 {
		return nil
	}
	if e.open != "" {
		stmts = append([]stmt{{sql: "RELEASE SAVEPOINT " + e.open, want: -1}}, stmts...)
		e.open = ""
	}
	var b pgx.Batch
	names := make([]string, 0, len(stmts))
	sent := stmts[:0]
	for _, s := range stmts {
		if s.deferredCheck {
			// After every write of the transaction was converted.
			if s = e.deferredStmt(); s.sql == "" {
				continue
			}
		}
		names = append(names, firstLine(s.sql))
		s, err := e.asOwner(ctx, s)
		if err != nil {
			return err
		}
		sent = append(sent, s)
		b.Queue(s.sql, s.args...)
	}
	stmts = sent
	if len(stmts) == 0 {
		return nil
	}
	br := e.tx.SendBatch(ctx, &b)
	var firstErr error
	for i, s := range stmts {
		var n int64
		var err error
		if s.counted {
			err = br.QueryRow().Scan(&n)
			if err == nil && s.got != nil {
				*s.got = n
			}
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
