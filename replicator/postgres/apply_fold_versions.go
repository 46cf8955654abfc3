package postgres

// Counter rows without a recorded version. A deployment starts from the
// data it holds, and its hottest rows (request counters, totals) were
// mostly written before any replicator ran: nothing recorded their
// versions. Folding an update into such a row (see apply_counters.go)
// finds no version to fold into, which fails the whole batch; it was then
// applied again reading every row, once for each batch that brought the
// first increment of such a row.
//
// So before a batch folds, the keys it would fold are looked up among the
// recorded live versions, and those without one are read and decided
// instead, as the retry would: the read tells a row written before
// replication started (its version empty) from a local write the reader
// has not versioned yet (waited for). Once written, the row has a version
// and folds from then on.
//
// Keys found live are remembered (a bounded set, emptied when full and
// after any failed attempt), so the hot rows a batch folds over and over
// cost no lookup. A key remembered wrongly (its row deleted since) only
// fails its fold as before; the retry reads every row.

import (
	"context"
	"fmt"
)

// liveKeysCap bounds the keys an applier remembers as having a live
// version (a few MB at most).
const liveKeysCap = 1 << 15

// unversionedFolds returns the keys of folded that have no live version
// recorded.
func (a *Applier) unversionedFolds(ctx context.Context, q querier, folded map[metaKey]bool) (map[metaKey]bool, error) {
	var ask []metaKey
	for k := range folded {
		if _, ok := a.liveKeys[k]; !ok {
			ask = append(ask, k)
		}
	}
	if len(ask) == 0 {
		return nil, nil
	}
	live, err := loadLive(ctx, q, ask)
	if err != nil {
		return nil, fmt.Errorf("apply: %w", err)
	}
	if a.liveKeys == nil || len(a.liveKeys)+len(live) > liveKeysCap {
		a.liveKeys = make(map[metaKey]struct{}, min(2*len(live), liveKeysCap))
	}
	missing := map[metaKey]bool{}
	for _, k := range ask {
		if live[k] {
			a.liveKeys[k] = struct{}{}
		} else {
			missing[k] = true
		}
	}
	return missing, nil
}

// loadLive reports which of keys have a live (not deleted) version
// recorded, one index probe per key (LIMIT keeps it a nested loop, as in
// metaQuery).
func loadLive(ctx context.Context, q querier, keys []metaKey) (map[metaKey]bool, error) {
	tbls := make([]string, len(keys))
	ks := make([]string, len(keys))
	for i, k := range keys {
		tbls[i], ks[i] = k.tbl, k.key
	}
	rows, err := q.Query(ctx, `SELECT k.tbl, k.key
		FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS k(tbl, key)
		CROSS JOIN LATERAL (SELECT FROM polyregion.row_version v WHERE v.tbl = k.tbl AND v.key = k.key AND NOT v.deleted LIMIT 1) m`, tbls, ks)
	if err != nil {
		return nil, fmt.Errorf("look up live row versions: %w", err)
	}
	defer rows.Close()
	out := make(map[metaKey]bool, len(keys))
	for rows.Next() {
		var k metaKey
		if err := rows.Scan(&k.tbl, &k.key); err != nil {
			return nil, fmt.Errorf("look up live row versions: %w", err)
		}
		out[k] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("look up live row versions: %w", err)
	}
	return out, nil
}
