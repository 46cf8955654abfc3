package postgres

// Columns merged by max or min: a trigger keeps the applications' writes
// from moving them back; the appliers write the values they work out (see
// apply_maxmin.go).

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/regions"
)

// MergeTrigger keeps a table's max and min columns from moving back: BEFORE
// UPDATE, each such column takes GREATEST (LEAST) of its old and new
// value. A write that sets such a column to NULL keeps the old value. It
// leaves the appliers' writes alone (ExactMerges): they bring the values
// the writes that count give, which can be lower than what the row held
// when a delete removed a value the row had merged.
const MergeTrigger = "polyregion_merge_columns"

// ExactMerges marks the replicator's writing sessions (the appliers', and
// those that load or empty whole tables): the merge trigger takes their
// writes of max and min columns as they are, and the delete mark trigger
// leaves their deletes alone (see delete_marks.go).
const ExactMerges = "polyregion.exact_merges"

// PrepareColumnMerges puts MergeTrigger on every replicated table that has
// max or min columns (replacing it, so a changed list is followed;
// RemoveStaleTriggers takes it off the others). A column that does not
// exist, is part of the primary key or has a type without an order is
// refused by name. The tables of later (tables whose seed has not ended)
// are left to their seed, which puts the trigger on under its own lock
// (see SeedTable). Each change locks its table briefly (see
// table_locks.go); one the applications hold past the budget is a
// *LockBusy.
func PrepareColumnMerges(ctx context.Context, conn *pgx.Conn, tables []regions.Table, later []string) error {
	for _, t := range tables {
		if slices.Contains(later, t.Name) {
			continue
		}
		stmts, err := mergeColumnsDDL(ctx, conn, t)
		if err != nil {
			return err
		}
		if err := changeTables(ctx, conn, []string{t.Name}, "SHARE ROW EXCLUSIVE", "put the max and min trigger on "+t.Name, stmts); err != nil {
			return err
		}
	}
	return nil
}

// mergeColumnsDDL returns the statements that put MergeTrigger on t as its
// policy's max and min columns want it, or nothing when it is in place so
// (the usual restart) or t has no such columns.
func mergeColumnsDDL(ctx context.Context, conn *pgx.Conn, t regions.Table) ([]string, error) {
	if len(t.Policy.Max) == 0 && len(t.Policy.Min) == 0 {
		return nil, nil
	}
	sh, err := LoadShape(ctx, conn, t.Name)
	if err != nil {
		return nil, fmt.Errorf("prepare max and min columns: %w", err)
	}
	var sets []string
	for _, l := range []struct {
		name, fn string
		cols     []string
	}{{"max", "GREATEST", t.Policy.Max}, {"min", "LEAST", t.Policy.Min}} {
		for _, c := range l.cols {
			i := slices.Index(sh.Columns, c)
			switch {
			case i < 0:
				return nil, fmt.Errorf("table %s: %s column %q: no such column", t.Name, l.name, c)
			case sh.IsKey(i):
				return nil, fmt.Errorf("table %s: %s column %q is part of the primary key", t.Name, l.name, c)
			}
			// GREATEST needs an order of the type: ask for one now
			// rather than fail the applications' updates later.
			if _, err := conn.Exec(ctx, fmt.Sprintf("SELECT %s(NULL::%s, NULL::%s)", l.fn, sh.Types[i], sh.Types[i])); err != nil {
				return nil, fmt.Errorf("table %s: %s column %q: type %s cannot be merged by %s: %w", t.Name, l.name, c, sh.Types[i], l.name, err)
			}
			q := quoteIdent(c)
			sets = append(sets, fmt.Sprintf("NEW.%s := %s(OLD.%s, NEW.%s);", q, l.fn, q, q))
		}
	}
	var oid uint32
	if err := conn.QueryRow(ctx, `SELECT $1::pg_catalog.regclass::pg_catalog.oid`, qualified(t.Name)).Scan(&oid); err != nil {
		return nil, fmt.Errorf("prepare max and min columns of %s: %w", t.Name, err)
	}
	fn := fmt.Sprintf("polyregion.merge_columns_%d", oid)
	// The appliers write exact values (they work out the merge over the
	// writes that count, see ExactMerges): only the applications' writes
	// are merged here.
	src := fmt.Sprintf("\nBEGIN\n\tIF pg_catalog.current_setting('%s', true) = 'on' THEN\n\t\tRETURN NEW;\n\tEND IF;\n\t%s\n\tRETURN NEW;\nEND\n",
		ExactMerges, strings.Join(sets, "\n\t"))
	// In place already (the usual restart): nothing is taken, not even the
	// brief locks on the table that creating a trigger needs.
	var inPlace bool
	err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_proc p ON p.oid = g.tgfoid
		WHERE g.tgrelid = $1::pg_catalog.oid AND g.tgname = $2 AND g.tgenabled = 'A' AND p.prosrc = $3
		AND p.oid = pg_catalog.to_regprocedure($4))`, oid, MergeTrigger, src, fn+"()").Scan(&inPlace)
	if err != nil {
		return nil, fmt.Errorf("prepare max and min columns of %s: %w", t.Name, err)
	}
	if inPlace {
		return nil, nil
	}
	return []string{
		fmt.Sprintf(`CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $merge$%s$merge$`, fn, src),
		fmt.Sprintf(`CREATE OR REPLACE TRIGGER %s BEFORE UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION %s()`,
			quoteIdent(MergeTrigger), qualified(t.Name), fn),
		// Also in sessions with session_replication_role = replica: a
		// write there that moved a column back would stay in this region
		// alone.
		fmt.Sprintf(`ALTER TABLE %s ENABLE ALWAYS TRIGGER %s`, qualified(t.Name), quoteIdent(MergeTrigger)),
	}, nil
}
