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

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// replicaIdentityProblems names what keeps table's replica identity from
// carrying its primary key. Each partition of a partitioned table logs
// under its own replica identity: the table and every leaf of its
// partition tree are looked at. Only an index's key columns are logged,
// not its INCLUDE columns.
func replicaIdentityProblems(ctx context.Context, q *pgx.Conn, table string) ([]string, error) {
	rows, err := q.Query(ctx, `
		SELECT l.relid::pg_catalog.regclass::text, c.relreplident::text,
		       coalesce((SELECT ri.indexrelid::pg_catalog.regclass::text FROM pg_catalog.pg_index ri
		                 WHERE ri.indrelid = c.oid AND ri.indisreplident), ''),
		       coalesce((SELECT pg_catalog.bool_and(EXISTS (
		                        SELECT FROM pg_catalog.generate_series(0, ri.indnkeyatts - 1) AS r(i)
		                        WHERE ri.indkey[r.i] OPERATOR(pg_catalog.=) pk.indkey[p.i]))
		                 FROM pg_catalog.pg_index pk
		                 CROSS JOIN LATERAL pg_catalog.generate_series(0, pk.indnkeyatts - 1) AS p(i)
		                 JOIN pg_catalog.pg_index ri ON ri.indrelid = c.oid AND ri.indisreplident
		                 WHERE pk.indrelid = c.oid AND pk.indisprimary), false)
		FROM (SELECT $1::pg_catalog.regclass
		      UNION SELECT t.relid FROM pg_catalog.pg_partition_tree($1::pg_catalog.regclass) AS t WHERE t.isleaf) AS l(relid)
		JOIN pg_catalog.pg_class c ON c.oid = l.relid
		ORDER BY l.relid OPERATOR(pg_catalog.<>) $1::pg_catalog.regclass, 1`, qualified(table))
	if err != nil {
		return nil, fmt.Errorf("preflight: replica identity of %s: %w", table, err)
	}
	defer rows.Close()
	var probs []string
	for rows.Next() {
		var leaf, ident, index string
		var covers bool
		if err := rows.Scan(&leaf, &ident, &index, &covers); err != nil {
			return nil, fmt.Errorf("preflight: replica identity of %s: %w", table, err)
		}
		of := table
		if leaf != qualified(table) && leaf != table {
			of = table + " (partition " + leaf + ")"
		}
		switch {
		case ident == "n":
			probs = append(probs, fmt.Sprintf("%s: REPLICA IDENTITY NOTHING: its updates and deletes cannot be replicated (PostgreSQL refuses them once the table is published); set REPLICA IDENTITY DEFAULT or FULL", of))
		case ident == "i" && index == "":
			probs = append(probs, fmt.Sprintf("%s: its REPLICA IDENTITY index was dropped, so a deleted row's key is not in the WAL; set REPLICA IDENTITY DEFAULT or FULL", of))
		case ident == "i" && !covers:
			probs = append(probs, fmt.Sprintf("%s: its REPLICA IDENTITY index %s does not hold every primary key column among its key columns, so a deleted row's key is not in the WAL; set REPLICA IDENTITY DEFAULT or FULL", of, index))
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("preflight: replica identity of %s: %w", table, err)
	}
	return probs, nil
}

// identityLogsKey reports whether the change stream's description of a
// relation says its old rows carry every key column (the columns pgoutput
// flags as the replica identity's; all of them under FULL). A table
// switched to an identity without them while the replicator runs shows
// here, at its first update or delete: an update that moved such a
// table's key without touching the identity's columns would otherwise be
// shipped without the old key's delete, and the regions would diverge.
func identityLogsKey(msg *pglogrepl.RelationMessage, key []int) bool {
	if msg == nil {
		return true
	}
	if msg.ReplicaIdentity == 'n' {
		return false
	}
	for _, k := range key {
		if k >= len(msg.Columns) || msg.Columns[k].Flags&1 == 0 {
			return false
		}
	}
	return true
}
