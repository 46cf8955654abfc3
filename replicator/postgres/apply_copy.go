package postgres

// Inserting a long run of new rows with COPY. A group of inserts is
// otherwise one INSERT ... SELECT over arrays ... ON CONFLICT DO NOTHING:
// each row a speculative insertion, 4-6 us a row on the server, where COPY
// takes 1.6-3 (100,000 rows of five columns, PostgreSQL 15). A backlog of
// inserts is made of such runs.
//
// COPY runs as the replicator, so only into a table where inserting runs
// no code anyone but a superuser wrote (copiesInert): the owner's function
// that confines such code (ownerexec.go) has nothing to confine there.
// COPY has no ON CONFLICT: a key present here (a local insert that raced
// the apply) fails it with a unique violation of the primary key. That
// fails the batch as the INSERT's short count does (retryable), and the
// retry, reading every row, writes by INSERT: COPY is used only on a
// batch's first attempt (executor.copyInserts; a large transaction's
// retry comes by a new Applier, told to read every row). Any other unique
// violation is a data error, as it is for the INSERT: the changes are then
// applied one at a time, and the one at fault is parked.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/polyregion/polyregion/replicator"
)

// copyInsertMin is the shortest run of inserts copied: a COPY is a round
// trip of its own (and the first into a table in a transaction one more,
// see copiesInert), where statements go pipelined.
const copyInsertMin = 256

// copyable reports whether g's rows may go in one COPY: inserts, enough of
// them, every value given (an insert carries its whole row; an unchanged
// TOASTed value has no text to copy).
func (g *group) copyable() bool {
	if g.kind != opInsert || len(g.ops) < copyInsertMin {
		return false
	}
	for _, o := range g.ops {
		for _, v := range o.row {
			if v.Unchanged {
				return false
			}
		}
	}
	return true
}

// copyInsert copies g's rows into their table when it may (see above):
// done is false when it may not, and the group's INSERT is to run instead.
func (e *executor) copyInsert(ctx context.Context, g *group) (done bool, err error) {
	if err := e.releaseOpen(ctx); err != nil {
		return false, err
	}
	table := g.sh.Table
	target, ok := e.inert[table]
	if !ok {
		if target, err = copiesInert(ctx, e.tx, table, g.sh.Columns); err != nil {
			return false, fmt.Errorf("apply: %w", err)
		}
		if e.inert == nil {
			e.inert = map[string]copyTarget{}
		}
		e.inert[table] = target
	}
	if !target.inert {
		return false, nil
	}
	cols := make([]string, len(g.sh.Columns))
	for i, c := range g.sh.Columns {
		cols[i] = quoteIdent(c)
	}
	var buf bytes.Buffer
	for _, o := range g.ops {
		appendCopyRow(&buf, o.row)
	}
	tag, err := e.tx.Conn().PgConn().CopyFrom(ctx, &buf, "COPY "+qualified(table)+" ("+strings.Join(cols, ", ")+") FROM STDIN")
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "23505" && pe.ConstraintName == target.pkey && target.pkey != "" {
			return false, retryable{fmt.Errorf("apply: copy into %s: a row was inserted locally while the batch was applied: %w", table, err)}
		}
		return false, fmt.Errorf("apply: copy into %s: %w", table, err)
	}
	if n := tag.RowsAffected(); n != int64(len(g.ops)) {
		return false, retryable{fmt.Errorf("apply: copy into %s took %d rows, want %d", table, n, len(g.ops))}
	}
	return true, nil
}

// appendCopyRow appends row as one line of COPY's text format: values
// tab-separated, NULL as \N, and backslash, newline, carriage return and
// tab escaped. A value is the column type's text output (as the change
// stream carries it), which the type's input reads back.
func appendCopyRow(buf *bytes.Buffer, row []replicator.Value) {
	for i, v := range row {
		if i > 0 {
			buf.WriteByte('\t')
		}
		if v.Null {
			buf.WriteString(`\N`)
			continue
		}
		s := v.Text
		for j := 0; j < len(s); j++ {
			switch c := s[j]; c {
			case '\\':
				buf.WriteString(`\\`)
			case '\n':
				buf.WriteString(`\n`)
			case '\r':
				buf.WriteString(`\r`)
			case '\t':
				buf.WriteString(`\t`)
			default:
				buf.WriteByte(c)
			}
		}
	}
	buf.WriteByte('\n')
}
