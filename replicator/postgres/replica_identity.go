package postgres

// The replica identity decides what the WAL holds of a row that an update
// or a delete replaces. The reader names a deleted row (and the old row of
// an update that moved its key) by the primary key it finds there, so the
// old row must carry every key column: DEFAULT (the primary key) and FULL
// do; an identity index without all of the key's columns leaves them out,
// and the reader could then not tell which row went (it stops at that
// change, every restart again, and ships nothing after it). NOTHING makes
// PostgreSQL refuse the applications' updates and deletes of a published
// table outright. Such tables are refused by name.

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// replicaIdentityProblem names what keeps table's replica identity from
// carrying its primary key, or returns "".
func replicaIdentityProblem(ctx context.Context, q *pgx.Conn, table string) (string, error) {
	var ident string
	var index string
	var covers bool
	err := q.QueryRow(ctx, `
		SELECT c.relreplident::text,
		       coalesce((SELECT ri.indexrelid::pg_catalog.regclass::text FROM pg_catalog.pg_index ri
		                 WHERE ri.indrelid = c.oid AND ri.indisreplident), ''),
		       coalesce((SELECT pg_catalog.bool_and(k.attnum OPERATOR(pg_catalog.=) ANY (ri.indkey::pg_catalog.int2[]))
		                 FROM pg_catalog.pg_index pk
		                 CROSS JOIN LATERAL pg_catalog.unnest(pk.indkey::pg_catalog.int2[]) AS k(attnum)
		                 JOIN pg_catalog.pg_index ri ON ri.indrelid = c.oid AND ri.indisreplident
		                 WHERE pk.indrelid = c.oid AND pk.indisprimary), false)
		FROM pg_catalog.pg_class c WHERE c.oid = $1::pg_catalog.regclass`, qualified(table)).Scan(&ident, &index, &covers)
	if err != nil {
		return "", fmt.Errorf("preflight: replica identity of %s: %w", table, err)
	}
	switch {
	case ident == "n":
		return fmt.Sprintf("%s: REPLICA IDENTITY NOTHING: its updates and deletes cannot be replicated (PostgreSQL refuses them once the table is published); set REPLICA IDENTITY DEFAULT or FULL", table), nil
	case ident == "i" && !covers:
		return fmt.Sprintf("%s: its REPLICA IDENTITY index %s does not hold every primary key column, so a deleted row's key is not in the WAL; set REPLICA IDENTITY DEFAULT or FULL", table, index), nil
	}
	return "", nil
}
