package postgres

// A region whose join loaded in units from several snapshots (see
// snapshot_units.go) streams each source from the earliest unit's
// position: up to the latest (replayThrough), a change of a row may be
// one the unit holding that row loaded already. Row versions cannot tell:
// counter deltas are added whatever the vectors say (a region may have
// seen a write through a third region before its delta arrives), so such
// a change would count twice. So the applier drops, before anything else,
// each change of a key whose unit's snapshot held the change's source
// transaction, and applies the others as the source applied them after
// that snapshot.

import (
	"context"
	"fmt"
	"strings"

	"github.com/polyregion/polyregion/replicator"
)

// withoutLoaded returns txns without the changes the join's load holds.
func (a *Applier) withoutLoaded(ctx context.Context, q querier, txns []*replicator.Txn) ([]*replicator.Txn, error) {
	if len(txns) == 0 || txns[0].Seq > a.replayThrough {
		return txns, nil
	}
	shapes := map[string]replicator.Shape{}
	keys := map[string][]string{}
	seen := map[metaKey]bool{}
	for _, t := range txns {
		if t.Seq > a.replayThrough {
			break
		}
		for _, c := range t.Changes {
			sh := t.Shapes[c.T]
			k := metaKey{sh.Table, c.Key}
			if !seen[k] {
				seen[k] = true
				shapes[sh.Table] = sh
				keys[sh.Table] = append(keys[sh.Table], c.Key)
			}
		}
	}
	held := map[metaKey]replicator.Seq{}
	for tbl, ks := range keys {
		seqs, err := a.loadedThrough(ctx, q, shapes[tbl], ks)
		if err != nil {
			return nil, err
		}
		for i, k := range ks {
			held[metaKey{tbl, k}] = seqs[i]
		}
	}
	out := make([]*replicator.Txn, len(txns))
	dropped := 0
	for i, t := range txns {
		out[i] = t
		if t.Seq > a.replayThrough {
			continue
		}
		kept := make([]replicator.Change, 0, len(t.Changes))
		for _, c := range t.Changes {
			if held[metaKey{t.Shapes[c.T].Table, c.Key}] < t.Seq {
				kept = append(kept, c)
			}
		}
		if len(kept) < len(t.Changes) {
			dropped += len(t.Changes) - len(kept)
			nt := *t
			nt.Changes = kept
			out[i] = &nt
		}
	}
	if dropped > 0 {
		a.cfg.Logger.Debug("apply: changes the join's load held already dropped", "source", a.cfg.Source, "changes", dropped)
	}
	return out, nil
}

// loadedThrough returns, for each key of table (as a change names it), the
// last transaction of the applier's source that the snapshot of the unit
// holding the key's row held (0 when no unit holds it).
func (a *Applier) loadedThrough(ctx context.Context, q querier, sh replicator.Shape, keys []string) ([]replicator.Seq, error) {
	ck, ok := a.unitKeys[sh.Table]
	if !ok {
		var err error
		if ck, err = chunkKeys(ctx, q, sh.Table); err != nil {
			return nil, fmt.Errorf("apply: %w", err)
		}
		if a.unitKeys == nil {
			a.unitKeys = map[string][]chunkKey{}
		}
		a.unitKeys[sh.Table] = ck
	}
	if len(ck) != len(sh.Key) {
		// Keyed otherwise than the table here: such changes are parked
		// with the difference (see applyChanges), none is dropped.
		return make([]replicator.Seq, len(keys)), nil
	}
	lk, err := lookupKeys(sh, keys)
	if err != nil {
		return nil, err
	}
	// The unit holding a key is the first (in the order units were
	// committed: a table's chunks in key order) whose range ends at or
	// after it; a unit without an end holds the rest of its tables.
	left := make([]string, len(ck))
	right := make([]string, len(ck))
	for i, k := range ck {
		left[i] = fmt.Sprintf("k.k%d::%s", i, k.typ)
		if k.collate != "" {
			left[i] = "(" + left[i] + " COLLATE " + k.collate + ")"
		}
		right[i] = fmt.Sprintf("u.after[%d]::%s", i+1, k.typ)
	}
	n := len(lk.args)
	sql := fmt.Sprintf(`SELECT k.ord, coalesce((SELECT (p ->> 'seq')::int8 FROM pg_catalog.jsonb_array_elements(u.positions) p WHERE p ->> 'region' = $%d), 0)
		FROM %s
		LEFT JOIN LATERAL (SELECT u.positions FROM polyregion.join_units u
			WHERE $%d = ANY (u.tables) AND (u.after IS NULL OR (%s) <= (%s))
			ORDER BY u.id LIMIT 1) u ON true`,
		n+1, lk.from, n+2, strings.Join(left, ", "), strings.Join(right, ", "))
	rows, err := q.Query(ctx, sql, append(lk.args, string(a.cfg.Source), sh.Table)...)
	if err != nil {
		return nil, fmt.Errorf("apply: which part of the join's load holds rows of %s: %w", sh.Table, err)
	}
	defer rows.Close()
	out := make([]replicator.Seq, len(keys))
	for rows.Next() {
		var ord, seq int64
		if err := rows.Scan(&ord, &seq); err != nil {
			return nil, fmt.Errorf("apply: which part of the join's load holds rows of %s: %w", sh.Table, err)
		}
		out[ord-1] = replicator.Seq(max(seq, 0))
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("apply: which part of the join's load holds rows of %s: %w", sh.Table, err)
	}
	return out, nil
}
