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
	live, err := loadMetaWhere(ctx, q, ask, false, " AND NOT v.deleted")
	if err != nil {
		return nil, fmt.Errorf("apply: %w", err)
	}
	if a.liveKeys == nil || len(a.liveKeys)+len(live) > liveKeysCap {
		a.liveKeys = make(map[metaKey]struct{}, min(2*len(live), liveKeysCap))
	}
	missing := map[metaKey]bool{}
	for _, k := range ask {
		if live[k] != nil {
			a.liveKeys[k] = struct{}{}
		} else {
			missing[k] = true
		}
	}
	return missing, nil
}
