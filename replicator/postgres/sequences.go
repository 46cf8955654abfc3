package postgres

// Keys from sequences: applications fill keys from serial and identity
// columns, and every region's sequence hands out the same numbers. Under
// the cluster's sequence plan each such sequence steps by the plan's stride
// and hands out only this region's numbers (see regions.SequencePlan).

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
)

// KeySequence is a sequence that fills a primary key column of a
// replicated table (serial, identity, or a nextval default).
type KeySequence struct {
	Table, Column string
	Sequence      string // as regclass prints it (quoted where needed)
}

// KeySequences lists the sequences that fill the primary key columns of
// tables, by table and column.
func KeySequences(ctx context.Context, conn *pgx.Conn, tables []string) ([]KeySequence, error) {
	rows, err := conn.Query(ctx, `SELECT DISTINCT t.name, a.attname, s.oid::pg_catalog.regclass::text
		FROM pg_catalog.unnest($1::text[]) AS t(name)
		JOIN pg_catalog.pg_index i ON i.indrelid = t.name::pg_catalog.regclass AND i.indisprimary
		JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
		JOIN pg_catalog.pg_class s ON s.relkind = 'S' AND s.oid IN (
			SELECT d.refobjid FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_attrdef ad
			    ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND d.objid = ad.oid
			  WHERE ad.adrelid = a.attrelid AND ad.adnum = a.attnum AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
			UNION ALL
			SELECT pg_catalog.pg_get_serial_sequence(t.name, a.attname)::pg_catalog.regclass::oid)
		ORDER BY 1, 2, 3`, tables)
	if err != nil {
		return nil, fmt.Errorf("key sequences: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (KeySequence, error) {
		var k KeySequence
		err := r.Scan(&k.Table, &k.Column, &k.Sequence)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("key sequences: %w", err)
	}
	return out, nil
}

// SequenceChange is what PrepareSequences did to one sequence.
type SequenceChange struct {
	KeySequence
	Next int64 // the next number it hands out
}

// PrepareSequences makes every sequence filling a replicated table's key
// hand out only this region's numbers under plan: it steps by the stride,
// and resumes at the first number of the region's own above both what it
// handed out and the largest key in the table (which holds every region's
// rows). A sequence already set up so is left alone. Returns the sequences
// changed. Sessions that cached numbers of a sequence before the change
// hand those out first (CACHE above 1).
func PrepareSequences(ctx context.Context, conn *pgx.Conn, tables []string, plan *regions.SequencePlan, region conflict.RegionID) ([]SequenceChange, error) {
	offset, ok := plan.Offset(region)
	if !ok {
		return nil, nil
	}
	seqs, err := KeySequences(ctx, conn, tables)
	if err != nil {
		return nil, err
	}
	var changed []SequenceChange
	for _, k := range seqs {
		next, err := prepareSequence(ctx, conn, k, plan.Stride, offset)
		if err != nil {
			return changed, fmt.Errorf("sequence %s (key %s of %s): %w", k.Sequence, k.Column, k.Table, err)
		}
		if next > 0 {
			changed = append(changed, SequenceChange{KeySequence: k, Next: next})
		}
	}
	return changed, nil
}

// prepareSequence sets one sequence up; it returns the next number when it
// changed it, 0 when it was already set up.
func prepareSequence(ctx context.Context, conn *pgx.Conn, k KeySequence, stride, offset int64) (int64, error) {
	read := func(q interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}) (increment, last, maxKey int64, called bool, err error) {
		err = q.QueryRow(ctx, `SELECT s.seqincrement, l.last_value, l.is_called FROM pg_catalog.pg_sequence s, `+k.Sequence+` l
			WHERE s.seqrelid = $1::pg_catalog.regclass`, k.Sequence).Scan(&increment, &last, &called)
		if err == nil {
			err = q.QueryRow(ctx, fmt.Sprintf(`SELECT coalesce(max(%s), 0)::bigint FROM %s`, quoteIdent(k.Column), qualified(k.Table))).Scan(&maxKey)
		}
		return
	}
	increment, last, maxKey, called, err := read(conn)
	if err != nil {
		return 0, err
	}
	next := last
	if called {
		next = last + increment
	}
	if increment == stride && ((next-offset)%stride+stride)%stride == 0 && next > maxKey {
		return 0, nil
	}
	// ALTER SEQUENCE waits for every open transaction that took a number,
	// and holds the sessions that take one after it: each wait is short
	// (see table_locks.go).
	err = retryLocked(ctx, conn, []string{k.Sequence}, []string{k.Sequence}, prepareLockBudget, "set up sequence "+k.Sequence, func() error {
		tx, err := beginLocking(ctx, conn)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(context.Background()) }()
		// ALTER SEQUENCE holds the sequence until commit: no session takes
		// a number between the read below and setval.
		if _, err := tx.Exec(ctx, fmt.Sprintf(`ALTER SEQUENCE %s INCREMENT BY %d`, k.Sequence, stride)); err != nil {
			return err
		}
		if _, last, maxKey, _, err = read(tx); err != nil {
			return err
		}
		next = regions.NextInterleaved(max(last, maxKey), stride, offset)
		if _, err := tx.Exec(ctx, `SELECT pg_catalog.setval($1::pg_catalog.regclass, $2, false)`, k.Sequence, next); err != nil {
			return err
		}
		return tx.Commit(ctx)
	})
	if err != nil {
		return 0, err
	}
	return next, nil
}
