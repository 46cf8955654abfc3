package postgres

// Deletes of counter-only rows the reader has not versioned yet.
//
// A peer's increment of a counter-only row is added in place (see
// apply_counters.go) over whatever the row holds here, local increments
// not versioned yet included: they commute. A delete does not. When an
// application deletes such a row and inserts it again, and a peer's
// increment is folded in before the local reader has versioned that, the
// increment lands on the new row here, while the delete, versioned over
// the version the fold left, is shipped as having seen the increment: the
// other regions then drop it, and the regions keep different values for
// good.
//
// So an AFTER DELETE trigger (and the TRUNCATE capture trigger) marks each
// row of such a table an application deletes, in polyregion.unversioned_deletes,
// with its transaction; the reader removes the marks of the transactions
// it versions, in the transaction that records their versions. A fold
// into a marked key finds no version to fold into (foldMetaSQL), which
// fails the batch; it is then applied again reading every row, and the
// read waits for the reader to version the delete (the row's tuple is not
// the one its version was recorded over). The mark is committed with the
// delete, so a fold that sees the new row sees the mark too (its version
// is written by a later statement of the same transaction), and a fold
// that locked the row before the delete is seen by the delete.
//
// The appliers' sessions, and the sessions that load or empty whole tables
// (connectOwnerRun), mark nothing: the reader does not version their
// writes. Marks left by a region emptied or loaded are removed with its
// versions.

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/regions"
)

// DeleteMarkTrigger marks the rows the applications delete from a table
// whose updates may be taken in place.
const DeleteMarkTrigger = "polyregion_mark_delete"

// The mark trigger's types (pg_trigger.tgtype): AFTER DELETE for each
// statement, or for each row (TRIGGER_TYPE_ROW) on a partition.
const (
	deleteMarkStatementType = 8
	deleteMarkRowType       = 1 | 8
)

// deletedRows is the name of the transition table of the rows a DELETE
// removed, as the statement-level mark trigger sees them.
const deletedRows = "polyregion_deleted"

// marksDeletes reports whether t's deletes are marked: tables with counter
// columns, the only ones whose updates may be taken in place (see
// Applier.countersOnly).
func marksDeletes(t regions.Table) bool {
	return len(t.Policy.Counters) > 0
}

// PrepareDeleteMarks puts DeleteMarkTrigger on every replicated table with
// counter columns (RemoveStaleTriggers takes it off the others), and
// removes the marks of other tables. The
// tables of later are left to their seed (see SeedTable). Each change
// locks its table briefly (see table_locks.go); one the applications hold
// past the budget is a *LockBusy.
func PrepareDeleteMarks(ctx context.Context, conn *pgx.Conn, tables []regions.Table, later []string) error {
	// Marks of a table whose deletes are marked no longer (taken out of
	// replication, or its counters, before the reader versioned them)
	// would fail folds of its keys once it is marked again.
	marked := []string{}
	for _, t := range tables {
		if marksDeletes(t) {
			marked = append(marked, t.Name)
		}
	}
	if _, err := conn.Exec(ctx, `DELETE FROM polyregion.unversioned_deletes WHERE tbl <> ALL ($1::pg_catalog.text[])`, marked); err != nil {
		return fmt.Errorf("prepare delete marks: %w", err)
	}
	for _, t := range tables {
		if slices.Contains(later, t.Name) {
			continue
		}
		stmts, err := deleteMarkDDL(ctx, conn, t)
		if err != nil {
			return err
		}
		if err := changeTables(ctx, conn, []string{t.Name}, "SHARE ROW EXCLUSIVE", "put the delete mark trigger on "+t.Name, stmts); err != nil {
			return err
		}
	}
	return nil
}

// deleteMarkDDL returns the statements that put DeleteMarkTrigger on t as
// its key is now, or nothing when it is in place so (enabled always, same
// arguments) or t's deletes need no marks.
func deleteMarkDDL(ctx context.Context, conn *pgx.Conn, t regions.Table) ([]string, error) {
	if !marksDeletes(t) {
		return nil, nil
	}
	sh, err := LoadShape(ctx, conn, t.Name)
	if err != nil {
		return nil, fmt.Errorf("prepare delete marks: %w", err)
	}
	// Keys as polyregion.capture_truncate renders them: the change
	// stream's text form. A table's trigger runs once per DELETE over the
	// rows it removed (a 100,000-row DELETE took 237 ms with it, 34 ms
	// without; 1,117 ms with a trigger for each row), but a partition's
	// (or an inheritance child's) statement triggers do not fire for a
	// DELETE naming its parent: theirs runs for each row.
	var perRow bool
	if err := conn.QueryRow(ctx, `SELECT c.relkind = 'p' OR EXISTS (SELECT FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid)
		FROM pg_catalog.pg_class c WHERE c.oid = $1::pg_catalog.regclass`, qualified(t.Name)).Scan(&perRow); err != nil {
		return nil, fmt.Errorf("prepare delete marks on %s: %w", t.Name, err)
	}
	row := ""
	trig := placedTrigger{DeleteMarkTrigger, deleteMarkStatementType, 'A', "polyregion.mark_deletes()", deletedRows}
	if perRow {
		row = "($1)."
		trig = placedTrigger{DeleteMarkTrigger, deleteMarkRowType, 'A', "polyregion.mark_delete()", ""}
	}
	keys := make([]string, len(sh.Key))
	for i, k := range sh.Key {
		keys[i] = "pg_catalog.format('%s', " + row + quoteIdent(sh.Columns[k]) + ")"
	}
	args := []string{t.Name, "ARRAY[" + strings.Join(keys, ", ") + "]::pg_catalog.text[]"}
	inPlace, err := triggerInPlace(ctx, conn, t.Name, trig, args)
	if err != nil || inPlace {
		return nil, err
	}
	create := fmt.Sprintf(`CREATE TRIGGER %s AFTER DELETE ON %s REFERENCING OLD TABLE AS %s FOR EACH STATEMENT EXECUTE FUNCTION polyregion.mark_deletes(%s, %s)`,
		quoteIdent(DeleteMarkTrigger), qualified(t.Name), deletedRows, quoteLiteral(args[0]), quoteLiteral(args[1]))
	if perRow {
		create = fmt.Sprintf(`CREATE TRIGGER %s AFTER DELETE ON %s FOR EACH ROW EXECUTE FUNCTION polyregion.mark_delete(%s, %s)`,
			quoteIdent(DeleteMarkTrigger), qualified(t.Name), quoteLiteral(args[0]), quoteLiteral(args[1]))
	}
	return []string{
		fmt.Sprintf(`DROP TRIGGER IF EXISTS %s ON %s`, quoteIdent(DeleteMarkTrigger), qualified(t.Name)),
		create,
		// Also in sessions with session_replication_role = replica: their
		// deletes are shipped like any other.
		fmt.Sprintf(`ALTER TABLE %s ENABLE ALWAYS TRIGGER %s`, qualified(t.Name), quoteIdent(DeleteMarkTrigger)),
	}, nil
}

// unmarkDeletesSQL removes the marks of the transactions the reader
// versions ($1: their ids, as the stream's BEGIN carries them).
const unmarkDeletesSQL = `DELETE FROM polyregion.unversioned_deletes WHERE xid = ANY ($1::pg_catalog.int8[])`

// forgetDeleteMarksSQL removes the marks of tables whose versions are
// removed ($1: the tables).
const forgetDeleteMarksSQL = `DELETE FROM polyregion.unversioned_deletes WHERE tbl = ANY ($1::pg_catalog.text[])`
