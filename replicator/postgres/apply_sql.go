package postgres

// The statements an apply transaction runs: one row at a time (careful
// mode) or set-based per table and kind (bulk).

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/polyregion/polyregion/replicator"
)

type stmt struct {
	sql  string
	args []any
	// want is the number of rows the statement must affect (-1: any).
	want int64
	// table, for a write of an application table, names it: the write
	// runs with the table owner's privileges (see ownerexec.go).
	table string
	// counted: the statement returns the rows processed as its one value
	// (a call of an exec_as function) instead of in its command tag.
	counted bool
	// got, when set, receives a counted statement's value.
	got *int64
	// deferredCheck stands for the transaction's deferred triggers, run
	// in the owner's function (executor.deferredStmt) where it is sent.
	deferredCheck bool
	// copy: the statement inserts this group's rows, which may go in one
	// COPY instead (see apply_copy.go).
	copy *group
}

func insertStmt(sh replicator.Shape, row []replicator.Value) stmt {
	var cols, vals []string
	var args []any
	for i, col := range sh.Columns {
		cols = append(cols, quoteIdent(col))
		args = append(args, textArg(row[i]))
		vals = append(vals, fmt.Sprintf("$%d::%s", len(args), sh.Types[i]))
	}
	// Only a primary-key clash (a local insert racing the apply) is
	// absorbed; any other unique violation is a data error and gets parked.
	var key []string
	for _, k := range sh.Key {
		key = append(key, quoteIdent(sh.Columns[k]))
	}
	return stmt{
		sql: fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s) ON CONFLICT (%s) DO NOTHING", qualified(sh.Table),
			strings.Join(cols, ", "), strings.Join(vals, ", "), strings.Join(key, ", ")),
		args: args, want: 1, table: sh.Table,
	}
}

func updateStmt(sh replicator.Shape, key string, row []replicator.Value) stmt {
	var sets []string
	var args []any
	for i, col := range sh.Columns {
		if row[i].Unchanged || sh.IsKey(i) {
			continue
		}
		args = append(args, textArg(row[i]))
		sets = append(sets, fmt.Sprintf("%s = $%d::%s", quoteIdent(col), len(args), sh.Types[i]))
	}
	where, wargs := keyWhere(sh, key, len(args))
	args = append(args, wargs...)
	if len(sets) == 0 {
		// Only key columns: rewrite one to itself so the row's xmin moves.
		kc := quoteIdent(sh.Columns[sh.Key[0]])
		sets = append(sets, kc+" = "+kc)
	}
	return stmt{sql: fmt.Sprintf("UPDATE %s SET %s WHERE %s", qualified(sh.Table), strings.Join(sets, ", "), where), args: args, want: 1, table: sh.Table}
}

func deleteStmt(sh replicator.Shape, key string) stmt {
	where, args := keyWhere(sh, key, 0)
	return stmt{sql: fmt.Sprintf("DELETE FROM %s WHERE %s", qualified(sh.Table), where), args: args, want: 1, table: sh.Table}
}

func keyWhere(sh replicator.Shape, key string, offset int) (string, []any) {
	var parts []string
	_ = json.Unmarshal([]byte(key), &parts)
	var conds []string
	var args []any
	for i, ki := range sh.Key {
		var p string
		if i < len(parts) {
			p = parts[i]
		}
		args = append(args, p)
		conds = append(conds, fmt.Sprintf("%s = $%d::%s", quoteIdent(sh.Columns[ki]), offset+len(args), sh.Types[ki]))
	}
	return strings.Join(conds, " AND "), args
}

func textArg(v replicator.Value) any {
	if v.Null {
		return nil
	}
	return v.Text
}

// ownTuple marks a version tuple this transaction wrote (meta.tupleXmin).
const ownTuple = "@"

// metaStmt writes one key's version (careful mode): over the tuple as read
// (tupleXmin; retryable if it changed or went), as a new tuple (retryable
// if one was recorded meanwhile), or over this transaction's own.
func metaStmt(tbl, key string, m *meta, versioned bool, tupleXmin string) stmt {
	var mw metaWriter
	mw.add(metaKey{tbl, key}, m)
	switch {
	case tupleXmin == ownTuple:
		return stmt{sql: upsertMetaSQL, args: mw.args(), want: -1}
	case versioned:
		return stmt{sql: updateMetaSQL, args: append(mw.args(), []string{tupleXmin}), want: 1}
	}
	return stmt{sql: insertMetaSQL, args: mw.args(), want: 1}
}

// insertMetaSQL records versions of keys that had none; a version recorded
// meanwhile is left alone (the caller compares the row count).
var insertMetaSQL = upsertMetaSQL[:strings.Index(upsertMetaSQL, "ON CONFLICT")] + "ON CONFLICT (tbl, key) DO NOTHING"

type opKind int

const (
	opInsert opKind = iota + 1
	opUpdate
	opDelete
	opMeta
	opOther
	opConflict
)

// op is one write an applied change needs.
type op struct {
	kind opKind
	sh   *replicator.Shape // data ops
	key  string
	row  []replicator.Value
	tbl  string // opMeta
	meta *meta
	// versioned (opMeta): the key had a row_version tuple when read;
	// tupleXmin: that tuple's xmin as read (ownTuple once this transaction
	// wrote it).
	versioned bool
	tupleXmin string
	st        stmt         // opOther
	conflict  *conflictRow // opConflict
}

func (o op) stmt() stmt {
	switch o.kind {
	case opInsert:
		return insertStmt(*o.sh, o.row)
	case opUpdate:
		return updateStmt(*o.sh, o.key, o.row)
	case opDelete:
		return deleteStmt(*o.sh, o.key)
	case opMeta:
		return metaStmt(o.tbl, o.key, o.meta, o.versioned, o.tupleXmin)
	case opConflict:
		return o.conflict.stmt()
	}
	return o.st
}

// setCols lists, for an update, the non-key columns it writes.
func (o op) setCols() []int {
	var cols []int
	for i := range o.sh.Columns {
		if !o.row[i].Unchanged && !o.sh.IsKey(i) {
			cols = append(cols, i)
		}
	}
	return cols
}

// bulk merges row writes into set-based statements. Consecutive writes of
// the same kind to the same table (and, for updates, the same columns) form
// a group, and so do such writes when only writes they commute with come
// between them (see joins); a key seen twice starts a new group, so
// per-key order holds, and groups run in the order they were formed
// (parents before children). Row versions are written last, once per key.
type bulk struct {
	groups    []*group
	metaOrder []*metaEntry
	metas     map[metaKey]*metaEntry
	hint      int // how many keys the batch may write (sizes metas)
	others    []stmt
	conflicts []*conflictRow // written in one statement (see conflictsStmt)
	// folds: counter-only rows' updates, added in place (see fold).
	folds     map[metaKey]*foldRow
	foldOrder []metaKey
}

// metaEntry is the version a batch writes for one key.
type metaEntry struct {
	key  metaKey
	meta *meta
	new  bool   // the key had no row_version tuple when read
	xmin string // else: that tuple's xmin as read
	fold bool   // folded into the recorded version (see fold)
}

type group struct {
	kind opKind
	sh   *replicator.Shape
	cols []int // updates: the columns set
	keys map[string]bool
	ops  []op
}

func (b *bulk) add(o op, commute func(table string) commuting) {
	switch o.kind {
	case opMeta:
		if b.metas == nil {
			b.metas = make(map[metaKey]*metaEntry, b.hint)
		}
		k := metaKey{o.tbl, o.key}
		e, ok := b.metas[k]
		if !ok {
			e = &metaEntry{key: k, new: !o.versioned, xmin: o.tupleXmin}
			b.metas[k] = e
			b.metaOrder = append(b.metaOrder, e)
		}
		e.meta = o.meta
		return
	case opOther:
		b.others = append(b.others, o.st)
		return
	case opConflict:
		b.conflicts = append(b.conflicts, o.conflict)
		return
	}
	var cols []int
	if o.kind == opUpdate {
		cols = o.setCols()
	}
	g := b.joins(o, cols, commute)
	if g == nil {
		g = &group{kind: o.kind, sh: o.sh, cols: cols, keys: make(map[string]bool, groupStart), ops: make([]op, 0, groupStart)}
		b.groups = append(b.groups, g)
	} else if len(g.ops) == cap(g.ops) {
		// A group that outgrows its room is a run of one table's writes
		// (a backlog's holds thousands): it grows eightfold at a time, up
		// to the batch's size, rather than one doubling at a time (each
		// copying its keys) or to the batch's size at once (which a batch
		// of many tables' writes leaves mostly empty, and zeroes anyway).
		// Most groups of a batch whose tables alternate hold a write or
		// two and stay small.
		g.grow(min(b.hint, 8*cap(g.ops)))
	}
	g.keys[o.key] = true
	g.ops = append(g.ops, o)
}

// groupStart is the room a new group gets.
const groupStart = 8

// grow gives the group room for n writes.
func (g *group) grow(n int) {
	if n <= cap(g.ops) {
		return
	}
	ops := make([]op, len(g.ops), n)
	copy(ops, g.ops)
	keys := make(map[string]bool, n)
	for k := range g.keys {
		keys[k] = true
	}
	g.ops, g.keys = ops, keys
}

// mergeReach bounds how many groups back a write may join a group.
const mergeReach = 16

// joins returns the group a row write joins, or nil when it starts one:
// the last group if it is of the same kind, table and columns and does not
// hold the key yet; or such a group further back, past groups the write
// commutes with (see commutes): groups of other tables when both tables
// stand alone, and groups of its own table that do not hold its key when
// the table's rows commute. Any other group in between stops the search,
// and so does a group that holds the key: writes of one row keep the
// source's order, and so do writes of a table whose rows do not commute (a
// secondary unique key freed by one write and taken by the next, say).
func (b *bulk) joins(o op, cols []int, commute func(string) commuting) *group {
	var own commuting
	if commute != nil {
		own = commute(o.sh.Table)
	}
	for i := len(b.groups) - 1; i >= 0 && i >= len(b.groups)-mergeReach; i-- {
		g := b.groups[i]
		if g.sh.Table == o.sh.Table {
			if g.keys[o.key] {
				return nil
			}
			if g.kind == o.kind && slices.Equal(g.cols, cols) {
				return g
			}
			if !own.rows {
				return nil
			}
			continue
		}
		if !own.tables || !commute(g.sh.Table).tables {
			return nil
		}
	}
	return nil
}

// rowStatements returns the batch's row writes; metaStatements what runs
// after them.
func (b *bulk) rowStatements() []stmt {
	var out []stmt
	for _, g := range b.groups {
		if len(g.ops) == 1 {
			out = append(out, g.ops[0].stmt())
			continue
		}
		s := g.stmt()
		if g.copyable() {
			s.copy = g
		}
		out = append(out, s)
	}
	return out
}

// metaStatements returns the versions and the other statements; versions
// of keys that had none are left out (newMetas returns them, for COPY).
func (b *bulk) metaStatements() []stmt {
	var out []stmt
	if len(b.metaOrder) > 0 {
		// Key order, as the reader locks them: no deadlock between the two.
		sort.Slice(b.metaOrder, func(i, j int) bool {
			a, c := b.metaOrder[i].key, b.metaOrder[j].key
			if a.tbl != c.tbl {
				return a.tbl < c.tbl
			}
			return a.key < c.key
		})
		// Each over its tuple as read: one that changed (or went) since
		// fails the batch, which is then decided again on what is there.
		var mw metaWriter
		var fold []bool
		anyFold := false
		for _, e := range b.metaOrder {
			if !e.new {
				mw.add(e.key, e.meta)
				mw.tupleXmin = append(mw.tupleXmin, e.xmin)
				fold = append(fold, e.fold)
				anyFold = anyFold || e.fold
			}
		}
		switch {
		case anyFold:
			out = append(out, stmt{sql: foldMetaSQL, args: append(mw.args(), mw.tupleXmin, fold), want: int64(len(mw.key))})
		case len(mw.key) > 0:
			out = append(out, stmt{sql: updateMetaSQL, args: append(mw.args(), mw.tupleXmin), want: int64(len(mw.key))})
		}
	}
	if len(b.conflicts) > 0 {
		out = append(out, conflictsStmt(b.conflicts))
	}
	return append(out, b.others...)
}

// newMetas returns the versions of keys that had none when read, in key
// order.
func (b *bulk) newMetas() []*metaEntry {
	var out []*metaEntry
	for _, e := range b.metaOrder {
		if e.new {
			out = append(out, e)
		}
	}
	return out
}

// stmt builds a group's set-based statement: every column travels as one
// text[] parameter, cast to its type in SQL.
func (g *group) stmt() stmt {
	sh := g.sh
	var args []any
	var unnest, alias []string
	param := func(vals []*string, name string) {
		args = append(args, vals)
		unnest = append(unnest, fmt.Sprintf("pg_catalog.unnest($%d::text[])", len(args)))
		alias = append(alias, name)
	}
	column := func(i int) []*string {
		vals := make([]*string, len(g.ops))
		for r, o := range g.ops {
			if v := o.row[i]; !v.Null {
				t := v.Text
				vals[r] = &t
			}
		}
		return vals
	}
	keyCols := func() {
		parts := make([][]string, len(g.ops))
		for r, o := range g.ops {
			_ = json.Unmarshal([]byte(o.key), &parts[r])
		}
		for j := range sh.Key {
			vals := make([]*string, len(g.ops))
			for r := range g.ops {
				if j < len(parts[r]) {
					p := parts[r][j]
					vals[r] = &p
				}
			}
			param(vals, fmt.Sprintf("k%d", j))
		}
	}
	keyMatch := func() string {
		var conds []string
		for j, ki := range sh.Key {
			conds = append(conds, fmt.Sprintf("t.%s = u.k%d::%s", quoteIdent(sh.Columns[ki]), j, sh.Types[ki]))
		}
		return strings.Join(conds, " AND ")
	}
	from := func() string {
		return "ROWS FROM (" + strings.Join(unnest, ", ") + ") AS u(" + strings.Join(alias, ", ") + ")"
	}
	want := int64(len(g.ops))
	switch g.kind {
	case opInsert:
		var cols, sel, key []string
		for i, c := range sh.Columns {
			param(column(i), fmt.Sprintf("v%d", i))
			cols = append(cols, quoteIdent(c))
			sel = append(sel, fmt.Sprintf("u.v%d::%s", i, sh.Types[i]))
		}
		for _, k := range sh.Key {
			key = append(key, quoteIdent(sh.Columns[k]))
		}
		return stmt{sql: fmt.Sprintf("INSERT INTO %s AS t (%s) SELECT %s FROM %s ON CONFLICT (%s) DO NOTHING",
			qualified(sh.Table), strings.Join(cols, ", "), strings.Join(sel, ", "), from(), strings.Join(key, ", ")), args: args, want: want, table: sh.Table}
	case opUpdate:
		keyCols()
		var sets []string
		for _, i := range g.cols {
			param(column(i), fmt.Sprintf("v%d", i))
			sets = append(sets, fmt.Sprintf("%s = u.v%d::%s", quoteIdent(sh.Columns[i]), i, sh.Types[i]))
		}
		if len(sets) == 0 {
			kc := quoteIdent(sh.Columns[sh.Key[0]])
			sets = append(sets, kc+" = t."+kc)
		}
		return stmt{sql: fmt.Sprintf("UPDATE %s AS t SET %s FROM %s WHERE %s", qualified(sh.Table), strings.Join(sets, ", "), from(), keyMatch()), args: args, want: want, table: sh.Table}
	default:
		keyCols()
		return stmt{sql: fmt.Sprintf("DELETE FROM %s AS t USING %s WHERE %s", qualified(sh.Table), from(), keyMatch()), args: args, want: want, table: sh.Table}
	}
}
