package postgres

// Inserts of new rows first: a batch's inserts into tables it only inserts
// into are written before any row is read and locked, so that the wait for
// the reader they need holds no row the applications write.

import (
	"context"
	"fmt"
	"slices"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

// insertEarly applies, before anything is read and locked, the changes of
// the tables the batch only inserts new keys into (an event or history
// table; a backlog of inserts), and returns those tables.
//
// An inserted row whose key was absent and held by nothing when decided
// needs a wait for the local reader before its version is written (see
// executor.flush): a local write the reader has not versioned yet may hide
// behind the absent row. Written after the rows the batch reads and
// locks, that wait would hold those rows; written first, it holds only the
// new keys (which the inserts themselves now guard, as flush needs). The
// versions are written with the rest of the batch, conditioned as usual.
//
// A table qualifies when its writes commute with other tables' (see
// commutes), every change of it in the batch is an insert of a key
// not seen before in the batch, and no tombstone is recorded for any of
// those keys (a tombstoned key is read and decided with the others).
// Moving these inserts ahead of the source's other writes then changes no
// outcome: no other write of their table comes between, and other tables'
// writes commute with them.
func (a *Applier) insertEarly(ctx context.Context, ex *executor, txns []*replicator.Txn, probe map[metaKey]bool, parkWhy map[*replicator.Change]string) (map[string]bool, error) {
	if a.cfg.Versioner == nil {
		return nil, nil
	}
	out := map[string]bool{} // tables that do not qualify
	seen := make(map[metaKey]bool, len(probe))
	var candidates []metaKey
	for _, t := range txns {
		for i := range t.Changes {
			c := &t.Changes[i]
			tbl := t.Shapes[c.T].Table
			if out[tbl] {
				continue
			}
			// A probed key is one whose first change here is an insert.
			k := metaKey{tbl, c.Key}
			if parkWhy[c] != "" || c.Op != conflict.OpInsert || !probe[k] || !a.alone[tbl].tables || seen[k] {
				out[tbl] = true
				continue
			}
			seen[k] = true
			candidates = append(candidates, k)
		}
	}
	candidates = slices.DeleteFunc(candidates, func(k metaKey) bool { return out[k.tbl] })
	if len(candidates) == 0 {
		return nil, nil
	}
	tombs, err := loadTombstones(ctx, ex.tx, candidates)
	if err != nil {
		return nil, fmt.Errorf("apply: %w", err)
	}
	for k := range tombs {
		out[k.tbl] = true
	}
	early := map[string]bool{}
	n := 0
	for _, t := range txns {
		for i := range t.Changes {
			c := &t.Changes[i]
			sh := t.Shapes[c.T]
			if out[sh.Table] {
				continue
			}
			early[sh.Table] = true
			n++
			if err := a.applyChange(ctx, ex, t, sh, c, &rowState{unlocked: true}); err != nil {
				return nil, err
			}
		}
	}
	if n == 0 {
		return nil, nil
	}
	if err := ex.flushRows(ctx); err != nil {
		return nil, err
	}
	if len(ex.unlocked) > 0 {
		if err := a.barrier(ctx, ex.unlocked, false); err != nil {
			return nil, err
		}
		ex.unlocked = nil
	}
	return early, nil
}
