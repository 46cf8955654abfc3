package postgres

// Tables whose writes commute with every other table's: an apply batch may
// run them in fewer statements, out of the source's interleaving.

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/replicator"
)

// aloneFor is how long the applier trusts what it found out about a
// table's foreign keys, triggers and rules: one added while it runs is
// taken into account within that time.
const aloneFor = 30 * time.Second

// loadAlone finds out, for each table not known yet, whether it stands
// alone.
func (a *Applier) loadAlone(ctx context.Context, tx pgx.Tx, tables map[string]replicator.Shape) error {
	if time.Since(a.aloneAt) > aloneFor {
		clear(a.alone)
		a.aloneAt = time.Now()
	}
	for t := range tables {
		if _, ok := a.alone[t]; ok {
			continue
		}
		alone, err := standsAlone(ctx, tx, t)
		if err != nil {
			return fmt.Errorf("apply: %w", err)
		}
		a.alone[t] = alone
	}
	return nil
}

// standsAlone reports whether a table's writes commute with writes of any
// other table inside one transaction: no foreign key links it to another
// table (either way, cascades included), and no trigger of the
// application's (which could read or write other tables) and no rule is
// on it (the replicator's own triggers touch nothing else). The applier then merges such a table's writes from several source
// transactions into one set-based statement, moving them past other such
// tables' writes (see bulk.add): the source's order between two such
// tables cannot change what either holds at commit. Rows it updates or
// deletes were read and locked before any write runs, in the learned lock
// order, so the order of the writes takes no lock out of that order.
func standsAlone(ctx context.Context, tx pgx.Tx, table string) (bool, error) {
	var others int
	err := tx.QueryRow(ctx, `SELECT
		(SELECT pg_catalog.count(*) FROM pg_catalog.pg_constraint f
		  WHERE f.contype = 'f' AND (f.conrelid = $1::pg_catalog.regclass OR f.confrelid = $1::pg_catalog.regclass)
		    AND f.conrelid OPERATOR(pg_catalog.<>) f.confrelid)
		+ (SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger g
		  WHERE g.tgrelid = $1::pg_catalog.regclass AND NOT g.tgisinternal AND g.tgname OPERATOR(pg_catalog.<>) ALL (ARRAY[$2, $3]::pg_catalog.name[]))
		+ (SELECT pg_catalog.count(*) FROM pg_catalog.pg_rewrite w WHERE w.ev_class = $1::pg_catalog.regclass)`,
		qualified(table), TruncateTrigger, MergeTrigger).Scan(&others)
	if err != nil {
		return false, fmt.Errorf("foreign keys, triggers and rules of %s: %w", table, err)
	}
	return others == 0, nil
}
