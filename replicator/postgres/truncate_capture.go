package postgres

// The TRUNCATE capture trigger: BEFORE TRUNCATE, polyregion.capture_truncate
// writes the keys of the rows a TRUNCATE removes into the change stream
// (TruncatePrefix messages), so that every region deletes those rows and
// no more (see schema.go).

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
)

// truncateTriggerType is pg_trigger.tgtype of a BEFORE TRUNCATE statement
// trigger (TRIGGER_TYPE_BEFORE | TRIGGER_TYPE_TRUNCATE).
const truncateTriggerType = 2 | 32

// prepareTruncateCapture puts the TRUNCATE capture trigger on every table
// of tables not in place already (a changed key is followed). Each change
// locks its table briefly (see table_locks.go); one the applications hold
// past the budget is a *LockBusy. RemoveStaleTriggers takes it off tables
// no longer replicated.
func prepareTruncateCapture(ctx context.Context, conn *pgx.Conn, tables []string) error {
	for _, t := range tables {
		stmts, err := truncateCaptureDDL(ctx, conn, t)
		if err != nil {
			return err
		}
		if err := changeTables(ctx, conn, []string{t}, "SHARE ROW EXCLUSIVE", "put the TRUNCATE capture trigger on "+t, stmts); err != nil {
			return err
		}
	}
	return nil
}

// RemoveStaleTriggers takes the replicator's triggers off the tables that
// no longer need them: the TRUNCATE capture trigger off tables not among
// tables (no longer replicated), the max and min trigger off tables without
// such columns, the delete mark triggers off tables without counters. Each
// removal locks its table briefly (see table_locks.go); a table the
// applications hold past the budget keeps its trigger until a later start
// (returned, with why: harmless meanwhile, as the reader skips what the
// capture trigger writes of a table it does not replicate, the merge
// trigger only keeps such columns from moving back, and the marks of a
// table not marked go at the next start).
func RemoveStaleTriggers(ctx context.Context, conn *pgx.Conn, tables []regions.Table) ([]*LockBusy, error) {
	replicated, merged, marked := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, t := range tables {
		replicated[t.Name] = true
		merged[t.Name] = len(t.Policy.Max) > 0 || len(t.Policy.Min) > 0
		marked[t.Name] = marksDeletes(t)
	}
	var left []*LockBusy
	for _, d := range []struct {
		trigger string
		keep    map[string]bool
		why     string
	}{
		{TruncateTrigger, replicated, "no longer replicated"},
		{MergeTrigger, merged, "no max or min columns any more"},
		{DeleteMarkTrigger, marked, "no counter columns any more, or no longer replicated"},
		{KeyChangeMarkTrigger, marked, "no counter columns any more, or no longer replicated"},
	} {
		more, err := dropTriggerElsewhere(ctx, conn, d.trigger, d.keep, d.why)
		left = append(left, more...)
		if err != nil {
			return left, err
		}
	}
	return left, nil
}

// dropTriggerElsewhere removes trigger from every table not among keep
// (why: what such a table is), each under a brief lock (see
// table_locks.go); it returns the tables it could not lock.
func dropTriggerElsewhere(ctx context.Context, conn *pgx.Conn, trigger string, keep map[string]bool, why string) ([]*LockBusy, error) {
	rows, err := conn.Query(ctx, `SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_trigger g
		JOIN pg_catalog.pg_class c ON c.oid = g.tgrelid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE g.tgname = $1 AND g.tgparentid = 0`, trigger) // a partition's copy goes with its parent's
	if err != nil {
		return nil, fmt.Errorf("find trigger %s: %w", trigger, err)
	}
	on, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("find trigger %s: %w", trigger, err)
	}
	var left []*LockBusy
	for _, name := range on {
		if keep[name] {
			continue
		}
		drop := fmt.Sprintf(`DROP TRIGGER IF EXISTS %s ON %s`, quoteIdent(trigger), qualified(name))
		err := changeTables(ctx, conn, []string{name}, "ACCESS EXCLUSIVE", "remove trigger "+trigger+" from "+name+" ("+why+")", []string{drop})
		var busy *LockBusy
		switch {
		case errors.As(err, &busy):
			left = append(left, busy)
		case err != nil:
			return left, err
		}
	}
	return left, nil
}

// truncateCaptureDDL returns the statement that puts the TRUNCATE capture
// trigger on table as its key is now, or nothing when the trigger is in
// place so (enabled, same arguments).
func truncateCaptureDDL(ctx context.Context, conn *pgx.Conn, table string) ([]string, error) {
	sh, err := LoadShape(ctx, conn, table)
	if err != nil {
		return nil, fmt.Errorf("prepare truncate capture: %w", err)
	}
	args := []string{table, strings.Join(keyTextExprs(sh, ""), ", "), qualified(table)}
	inPlace, err := triggerInPlace(ctx, conn, table, placedTrigger{TruncateTrigger, truncateTriggerType, 'O', "polyregion.capture_truncate()", ""}, args)
	if err != nil || inPlace {
		return nil, err
	}
	return []string{fmt.Sprintf(`CREATE OR REPLACE TRIGGER %s BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION polyregion.capture_truncate(%s, %s, %s)`,
		quoteIdent(TruncateTrigger), qualified(table), quoteLiteral(args[0]), quoteLiteral(args[1]), quoteLiteral(args[2]))}, nil
}

// keyTextExprs returns, for each of sh's key columns, the SQL expression
// of its value in the change stream's text form, the column read from row
// (an alias and a dot, or "" for the column alone): format('%s', v)
// renders v with its type's output function, as the change stream does
// (a cast to text may not).
func keyTextExprs(sh replicator.Shape, row string) []string {
	keys := make([]string, len(sh.Key))
	for i, k := range sh.Key {
		keys[i] = "pg_catalog.format('%s', " + row + quoteIdent(sh.Columns[k]) + ")"
	}
	return keys
}

// placedTrigger is how one of the replicator's triggers is put on a table.
type placedTrigger struct {
	name    string
	tgtype  int16 // pg_trigger.tgtype
	enabled byte  // pg_trigger.tgenabled: 'O' (origin and local sessions) or 'A' (always)
	fn      string
	old     string // the transition table of the rows removed, if any
}

// triggerInPlace reports whether trig is on table as it would be put on
// (same type, function and arguments, enabled so).
func triggerInPlace(ctx context.Context, conn *pgx.Conn, table string, trig placedTrigger, args []string) (bool, error) {
	var tgargs []byte // pg_trigger.tgargs: each argument ends with a zero byte
	for _, a := range args {
		tgargs = append(append(tgargs, a...), 0)
	}
	var inPlace bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger g
		WHERE g.tgrelid = pg_catalog.to_regclass($1) AND g.tgname = $2 AND g.tgtype = $3 AND g.tgenabled::pg_catalog.text = $4
		  AND g.tgfoid = $5::pg_catalog.regprocedure AND g.tgargs = $6::bytea
		  AND g.tgoldtable IS NOT DISTINCT FROM NULLIF($7::pg_catalog.text, '')::pg_catalog.name AND g.tgnewtable IS NULL)`,
		qualified(table), trig.name, trig.tgtype, string(trig.enabled), trig.fn, tgargs, trig.old).Scan(&inPlace); err != nil {
		return false, fmt.Errorf("look for trigger %s on %s: %w", trig.name, table, err)
	}
	return inPlace, nil
}

// tableTriggersDDL returns the statements that put the replicator's
// triggers on t (TRUNCATE capture, max and min merges when its policy has
// such columns, delete marks when it has counters) as they are not in
// place already.
func tableTriggersDDL(ctx context.Context, conn *pgx.Conn, t regions.Table) ([]string, error) {
	stmts, err := truncateCaptureDDL(ctx, conn, t.Name)
	if err != nil {
		return nil, err
	}
	merges, err := mergeColumnsDDL(ctx, conn, t)
	if err != nil {
		return nil, err
	}
	marks, _, err := deleteMarkDDL(ctx, conn, t)
	if err != nil {
		return nil, err
	}
	return slices.Concat(stmts, merges, marks), nil
}
