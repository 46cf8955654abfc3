package postgres

// The source's side of a load in units (see snapshot_units.go): which
// tables go whole and which in chunks, and the statements that send one
// chunk (its rows, and the versions of its key range).

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5"
)

// snapshotChunkRows is how many rows one chunk of a table holds.
var snapshotChunkRows int64 = 200_000

// chunkKey is a primary key column as the chunks' ranges compare it.
type chunkKey struct {
	name, typ string
	collate   string // the column's collation, quoted; "" when none
}

// wholeTables returns the tables that must go whole, in one unit: those a
// foreign key ties to a replicated table (themselves included) and those
// with changes parked here.
func wholeTables(ctx context.Context, tx pgx.Tx, tables []string) (map[string]bool, error) {
	// $1: the tables' names as the replicator writes them (parked.tbl),
	// $2: the same quoted for to_regclass.
	rows, err := tx.Query(ctx, `SELECT x.name FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS x(name, quoted)
		WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k
			WHERE k.contype = 'f'
			AND (k.conrelid = pg_catalog.to_regclass(x.quoted) OR k.confrelid = pg_catalog.to_regclass(x.quoted))
			AND k.conrelid = ANY (SELECT pg_catalog.to_regclass(u)::pg_catalog.oid FROM pg_catalog.unnest($2::text[]) u)
			AND k.confrelid = ANY (SELECT pg_catalog.to_regclass(u)::pg_catalog.oid FROM pg_catalog.unnest($2::text[]) u))
		OR EXISTS (SELECT 1 FROM polyregion.parked p WHERE p.resolved_at IS NULL AND p.tbl = x.name)`, tables, qualifiedNames(tables))
	if err != nil {
		return nil, fmt.Errorf("snapshot: tables tied by foreign keys or with parked changes: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("snapshot: tables tied by foreign keys or with parked changes: %w", err)
	}
	whole := map[string]bool{}
	for _, t := range names {
		whole[t] = true
	}
	return whole, nil
}

// chunkKeys reads the table's primary key columns in key order.
func chunkKeys(ctx context.Context, tx querier, table string) ([]chunkKey, error) {
	rows, err := tx.Query(ctx, `SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
			coalesce((SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.collname)
				FROM pg_catalog.pg_collation c JOIN pg_catalog.pg_namespace n ON n.oid = c.collnamespace WHERE c.oid = a.attcollation), '')
		FROM pg_catalog.pg_index i
		CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
		JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		WHERE i.indrelid = $1::pg_catalog.regclass AND i.indisprimary
		ORDER BY k.ord`, qualified(table))
	if err != nil {
		return nil, fmt.Errorf("snapshot: primary key of %s: %w", table, err)
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (chunkKey, error) {
		var k chunkKey
		err := r.Scan(&k.name, &k.typ, &k.collate)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("snapshot: primary key of %s: %w", table, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("snapshot: table %s has no primary key", table)
	}
	return keys, nil
}

// keyRange is the condition that the key expressions exprs lie after lo
// (nil: from the table's start) and up to hi (nil: to its end), the bounds
// being the key columns' text forms.
func keyRange(keys []chunkKey, exprs []string, lo, hi []string) string {
	row := "(" + strings.Join(exprs, ", ") + ")"
	bound := func(vals []string) string {
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = quoteLiteral(vals[i]) + "::" + k.typ
		}
		return "(" + strings.Join(parts, ", ") + ")"
	}
	var conds []string
	if lo != nil {
		conds = append(conds, row+" > "+bound(lo))
	}
	if hi != nil {
		conds = append(conds, row+" <= "+bound(hi))
	}
	if len(conds) == 0 {
		return "true"
	}
	return strings.Join(conds, " AND ")
}

// rowColumns are the snapshot's columns of a table's rows (alias t).
func rowColumns(t SnapshotTable) []string {
	cols := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		cols[i] = "t." + quoteIdent(c.Name)
	}
	return cols
}

// rowKeyExprs are the key columns of a table's rows (alias t).
func rowKeyExprs(keys []chunkKey) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = "t." + quoteIdent(k.name)
	}
	return out
}

// versionKeyExprs are a row version's key (a JSON array of the key
// columns' text forms) read back as the key columns' types, compared in
// their collations as the table orders its rows.
func versionKeyExprs(keys []chunkKey) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = fmt.Sprintf("((v.key::pg_catalog.jsonb ->> %d)::%s)", i, k.typ)
		if k.collate != "" {
			out[i] = "(" + out[i] + " COLLATE " + k.collate + ")"
		}
	}
	return out
}

// chunkEnd returns the key of the last row of the chunk after lo (the
// snapshotChunkRows-th row in key order) and the key of the row after it,
// or nils when no row is left after that one (the chunk runs to the
// table's end, rather than leaving an empty chunk to follow it).
func chunkEnd(ctx context.Context, tx pgx.Tx, table string, keys []chunkKey, lo []string) (last, next []string, err error) {
	cols := rowKeyExprs(keys)
	sel := make([]string, len(cols))
	for i, c := range cols {
		sel[i] = c + "::text"
	}
	// The chunk's last row and the row after it, if any.
	q := fmt.Sprintf("SELECT %s FROM ONLY %s t WHERE %s ORDER BY %s OFFSET %d LIMIT 2",
		strings.Join(sel, ", "), qualified(table), keyRange(keys, cols, lo, nil), strings.Join(cols, ", "), snapshotChunkRows-1)
	rows, err := tx.Query(ctx, q)
	if err != nil {
		return nil, nil, fmt.Errorf("snapshot: next chunk of %s: %w", table, err)
	}
	ends, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([]string, error) {
		hi := make([]string, len(keys))
		dest := make([]any, len(keys))
		for i := range hi {
			dest[i] = &hi[i]
		}
		return hi, r.Scan(dest...)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("snapshot: next chunk of %s: %w", table, err)
	}
	if len(ends) < 2 {
		return nil, nil, nil
	}
	return ends[0], ends[1], nil
}

// sendChunks sends table's rows after lo in chunks, each with the
// versions of its key range and a commit frame, and adds what it sent to
// sum. A table of more than spoolAboveChunks chunks whose key is not in
// the order of its rows on disk has them read in passes and spooled (see
// snapshot_spool.go).
//
// A table of more than one chunk has its versions indexed by key first
// (chunkVersions), so each chunk reads its own; the last or only chunk
// reads them from row_version directly.
func sendChunks(ctx context.Context, tx pgx.Tx, w io.Writer, t SnapshotTable, lo []string, how chunkReading, sum *SnapshotSummary) error {
	keys, err := chunkKeys(ctx, tx, t.Name)
	if err != nil {
		return err
	}
	if lo != nil && len(lo) != len(keys) {
		return fmt.Errorf("snapshot: asked to go on with %s after a key of %d columns; its primary key has %d", t.Name, len(lo), len(keys))
	}
	if len(keys) == 1 {
		spooled, err := trySpooled(ctx, tx, w, t, keys[0], lo, how, sum)
		if spooled || err != nil {
			return err
		}
	}
	cols := rowColumns(t)
	indexed := false
	for {
		hi, _, err := chunkEnd(ctx, tx, t.Name, keys, lo)
		if err != nil {
			return err
		}
		if hi != nil && !indexed {
			if err := chunkVersions(ctx, tx, t.Name, keys); err != nil {
				return err
			}
			indexed = true
		}
		n, err := copyPart(ctx, tx, w, frameTable, t.Name, fmt.Sprintf("COPY (SELECT %s FROM ONLY %s t WHERE %s) TO STDOUT (FORMAT text)",
			strings.Join(cols, ", "), qualified(t.Name), keyRange(keys, rowKeyExprs(keys), lo, hi)))
		if err != nil {
			return err
		}
		sum.Rows[t.Name] += n
		if err := endChunk(ctx, tx, w, t.Name, keys, lo, hi, indexed, sum); err != nil {
			return err
		}
		if hi == nil {
			break
		}
		lo = hi
	}
	if indexed {
		return dropChunkVersions(ctx, tx)
	}
	return nil
}

// endChunk sends the versions of the chunk (lo, hi] of table, from
// chunkVersions's table when indexed, and the chunk's commit frame.
func endChunk(ctx context.Context, tx pgx.Tx, w io.Writer, table string, keys []chunkKey, lo, hi []string, indexed bool, sum *SnapshotSummary) error {
	versions := fmt.Sprintf("SELECT %s FROM polyregion.row_version v WHERE v.tbl = %s AND %s",
		strings.Join(versionColumns, ", "), quoteLiteral(table), keyRange(keys, versionKeyExprs(keys), lo, hi))
	if indexed {
		versions = fmt.Sprintf("SELECT %s FROM pg_temp.polyregion_chunk_versions v WHERE %s",
			strings.Join(versionColumns, ", "), keyRange(keys, indexedKeyExprs(keys), lo, hi))
	}
	v, err := copyPart(ctx, tx, w, frameVersions, "", "COPY ("+versions+") TO STDOUT (FORMAT text)")
	if err != nil {
		return err
	}
	sum.Versions += v
	if err := writeSnapshotJSON(w, frameCommit, SnapshotUnit{Tables: []string{table}, After: hi}); err != nil {
		return fmt.Errorf("snapshot: send the end of a chunk of %s: %w", table, err)
	}
	return nil
}

// dropChunkVersions drops chunkVersions's table.
func dropChunkVersions(ctx context.Context, tx pgx.Tx) error {
	if _, err := tx.Exec(ctx, `DROP TABLE pg_temp.polyregion_chunk_versions`); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

// chunkVersions copies table's row versions into a temporary table with
// their keys read back as the key columns (k0, k1, ...) and indexed, in
// the snapshot: one pass over them, where a range condition per chunk on
// row_version would read them all for every chunk.
func chunkVersions(ctx context.Context, tx pgx.Tx, table string, keys []chunkKey) error {
	exprs := versionKeyExprs(keys)
	named := make([]string, len(keys))
	for i, e := range exprs {
		named[i] = fmt.Sprintf("%s AS k%d", e, i)
	}
	for _, q := range []string{
		fmt.Sprintf("CREATE TEMPORARY TABLE polyregion_chunk_versions ON COMMIT DROP AS SELECT %s, %s FROM polyregion.row_version v WHERE v.tbl = %s",
			strings.Join(named, ", "), strings.Join(versionColumns, ", "), quoteLiteral(table)),
		fmt.Sprintf("CREATE INDEX ON pg_temp.polyregion_chunk_versions (%s)", strings.Join(indexedKeyExprs(keys), ", ")),
		"ANALYZE pg_temp.polyregion_chunk_versions",
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			return fmt.Errorf("snapshot: index the row versions of %s by key: %w", table, err)
		}
	}
	return nil
}

// indexedKeyExprs are the key columns of chunkVersions's table.
func indexedKeyExprs(keys []chunkKey) []string {
	out := make([]string, len(keys))
	for i := range keys {
		out[i] = fmt.Sprintf("k%d", i)
	}
	return out
}

// sendWhole sends the tables (in order) whole, with their versions and
// parked changes, as one unit; restart names those loaded in part before
// (the joining region removes those parts first).
func sendWhole(ctx context.Context, tx pgx.Tx, w io.Writer, tables []SnapshotTable, restart map[string]bool, sum *SnapshotSummary) error {
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = t.Name
		n, err := copyTable(ctx, tx, w, t, restart[t.Name])
		if err != nil {
			return err
		}
		sum.Rows[t.Name] += n
	}
	if err := copyVersionsAndParked(ctx, tx, w, names, sum); err != nil {
		return err
	}
	if err := writeSnapshotJSON(w, frameCommit, SnapshotUnit{Tables: names}); err != nil {
		return fmt.Errorf("snapshot: send the end of a part: %w", err)
	}
	return nil
}

// splitUnits divides the tables still to send (in order) into those sent
// whole and those sent in chunks, and names the tables sent whole that
// were loaded in part before.
func splitUnits(tables []SnapshotTable, whole map[string]bool, resume SnapshotResume) (wholeTables, chunked []SnapshotTable, restart map[string]bool) {
	restart = map[string]bool{}
	for _, t := range tables {
		switch {
		case resume.done(t.Name):
		case whole[t.Name]:
			wholeTables = append(wholeTables, t)
			if _, ok := resume.After[t.Name]; ok {
				restart[t.Name] = true
			}
		default:
			chunked = append(chunked, t)
		}
	}
	return wholeTables, chunked, restart
}
