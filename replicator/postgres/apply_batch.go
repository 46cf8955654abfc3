package postgres

// One apply transaction's changes: shapes checked (a change of a shape
// that differs from the local table is parked), rows read and locked or
// folded, each change decided and queued; parked changes retried.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

// applyChanges decides and queues every change of txns, in order, inside
// ex's transaction. It returns the largest hybrid timestamp seen.
func (a *Applier) applyChanges(ctx context.Context, ex *executor, txns []*replicator.Txn) (conflict.Timestamp, error) {
	if err := ex.limitLockWaits(ctx); err != nil {
		return 0, err
	}
	// Check each change's shape against the local table: a change whose
	// shape differs (a column, a type, the primary key) is parked with the
	// difference, and so is every change of that shape; changes of the
	// table in the shape it has here go on. Order stays safe even though a
	// later change may then overtake a parked one: every change carries
	// its row's version, and a parked change retried after a later change
	// of the same row was applied is skipped as older (or resolved as
	// concurrent, like any change), so the regions converge on the same
	// row whatever the order; a change that needs another row first (a
	// parent) is parked with a data error until that row is here. Then
	// read every touched row and its version, locking the rows that exist.
	n := 0
	for _, t := range txns {
		n += len(t.Changes)
	}
	ex.bulk.hint = n
	states := make(map[metaKey]*rowState, n)
	byTable := map[string][]string{}
	// Keys whose first change here is an insert from the source: in the
	// fast path, unless the last attempt failed, they are assumed absent
	// here and only a tombstone is looked up for them. The writes check
	// the assumption: the insert affects no row if the row exists, and the
	// version's COPY fails if a version other than a tombstone is recorded;
	// either fails the batch, and the retry reads every row.
	probe := make(map[metaKey]bool, n)
	optimistic := !ex.careful && !a.readAll
	ex.copyInserts = optimistic
	shapeOf := map[string]replicator.Shape{}
	mismatch := map[string]string{} // shapeKey -> difference ("" when equal)
	parkWhy := map[*replicator.Change]string{}
	uses := make(map[metaKey]keyUse, n)
	foldable := map[string]bool{} // table -> countersOnly
	var keys []metaKey            // in the order of their first change
	var written []string          // one transaction's tables, in the order it first wrote them
	for _, t := range txns {
		written = written[:0]
		for i := range t.Changes {
			if tbl := t.Shapes[t.Changes[i].T].Table; !slices.Contains(written, tbl) {
				written = append(written, tbl)
			}
		}
		a.cfg.Order.Observe(written)
		sigs := make([]string, len(t.Shapes))
		for i := range t.Changes {
			c := &t.Changes[i]
			sh := t.Shapes[c.T]
			if sigs[c.T] == "" {
				sigs[c.T] = shapeKey(sh)
			}
			why, ok := mismatch[sigs[c.T]]
			if !ok {
				var err error
				if why, err = a.checkShape(ctx, ex.tx, sh); err != nil {
					return 0, err
				}
				mismatch[sigs[c.T]] = why
				if err := a.noteShape(ctx, ex.tx, sh, sigs[c.T], why); err != nil {
					return 0, err
				}
			}
			if why != "" {
				parkWhy[c] = why
				continue
			}
			if _, ok := shapeOf[sh.Table]; !ok {
				shapeOf[sh.Table] = sh
			}
			k := metaKey{sh.Table, c.Key}
			folds := false
			if c.Op == conflict.OpUpdate {
				f, ok := foldable[sh.Table]
				if !ok {
					f = a.countersOnly(sh)
					foldable[sh.Table] = f
				}
				folds = f
			}
			if u, ok := uses[k]; ok {
				if u.folds && !folds {
					u.folds = false
					uses[k] = u
				}
			} else {
				uses[k] = keyUse{first: c.Op, folds: folds}
				keys = append(keys, k)
			}
		}
	}
	if err := a.loadAlone(ctx, ex.tx, shapeOf); err != nil {
		return 0, err
	}
	// Keys that only take updates of counter-only rows are not read: their
	// increments are added in place (see bulk.fold and foldRows). The others are read
	// and decided one change at a time.
	folded := map[metaKey]bool{}
	for _, k := range keys {
		u := uses[k]
		if optimistic && !ex.noFold && u.folds {
			folded[k] = true
			continue
		}
		states[k] = &rowState{}
		if optimistic && u.first == conflict.OpInsert {
			probe[k] = true
		} else {
			byTable[k.tbl] = append(byTable[k.tbl], k.key)
		}
	}
	// A key with no live version recorded cannot be folded: it is read
	// and decided instead (see apply_fold_versions.go).
	if len(folded) > 0 {
		missing, err := a.unversionedFolds(ctx, ex.tx, folded)
		if err != nil {
			return 0, err
		}
		for _, k := range keys { // in the order of their first change, as the others
			if missing[k] {
				delete(folded, k)
				states[k] = &rowState{}
				byTable[k.tbl] = append(byTable[k.tbl], k.key)
			}
		}
	}
	// Waits for the reader hold no application row only in one-part
	// batches (a large transaction's earlier parts hold their rows anyway,
	// and each wait given back would take one more subtransaction id).
	release := optimistic && !ex.noFold
	var early map[string]bool // tables whose changes insertEarly applied
	if release {
		var err error
		if early, err = a.insertEarly(ctx, ex, txns, probe, parkWhy); err != nil {
			return 0, err
		}
		if len(early) > 0 {
			for k := range states {
				if early[k.tbl] {
					delete(states, k)
					delete(probe, k)
				}
			}
		}
	}
	if len(folded) > 0 && len(byTable) > 0 && !a.foldsAfterReads(folded, byTable) {
		// Folded rows are locked when the batch is written, after the rows
		// read now: that keeps the applications' lock order only if every
		// folded table comes after every table read. Otherwise read them
		// all, in order.
		for k := range folded {
			states[k] = &rowState{}
			byTable[k.tbl] = append(byTable[k.tbl], k.key)
		}
		folded = nil
	}
	open, err := a.readRows(ctx, ex.tx, shapeOf, byTable, states, probe, release)
	if err != nil {
		return 0, err
	}
	// Keys found or assumed absent are held by nothing: key locks keep the
	// appliers of other sources off them (see key_locks.go).
	if !ex.noFold {
		if err := a.lockAbsent(ctx, ex, shapeOf, states, probe); err != nil {
			return 0, err
		}
	}
	if open {
		ex.open = "read_rows"
	}
	if len(folded) > 0 {
		// A probed key with a tombstone was read and locked too.
		locked := map[string][]string{}
		for k := range probe {
			if s := states[k]; s != nil && s.meta != nil {
				locked[k.tbl] = append(locked[k.tbl], k.key)
			}
		}
		if len(locked) > 0 && !a.foldsAfterReads(folded, locked) {
			return 0, retryable{errors.New("apply: a re-inserted key locked out of order with the counter rows taken in place; reading every row")}
		}
	}
	var maxHLC conflict.Timestamp
	for _, t := range txns {
		ex.changes += len(t.Changes)
		for i := range t.Changes {
			c := &t.Changes[i]
			sh := t.Shapes[c.T]
			if c.Version.HLC > maxHLC {
				maxHLC = c.Version.HLC
			}
			if early[sh.Table] {
				continue // applied by insertEarly
			}
			if reason, parked := parkWhy[c]; parked {
				if !ex.parkOnError {
					return 0, fmt.Errorf("apply: %s", reason)
				}
				ex.park(a.cfg.Source, t.Seq, sh, c, reason)
				continue
			}
			k := metaKey{sh.Table, c.Key}
			if folded[k] {
				if err := ex.bulk.fold(k, sh, c, int64(t.Seq)); err != nil {
					return 0, err
				}
				continue
			}
			if err := a.applyChange(ctx, ex, t, sh, c, states[k]); err != nil {
				return 0, err
			}
		}
	}
	return maxHLC, nil
}

// RetryParked re-applies this source's parked changes that are due, oldest
// first, all in one local transaction, or each in its own when any of
// them fails: a child row whose parent has
// arrived since, a row whose unique-key clash was cleared, a shape that
// matches the table now. It first checks the shapes set aside against the
// local tables again (making the changes of one that matches due now).
// The changes of a shape that still differs are not tried: they are put
// back, counted, with a delay growing per shape. A change still failing
// stays parked with its retry count raised and a delay growing per change;
// its reason is logged only when it changes. Versions decide as usual, so
// a parked change that a later one superseded is simply skipped. It
// returns how many changes were resolved.
func (a *Applier) RetryParked(ctx context.Context, limit int) (int, error) {
	if err := a.gate.sync(ctx, a.conn); err != nil {
		return 0, err
	}
	// Shapes may have changed here since (DDL, an operator's fix).
	a.shapes = map[string]replicator.Shape{}
	a.full = map[string]bool{}
	a.owners = nil // a table may have changed owner
	if err := a.setAsideDropped(ctx); err != nil {
		return 0, err
	}
	var list []parkedChange
	differs := map[string]string{} // shapeKey -> difference here ("" when none)
	err := pgx.BeginFunc(ctx, a.conn, func(tx pgx.Tx) error {
		if err := a.recheckParkedShapes(ctx, tx); err != nil {
			return err
		}
		var err error
		if list, err = dueParked(ctx, tx, a.cfg.Source, limit); err != nil {
			return err
		}
		for _, p := range list {
			key := shapeKey(p.shape)
			if _, ok := differs[key]; ok {
				continue
			}
			why, err := a.checkShape(ctx, tx, p.shape)
			if err != nil {
				return err
			}
			differs[key] = why
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("retry parked: %w", err)
	}
	resolved := 0
	putBack := map[string]bool{}
	var ready []parkedChange
	for _, p := range list {
		key := shapeKey(p.shape)
		if why := differs[key]; why != "" {
			// Not tried: every due change of the shape is put back at once.
			if putBack[key] {
				continue
			}
			putBack[key] = true
			if changed, _ := a.paused.note(key, why); changed && p.reason != why {
				a.logParkedShape(p.shape.Table, why)
			}
			if _, err := a.deferShape(ctx, p, key, why); err != nil {
				return resolved, err
			}
			continue
		}
		ready = append(ready, p)
	}
	if len(ready) > 1 {
		// All in one transaction first (a shape that matches again, or a
		// table seeded here since, makes many due at once); one at a time
		// when any of them still fails.
		err := a.retryParked(ctx, ready)
		if err == nil {
			return resolved + len(ready), nil
		}
		if ctx.Err() != nil {
			return resolved, ctx.Err()
		}
	}
	for _, p := range ready {
		err := a.retryParked(ctx, []parkedChange{p})
		if err == nil {
			resolved++
			continue
		}
		if ctx.Err() != nil {
			return resolved, ctx.Err()
		}
		// Still failing (data error, a shape changed meanwhile, a missing
		// TOAST value...): it stays parked with the latest reason; the
		// link goes on.
		open, uerr := a.deferChange(ctx, p, err.Error())
		if uerr != nil {
			return resolved, uerr
		}
		if open && err.Error() != p.reason {
			a.cfg.Logger.Warn("a parked change still cannot be applied", "id", p.id, "table", p.shape.Table, "source", a.cfg.Source, "reason", err.Error())
		}
	}
	return resolved, nil
}

// setAsideDropped marks resolved, as not applied, this source's parked
// changes of the tables a change dropped (parked before the drop: a shape
// that differed, a parent that had not arrived): like the changes of those
// tables peers still ship, they are no longer applied here, and parked
// they would hold tombstone collection back for good. Once per applier
// (the dropped tables are fixed for its life).
func (a *Applier) setAsideDropped(ctx context.Context) error {
	if len(a.dropped) == 0 || a.droppedSetAside {
		return nil
	}
	rows, err := a.conn.Query(ctx, `UPDATE polyregion.parked
		SET resolved_at = pg_catalog.now(), reason = 'not applied: the cluster dropped the table (parked because: ' OPERATOR(pg_catalog.||) reason OPERATOR(pg_catalog.||) ')'
		WHERE source = $1 AND resolved_at IS NULL AND tbl = ANY ($2::text[])
		RETURNING tbl`, string(a.cfg.Source), slices.Collect(maps.Keys(a.dropped)))
	if err != nil {
		return fmt.Errorf("set aside parked changes of dropped tables: %w", err)
	}
	counts := map[string]int{}
	var tbl string
	if _, err := pgx.ForEachRow(rows, []any{&tbl}, func() error { counts[tbl]++; return nil }); err != nil {
		return fmt.Errorf("set aside parked changes of dropped tables: %w", err)
	}
	for _, t := range slices.Sorted(maps.Keys(counts)) {
		a.cfg.Logger.Info("parked changes of a table the cluster dropped are set aside, not applied", "table", t, "source", a.cfg.Source, "count", counts[t])
	}
	a.droppedSetAside = true
	return nil
}

// retryParked applies parked changes, in the order given, in one local
// transaction (change by change, each under a savepoint) and marks them
// resolved; any failure rolls all of them back.
func (a *Applier) retryParked(ctx context.Context, list []parkedChange) error {
	txns := make([]*replicator.Txn, len(list))
	ids := make([]int64, len(list))
	for i, p := range list {
		p.change.T = 0
		txns[i] = &replicator.Txn{Origin: a.cfg.Source, Seq: replicator.Seq(p.seq), Shapes: []replicator.Shape{p.shape}, Changes: []replicator.Change{p.change}}
		ids[i] = p.id
	}
	return pgx.BeginFunc(ctx, a.conn, func(tx pgx.Tx) error {
		ex := a.executor(tx, true, time.Now(), len(txns))
		ex.parkOnError = false
		if _, err := a.applyChanges(ctx, ex, txns); err != nil {
			return err
		}
		ex.queue(stmt{sql: `UPDATE polyregion.parked SET resolved_at = pg_catalog.now() WHERE id = ANY ($1::bigint[]) AND resolved_at IS NULL`,
			args: []any{ids}, want: int64(len(ids))})
		ex.final = true
		return ex.flush(ctx)
	})
}

// checkShape compares the source's shape of a table with the local one and
// names the difference ("" when none): a column, a type, the primary key.
// Only changes of a differing shape are parked; the table and other tables
// go on.
func (a *Applier) checkShape(ctx context.Context, tx pgx.Tx, src replicator.Shape) (string, error) {
	if _, ok := a.cfg.Cluster.Table(src.Table); !ok {
		return fmt.Sprintf("table %s is not replicated in region %s", src.Table, a.cfg.Region), nil
	}
	if why, ok := a.cfg.Waiting[src.Table]; ok {
		return why, nil
	}
	local, ok := a.shapes[src.Table]
	if !ok {
		var err error
		local, err = LoadShape(ctx, tx.Conn(), src.Table)
		if err != nil {
			if errors.Is(err, ErrNoTable) || errors.Is(err, ErrNoPrimaryKey) {
				return err.Error(), nil
			}
			return "", fmt.Errorf("apply: %w", err)
		}
		full, err := identityFull(ctx, tx, src.Table)
		if err != nil {
			return "", fmt.Errorf("apply: %w", err)
		}
		a.shapes[src.Table] = local
		a.full[src.Table] = full
	}
	if d := shapeDifference(local, src); d != "" {
		return fmt.Sprintf("shape of %s differs from region %s: %s", src.Table, a.cfg.Source, d), nil
	}
	return "", nil
}
