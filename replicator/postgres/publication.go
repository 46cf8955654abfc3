package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// preparePublication makes the region's publication pub hold exactly
// tables (inserts, updates, deletes and truncates). Only the tables that
// change are named in a statement: publishing a table locks it (SHARE
// UPDATE EXCLUSIVE, which waits for a VACUUM or CREATE INDEX CONCURRENTLY
// of it), so a restart with the same tables locks none.
func preparePublication(ctx context.Context, conn *pgx.Conn, pub string, tables []string) error {
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)`, pub).Scan(&exists); err != nil {
		return fmt.Errorf("prepare publication: %w", err)
	}
	if !exists {
		// With no tables yet when every table waits for its seed.
		stmt := "CREATE PUBLICATION " + quoteIdent(pub) + forTables(tables) + " WITH (publish = 'insert, update, delete, truncate')"
		if err := changeTables(ctx, conn, tables, "SHARE UPDATE EXCLUSIVE", "create publication "+pub, []string{stmt}); err != nil {
			return err
		}
		return nil
	}
	// pg_publication_rel names the tables added (pg_publication_tables
	// would name a partitioned table's partitions).
	rows, err := conn.Query(ctx, `SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_publication_rel r
		JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid
		JOIN pg_catalog.pg_class c ON c.oid = r.prrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE p.pubname = $1`, pub)
	if err != nil {
		return fmt.Errorf("prepare publication %s: %w", pub, err)
	}
	have, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("prepare publication %s: %w", pub, err)
	}
	var add, drop []string
	for _, t := range tables {
		if !slices.Contains(have, t) {
			add = append(add, t)
		}
	}
	for _, t := range have {
		if !slices.Contains(tables, t) {
			drop = append(drop, t)
		}
	}
	for _, c := range []struct {
		verb   string
		tables []string
	}{{"ADD", add}, {"DROP", drop}} {
		if len(c.tables) == 0 {
			continue
		}
		stmt := "ALTER PUBLICATION " + quoteIdent(pub) + " " + c.verb + " TABLE " + qualifiedList(c.tables)
		if err := changeTables(ctx, conn, c.tables, "SHARE UPDATE EXCLUSIVE", "prepare publication "+pub+": "+strings.ToLower(c.verb)+" "+strings.Join(c.tables, ", "), []string{stmt}); err != nil {
			return err
		}
	}
	return nil
}

// forTables is the FOR TABLE clause naming tables, empty for none.
func forTables(tables []string) string {
	if len(tables) == 0 {
		return ""
	}
	return " FOR TABLE " + qualifiedList(tables)
}

// qualifiedList quotes tables, comma separated.
func qualifiedList(tables []string) string {
	return strings.Join(qualifiedNames(tables), ", ")
}
