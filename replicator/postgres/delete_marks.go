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
// So an AFTER DELETE trigger, an AFTER UPDATE trigger for rows whose key
// changed, and the TRUNCATE capture trigger mark each row of such a table
// an application removes from its key, in polyregion.unversioned_deletes,
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

// KeyChangeMarkTrigger marks the old keys of the rows an update moves to
// another key, on the same tables.
const KeyChangeMarkTrigger = "polyregion_mark_key_change"

// The mark triggers' types (pg_trigger.tgtype): AFTER DELETE for each
// statement, or for each row (TRIGGER_TYPE_ROW) on a partition or a
// table with inheritance children or parents; AFTER UPDATE for each row.
const (
	deleteMarkStatementType = 8
	deleteMarkRowType       = 1 | 8
	keyChangeMarkType       = 1 | 16
)

// deletedRows is the name of the transition table of the rows a DELETE
// removed, as the statement-level mark trigger sees them.
const deletedRows = "polyregion_deleted"

// marksDeletes reports whether t's deletes may be marked: tables with
// counter columns. Only those whose every non-key column is a counter,
// the only ones whose updates may be taken in place (see
// Applier.countersOnly), get the triggers (deleteMarkDDL).
func marksDeletes(t regions.Table) bool {
	return len(t.Policy.Counters) > 0
}

// PrepareDeleteMarks puts DeleteMarkTrigger and KeyChangeMarkTrigger on
// every replicated table with counter columns (RemoveStaleTriggers takes
// them off the others), and removes the marks of other tables. The tables
// of later are left to their seed (see SeedTable). Each change locks its
// table briefly (see table_locks.go); one the applications hold past the
// budget is a *LockBusy.
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
		stmts, replaces, err := deleteMarkDDL(ctx, conn, t)
		if err != nil {
			return err
		}
		// Creating a trigger takes SHARE ROW EXCLUSIVE; dropping one in
		// place already, ACCESS EXCLUSIVE (asked for from the start,
		// never upgraded to).
		mode := "SHARE ROW EXCLUSIVE"
		if replaces {
			mode = "ACCESS EXCLUSIVE"
		}
		if err := changeTables(ctx, conn, []string{t.Name}, mode, "put the delete mark triggers on "+t.Name, stmts); err != nil {
			return err
		}
	}
	return nil
}

// deleteMarkDDL returns the statements that put DeleteMarkTrigger and
// KeyChangeMarkTrigger on t as its key is now, or nothing when they are in
// place so (enabled always, same arguments) or t's deletes need no marks;
// replaces says whether one of them is dropped first.
func deleteMarkDDL(ctx context.Context, conn *pgx.Conn, t regions.Table) (stmts []string, replaces bool, err error) {
	if !marksDeletes(t) {
		return nil, false, nil
	}
	sh, err := LoadShape(ctx, conn, t.Name)
	if err != nil {
		return nil, false, fmt.Errorf("prepare delete marks: %w", err)
	}
	for i, col := range sh.Columns {
		if !sh.IsKey(i) && !t.Policy.IsCounter(col) {
			return nil, false, nil // never taken in place (see Applier.countersOnly)
		}
	}
	// A table's delete trigger runs once per DELETE over the rows it
	// removed (a 100,000-row DELETE took 237 ms with it, 34 ms without;
	// 1,117 ms with a trigger for each row). But a partition's (an
	// inheritance child's) statement triggers do not fire for a DELETE
	// naming its parent, and a parent's transition table holds its
	// children's rows too: theirs runs for each row.
	var perRow bool
	if err := conn.QueryRow(ctx, `SELECT c.relkind = 'p' OR c.relhassubclass OR EXISTS (SELECT FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid)
		FROM pg_catalog.pg_class c WHERE c.oid = $1::pg_catalog.regclass`, qualified(t.Name)).Scan(&perRow); err != nil {
		return nil, false, fmt.Errorf("prepare delete marks on %s: %w", t.Name, err)
	}
	// Keys as polyregion.capture_truncate renders them: the change
	// stream's text form, from the transition table's columns or from
	// the row ($1).
	keysOf := func(row string) string {
		return "ARRAY[" + strings.Join(keyTextExprs(sh, row), ", ") + "]::pg_catalog.text[]"
	}
	table, name := qualified(t.Name), quoteLiteral(t.Name)
	rowArgs := []string{t.Name, keysOf("($1).")}
	deletes := placedTrigger{DeleteMarkTrigger, deleteMarkStatementType, 'A', "polyregion.mark_deletes()", deletedRows}
	deleteArgs := []string{t.Name, keysOf("")}
	createDeletes := fmt.Sprintf(`CREATE TRIGGER %s AFTER DELETE ON %s REFERENCING OLD TABLE AS %s FOR EACH STATEMENT EXECUTE FUNCTION polyregion.mark_deletes(%s, %s)`,
		quoteIdent(DeleteMarkTrigger), table, deletedRows, name, quoteLiteral(deleteArgs[1]))
	if perRow {
		deletes = placedTrigger{DeleteMarkTrigger, deleteMarkRowType, 'A', "polyregion.mark_delete()", ""}
		deleteArgs = rowArgs
		createDeletes = fmt.Sprintf(`CREATE TRIGGER %s AFTER DELETE ON %s FOR EACH ROW EXECUTE FUNCTION polyregion.mark_delete(%s, %s)`,
			quoteIdent(DeleteMarkTrigger), table, name, quoteLiteral(rowArgs[1]))
	}
	// An update that moves a row to another key is shipped as a delete of
	// the old key (and an insert of the new): its old key is marked too.
	// The trigger runs only for rows whose key's text changed. It names no
	// column (no UPDATE OF list, the row read whole in its condition):
	// PostgreSQL refuses to change the type of a column a trigger names,
	// and a column list misses keys a BEFORE trigger changes.
	changed := make([]string, len(sh.Key))
	for i, k := range sh.Key {
		col := quoteLiteral(sh.Columns[k])
		changed[i] = "pg_catalog.row_to_json(OLD) OPERATOR(pg_catalog.->>) " + col + " IS DISTINCT FROM pg_catalog.row_to_json(NEW) OPERATOR(pg_catalog.->>) " + col
	}
	createKeyChange := fmt.Sprintf(`CREATE TRIGGER %s AFTER UPDATE ON %s FOR EACH ROW WHEN (%s) EXECUTE FUNCTION polyregion.mark_delete(%s, %s)`,
		quoteIdent(KeyChangeMarkTrigger), table, strings.Join(changed, " OR "), name, quoteLiteral(rowArgs[1]))
	for _, w := range []struct {
		trig   placedTrigger
		args   []string
		create string
	}{
		{deletes, deleteArgs, createDeletes},
		{placedTrigger{KeyChangeMarkTrigger, keyChangeMarkType, 'A', "polyregion.mark_delete()", ""}, rowArgs, createKeyChange},
	} {
		inPlace, err := triggerInPlace(ctx, conn, t.Name, w.trig, w.args)
		if err != nil {
			return nil, false, err
		}
		if inPlace {
			continue
		}
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger g WHERE g.tgrelid = $1::pg_catalog.regclass AND g.tgname = $2)`, table, w.trig.name).Scan(&exists); err != nil {
			return nil, false, fmt.Errorf("prepare delete marks on %s: %w", t.Name, err)
		}
		if exists {
			replaces = true
			stmts = append(stmts, fmt.Sprintf(`DROP TRIGGER %s ON %s`, quoteIdent(w.trig.name), table))
		}
		stmts = append(stmts, w.create,
			// Also in sessions with session_replication_role = replica:
			// their writes are shipped like any other.
			fmt.Sprintf(`ALTER TABLE %s ENABLE ALWAYS TRIGGER %s`, table, quoteIdent(w.trig.name)))
	}
	return stmts, replaces, nil
}

// unmarkDeletesSQL removes the marks of the transactions the reader
// versions ($1: their ids, as the stream's BEGIN carries them).
const unmarkDeletesSQL = `DELETE FROM polyregion.unversioned_deletes WHERE xid = ANY ($1::pg_catalog.int8[])`

// forgetDeleteMarksSQL removes the marks of tables whose versions are
// removed ($1: the tables).
const forgetDeleteMarksSQL = `DELETE FROM polyregion.unversioned_deletes WHERE tbl = ANY ($1::pg_catalog.text[])`
