package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// A snapshot's rows are loaded as the table's owner (see ownerexec.go)
// because code fired by an inserted row could otherwise run with the
// replicator's privileges. Going through the owner's function costs a
// staging table and an INSERT ... SELECT (rows inserted one at a time),
// several times a plain COPY. A table into which a COPY runs no code but
// PostgreSQL's own gains nothing from it, and is copied into directly.

// inertQuery is true when inserting into the table runs no code anyone but
// a superuser wrote: an ordinary table (not partitioned, not a partition,
// whose partition constraint may hold the parent's key expressions), without
// row security or rules, without triggers that fire on insert (the internal
// ones of foreign keys check as the owner), without check or exclusion
// constraints, whose columns are neither generated nor of a type outside
// pg_catalog (a domain's check, a user type's input), and whose indexes
// have neither expressions nor predicates nor operator classes outside
// pg_catalog; and no column outside the ones copied ($2) has a default,
// which COPY would run. It also returns the primary key's constraint name.
const inertQuery = `SELECT c.relkind = 'r' AND NOT c.relispartition AND NOT c.relrowsecurity AND NOT c.relhasrules
	AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g
		WHERE g.tgrelid = c.oid AND NOT g.tgisinternal AND (g.tgtype & 4) <> 0)
	AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k
		WHERE k.conrelid = c.oid AND k.contype IN ('c', 'x'))
	AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type ty ON ty.oid = a.atttypid
		WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		AND (a.attgenerated <> '' OR ty.typnamespace <> 'pg_catalog'::pg_catalog.regnamespace OR ty.typtype = 'd'
			OR (a.atthasdef AND NOT a.attname = ANY ($2::pg_catalog.name[]))))
	AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i
		WHERE i.indrelid = c.oid AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL
			OR EXISTS (SELECT 1 FROM pg_catalog.pg_opclass o
				WHERE o.oid = ANY (i.indclass) AND o.opcnamespace <> 'pg_catalog'::pg_catalog.regnamespace))),
	coalesce((SELECT k.conname::text FROM pg_catalog.pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'p'), '')
	FROM pg_catalog.pg_class c WHERE c.oid = $1::pg_catalog.regclass`

// copyTarget is what copiesInert found of a table.
type copyTarget struct {
	inert bool   // rows may be copied into it directly
	pkey  string // its primary key's constraint name
}

// copiesInert reports whether rows of columns may be copied into table
// directly, as the replicator, within tx: it may insert into it, and doing
// so runs no code but PostgreSQL's (inertQuery). It first takes the table's
// ROW EXCLUSIVE lock (the table's alone), which the COPY takes anyway and
// every statement that could add such code (CREATE TRIGGER, CREATE INDEX,
// ALTER TABLE, CREATE POLICY, ...) waits for, so the answer holds until tx
// ends.
func copiesInert(ctx context.Context, tx pgx.Tx, table string, columns []string) (copyTarget, error) {
	var may bool
	if err := tx.QueryRow(ctx, `SELECT pg_catalog.has_table_privilege($1::pg_catalog.regclass, 'INSERT')`, qualified(table)).Scan(&may); err != nil {
		return copyTarget{}, fmt.Errorf("privileges on %s: %w", table, err)
	}
	if !may {
		return copyTarget{}, nil
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE ONLY "+qualified(table)+" IN ROW EXCLUSIVE MODE"); err != nil {
		return copyTarget{}, fmt.Errorf("lock %s: %w", table, err)
	}
	var t copyTarget
	if err := tx.QueryRow(ctx, inertQuery, qualified(table), columns).Scan(&t.inert, &t.pkey); err != nil {
		return copyTarget{}, fmt.Errorf("what inserting into %s runs: %w", table, err)
	}
	return t, nil
}
