package postgres

// Reading the rows a batch touches with their versions, in the
// applications' lock order, and the barrier that waits for the local
// reader to version what it has seen.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/replicator"
)

// readRows loads, for every touched key, the local row (locked) and its
// recorded version. A row written locally whose version the reader has not
// recorded yet is waited for: the applier emits a barrier and waits until
// the reader has versioned every local commit before it.
//
// Such a wait must not hold the rows: while it lasts, every local writer
// of them would wait too (on hot rows, most of the time). So when release
// is set the rows are read under a savepoint; finding stale rows, the
// applier rolls back to it (giving the rows' locks back), waits for the
// reader holding nothing it read, and reads again, up to releaseAttempts
// times; only rows written locally again in that short time are then
// waited for while locked.
//
// It reports whether the savepoint is still open: when no row was stale,
// it is released with the batch's first write (executor.open) instead of
// in a round trip of its own while the rows are held.
//
// Keys in probe (see applyChanges) are assumed absent here: only a tombstone
// is looked up for them, and those that have one are read like the others
// (a tombstone can hide an insert not yet versioned, and the decision
// against it may write nothing that would check the assumption).
func (a *Applier) readRows(ctx context.Context, tx pgx.Tx, shapes map[string]replicator.Shape, byTable map[string][]string, states map[metaKey]*rowState, probe map[metaKey]bool, release bool) (open bool, err error) {
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
		return false, fmt.Errorf("apply: %w", err)
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
	release = release && len(read) > 0 && a.cfg.Versioner != nil
	if release {
		if _, err := tx.Exec(ctx, "SAVEPOINT read_rows"); err != nil {
			return false, fmt.Errorf("apply: %w", err)
		}
	}
	stale, err := a.readStates(ctx, tx, shapes, read, keys, tombs, states)
	settled := map[metaKey]string{}
	for attempt := 1; err == nil && release && len(stale) > 0 && attempt <= releaseAttempts; attempt++ {
		if _, err = tx.Exec(ctx, "ROLLBACK TO SAVEPOINT read_rows"); err != nil {
			return false, fmt.Errorf("apply: %w", err)
		}
		before := xminsRead(stale, states)
		if err = a.barrier(ctx, stale, false); err == nil {
			if stale, err = a.readStates(ctx, tx, shapes, read, keys, tombs, states); err == nil {
				stale = unchangedSince(before, settled, stale, states)
			}
		}
	}
	if err != nil {
		return false, err
	}
	if release {
		if len(stale) == 0 {
			// The savepoint is released with the batch's first write (see
			// executor.open), saving a round trip while rows are held.
			return true, nil
		}
		// Back in the transaction itself: its writes must carry its own
		// transaction id (see executor.copyMetas).
		if _, err := tx.Exec(ctx, "RELEASE SAVEPOINT read_rows"); err != nil {
			return false, fmt.Errorf("apply: %w", err)
		}
	}
	for attempt := 1; len(stale) > 0; attempt++ {
		if attempt > 5 {
			return false, retryable{fmt.Errorf("apply: %d rows keep changing locally while their versions are read", len(stale))}
		}
		// Rows that exist are locked now: no local write to them can commit
		// until this transaction ends.
		lockedBefore := map[metaKey]bool{}
		for _, k := range stale {
			lockedBefore[k] = states[k].exists
		}
		if err := a.barrier(ctx, stale, true); err != nil {
			return false, err
		}
		// Read the stale keys again: a row absent before may have been
		// inserted meanwhile (and is locked now).
		again := map[string][]string{}
		for _, k := range stale {
			again[k.tbl] = append(again[k.tbl], k.key)
		}
		metas, err := a.readRowsAndVersions(ctx, tx, shapes, again, stale, states)
		if err != nil {
			return false, err
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
				// versioned by now.
				takeAsVersioned(s)
				continue
			}
			still = append(still, k)
		}
		stale = still
	}
	return false, nil
}

// xminsRead returns the xmin read of every stale key whose row
// exists.
func xminsRead(stale []metaKey, states map[metaKey]*rowState) map[metaKey]string {
	xmins := make(map[metaKey]string, len(stale))
	for _, k := range stale {
		if s := states[k]; s.exists {
			xmins[k] = s.xmin
		}
	}
	return xmins
}

// unchangedSince returns the keys of stale that are still stale for a
// reason a barrier can end, and settles the others. A row read before a
// key barrier and read again after it with the same xmin is the same row
// version, and its writer committed before the barrier (the applier saw
// it committed before it emitted the barrier); the barrier passed, so the
// reader has versioned every such write of the key. A row still
// unversioned then is one the reader never versions (written before
// replication started here, in a subtransaction, or frozen): waiting
// again, with or without its lock, would change nothing. The typical case
// is a region's rows from before it replicated: without this every batch
// touching one of them waited for the reader releaseAttempts times and
// then once more holding its rows.
//
// settled keeps, across the attempts of one read, the xmin each key was
// settled at: a later attempt reads every row again, and a settled row
// still at that xmin stays settled.
func unchangedSince(before, settled map[metaKey]string, stale []metaKey, states map[metaKey]*rowState) []metaKey {
	for k, xmin := range before {
		if s := states[k]; s.exists && s.xmin == xmin {
			settled[k] = xmin
		}
	}
	still := stale[:0]
	for _, k := range stale {
		s := states[k]
		if xmin, ok := settled[k]; ok && s.exists && s.xmin == xmin {
			takeAsVersioned(s)
			continue
		}
		still = append(still, k)
	}
	return still
}

// takeAsVersioned settles a row every write of which the reader has
// versioned (see unchangedSince): it was written before replication
// started here (or in a subtransaction, or frozen), so its version is what
// is recorded, or empty.
func takeAsVersioned(s *rowState) {
	if s.meta == nil {
		s.meta = &meta{xid: s.xmin}
	} else {
		s.meta.xid = s.xmin
	}
}

// releaseAttempts bounds how often readRows gives its rows back to wait
// for the reader (each attempt takes a subtransaction id).
const releaseAttempts = 3

// readStates reads (and locks) the rows of read and the versions of keys
// (tombs: those already loaded) into states, and returns the keys whose
// row was written locally after its version was recorded. Rows and
// versions are read in one round trip.
func (a *Applier) readStates(ctx context.Context, tx pgx.Tx, shapes map[string]replicator.Shape, read map[string][]string, keys []metaKey, tombs map[metaKey]*meta, states map[metaKey]*rowState) ([]metaKey, error) {
	metas, err := a.readRowsAndVersions(ctx, tx, shapes, read, keys, states)
	if err != nil {
		return nil, err
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
	return stale, nil
}

// barrier waits until the local reader has versioned every local write to
// keys committed before it (see reader_key_barrier.go).
func (a *Applier) barrier(ctx context.Context, keys []metaKey, holdingRows bool) error {
	if a.cfg.Versioner == nil {
		return fmt.Errorf("apply: %d rows have local writes without recorded versions and no reader runs here", len(keys))
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
	token, forget := a.cfg.Versioner.ExpectBarrier()
	defer forget()
	l, err := emitKeyBarrier(ctx, a.side, token, keys)
	if err != nil {
		a.side.Close(context.Background())
		a.side = nil
		return retryable{fmt.Errorf("apply: %w", err)}
	}
	wctx, cancel := context.WithTimeout(ctx, a.cfg.BarrierTimeout)
	wctx, stopped := untilClosed(wctx, a.cfg.ReaderWaitsEnd)
	started := time.Now()
	err = a.cfg.Versioner.WaitBarrier(wctx, l, token)
	gaveUp := stopped()
	cancel()
	if a.cfg.OnReaderWait != nil {
		a.cfg.OnReaderWait(time.Since(started), holdingRows)
	}
	switch {
	case err != nil && gaveUp:
		return fmt.Errorf("apply: %w", ErrApplyStopped)
	case err != nil:
		return retryable{fmt.Errorf("apply: %w", err)}
	}
	return nil
}

// untilClosed returns ctx, ended as well once end closes, and a function
// that releases it and reports whether end ended it.
func untilClosed(ctx context.Context, end <-chan struct{}) (context.Context, func() bool) {
	if end == nil {
		return ctx, func() bool { return false }
	}
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		select {
		case <-end:
			cancel(ErrApplyStopped)
		case <-done:
		}
	}()
	return ctx, func() bool {
		close(done)
		cancel(nil)
		return errors.Is(context.Cause(ctx), ErrApplyStopped)
	}
}

// unversioned reports whether a row was written locally after its version
// was recorded.
func unversioned(s *rowState) bool {
	if s.exists {
		return s.meta == nil || s.meta.xid != s.xmin
	}
	return s.meta != nil && !s.meta.version.Deleted
}

// readRowsAndVersions reads (and locks) the rows of byTable into states
// and returns the recorded versions of keys, in one round trip: rows table
// by table in the order the applications write them
// (replicator.TableOrder), each table's in key order, then the versions.
// Every applier of the process takes row locks in the same order, so two
// appliers reading overlapping rows never deadlock each other, and an
// applier never closes a lock cycle with an application that writes its
// tables in that order.
func (a *Applier) readRowsAndVersions(ctx context.Context, tx pgx.Tx, shapes map[string]replicator.Shape, byTable map[string][]string, keys []metaKey, states map[metaKey]*rowState) (map[metaKey]*meta, error) {
	var b pgx.Batch
	metas, err := a.queueRowsAndVersions(&b, shapes, byTable, keys, states)
	if err != nil {
		return nil, err
	}
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return nil, fmt.Errorf("apply: read rows and their versions: %w", err)
	}
	return metas, nil
}

// queueRowsAndVersions queues readRowsAndVersions's reads in b; the map
// it returns holds the versions once b has run.
func (a *Applier) queueRowsAndVersions(b *pgx.Batch, shapes map[string]replicator.Shape, byTable map[string][]string, keys []metaKey, states map[metaKey]*rowState) (map[metaKey]*meta, error) {
	if err := a.queueTablesRows(b, shapes, byTable, states); err != nil {
		return nil, err
	}
	metas := make(map[metaKey]*meta, len(keys))
	if len(keys) > 0 {
		sql, args := metaQuery(keys, false, "")
		b.Queue(sql, args...).Query(func(rows pgx.Rows) error { return scanMetas(rows, metas) })
	}
	return metas, nil
}

// queueTablesRows queues the reads of readRowsAndVersions's rows in b.
func (a *Applier) queueTablesRows(b *pgx.Batch, shapes map[string]replicator.Shape, byTable map[string][]string, states map[metaKey]*rowState) error {
	tables := make([]string, 0, len(byTable))
	for tbl := range byTable {
		tables = append(tables, tbl)
	}
	a.cfg.Order.Sort(tables)
	for _, tbl := range tables {
		keys := byTable[tbl]
		sort.Strings(keys)
		if err := a.queueTableRows(b, shapes[tbl], keys, states); err != nil {
			return err
		}
	}
	return nil
}

func (a *Applier) queueTableRows(b *pgx.Batch, sh replicator.Shape, keys []string, states map[metaKey]*rowState) error {
	lk, err := lookupKeys(sh, keys)
	if err != nil {
		return err
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
	q := fmt.Sprintf(`SELECT %s FROM %s CROSS JOIN LATERAL (SELECT %s FROM %s t WHERE %s LIMIT 1 FOR UPDATE) r`,
		strings.Join(out, ", "), lk.from, strings.Join(sel, ", "), qualified(sh.Table), lk.match)
	b.Queue(q, lk.args...).Query(func(rows pgx.Rows) error {
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
				return fmt.Errorf("%s: %w", sh.Table, err)
			}
			s := states[metaKey{sh.Table, keys[ord-1]}]
			s.exists, s.xmin, s.image, s.pending = true, xmin, nil, nil
			s.values = map[string]*string{}
			for i, c := range pol.Counters {
				s.values[c] = counterVals[i]
			}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("%s: %w", sh.Table, err)
		}
		return nil
	})
	return nil
}

// keyLookup is how a statement finds rows by arrays of keys: one text[]
// parameter per key column ($1, $2, ...), unnested in from as k(k0, k1,
// ..., ord), and match joining a row t to them (one index probe per key).
type keyLookup struct {
	args        []any
	from, match string
}

// lookupKeys builds the lookup of keys (JSON arrays of the key columns'
// text values, as change keys are) in a table of shape sh.
func lookupKeys(sh replicator.Shape, keys []string) (keyLookup, error) {
	cols := make([][]string, len(sh.Key))
	for _, key := range keys {
		var parts []string
		if err := json.Unmarshal([]byte(key), &parts); err != nil || len(parts) != len(sh.Key) {
			return keyLookup{}, fmt.Errorf("apply: %s: malformed key %s", sh.Table, key)
		}
		for i, p := range parts {
			cols[i] = append(cols[i], p)
		}
	}
	lk := keyLookup{args: make([]any, len(sh.Key))}
	var params, names, join []string
	for i, ki := range sh.Key {
		lk.args[i] = cols[i]
		params = append(params, fmt.Sprintf("pg_catalog.unnest($%d::text[])", i+1))
		names = append(names, fmt.Sprintf("k%d", i))
		join = append(join, fmt.Sprintf("t.%s = k.k%d::%s", quoteIdent(sh.Columns[ki]), i, sh.Types[ki]))
	}
	lk.from = fmt.Sprintf("ROWS FROM (%s) WITH ORDINALITY AS k(%s, ord)", strings.Join(params, ", "), strings.Join(names, ", "))
	lk.match = strings.Join(join, " AND ")
	return lk, nil
}
