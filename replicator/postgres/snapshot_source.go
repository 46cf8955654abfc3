package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/polyregion/polyregion/replicator"
)

// SnapshotConfig configures WriteSnapshot.
type SnapshotConfig struct {
	// Region is the region the snapshot is taken in; its replicator (the
	// reader above all) must be running.
	Region     string
	ConnString string
	Tables     []string
	// LockOrder, when set, is the order the applications write the tables
	// in (the appliers' order): the pause locks them in it, so it never
	// closes a lock cycle with an application that keeps it.
	LockOrder *replicator.TableOrder
	// PauseWithin bounds the attempts to pause the tables' writers
	// (default 2 min).
	PauseWithin time.Duration
	// ReaderTimeout bounds the wait for the reader to version every local
	// write before the snapshot (default 2 min).
	ReaderTimeout time.Duration
	// Resume, when set, asks for the snapshot in units (see
	// snapshot_units.go), leaving out what the joining region loaded.
	Resume *SnapshotResume
	// SpoolBytes bounds how much of a table one pass over it spools on
	// this host's disk (os.TempDir), for a table whose key is not in the
	// order of its rows on disk (see snapshot_spool.go; default
	// DefaultSpoolBytes).
	SpoolBytes int64
	Logger     *slog.Logger
}

func (c *SnapshotConfig) defaults() {
	if c.PauseWithin <= 0 {
		c.PauseWithin = 2 * time.Minute
	}
	if c.ReaderTimeout <= 0 {
		c.ReaderTimeout = 2 * time.Minute
	}
	if c.SpoolBytes <= 0 {
		c.SpoolBytes = DefaultSpoolBytes
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// WriteSnapshot writes a consistent snapshot of the region's replicated
// tables to w (see snapshot_format.go). A w with a Flush method (the
// link's response) is flushed once the header is written: from then on a
// failure ends the stream early rather than answering with an error status,
// and the joining region, seeing it incomplete, asks again.
//
// Consistent means: the rows, their versions and the positions are those of
// one instant at which every local write to the tables was already
// versioned and in the outbox. Appliers write rows, versions and their
// position in one transaction, so any snapshot has them consistent; local
// writes are versioned afterwards by the reader. So the snapshot is taken
// while the tables' writers are paused (LOCK ... IN SHARE MODE: reads go on,
// writes wait) and after the reader has passed a barrier emitted inside that
// pause. The pause lasts the reader's lag behind the barrier (it was caught
// up just before) plus one query; the snapshot itself is read afterwards, in
// a REPEATABLE READ transaction, while writes go on.
func WriteSnapshot(ctx context.Context, cfg SnapshotConfig, w io.Writer) (SnapshotSummary, error) {
	cfg.defaults()
	sum := SnapshotSummary{Rows: map[string]int64{}}
	if len(cfg.Tables) == 0 {
		return sum, errors.New("snapshot: no replicated tables")
	}
	if cfg.Resume != nil {
		// Before the writers are paused: asking again cannot help.
		if unknown := cfg.Resume.Unknown(cfg.Tables); len(unknown) > 0 {
			return sum, refuseJoin("the joining region loaded tables %s from this region before, which it does not replicate now (a region of this release forgets them before it asks)", strings.Join(unknown, ", "))
		}
	}
	snap, err := Connect(ctx, cfg.ConnString)
	if err != nil {
		return sum, fmt.Errorf("snapshot: %w", err)
	}
	defer snap.Close(context.Background())
	tx, h, err := takeSnapshot(ctx, cfg, snap)
	if err != nil {
		return sum, err
	}
	defer tx.Rollback(context.Background())
	h.VersionColumns = versionColumns
	h.Units = cfg.Resume != nil
	if err := writeSnapshotJSON(w, frameHeader, h); err != nil {
		return sum, fmt.Errorf("snapshot: send header: %w", err)
	}
	// The header goes out at once: the joining region checks itself and
	// opens its load while this region reads the first rows.
	if err := flush(w); err != nil {
		return sum, fmt.Errorf("snapshot: send header: %w", err)
	}
	if cfg.Resume == nil {
		for _, t := range h.Tables {
			n, err := copyTable(ctx, tx, w, t, false)
			if err != nil {
				return sum, err
			}
			sum.Rows[t.Name] = n
		}
		if err := copyVersionsAndParked(ctx, tx, w, cfg.Tables, &sum); err != nil {
			return sum, err
		}
	} else if err := sendUnits(ctx, tx, w, h.Tables, *cfg.Resume, chunkReading{spoolBytes: cfg.SpoolBytes, log: cfg.Logger}, &sum); err != nil {
		return sum, err
	}
	if err := tx.Commit(ctx); err != nil {
		return sum, fmt.Errorf("snapshot: %w", err)
	}
	if err := writeSnapshotJSON(w, frameDone, sum); err != nil {
		return sum, fmt.Errorf("snapshot: send end: %w", err)
	}
	return sum, nil
}

// sendUnits sends what the joining region still lacks (see
// snapshot_units.go): the tables that go whole first, in one unit, then
// the others in chunks.
func sendUnits(ctx context.Context, tx pgx.Tx, w io.Writer, tables []SnapshotTable, resume SnapshotResume, how chunkReading, sum *SnapshotSummary) error {
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = t.Name
	}
	whole, err := wholeTables(ctx, tx, names)
	if err != nil {
		return err
	}
	all, chunked, restart := splitUnits(tables, whole, resume)
	if len(all) > 0 {
		if err := sendWhole(ctx, tx, w, all, restart, sum); err != nil {
			return err
		}
	}
	for _, t := range chunked {
		if err := sendChunks(ctx, tx, w, t, resume.After[t.Name], how, sum); err != nil {
			return err
		}
	}
	return nil
}

// copyTable sends one table's rows whole; restart: they replace the parts
// of it the joining region loaded before.
func copyTable(ctx context.Context, tx pgx.Tx, w io.Writer, t SnapshotTable, restart bool) (int64, error) {
	cols := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		cols[i] = quoteIdent(c.Name)
	}
	return sendPart(ctx, tx, w, frameTable, snapshotPart{Name: t.Name, Restart: restart},
		"COPY "+qualified(t.Name)+" ("+strings.Join(cols, ", ")+") TO STDOUT (FORMAT text)")
}

// copyVersionsAndParked sends the row versions and the parked changes of
// tables, adding their counts to sum.
func copyVersionsAndParked(ctx context.Context, tx pgx.Tx, w io.Writer, tables []string, sum *SnapshotSummary) error {
	list := quoteLiteral("{" + strings.Join(tables, ",") + "}")
	n, err := copyPart(ctx, tx, w, frameVersions, "",
		"COPY (SELECT "+strings.Join(versionColumns, ", ")+" FROM polyregion.row_version WHERE tbl = ANY ("+list+"::text[])) TO STDOUT (FORMAT text)")
	if err != nil {
		return err
	}
	sum.Versions += n
	n, err = copyPart(ctx, tx, w, frameParked, "",
		"COPY (SELECT "+strings.Join(parkedColumns, ", ")+" FROM polyregion.parked WHERE resolved_at IS NULL AND tbl = ANY ("+list+"::text[]) ORDER BY id) TO STDOUT (FORMAT text)")
	if err != nil {
		return err
	}
	sum.Parked += n
	return nil
}

// versionColumns and parkedColumns are what a snapshot carries of a row's
// version and of a parked change (row_version.xid is the local transaction
// that wrote the row: the loading region sets its own).
var (
	versionColumns = []string{"tbl", "key", "vv", "hlc", "origin", "deleted", "counters", "src_seq", "deleted_at", "siblings", "stamps", "own", "epoch"}
	// versionColumnsBefore are those of a source from before epochs,
	// whose header does not list them.
	versionColumnsBefore = versionColumns[:len(versionColumns)-1]
	parkedColumns        = []string{"source", "seq", "tbl", "key", "change", "shape", "reason"}
)

// copyPart sends one part: its opening frame, the COPY's data, its end.
func copyPart(ctx context.Context, tx pgx.Tx, w io.Writer, open byte, name, copySQL string) (int64, error) {
	return sendPart(ctx, tx, w, open, snapshotPart{Name: name}, copySQL)
}

// sendPart is copyPart with the opening frame's payload.
func sendPart(ctx context.Context, tx pgx.Tx, w io.Writer, open byte, part snapshotPart, copySQL string) (int64, error) {
	return sendFramed(w, open, part, part.Name, func(fw io.Writer) (int64, error) {
		tag, err := tx.Conn().PgConn().CopyTo(ctx, fw, copySQL)
		return tag.RowsAffected(), err
	})
}

// sendFramed sends one part: its opening frame, the data fill writes (as
// COPY text rows; it returns how many), its end. what names the part in
// errors ("" for versions and parked changes).
func sendFramed(w io.Writer, open byte, part snapshotPart, what string, fill func(io.Writer) (int64, error)) (int64, error) {
	if what == "" {
		what = map[byte]string{frameVersions: "row versions", frameParked: "parked changes"}[open]
	}
	if err := writeSnapshotJSON(w, open, part); err != nil {
		return 0, fmt.Errorf("snapshot: send %s: %w", what, err)
	}
	return continueFramed(w, part, what, fill)
}

// continueFramed is sendFramed after its opening frame.
func continueFramed(w io.Writer, part snapshotPart, what string, fill func(io.Writer) (int64, error)) (int64, error) {
	fw := &frameWriter{w: w}
	rows, err := fill(fw)
	if err == nil {
		err = fw.Flush()
	}
	if err != nil {
		return 0, fmt.Errorf("snapshot: copy %s: %w", what, err)
	}
	if err := writeSnapshotJSON(w, frameEnd, snapshotPart{Name: part.Name, Rows: rows}); err != nil {
		return 0, fmt.Errorf("snapshot: send %s: %w", what, err)
	}
	return rows, nil
}

// takeSnapshot pauses the tables' writers, waits for the reader to version
// every write made before the pause, starts the snapshot's transaction on
// snap, and lets the writers go on. It returns that transaction and what the
// snapshot holds.
func takeSnapshot(ctx context.Context, cfg SnapshotConfig, snap *pgx.Conn) (pgx.Tx, SnapshotHeader, error) {
	h := SnapshotHeader{Source: cfg.Region, Encoding: TextEncoding(snap.PgConn())}
	side, err := Connect(ctx, cfg.ConnString)
	if err != nil {
		return nil, h, fmt.Errorf("snapshot: %w", err)
	}
	defer side.Close(context.Background())
	// Catch the reader up first, so the pause lasts only its lag behind
	// the writes made meanwhile.
	if err := waitReaderPassed(ctx, cfg, side, cfg.ReaderTimeout); err != nil {
		return nil, h, err
	}
	lock, err := Connect(ctx, cfg.ConnString)
	if err != nil {
		return nil, h, fmt.Errorf("snapshot: %w", err)
	}
	defer lock.Close(context.Background())
	order, err := referenceOrder(ctx, side, cfg.Tables)
	if err != nil {
		return nil, h, err
	}
	lockOrder := append([]string(nil), cfg.Tables...)
	sort.Strings(lockOrder)
	if cfg.LockOrder != nil {
		cfg.LockOrder.Sort(lockOrder)
	}
	var tx pgx.Tx
	for attempt := 1; ; attempt++ {
		var retry bool
		tx, retry, err = pausedSnapshot(ctx, cfg, lock, side, snap, lockOrder, &h)
		if err == nil {
			break
		}
		if !retry || attempt == 5 {
			return nil, h, err
		}
		cfg.Logger.Warn("snapshot: the reader did not pass the pause's barrier in time; writers resumed, trying again", "attempt", attempt, "err", err)
	}
	// The snapshot may hold commits of appliers (which commit without
	// waiting for the flush): only durable ones are handed on.
	if err := FlushWAL(ctx, side); err != nil {
		tx.Rollback(context.Background())
		return nil, h, fmt.Errorf("snapshot: %w", err)
	}
	if err := readSnapshotHeader(ctx, tx, order, &h); err != nil {
		tx.Rollback(context.Background())
		return nil, h, err
	}
	cfg.Logger.Info("snapshot taken", "source_seq", h.SourceSeq, "writers_paused_ms", h.PauseMillis, "tables", len(h.Tables))
	return tx, h, nil
}

// pausedReaderWait bounds the wait for the reader while writers are
// paused: past it they resume and the pause is tried again.
const pausedReaderWait = 5 * time.Second

// pausedSnapshot pauses the writers, waits (briefly) for the reader to
// pass a barrier, starts the snapshot's transaction on snap with the
// reader's position read in it (and how long the writers waited in
// h.PauseMillis), and lets the writers go. retry: the reader was too slow
// and the writers were let go without a snapshot.
func pausedSnapshot(ctx context.Context, cfg SnapshotConfig, lock, side, snap *pgx.Conn, order []string, h *SnapshotHeader) (pgx.Tx, bool, error) {
	ltx, paused, err := pauseWriters(ctx, cfg, lock, order)
	if err != nil {
		return nil, false, err
	}
	defer ltx.Rollback(context.Background())
	if err := waitReaderPassed(ctx, cfg, side, pausedReaderWait); err != nil {
		return nil, ctx.Err() == nil, err
	}
	// Read only, but for a snapshot in units: it indexes the row versions
	// of a table sent in chunks in a temporary table (see chunkVersions).
	mode := pgx.ReadOnly
	if cfg.Resume != nil {
		mode = pgx.ReadWrite
	}
	tx, err := snap.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: mode})
	if err != nil {
		return nil, false, fmt.Errorf("snapshot: %w", err)
	}
	// Held until the snapshot is sent: a TRUNCATE or a rewriting ALTER TABLE
	// meanwhile would otherwise show the transaction an empty table (they
	// are not MVCC-safe). LOCK takes no snapshot, and the pause's locks
	// keep anyone holding them off.
	list := make([]string, len(order))
	for i, t := range order {
		list[i] = qualified(t)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE "+strings.Join(list, ", ")+" IN ACCESS SHARE MODE"); err != nil {
		tx.Rollback(context.Background())
		return nil, false, fmt.Errorf("snapshot: %w", err)
	}
	// The first query fixes the snapshot: the reader's position and the
	// applied positions are read in it, while the writers still wait.
	if err := tx.QueryRow(ctx, `SELECT next_seq - 1 FROM polyregion.reader_state WHERE slot = $1`, SlotName(cfg.Region)).Scan(&h.SourceSeq); err != nil {
		tx.Rollback(context.Background())
		return nil, false, fmt.Errorf("snapshot: read the reader's position: %w", err)
	}
	if err := ltx.Commit(ctx); err != nil {
		tx.Rollback(context.Background())
		return nil, false, fmt.Errorf("snapshot: end the pause: %w", err)
	}
	h.PauseMillis = time.Since(paused).Milliseconds()
	return tx, false, nil
}

// pauseWriters locks the tables against writes (SHARE: reads go on), in
// order. A writer that holds one table and wants another the pause holds
// would deadlock with it, and PostgreSQL breaks a deadlock only after
// deadlock_timeout by failing a transaction, maybe the application's. So
// each lock waits at most half of deadlock_timeout (and no more than
// 200 ms): past it the attempt lets go of everything, the writers go on, and
// the pause is tried again shortly, until PauseWithin has passed.
func pauseWriters(ctx context.Context, cfg SnapshotConfig, lock *pgx.Conn, order []string) (pgx.Tx, time.Time, error) {
	var deadlockMS int64
	if err := lock.QueryRow(ctx, `SELECT setting::int8 FROM pg_catalog.pg_settings WHERE name = 'deadlock_timeout'`).Scan(&deadlockMS); err != nil {
		return nil, time.Time{}, fmt.Errorf("snapshot: %w", err)
	}
	wait := max(min(deadlockMS/2, 200), 1)
	began := time.Now()
	for attempt := 1; ; attempt++ {
		tx, err := lock.Begin(ctx)
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("snapshot: %w", err)
		}
		started := time.Now()
		_, err = tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", wait))
		for _, t := range order {
			if err != nil {
				break
			}
			_, err = tx.Exec(ctx, "LOCK TABLE "+qualified(t)+" IN SHARE MODE")
		}
		if err == nil {
			if attempt > 1 {
				cfg.Logger.Info("snapshot: writers paused", "attempts", attempt)
			}
			return tx, started, nil
		}
		tx.Rollback(context.Background())
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "55P03" || time.Since(began) > cfg.PauseWithin {
			return nil, time.Time{}, fmt.Errorf("snapshot: pause writes to %s (%d attempts in %s, each lock waiting at most %d ms for the transactions that hold it): %w",
				strings.Join(order, ", "), attempt, time.Since(began).Round(time.Millisecond), wait, err)
		}
		select {
		case <-ctx.Done():
			return nil, time.Time{}, ctx.Err()
		case <-time.After(time.Duration(rand.Int64N(int64(min(attempt, 10))*20)+10) * time.Millisecond):
		}
	}
}

// waitReaderPassed emits a barrier and waits until the region's reader has
// recorded a position past it: every local write committed before the
// barrier is then versioned and in the outbox.
func waitReaderPassed(ctx context.Context, cfg SnapshotConfig, side *pgx.Conn, within time.Duration) error {
	at, err := EmitRecordedBarrier(ctx, side)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	deadline := time.Now().Add(within)
	for {
		var lsn string
		err := side.QueryRow(ctx, `SELECT lsn::text FROM polyregion.reader_state WHERE slot = $1`, SlotName(cfg.Region)).Scan(&lsn)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("snapshot: read the reader's position: %w", err)
		}
		if err == nil {
			l, err := pglogrepl.ParseLSN(lsn)
			if err != nil {
				return fmt.Errorf("snapshot: reader position %q: %w", lsn, err)
			}
			if l >= at {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("snapshot: region %s's reader did not version its local writes up to %s within %s (is its replicator running, and how far behind is it?)", cfg.Region, at, within)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// referenceOrder orders tables so that every table comes after the tables
// its foreign keys reference (ties and cycles by name).
func referenceOrder(ctx context.Context, conn *pgx.Conn, tables []string) ([]string, error) {
	list := qualifiedNames(tables)
	rows, err := conn.Query(ctx, `SELECT pn.nspname || '.' || p.relname, cn.nspname || '.' || c.relname
		FROM pg_catalog.pg_constraint k
		JOIN pg_catalog.pg_class c ON c.oid = k.conrelid JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
		JOIN pg_catalog.pg_class p ON p.oid = k.confrelid JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
		WHERE k.contype = 'f' AND k.conrelid <> k.confrelid
		AND k.conrelid = ANY (SELECT pg_catalog.to_regclass(t)::pg_catalog.oid FROM pg_catalog.unnest($1::text[]) t)
		AND k.confrelid = ANY (SELECT pg_catalog.to_regclass(t)::pg_catalog.oid FROM pg_catalog.unnest($1::text[]) t)
		ORDER BY 1, 2`, list)
	if err != nil {
		return nil, fmt.Errorf("snapshot: foreign keys: %w", err)
	}
	var pairs [][2]string
	for rows.Next() {
		var p [2]string
		if err := rows.Scan(&p[0], &p[1]); err != nil {
			return nil, fmt.Errorf("snapshot: foreign keys: %w", err)
		}
		pairs = append(pairs, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("snapshot: foreign keys: %w", err)
	}
	order := replicator.NewTableOrder()
	for _, p := range pairs {
		order.Observe(p[:])
	}
	out := append([]string(nil), tables...)
	sort.Strings(out)
	order.Sort(out)
	return out, nil
}

// readSnapshotHeader reads, in the snapshot, the applied positions and each
// table's copied columns.
func readSnapshotHeader(ctx context.Context, tx pgx.Tx, order []string, h *SnapshotHeader) error {
	rows, err := tx.Query(ctx, `SELECT source, seq, coalesce(lsn::text, ''), hlc FROM polyregion.applied ORDER BY source`)
	if err != nil {
		return fmt.Errorf("snapshot: applied positions: %w", err)
	}
	for rows.Next() {
		var p SnapshotPosition
		if err := rows.Scan(&p.Region, &p.Seq, &p.LSN, &p.HLC); err != nil {
			return fmt.Errorf("snapshot: applied positions: %w", err)
		}
		h.Applied = append(h.Applied, p)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("snapshot: applied positions: %w", err)
	}
	if h.TombstoneFloors, err = TombstoneFloors(ctx, tx); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	for _, t := range order {
		st := SnapshotTable{Name: t}
		cols, err := copiedColumns(ctx, tx, t)
		if err != nil {
			return fmt.Errorf("snapshot: %w", err)
		}
		st.Columns = cols
		if err := tx.QueryRow(ctx, `SELECT greatest(reltuples, 0)::int8 FROM pg_catalog.pg_class WHERE oid = $1::pg_catalog.regclass`, qualified(t)).Scan(&st.Estimate); err != nil {
			return fmt.Errorf("snapshot: size of %s: %w", t, err)
		}
		h.Tables = append(h.Tables, st)
	}
	return nil
}

// copiedColumns lists a table's columns that a snapshot copies: all but
// generated ones (which every region computes itself), in column order.
func copiedColumns(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, table string) ([]SnapshotColumn, error) {
	rows, err := q.Query(ctx, `SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)
		FROM pg_catalog.pg_attribute a
		WHERE a.attrelid = $1::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
		ORDER BY a.attnum`, qualified(table))
	if err != nil {
		return nil, fmt.Errorf("columns of %s: %w", table, err)
	}
	cols, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (SnapshotColumn, error) {
		var c SnapshotColumn
		err := r.Scan(&c.Name, &c.Type)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("columns of %s: %w", table, err)
	}
	if len(cols) == 0 {
		return nil, fmt.Errorf("table %s has no columns to copy", table)
	}
	return cols, nil
}
