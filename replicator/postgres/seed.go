package postgres

// Seeding a table added at an epoch (see regions/tables.go): once, in one
// transaction, the table is locked against writes (SHARE: applications'
// writes wait; reads go on), added to the region's publication, and every
// row it holds is emitted into the WAL as transactional logical decoding
// messages (SeedPrefix: "table\n" and a JSON array of rows, each an array
// of the columns' text values or null, as the change stream renders
// them). The reader turns those into inserts of the transaction, which it
// versions and ships like any local write (addSeeded). Rows committed
// before the seed are in it, those after are in the change stream from
// the publication's change on: none is missed or shipped twice.

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

// SeedPrefix is the prefix of the logical decoding messages that carry an
// added table's rows.
const SeedPrefix = "polyregion.seed"

// seedBatchRows is how many rows one seed message carries.
const seedBatchRows = 1000

// seedLockTimeout bounds the wait for the applications' transactions on a
// table being seeded (a longer one is retried with the data plane).
const seedLockTimeout = "30s"

// unseeded returns the tables of added (table -> epoch that added it) not
// seeded here yet.
func unseeded(ctx context.Context, conn *pgx.Conn, added map[string]uint64) (map[string]bool, error) {
	out := map[string]bool{}
	for t := range added {
		var done bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM polyregion.seeded WHERE tbl = $1)`, t).Scan(&done); err != nil {
			return nil, fmt.Errorf("seeded tables: %w", err)
		}
		if !done {
			out[t] = true
		}
	}
	return out, nil
}

// SeedTable seeds table, added at epoch, into the region's change stream
// (see above) and returns how many rows it emitted. A table seeded
// already is left alone (0, nil).
func SeedTable(ctx context.Context, conn *pgx.Conn, region, table string, epoch uint64) (int64, error) {
	sh, err := LoadShape(ctx, conn, table)
	if err != nil {
		return 0, fmt.Errorf("seed %s: %w", table, err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("seed %s: %w", table, err)
	}
	defer tx.Rollback(context.Background())
	var done bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM polyregion.seeded WHERE tbl = $1)`, table).Scan(&done); err != nil || done {
		return 0, err
	}
	for _, stmt := range []string{
		"SET LOCAL lock_timeout = '" + seedLockTimeout + "'",
		"LOCK TABLE " + qualified(table) + " IN SHARE MODE",
	} {
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return 0, fmt.Errorf("seed %s: %w", table, err)
		}
	}
	var member bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_catalog.pg_publication_tables WHERE pubname = $1 AND schemaname || '.' || tablename = $2)`,
		PublicationName(region), table).Scan(&member); err != nil {
		return 0, fmt.Errorf("seed %s: %w", table, err)
	}
	if !member {
		if _, err := tx.Exec(ctx, "ALTER PUBLICATION "+quoteIdent(PublicationName(region))+" ADD TABLE "+qualified(table)); err != nil {
			return 0, fmt.Errorf("seed %s: publish: %w", table, err)
		}
	}
	vals := make([]string, len(sh.Columns))
	for i, c := range sh.Columns {
		// format('%s', v) renders v with its type's output function, as
		// the change stream does (a cast to text may not).
		vals[i] = fmt.Sprintf("CASE WHEN t.%[1]s IS NULL THEN NULL ELSE pg_catalog.format('%%s', t.%[1]s) END", quoteIdent(c))
	}
	var rows int64
	if err := tx.QueryRow(ctx, fmt.Sprintf(`SELECT coalesce(pg_catalog.sum(m.n), 0)::bigint FROM (
		SELECT pg_catalog.count(*) AS n, pg_catalog.pg_logical_emit_message(true, $1, $2 || E'\n' || pg_catalog.json_agg(r.a)::text) AS lsn
		FROM (SELECT pg_catalog.json_build_array(%s) AS a, (pg_catalog.row_number() OVER () - 1) / %d AS b FROM %s t) r
		GROUP BY r.b) m`, strings.Join(vals, ", "), seedBatchRows, qualified(table)), SeedPrefix, table).Scan(&rows); err != nil {
		return 0, fmt.Errorf("seed %s: %w", table, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO polyregion.seeded (tbl, epoch, rows) VALUES ($1, $2, $3)`, table, int64(epoch), rows); err != nil {
		return 0, fmt.Errorf("seed %s: %w", table, err)
	}
	return rows, tx.Commit(ctx)
}

// addSeeded turns one seed message of an added table ("table\n" and a
// JSON array of rows) into inserts of the current transaction.
func (r *Reader) addSeeded(ctx context.Context, conn *pgx.Conn, cur *pendingTxn, rels map[uint32]*relation, content []byte) error {
	rel, body, err := r.messageTable(ctx, conn, cur, rels, content, "seed")
	if rel == nil || err != nil {
		return err
	}
	name := rel.name
	var rows [][]*string
	if err := json.Unmarshal([]byte(body), &rows); err != nil {
		return fmt.Errorf("reader: malformed seed of %s in transaction %d: %w", name, cur.xid, err)
	}
	for _, vals := range rows {
		if len(vals) != len(rel.shape.Columns) {
			return fmt.Errorf("reader: seed of %s carries %d values, the table has %d columns", name, len(vals), len(rel.shape.Columns))
		}
		row := make([]replicator.Value, len(vals))
		for i, v := range vals {
			if v == nil {
				row[i] = replicator.Value{Null: true}
			} else {
				row[i] = replicator.Value{Text: *v}
			}
		}
		key, err := rel.shape.KeyOf(row)
		if err != nil {
			return fmt.Errorf("reader: seed of %s: %w", name, err)
		}
		cur.changes = append(cur.changes, rawChange{rel: rel, op: conflict.OpInsert, key: key, row: row})
	}
	return nil
}
