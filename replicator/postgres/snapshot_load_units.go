package postgres

// The joining side of a load in units (see snapshot_units.go): each unit
// commits in its own transaction with the positions of its snapshot, and
// the load's last transaction sets where every stream resumes.

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
)

// joinUnit is a row of polyregion.join_units.
type joinUnit struct {
	loadedUnit
	Source string
	Rows   int64
}

// readJoinUnits reads the units a load committed so far, in order.
func readJoinUnits(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) ([]joinUnit, error) {
	rows, err := q.Query(ctx, `SELECT source, tables, after, rows, positions FROM polyregion.join_units ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("load snapshot: parts loaded before: %w", err)
	}
	units, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (joinUnit, error) {
		var u joinUnit
		var pos []byte
		if err := r.Scan(&u.Source, &u.Tables, &u.After, &u.Rows, &pos); err != nil {
			return u, err
		}
		return u, json.Unmarshal(pos, &u.Positions)
	})
	if err != nil {
		return nil, fmt.Errorf("load snapshot: parts loaded before: %w", err)
	}
	return units, nil
}

// ReadJoinResume reads what a load cut short committed: the source it came
// from ("" when nothing was), what to ask that source for, and how many
// rows are in.
func ReadJoinResume(ctx context.Context, conn *pgx.Conn) (source string, resume SnapshotResume, rows int64, err error) {
	units, err := readJoinUnits(ctx, conn)
	if err != nil || len(units) == 0 {
		return "", SnapshotResume{}, 0, err
	}
	lu := make([]loadedUnit, len(units))
	for i, u := range units {
		lu[i] = u.loadedUnit
		rows += u.Rows
	}
	return units[0].Source, resumeFrom(lu), rows, nil
}

// ForgetJoinParts forgets, before a load cut short goes on, the parts it
// loaded of tables the region no longer replicates (the configuration
// changed between two attempts): their units and recorded versions go, so
// the next snapshot is asked for the replicated tables alone. The rows
// loaded stay in their tables (nothing this region holds is deleted); they
// are no longer replicated. It returns the tables forgotten.
func ForgetJoinParts(ctx context.Context, conn *pgx.Conn, replicated []string) ([]string, error) {
	var forgotten []string
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT DISTINCT t FROM polyregion.join_units, pg_catalog.unnest(tables) t
			WHERE NOT t = ANY ($1::text[]) ORDER BY 1`, replicated)
		if err != nil {
			return err
		}
		if forgotten, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil || len(forgotten) == 0 {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM polyregion.join_units WHERE NOT tables && $1::text[]`, replicated); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE polyregion.join_units SET tables = ARRAY(SELECT t FROM pg_catalog.unnest(tables) t WHERE t = ANY ($1::text[]))
			WHERE tables && $2::text[]`, replicated, forgotten); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM polyregion.row_version WHERE tbl = ANY ($1::text[])`, forgotten)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("load snapshot: forget the parts of tables no longer replicated: %w", err)
	}
	return forgotten, nil
}

// begin opens the transaction of the next unit (of the whole load, for a
// source that sends no units): the region's writers to the tables wait
// until it commits, and the region is checked again under that pause.
func (l *loader) begin(ctx context.Context) error {
	tx, err := l.conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("load snapshot: %w", err)
	}
	l.tx, l.owners = tx, ownerRun{tx: tx}
	// Deferrable constraints (foreign keys among the tables, above all) are
	// checked once everything is in, as the owner (see commitUnit). Rows
	// staged in temporary tables stay in this session's memory up to
	// temp_buffers (default 8 MB, then they go to disk and back).
	for _, set := range []string{`SET LOCAL synchronous_commit = on`, `SET CONSTRAINTS ALL DEFERRED`, `SET LOCAL temp_buffers = '256MB'`} {
		if _, err := tx.Exec(ctx, set); err != nil {
			return fmt.Errorf("load snapshot: %w", err)
		}
	}
	return checkJoinable(ctx, tx, l.cfg.Region, l.h, l.own, l.resume.Loaded())
}

// deferred runs the triggers the rows queued (constraint triggers,
// deferred foreign-key checks) inside the owner's function: at commit
// they would run as the replicator. With tables of several owners, as the
// first (never as the replicator), as for applied transactions.
func (l *loader) deferred(ctx context.Context) error {
	if err := l.owners.deferred(ctx); err != nil {
		return fmt.Errorf("load snapshot: check deferred constraints: %w", err)
	}
	return nil
}

// commitUnit commits what came since the last commit as the unit payload
// describes, with this snapshot's positions, and begins the next.
func (l *loader) commitUnit(ctx context.Context, payload []byte) error {
	if !l.h.Units {
		return fmt.Errorf("snapshot: a commit frame in a snapshot not sent in parts")
	}
	var u SnapshotUnit
	if err := json.Unmarshal(payload, &u); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	for _, t := range u.Tables {
		if !slices.ContainsFunc(l.h.Tables, func(s SnapshotTable) bool { return s.Name == t }) {
			return fmt.Errorf("snapshot: a part of %q, which its header does not list", t)
		}
	}
	if len(u.Tables) == 0 || (u.After != nil && len(u.Tables) != 1) {
		return fmt.Errorf("snapshot: a part of tables %v after %v: a chunk is of one table", u.Tables, u.After)
	}
	if err := l.deferred(ctx); err != nil {
		return err
	}
	pos, err := json.Marshal(l.positions)
	if err != nil {
		return err
	}
	if _, err := l.tx.Exec(ctx, `INSERT INTO polyregion.join_units (source, tables, after, rows, positions) VALUES ($1, $2, $3, $4, $5)`,
		l.h.Source, u.Tables, u.After, l.unitRows, pos); err != nil {
		return fmt.Errorf("load snapshot: record a part: %w", err)
	}
	if err := l.tx.Commit(ctx); err != nil {
		return fmt.Errorf("load snapshot: commit a part: %w", err)
	}
	l.before += l.unitRows
	l.resume.add(loadedUnit{Tables: u.Tables, After: u.After})
	l.unitRows, l.pending = 0, false
	return l.begin(ctx)
}

// discard removes what earlier attempts loaded of tables (in reverse
// order: tables that reference others first), as their owners, with their
// versions and the record of their units.
func (l *loader) discard(ctx context.Context, tables []string) error {
	for i := len(tables) - 1; i >= 0; i-- {
		t := tables[i]
		if _, err := l.owners.exec(ctx, t, "DELETE FROM ONLY "+qualified(t)); err != nil {
			return fmt.Errorf("load snapshot: remove the rows of %s loaded before, as its owner: %w", t, err)
		}
	}
	for _, q := range []string{`DELETE FROM polyregion.row_version WHERE tbl = ANY ($1::text[])`, forgetDeleteMarksSQL, `DELETE FROM polyregion.join_units WHERE tables && $1::text[]`} {
		if _, err := l.tx.Exec(ctx, q, tables); err != nil {
			return fmt.Errorf("load snapshot: %w", err)
		}
	}
	units, err := readJoinUnits(ctx, l.tx)
	if err != nil {
		return err
	}
	lu := make([]loadedUnit, len(units))
	l.before = 0
	for i, u := range units {
		lu[i] = u.loadedUnit
		l.before += u.Rows
	}
	l.resume = resumeFrom(lu)
	l.cfg.Logger.Info("snapshot: removed what was loaded before of tables that now load whole", "tables", tables)
	return nil
}

// finish ends the load in its last transaction: where every stream
// resumes, up to where its applier reads every row, and that the region
// joined.
func (l *loader) finish(ctx context.Context) error {
	if err := l.deferred(ctx); err != nil {
		return err
	}
	start, replay := l.positions, map[string]int64{}
	var total int64
	if l.h.Units {
		units, err := readJoinUnits(ctx, l.tx)
		if err != nil {
			return err
		}
		all := make([][]SnapshotPosition, len(units))
		for i, u := range units {
			all[i] = u.Positions
			total += u.Rows
		}
		if start, replay, err = JoinStart(all); err != nil {
			return err
		}
		if r := resumeFrom(unitsOfJoin(units)); len(r.After) > 0 || len(r.Done) != len(l.h.Tables) {
			return fmt.Errorf("snapshot: ended with tables not loaded (%d of %d done)", len(r.Done), len(l.h.Tables))
		}
	} else {
		for _, t := range l.h.Tables {
			if _, ok := l.rows[t.Name]; !ok {
				return fmt.Errorf("snapshot: ended without the rows of %s", t.Name)
			}
		}
		for _, n := range l.rows {
			total += n
		}
	}
	for _, p := range start {
		var lsn any
		if p.LSN != "" {
			lsn = p.LSN
		}
		if _, err := l.tx.Exec(ctx, `INSERT INTO polyregion.applied (source, seq, lsn, hlc) VALUES ($1, $2, $3::pg_lsn, $4)`, p.Region, p.Seq, lsn, p.HLC); err != nil {
			return fmt.Errorf("load snapshot: record the position of %s: %w", p.Region, err)
		}
	}
	if _, err := l.tx.Exec(ctx, `DELETE FROM polyregion.join_replay`); err != nil {
		return fmt.Errorf("load snapshot: %w", err)
	}
	if err := setTombstoneFloors(ctx, l.tx, l.h.TombstoneFloors); err != nil {
		return fmt.Errorf("load snapshot: %w", err)
	}
	for _, p := range start {
		if replay[p.Region] > p.Seq {
			if _, err := l.tx.Exec(ctx, `INSERT INTO polyregion.join_replay (source, seq) VALUES ($1, $2)`, p.Region, replay[p.Region]); err != nil {
				return fmt.Errorf("load snapshot: %w", err)
			}
		}
	}
	if _, err := l.tx.Exec(ctx, `INSERT INTO polyregion.joined (region, source, source_seq, rows, pause_ms, reseed_index)
		VALUES ($1, $2, $3, $4, $5, coalesce((SELECT max(control_index) FROM polyregion.reseeding), 0))`,
		l.cfg.Region, l.h.Source, l.h.SourceSeq, total, l.h.PauseMillis); err != nil {
		return fmt.Errorf("load snapshot: %w", err)
	}
	// The loaded rows replace whatever a lost slot left unshipped (and a
	// slot the load itself dropped and recreated is not a loss).
	// join_units stay: the applier tells by them which unit holds a row,
	// up to the replay bound (see apply_replay.go).
	for _, q := range []string{`DELETE FROM polyregion.reseeding`, `DELETE FROM polyregion.slot_lost`} {
		if _, err := l.tx.Exec(ctx, q); err != nil {
			return fmt.Errorf("load snapshot: %w", err)
		}
	}
	if err := l.tx.Commit(ctx); err != nil {
		return fmt.Errorf("load snapshot: commit: %w", err)
	}
	return nil
}

func unitsOfJoin(units []joinUnit) []loadedUnit {
	out := make([]loadedUnit, len(units))
	for i, u := range units {
		out[i] = u.loadedUnit
	}
	return out
}
