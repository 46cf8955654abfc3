package postgres

// Seeding a table added at an epoch (see regions/tables.go): every row the
// table holds is emitted into the WAL as transactional logical decoding
// messages (SeedPrefix: "table\n" and a JSON array of rows, each an array
// of the columns' text values or null, as the change stream renders
// them). The reader turns those into inserts of their transaction, which
// it versions and ships like any local write (addSeeded).
//
// The rows go in chunks of SeedChunkRows in key order, one transaction
// each. Each locks the table against writes (SHARE: applications' writes
// wait, reads go on) only while it reads its chunk, so applications wait
// for one chunk at a time, never for the whole table. The first also adds
// the table to the region's publication, so every write from then on is
// in the change stream. What that gives:
//
//   - A row's chunk carries its latest committed state: no write to the
//     table is in progress while a chunk reads (the lock), and every
//     earlier write is in the stream before the chunk's transaction. So
//     the chunk's row is a causal successor of whatever the stream already
//     carried of the row, with the same values: nothing older overwrites
//     anything newer, and an update that left a TOASTed value out of the
//     stream is completed by the row's chunk.
//   - A row written between the first chunk and its own is first shipped
//     by that write. The reader knows (Reader.unseededWrite: no version
//     recorded, committed inside the seed's WAL bounds) and ships its
//     counters' whole values, not the change from an old value no peer
//     has (with REPLICA IDENTITY FULL the stream carries that old value).
//   - Rows deleted before their chunk are in no chunk; their delete went
//     in the stream.
//
// A seed that stops after its first chunk (the process stopped, or a chunk
// could not get the lock) is recorded in polyregion.seeding: the table
// stays published (Prepare), the reader keeps its window open (the table's
// writes are inside the seed; see reader_seeds.go), and the next run seeds
// it again from the first key, keeping the WAL position where it began.
// Rows the earlier run emitted go again as successors of themselves, with
// their current values. The seed runs while the data plane does (the
// node parks peers' changes of the table meanwhile).

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
)

// SeedPrefix is the prefix of the logical decoding messages that carry an
// added table's rows.
const SeedPrefix = "polyregion.seed"

// seedBatchRows is how many rows one seed message carries.
const seedBatchRows = 1000

// SeedChunkRows is how many rows one seed transaction reads, holding the
// table's writers meanwhile (15-40 ms for a million-row table here). A
// seed whose rows are a multiple of it ends with a chunk that reads none
// and emits no seed message (it only records the seed's end).
const SeedChunkRows = 5000

// seedLockBudget bounds how long a chunk tries to get its lock, each wait
// at most tableLockAttempt (the seed is then tried again with the data
// plane).
const seedLockBudget = 30 * time.Second

// SeedStats is what a seed did.
type SeedStats struct {
	Rows   int64 // rows emitted
	Chunks int   // transactions
	// LongestHold is the longest time one chunk held the table's writers,
	// from its lock to its commit.
	LongestHold time.Duration
	// Resumed: a seed begun by an earlier run went on; Earlier is how many
	// rows that run had seeded when it stopped (this one emits them again,
	// from the first key).
	Resumed bool
	Earlier int64
}

// SeedUnfinished is a seed that began (its table is published) and could
// not finish: the table's writes are in the stream, and the reader must
// take them as inside the seed (its window stays open) until a later run
// finishes it.
type SeedUnfinished struct {
	Table string
	Err   error
}

func (e *SeedUnfinished) Error() string {
	return fmt.Sprintf("the seed of %s began and could not finish (it goes on from the first key when the data plane starts again): %v", e.Table, e.Err)
}

func (e *SeedUnfinished) Unwrap() error { return e.Err }

// unseeded returns the tables of added (table -> epoch that added it) not
// seeded here yet, and of those, the ones whose seed began.
func unseeded(ctx context.Context, conn *pgx.Conn, added map[string]uint64) (map[string]bool, map[string]bool, error) {
	out, begun := map[string]bool{}, map[string]bool{}
	for t := range added {
		var done, started bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM polyregion.seeded WHERE tbl = $1), EXISTS (SELECT FROM polyregion.seeding WHERE tbl = $1)`, t).Scan(&done, &started); err != nil {
			return nil, nil, fmt.Errorf("seeded tables: %w", err)
		}
		if !done {
			out[t] = true
			begun[t] = started
		}
	}
	return out, begun, nil
}

// SeedTable seeds t, added at epoch t.Added, into the region's change
// stream (see above), telling progress (when set) what it did after each
// chunk, and before the first when it resumes an earlier run's seed. A
// table seeded already is left alone (zero stats, nil). An error after the
// seed began is a *SeedUnfinished.
func SeedTable(ctx context.Context, conn *pgx.Conn, region string, t regions.Table, progress func(SeedStats)) (SeedStats, error) {
	table := t.Name
	var st SeedStats
	sh, err := LoadShape(ctx, conn, table)
	if err != nil {
		return st, fmt.Errorf("seed %s: %w", table, err)
	}
	var earlier *int64
	if err := conn.QueryRow(ctx, `SELECT max(rows) FROM polyregion.seeding WHERE tbl = $1`, table).Scan(&earlier); err != nil {
		return st, fmt.Errorf("seed %s: %w", table, err)
	}
	if earlier != nil {
		st.Resumed, st.Earlier = true, *earlier
		if progress != nil {
			// Its first chunk may wait for the table's writers.
			progress(st)
		}
	}
	begun := st.Resumed
	var after []string // the last key seeded; nil: none yet
	for {
		done, err := seedChunk(ctx, conn, region, t, sh, &after, &st, begun)
		if err != nil {
			if begun && !IsUnavailable(err) {
				return st, &SeedUnfinished{Table: table, Err: err}
			}
			return st, err
		}
		begun = true
		if progress != nil {
			progress(st)
		}
		if done {
			return st, nil
		}
	}
}

// seedChunk emits the rows after *after (from the first when nil), up to
// SeedChunkRows of them, in one transaction, moving *after to the last;
// done when they were the last ones (or the table is seeded already).
func seedChunk(ctx context.Context, conn *pgx.Conn, region string, t regions.Table, sh replicator.Shape, after *[]string, st *SeedStats, begun bool) (done bool, err error) {
	table, epoch := t.Name, t.Added
	// The first chunk of a run puts the table's triggers on (unless in
	// place) before it publishes the table: with the lock that creating a
	// trigger takes, which holds the writers as SHARE does.
	var triggers []string
	mode := "SHARE"
	if *after == nil {
		if triggers, err = tableTriggersDDL(ctx, conn, t); err != nil {
			return false, fmt.Errorf("seed %s: %w", table, err)
		}
		if len(triggers) > 0 {
			mode = "SHARE ROW EXCLUSIVE"
		}
	}
	tx, held, err := lockForSeed(ctx, conn, table, mode)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(context.Background())
	for _, stmt := range triggers {
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return false, fmt.Errorf("seed %s: %w", table, err)
		}
	}
	if !begun {
		var seeded bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM polyregion.seeded WHERE tbl = $1)`, table).Scan(&seeded); err != nil || seeded {
			return true, err
		}
		// Under the lock no write to the table is in progress: every one
		// committed so far is before this position, every later one after
		// this transaction.
		if _, err := tx.Exec(ctx, `INSERT INTO polyregion.seeding (tbl, epoch, began_lsn) VALUES ($1, $2, pg_catalog.pg_current_wal_insert_lsn())
			ON CONFLICT (tbl) DO NOTHING`, table, int64(epoch)); err != nil {
			return false, fmt.Errorf("seed %s: %w", table, err)
		}
	}
	if *after == nil {
		// Published in the first chunk of each run (Prepare keeps a begun
		// seed's table published; this makes sure, under the lock).
		var member bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_catalog.pg_publication_rel r JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid
			WHERE p.pubname = $1 AND r.prrelid = pg_catalog.to_regclass($2))`,
			PublicationName(region), qualified(table)).Scan(&member); err != nil {
			return false, fmt.Errorf("seed %s: %w", table, err)
		}
		if !member {
			if _, err := tx.Exec(ctx, "ALTER PUBLICATION "+quoteIdent(PublicationName(region))+" ADD TABLE "+qualified(table)); err != nil {
				return false, fmt.Errorf("seed %s: publish: %w", table, err)
			}
		}
	}
	args := []any{SeedPrefix, table, SeedChunkRows}
	for _, k := range *after {
		args = append(args, k)
	}
	var n int64
	var last *string
	if err := tx.QueryRow(ctx, seedChunkSQL(sh, *after != nil), args...).Scan(&n, &last); err != nil {
		return false, fmt.Errorf("seed %s: %w", table, err)
	}
	st.Rows += n
	done = n < SeedChunkRows
	if done {
		tag, err := tx.Exec(ctx, `INSERT INTO polyregion.seeded (tbl, epoch, rows, began_lsn, ended_lsn)
			SELECT tbl, epoch, $2, began_lsn, pg_catalog.pg_current_wal_insert_lsn() FROM polyregion.seeding WHERE tbl = $1`, table, st.Rows)
		if err != nil {
			return false, fmt.Errorf("seed %s: %w", table, err)
		}
		if tag.RowsAffected() != 1 {
			return false, fmt.Errorf("seed %s: its start is not recorded (polyregion.seeding)", table)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM polyregion.seeding WHERE tbl = $1`, table); err != nil {
			return false, fmt.Errorf("seed %s: %w", table, err)
		}
	} else {
		if last == nil {
			return false, fmt.Errorf("seed %s: a full chunk without a last row", table)
		}
		key, err := seedKey(sh, *last)
		if err != nil {
			return false, fmt.Errorf("seed %s: %w", table, err)
		}
		*after = key
		if _, err := tx.Exec(ctx, `UPDATE polyregion.seeding SET rows = $2 WHERE tbl = $1`, table, st.Rows); err != nil {
			return false, fmt.Errorf("seed %s: %w", table, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("seed %s: %w", table, err)
	}
	st.Chunks++
	st.LongestHold = max(st.LongestHold, time.Since(held))
	return done, nil
}

// lockForSeed begins a transaction holding table in mode (see lockTables),
// for at most seedLockBudget.
func lockForSeed(ctx context.Context, conn *pgx.Conn, table, mode string) (pgx.Tx, time.Time, error) {
	return lockTables(ctx, conn, []string{table}, mode, seedLockBudget, "seed "+table)
}

// seedChunkSQL reads up to $3 rows of sh's table in key order (after the
// key in $4... when after), emits them as seed messages ($1 prefix, $2
// table) and returns how many and the last one (its JSON array).
func seedChunkSQL(sh replicator.Shape, after bool) string {
	vals := make([]string, len(sh.Columns))
	for i, c := range sh.Columns {
		// format('%s', v) renders v with its type's output function, as
		// the change stream does (a cast to text may not).
		vals[i] = fmt.Sprintf("CASE WHEN t.%[1]s IS NULL THEN NULL ELSE pg_catalog.format('%%s', t.%[1]s) END", quoteIdent(c))
	}
	keys := make([]string, len(sh.Key))
	bounds := make([]string, len(sh.Key))
	for j, i := range sh.Key {
		keys[j] = "t." + quoteIdent(sh.Columns[i])
		bounds[j] = fmt.Sprintf("CAST($%d::text AS %s)", 4+j, sh.Types[i])
	}
	order := strings.Join(keys, ", ")
	where := ""
	if after {
		where = fmt.Sprintf(" WHERE (%s) > (%s)", order, strings.Join(bounds, ", "))
	}
	return fmt.Sprintf(`WITH c AS MATERIALIZED (
		SELECT pg_catalog.json_build_array(%s) AS a, pg_catalog.row_number() OVER (ORDER BY %s) AS i
		FROM %s t%s ORDER BY %s LIMIT $3)
	SELECT (SELECT coalesce(pg_catalog.sum(m.n), 0)::bigint FROM (
			SELECT pg_catalog.count(*) AS n, pg_catalog.pg_logical_emit_message(true, $1, $2 || E'\n' || pg_catalog.json_agg(c.a)::text) AS lsn
			FROM c GROUP BY (c.i - 1) / %d) m),
		(SELECT c.a::text FROM c ORDER BY c.i DESC LIMIT 1)`,
		strings.Join(vals, ", "), order, qualified(sh.Table), where, order, seedBatchRows)
}

// seedKey takes the key values out of a seeded row (its JSON array).
func seedKey(sh replicator.Shape, row string) ([]string, error) {
	var vals []*string
	if err := json.Unmarshal([]byte(row), &vals); err != nil || len(vals) != len(sh.Columns) {
		return nil, fmt.Errorf("malformed seeded row (%d bytes)", len(row))
	}
	key := make([]string, len(sh.Key))
	for j, i := range sh.Key {
		if vals[i] == nil {
			return nil, fmt.Errorf("seeded row with a null key column %q", sh.Columns[i])
		}
		key[j] = *vals[i]
	}
	return key, nil
}

// addSeeded turns one seed message of an added table ("table\n" and a
// JSON array of rows) into inserts of the current transaction.
func (r *Reader) addSeeded(ctx context.Context, conn *pgx.Conn, cur *pendingTxn, rels map[uint32]*relation, content []byte) error {
	rel, body, err := r.messageTable(ctx, conn, cur, rels, content, "seed")
	if rel == nil || err != nil {
		return err
	}
	name := rel.name
	if err := r.seedBegun(ctx, conn, name); err != nil {
		return err
	}
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
