package postgres

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/replicator"
)

// LoadShape reads a table's columns and primary key from the local catalog.
// It returns ErrNoTable or ErrNoPrimaryKey (wrapped) when the table cannot be
// replicated.
func LoadShape(ctx context.Context, conn *pgx.Conn, table string) (replicator.Shape, error) {
	s, r, _ := strings.Cut(table, ".")
	rows, err := conn.Query(ctx, `
		SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
		       coalesce((SELECT k.ord FROM pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) WHERE k.attnum = a.attnum), 0)::int
		FROM pg_catalog.pg_attribute a
		JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary
		WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r','p')
		  AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		ORDER BY a.attnum`, s, r)
	if err != nil {
		return replicator.Shape{}, fmt.Errorf("load shape of %s: %w", table, err)
	}
	sh := replicator.Shape{Table: table}
	type kc struct{ pos, col int }
	var keys []kc
	for rows.Next() {
		var name, typ string
		var keyPos int
		if err := rows.Scan(&name, &typ, &keyPos); err != nil {
			return replicator.Shape{}, fmt.Errorf("load shape of %s: %w", table, err)
		}
		if keyPos > 0 {
			keys = append(keys, kc{keyPos, len(sh.Columns)})
		}
		sh.Columns = append(sh.Columns, name)
		sh.Types = append(sh.Types, typ)
	}
	if err := rows.Err(); err != nil {
		return replicator.Shape{}, fmt.Errorf("load shape of %s: %w", table, err)
	}
	if len(sh.Columns) == 0 {
		return replicator.Shape{}, fmt.Errorf("%s: %w", table, ErrNoTable)
	}
	if len(keys) == 0 {
		return replicator.Shape{}, fmt.Errorf("%s: %w", table, ErrNoPrimaryKey)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].pos < keys[j].pos })
	for _, k := range keys {
		sh.Key = append(sh.Key, k.col)
	}
	return sh, nil
}

// StreamShape describes a table as a relation message of the change stream
// does: the stream's own columns (which may lag the catalog after DDL), with
// the primary key from the catalog.
func StreamShape(ctx context.Context, conn *pgx.Conn, msg *pglogrepl.RelationMessage) (replicator.Shape, error) {
	name := msg.Namespace + "." + msg.RelationName
	cat, err := LoadShape(ctx, conn, name)
	if err != nil {
		return replicator.Shape{}, fmt.Errorf("relation %s: %w", name, err)
	}
	sh := replicator.Shape{Table: name}
	for _, c := range msg.Columns {
		var typ string
		if err := conn.QueryRow(ctx, `SELECT pg_catalog.format_type($1::oid, $2::int)`, c.DataType, c.TypeModifier).Scan(&typ); err != nil {
			return replicator.Shape{}, fmt.Errorf("relation %s: type of column %q: %w", name, c.Name, err)
		}
		sh.Columns = append(sh.Columns, c.Name)
		sh.Types = append(sh.Types, typ)
	}
	for _, k := range cat.Key {
		j := indexOf(sh.Columns, cat.Columns[k])
		if j < 0 {
			return replicator.Shape{}, fmt.Errorf("relation %s: primary key column %q is not in the stream's description of the table", name, cat.Columns[k])
		}
		sh.Key = append(sh.Key, j)
	}
	return sh, nil
}

var (
	// ErrNoTable: a configured table does not exist in this database.
	ErrNoTable = errors.New("table does not exist")
	// ErrNoPrimaryKey: a configured table has no primary key; rows could not
	// be identified across regions.
	ErrNoPrimaryKey = errors.New("table has no primary key (every replicated table needs one)")
)

// Problems is every reason the database cannot be replicated, found at once.
type Problems []string

func (p Problems) Error() string {
	return "preflight found " + fmt.Sprint(len(p)) + " problem(s):\n  - " + strings.Join(p, "\n  - ")
}

// Preflight checks that the database can be replicated as configured and
// changes nothing. It returns Problems listing everything wrong.
func Preflight(ctx context.Context, conn *pgx.Conn, tables []string) error {
	var probs Problems
	var walLevel, commitTS string
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.current_setting('wal_level'), pg_catalog.current_setting('track_commit_timestamp')`).Scan(&walLevel, &commitTS); err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	if walLevel != "logical" {
		probs = append(probs, fmt.Sprintf("wal_level is %q; set wal_level = logical and restart PostgreSQL", walLevel))
	}
	if commitTS != "on" {
		probs = append(probs, "track_commit_timestamp is off; set track_commit_timestamp = on and restart PostgreSQL (the applier uses commit origins to tell local writes from applied ones)")
	}
	var canRepl, isSuper bool
	var user string
	if err := conn.QueryRow(ctx, `SELECT rolreplication, rolsuper, rolname FROM pg_catalog.pg_roles WHERE rolname = current_user`).Scan(&canRepl, &isSuper, &user); err != nil {
		return fmt.Errorf("preflight: %w", err)
	}
	if !canRepl && !isSuper {
		probs = append(probs, fmt.Sprintf("role %q lacks REPLICATION: ALTER ROLE %s REPLICATION", user, quoteIdent(user)))
	}
	if !isSuper {
		for _, fn := range []string{"pg_replication_origin_session_setup(text)", "pg_replication_origin_create(text)", "pg_replication_origin_xact_setup(pg_lsn,timestamp with time zone)"} {
			var ok bool
			if err := conn.QueryRow(ctx, `SELECT pg_catalog.has_function_privilege(current_user, $1, 'EXECUTE')`, "pg_catalog."+fn).Scan(&ok); err != nil {
				return fmt.Errorf("preflight: %w", err)
			}
			if !ok {
				probs = append(probs, fmt.Sprintf("role %q may not execute pg_catalog.%s: GRANT EXECUTE ON FUNCTION pg_catalog.%s TO %s", user, fn, fn, quoteIdent(user)))
			}
		}
	}
	tp, err := tableProblems(ctx, conn, user, tables)
	if err != nil {
		return err
	}
	if probs = append(probs, tp...); len(probs) > 0 {
		return probs
	}
	return nil
}

// tableProblems lists what keeps tables from being replicated here: a
// table missing or without a primary key, a partitioned table (its
// partitions are replicated instead), a primary key that compares
// otherwise than by its bytes, a replica identity that leaves the key out
// of the WAL, a privilege user lacks.
func tableProblems(ctx context.Context, conn *pgx.Conn, user string, tables []string) (Problems, error) {
	var probs Problems
	for _, t := range tables {
		sh, err := LoadShape(ctx, conn, t)
		if err != nil {
			if errors.Is(err, ErrNoTable) || errors.Is(err, ErrNoPrimaryKey) {
				probs = append(probs, err.Error())
				continue
			}
			return nil, err
		}
		var partitioned bool
		if err := conn.QueryRow(ctx, `SELECT c.relkind = 'p' FROM pg_catalog.pg_class c WHERE c.oid = $1::pg_catalog.regclass`, qualified(sh.Table)).Scan(&partitioned); err != nil {
			return nil, fmt.Errorf("preflight: %w", err)
		}
		if partitioned {
			// Its changes reach the change stream under its partitions'
			// names, and a join's copy, a re-seed and a TRUNCATE's capture
			// read its rows with ONLY: nothing of it would be replicated.
			probs = append(probs, fmt.Sprintf("%s: table is partitioned, which is not replicated as one table: replicate its partitions, each as a table of its own", t))
			continue
		}
		kp, err := keyEqualityProblems(ctx, conn, t)
		if err != nil {
			return nil, err
		}
		probs = append(probs, kp...)
		ri, err := replicaIdentityProblems(ctx, conn, t)
		if err != nil {
			return nil, err
		}
		probs = append(probs, ri...)
		for _, priv := range []string{"SELECT", "INSERT", "UPDATE", "DELETE", "TRIGGER"} {
			var ok bool
			if err := conn.QueryRow(ctx, `SELECT pg_catalog.has_table_privilege(current_user, $1, $2)`, qualified(sh.Table), priv).Scan(&ok); err != nil {
				return nil, fmt.Errorf("preflight: %w", err)
			}
			if !ok {
				probs = append(probs, fmt.Sprintf("role %q lacks %s on %s", user, priv, t))
			}
		}
	}
	return probs, nil
}

// CheckTables reports what keeps tables from being replicated here (nil:
// nothing).
func CheckTables(ctx context.Context, conn *pgx.Conn, tables []string) error {
	if len(tables) == 0 {
		return nil
	}
	var user string
	if err := conn.QueryRow(ctx, `SELECT current_user`).Scan(&user); err != nil {
		return fmt.Errorf("check tables: %w", err)
	}
	probs, err := tableProblems(ctx, conn, user, tables)
	if err != nil {
		return err
	}
	if len(probs) > 0 {
		return probs
	}
	return nil
}

// Prepare creates what the region's reader and appliers need: the schema,
// the publication over the replicated tables (kept in step with the config),
// the replication slot, the TRUNCATE capture trigger and one replication
// origin per peer. Idempotent; what is in place already takes no lock on
// the applications' tables, and what is not waits for their locks only
// briefly (a *LockBusy when they hold a table past the budget).
// The tables of added (table -> the epoch that added it) not seeded here
// yet are returned, and left out of the publication unless their seed
// began: SeedTable publishes each and puts its triggers on.
func Prepare(ctx context.Context, conn *pgx.Conn, region string, tables []string, added map[string]uint64, peers []string) ([]string, error) {
	if err := Install(ctx, conn); err != nil {
		return nil, err
	}
	// A table dropped is seeded again if it is added again.
	if _, err := conn.Exec(ctx, `DELETE FROM polyregion.seeded WHERE NOT (tbl = ANY ($1::text[]))`, tables); err != nil {
		return nil, fmt.Errorf("prepare: seeded tables: %w", err)
	}
	held, begun, err := unseeded(ctx, conn, added)
	if err != nil {
		return nil, err
	}
	var list, pending, capture []string
	for _, t := range tables {
		if held[t] {
			// Its seed puts the capture trigger on, under its own lock.
			pending = append(pending, t)
		} else {
			capture = append(capture, t)
		}
		// A seed that began keeps its table published: the writes since
		// are in the stream, and the seed goes on.
		if !held[t] || begun[t] {
			list = append(list, t)
		}
	}
	if err := preparePublication(ctx, conn, PublicationName(region), list); err != nil {
		return nil, err
	}
	if err := prepareSlot(ctx, conn, region); err != nil {
		return nil, err
	}
	if err := prepareTruncateCapture(ctx, conn, capture); err != nil {
		return nil, err
	}
	if err := prepareOwnerExec(ctx, conn, tables); err != nil {
		return nil, err
	}
	origins := []string{VersionsOrigin}
	for _, p := range peers {
		origins = append(origins, OriginName(p))
	}
	for _, o := range origins {
		if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_create($1)
			WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = $1)`, o); err != nil {
			return nil, fmt.Errorf("prepare replication origin %s: %w", o, err)
		}
	}
	return pending, nil
}

// quoteLiteral quotes a SQL string literal in the escape form (E'...'),
// which reads the same whatever standard_conforming_strings says.
func quoteLiteral(s string) string {
	return "E'" + strings.NewReplacer(`\`, `\\`, "'", "''").Replace(s) + "'"
}
