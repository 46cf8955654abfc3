package postgres

// Tables whose writes commute with every other table's, and tables whose
// writes of different rows also commute with one another: an apply batch
// may run them in fewer statements, out of the source's interleaving.

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

// commuting is what a table's writes commute with inside one apply
// transaction.
type commuting struct {
	tables bool // with the writes of every other table that stands alone
	rows   bool // also with the table's own writes of other rows
}

// loadAlone finds out, for each table not known yet, what its writes
// commute with.
func (a *Applier) loadAlone(ctx context.Context, tx pgx.Tx, tables map[string]replicator.Shape) error {
	if time.Since(a.aloneAt) > aloneFor {
		clear(a.alone)
		a.aloneAt = time.Now()
	}
	for t := range tables {
		if _, ok := a.alone[t]; ok {
			continue
		}
		c, err := commutes(ctx, tx, t)
		if err != nil {
			return fmt.Errorf("apply: %w", err)
		}
		a.alone[t] = c
	}
	return nil
}

// commutes finds out what a table's writes commute with.
//
// The table stands alone when its writes commute with writes of any other
// table inside one transaction: no foreign key links it to another table
// (either way, cascades included), and no trigger of the application's
// (which could read or write other tables) and no rule is on it (the
// replicator's own triggers touch nothing else). The applier then merges
// such a table's writes from several source transactions into one
// set-based statement, moving them past other such tables' writes (see
// bulk.add): the source's order between two such tables cannot change what
// either holds at commit. Rows it updates or deletes were read and locked
// before any write runs, in the learned lock order, so the order of the
// writes takes no lock out of that order.
//
// Its writes of different rows also commute with one another when, on top
// of that, nothing but the primary key ties two of its rows together: no
// other unique index (a value one write frees and a later one takes), no
// exclusion constraint, no foreign key from the table to itself and no
// row-level security (a policy may look at the table's other rows). Each
// write then depends only on its own row's earlier writes, so it may run
// before the table's writes of other rows that came before it in the
// source (bulk.joins keeps every row's own writes in order).
func commutes(ctx context.Context, tx rowQuerier, table string) (commuting, error) {
	var others, ties int
	err := tx.QueryRow(ctx, `SELECT
		(SELECT pg_catalog.count(*) FROM pg_catalog.pg_constraint f
		  WHERE f.contype = 'f' AND (f.conrelid = $1::pg_catalog.regclass OR f.confrelid = $1::pg_catalog.regclass)
		    AND f.conrelid OPERATOR(pg_catalog.<>) f.confrelid)
		+ (SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger g
		  WHERE g.tgrelid = $1::pg_catalog.regclass AND NOT g.tgisinternal AND g.tgname OPERATOR(pg_catalog.<>) ALL (ARRAY[$2, $3, $4, $5]::pg_catalog.name[]))
		+ (SELECT pg_catalog.count(*) FROM pg_catalog.pg_rewrite w WHERE w.ev_class = $1::pg_catalog.regclass),
		(SELECT pg_catalog.count(*) FROM pg_catalog.pg_index i
		  WHERE i.indrelid = $1::pg_catalog.regclass AND i.indisunique AND NOT i.indisprimary)
		+ (SELECT pg_catalog.count(*) FROM pg_catalog.pg_constraint c
		  WHERE c.conrelid = $1::pg_catalog.regclass AND (c.contype = 'x' OR (c.contype = 'f' AND c.confrelid = c.conrelid)))
		+ (SELECT pg_catalog.count(*) FROM pg_catalog.pg_class r WHERE r.oid = $1::pg_catalog.regclass AND r.relrowsecurity)`,
		qualified(table), TruncateTrigger, MergeTrigger, DeleteMarkTrigger, KeyChangeMarkTrigger).Scan(&others, &ties)
	if err != nil {
		return commuting{}, fmt.Errorf("foreign keys, triggers, rules and unique indexes of %s: %w", table, err)
	}
	return commuting{tables: others == 0, rows: others == 0 && ties == 0}, nil
}

// WritesCommute reports what an applier finds out about table's writes:
// whether they commute with other tables' writes (tables) and with the
// table's own writes of other rows (rows); see commutes.
func WritesCommute(ctx context.Context, conn *pgx.Conn, table string) (tables, rows bool, err error) {
	c, err := commutes(ctx, conn, table)
	return c.tables, c.rows, err
}
