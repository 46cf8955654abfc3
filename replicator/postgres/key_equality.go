package postgres

// Primary keys whose equality is not their bytes'. The replicator names a
// row by its key's text (row versions, tombstones, conflicts), so two keys
// are the same row to it exactly when their text is the same. A key column
// compared case- or accent-insensitively breaks that: 'Bob@x.com' written
// in one region and 'bob@x.com' in another are one row to the database and
// two to the replicator. Left to run, under a nondeterministic collation
// each region applies the other's insert over its own row and they end
// holding each other's values, no conflict logged; with citext the
// applier's insert of the other spelling finds the row taken and retries
// without end, holding up every later transaction of that peer. Such
// tables are refused by name until the key compares by its bytes.

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// keyEqualityProblems names the primary key columns of table whose
// equality is not their text's: a nondeterministic collation, or a
// collatable type whose equality in the key's operator class tells apart
// less than its bytes do (citext, or a domain over it).
func keyEqualityProblems(ctx context.Context, q *pgx.Conn, table string) ([]string, error) {
	// Each key column with its index's operator class and collation: the
	// class's equality operator is the one the key is unique under.
	rows, err := q.Query(ctx, `
		SELECT a.attname, pg_catalog.format_type(oc.opcintype, NULL), t.typcollation OPERATOR(pg_catalog.<>) 0,
		       coalesce(pg_catalog.quote_ident(cn.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(co.collname), ''),
		       coalesce(NOT co.collisdeterministic, false),
		       coalesce((SELECT 'OPERATOR(' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(opn.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) o.oprname OPERATOR(pg_catalog.||) ')'
		           FROM pg_catalog.pg_amop ao
		           JOIN pg_catalog.pg_operator o ON o.oid = ao.amopopr
		           JOIN pg_catalog.pg_namespace opn ON opn.oid = o.oprnamespace
		           WHERE ao.amopfamily = oc.opcfamily AND ao.amopmethod = oc.opcmethod AND ao.amopstrategy = 3
		             AND ao.amoplefttype = oc.opcintype AND ao.amoprighttype = oc.opcintype), '')
		FROM pg_catalog.pg_index i
		CROSS JOIN LATERAL ROWS FROM (pg_catalog.unnest(i.indkey::pg_catalog.int2[]), pg_catalog.unnest(i.indclass::pg_catalog.oid[]), pg_catalog.unnest(i.indcollation::pg_catalog.oid[])) AS k(attnum, opclass, coll)
		JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		JOIN pg_catalog.pg_opclass oc ON oc.oid = k.opclass
		JOIN pg_catalog.pg_type t ON t.oid = oc.opcintype
		LEFT JOIN pg_catalog.pg_collation co ON co.oid = k.coll
		LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
		WHERE i.indrelid = $1::pg_catalog.regclass AND i.indisprimary
		ORDER BY a.attnum`, qualified(table))
	if err != nil {
		return nil, fmt.Errorf("preflight: primary key of %s: %w", table, err)
	}
	type keyCol struct {
		name, typ, collation, equals string
		text, nondeterministic       bool
	}
	var cols []keyCol
	for rows.Next() {
		var c keyCol
		if err := rows.Scan(&c.name, &c.typ, &c.text, &c.collation, &c.nondeterministic, &c.equals); err != nil {
			rows.Close()
			return nil, fmt.Errorf("preflight: primary key of %s: %w", table, err)
		}
		cols = append(cols, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("preflight: primary key of %s: %w", table, err)
	}
	var probs []string
	for _, c := range cols {
		why := ""
		switch {
		case c.nondeterministic:
			why = fmt.Sprintf("is in the nondeterministic collation %s", c.collation)
		case c.text && c.equals != "":
			// The type's own equality (citext's ignores case), asked of
			// the server with two spellings that differ only in case.
			// A type that takes neither spelling (its input refuses
			// them) cannot hold keys that differ so, and passes.
			var same bool
			err := q.QueryRow(ctx, fmt.Sprintf(`SELECT 'A'::%s %s 'a'::%[1]s`, c.typ, c.equals)).Scan(&same)
			var pgErr *pgconn.PgError
			if err != nil && !errors.As(err, &pgErr) {
				return nil, fmt.Errorf("preflight: primary key column %q of %s: compare two spellings: %w", c.name, table, err)
			}
			if err == nil && same {
				why = fmt.Sprintf("is of type %s, which compares 'A' and 'a' as equal", c.typ)
			}
		}
		if why != "" {
			probs = append(probs, fmt.Sprintf("%s: primary key column %q %s: keys spelt differently that the database takes as one would be two rows to the replicator, and regions would diverge; key the table by a column that compares by its bytes (a deterministic collation, text instead of citext; a unique index on lower(%[2]s) keeps the case-insensitive uniqueness)", table, c.name, why))
		}
	}
	return probs, nil
}
