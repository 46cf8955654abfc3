package postgres

// Versioning what the reader decoded: each local transaction's row
// versions, counter sums and outbox entry written in one transaction with
// the reader's position, and the reader's saved state.

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

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
	// One slot per key the batch writes, in the order of first write;
	// each change refers to its key's slot (one map lookup per change,
	// the rest by index: batches of a backlog hold tens of thousands of
	// keys). probe: the key's first change in the batch is an insert. The
	// row was absent, so the only version it can have is a tombstone:
	// without lock, only those are looked up, and any other version
	// recorded for the key fails the COPY of its new one (a retry then
	// reads them all).
	type slot struct {
		k       metaKey
		probe   bool
		cur     *meta  // the version as the batch leaves it so far
		existed bool   // a version was recorded before the batch
		xmin    string // that version's tuple xmin, as read
	}
	n := 0
	for _, t := range batch {
		n += len(t.changes)
	}
	idx := make(map[metaKey]int32, n)
	slots := make([]slot, 0, n)
	slotOf := make([]int32, 0, n) // per change, in batch order
	for _, t := range batch {
		for _, c := range t.changes {
			k := metaKey{c.rel.name, c.key}
			i, seen := idx[k]
			if !seen {
				i = int32(len(slots))
				idx[k] = i
				slots = append(slots, slot{k: k, probe: c.op == conflict.OpInsert && !lock})
			}
			slotOf = append(slotOf, i)
		}
	}
	// Read the versions this batch replaces (in key order, as appliers
	// lock them).
	order := make([]int32, len(slots))
	for i := range order {
		order[i] = int32(i)
	}
	sort.Slice(order, func(i, j int) bool {
		a, b := slots[order[i]].k, slots[order[j]].k
		if a.tbl != b.tbl {
			return a.tbl < b.tbl
		}
		return a.key < b.key
	})
	var probe, full []metaKey
	for _, i := range order {
		if slots[i].probe {
			probe = append(probe, slots[i].k)
		} else {
			full = append(full, slots[i].k)
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
	for _, found := range []map[metaKey]*meta{metas, tombs} {
		for k, m := range found {
			sl := &slots[idx[k]]
			sl.cur, sl.existed, sl.xmin = m, true, m.tupleXmin
		}
	}

	entries := make([]outboxEntry, 0, len(batch))
	next := st.nextSeq
	var maxHLC conflict.Timestamp
	var unmark []int64 // transactions whose delete marks go (see delete_marks.go)
	for _, t := range batch {
		marked := t.part > 0 // an earlier part may have deleted
		out := replicator.Txn{
			Origin:     r.cfg.Region,
			Seq:        next,
			LSN:        t.commitLSN.String(),
			CommitUnix: t.commitTime.UnixMicro(),
			Part:       t.part,
			More:       t.more,
			Known:      r.epochs.known,
		}
		epoch := r.epochs.rank(t.commitLSN)
		shapeIdx := map[string]int{}
		out.Changes = make([]replicator.Change, 0, len(t.changes))
		var polRel *relation
		var pol conflict.Policy
		for _, c := range t.changes {
			sl := &slots[slotOf[0]]
			slotOf = slotOf[1:]
			prior := sl.cur
			unseeded := prior == nil && r.unseededWrite(c.rel.name, t.commitLSN)
			if prior == nil {
				prior = &meta{}
			}
			if c.rel != polRel {
				polRel, pol = c.rel, r.tables[c.rel.name].Policy
			}
			v, err := replicator.VersionLocalWrite(pol, replicator.Recorded{Version: prior.version, Counters: prior.counters}, replicator.LocalWrite{
				Region: r.cfg.Region, Commit: t.commitTime, Op: c.op, Shape: c.rel.shape, Row: c.row,
				Old: c.old, OldFull: c.rel.msg != nil && c.rel.msg.ReplicaIdentity == 'f', Epoch: epoch, Unseeded: unseeded,
			})
			if err != nil {
				return fmt.Errorf("reader: %s key %s: %w", c.rel.name, c.key, err)
			}
			maxHLC = max(maxHLC, v.Version.HLC)
			nm := &meta{version: v.Version, counters: v.Counters, xid: strconv.FormatUint(uint64(t.xid), 10), srcSeq: int64(next)}
			ch := replicator.Change{Op: c.op, Key: c.key, Row: c.row, Version: nm.version, Deltas: v.Deltas}
			if c.op == conflict.OpDelete {
				nm.xid = ""
				marked = true // whatever the table's policy now: it may have marked it before
			}
			sl.cur = nm
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
		entries = append(entries, outboxEntry{seq: int64(next), part: int32(t.part), more: t.more, lsn: t.commitLSN,
			commit: t.commitTime, rows: int32(len(out.Changes)), payload: payload})
		if !t.more {
			next++
			if marked {
				unmark = append(unmark, int64(t.xid))
			}
		}
	}
	hlcNow := max(maxHLC, st.hlc)

	// Versions that existed are updated only where nobody (an applier)
	// rewrote them since they were read; new ones are inserted only if
	// nobody recorded one meanwhile. Otherwise the batch is versioned again
	// on top of what is there now.
	var upd metaWriter
	ins := newVersionCopy(len(slots))
	for _, i := range order {
		sl := &slots[i]
		if sl.existed {
			upd.add(sl.k, sl.cur)
			upd.tupleXmin = append(upd.tupleXmin, sl.xmin)
			continue
		}
		xid, err := parseXid(sl.k, sl.cur.xid)
		if err != nil {
			return fmt.Errorf("reader: %w", err)
		}
		ins.add(sl.k, sl.cur, xid)
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
	// COPY: several times cheaper per row than INSERT ... ON CONFLICT. A
	// version recorded meanwhile is a unique violation.
	if err := ins.write(ctx, tx); err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "23505" {
			return errVersionRace
		}
		return fmt.Errorf("reader: persist row versions: %w", err)
	}
	if err := appendOutbox(ctx, tx, entries); err != nil {
		return err
	}
	// The deletes are versioned with this transaction: folds may take
	// their keys again once it commits. A transaction in parts keeps its
	// marks until its last part.
	if len(unmark) > 0 {
		if _, err := tx.Exec(ctx, unmarkDeletesSQL, unmark); err != nil {
			return fmt.Errorf("reader: remove delete marks: %w", err)
		}
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
