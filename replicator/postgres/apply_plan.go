package postgres

// What one decided remote change does to a local row: the writes, the
// row's version afterwards, its counter sums and its conflict records.
// planChange works that out without touching the database: the decision
// (conflict.Decide, a custom resolver's verdict folded in), the local row
// as read and the max and min columns' merged values are its inputs, and
// applyChange reads those and runs what it returns.

import (
	"encoding/json"
	"fmt"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

// changeInput is one remote change decided against one local row.
type changeInput struct {
	region conflict.RegionID // this region (the conflict records')
	pol    conflict.Policy
	sh     *replicator.Shape // the change's shape, as the local table has it
	seq    replicator.Seq    // the source transaction's sequence number
	c      *replicator.Change
	s      rowState          // the local row before the change
	d      conflict.Decision // conflict.Decide's, with a resolver's verdict
	// merged: a concurrent update that loses nothing (see mergesOnly):
	// counted, not logged.
	merged bool
	// sibs: the siblings the decision keeps, with their data (keptSiblings).
	sibs siblingSet
	// mm: the max and min columns of the row the decision leaves live
	// (maxMinValues; zero when the policy has none).
	mm maxMinResult
	// ops, when not nil, is room for the plan's writes (its length is
	// ignored): the applier reuses one for every change of a batch.
	ops []op
}

// maxMinResult is what maxMinValues worked out for a decision.
type maxMinResult struct {
	vals      map[int]replicator.Value // by column index, when write
	write     bool
	own       json.RawMessage // the result's write's own row, when the row holds more
	ownStamps map[string]conflict.Stamp
}

// changePlan is what applying one change takes.
type changePlan struct {
	// park, when set, says why the change cannot be applied here (it is
	// parked with that reason, or fails the batch in the careful path's
	// absence); nothing else is set then.
	park string
	// ops are the writes in order: the row's, its version, its conflict
	// records. None when the decision keeps the local row as it is.
	ops []op
	// next is the row's state once ops ran.
	next rowState
	// record is the decision's conflict record (nil when it had none or
	// merged); more are siblings' column losses, each its own record.
	record *conflictRow
	more   []*conflictRow
}

// joinsColumns reports whether a decision leaves a live row joined column
// by column from the writes it keeps (column_lww).
func joinsColumns(pol conflict.Policy, d conflict.Decision) bool {
	return pol.ColumnLWW() && d.Action != conflict.Skip && !d.Result.Deleted
}

// planChange works out the writes that apply in.c over in.s under in.d.
// An error is a change no region could apply (a malformed counter delta).
func planChange(in changeInput) (changePlan, error) {
	sh, c, d, pol := in.sh, in.c, in.d, in.pol
	s := in.s
	local := s.version()
	// Counter columns are sums of deltas: every region adds every write's
	// delta exactly once, whatever the row's state (a tombstone keeps
	// accumulating), so the sums agree once all deltas have arrived. Only the
	// other columns follow the decision.
	acc := map[string]string{}
	countersChanged := false
	for _, col := range pol.Counters {
		if s.exists {
			if v := s.values[col]; v != nil {
				acc[col] = *v
			}
		} else if s.meta != nil {
			acc[col] = s.meta.counters[col]
		}
		if c.Op == conflict.OpDelete {
			continue
		}
		if delta := c.Deltas[col]; delta != "" && delta != "0" {
			nv, err := conflict.MergeCounter(acc[col], delta)
			if err != nil {
				return changePlan{}, fmt.Errorf("apply: counter %s.%s key %s: %w", sh.Table, col, c.Key, err)
			}
			acc[col] = nv
			countersChanged = true
		}
	}
	if d.Action == conflict.Skip && !countersChanged {
		return changePlan{next: s}, nil
	}
	// What the decision writes: the remote change's row or delete, or a
	// reinstated sibling's.
	var rows [][]replicator.Value
	deleteRow := false
	switch d.Action {
	case conflict.ApplyRemote:
		deleteRow = c.Op == conflict.OpDelete
		if !deleteRow {
			rows = [][]replicator.Value{c.Row}
		}
	case conflict.Reinstate:
		deleteRow = d.Against.Deleted
		if !deleteRow {
			row, err := reinstatedRow(*sh, c.Key, &s, d.Against)
			if err != nil {
				return changePlan{park: err.Error()}, nil
			}
			rows = [][]replicator.Value{row}
		}
	}
	// Under column_lww a row that stays live joins the rows of the writes
	// it keeps, the local one's among them.
	var joinLosses []columnLoss
	if joinsColumns(pol, d) {
		row, write, err := joinRow(*sh, pol, c, &s, local, &d, in.sibs)
		if err != nil {
			return changePlan{park: err.Error()}, nil
		}
		deleteRow, rows = false, nil
		if write {
			rows = [][]replicator.Value{row}
		}
		joinLosses = columnLosses(*sh, pol, c, &s, local, d, in.sibs, row)
	} else if pol.ColumnLWW() && d.Conflict {
		joinLosses = columnLosses(*sh, pol, c, &s, local, d, in.sibs, nil)
	}
	before := s
	ops := in.ops[:0]
	if ops == nil {
		ops = make([]op, 0, 4) // a write, its version, a conflict record or two
	}
	counterRow := func(row []replicator.Value) {
		for i, col := range sh.Columns {
			if v, ok := acc[col]; ok && v != "" {
				row[i] = replicator.Value{Text: v}
			}
		}
	}
	var mm map[int]replicator.Value
	if in.mm.write {
		mm = in.mm.vals
	}
	switch {
	case deleteRow:
		if s.exists {
			ops = append(ops, op{kind: opDelete, sh: sh, key: c.Key})
		}
		s.exists, s.values, s.image, s.pending, s.baseDeferred = false, nil, nil, nil, false
	case len(rows) > 0:
		for _, src := range rows {
			row := make([]replicator.Value, len(src))
			copy(row, src)
			counterRow(row)
			for i, v := range mm {
				row[i] = v
			}
			if s.exists {
				ops = append(ops, op{kind: opUpdate, sh: sh, key: c.Key, row: row})
			} else {
				for i, v := range row {
					if v.Unchanged {
						return changePlan{park: fmt.Sprintf("column %q was not sent (unchanged TOAST value) and the row does not exist here", sh.Columns[i])}, nil
					}
				}
				ops = append(ops, op{kind: opInsert, sh: sh, key: c.Key, row: row})
			}
			s.pending = append(s.pending, imageWrite{*sh, row})
			s.exists, s.written = true, true
		}
	case s.exists && (countersChanged || len(mm) > 0):
		// The local row stays; only its counters (and max and min
		// columns) move.
		row := make([]replicator.Value, len(sh.Columns))
		for i := range row {
			row[i] = replicator.Value{Unchanged: true}
		}
		counterRow(row)
		for i, v := range mm {
			row[i] = v
		}
		ops = append(ops, op{kind: opUpdate, sh: sh, key: c.Key, row: row})
		if !s.imageKnown() {
			// This write sets some columns only: the row's image is the
			// row as read with it folded in, read when a later decision
			// or conflict record of the batch needs it.
			s.baseDeferred = true
		}
		s.pending = append(s.pending, imageWrite{*sh, row})
		s.written = true
	}
	if s.exists {
		s.values = make(map[string]*string, len(acc))
		for col, v := range acc {
			s.values[col] = &v
		}
	}
	nm := &meta{version: d.Result, srcSeq: int64(in.seq), siblings: in.sibs, own: in.mm.own, ownStamps: in.mm.ownStamps}
	switch {
	case d.Action == conflict.Reinstate:
		nm.srcSeq = before.meta.siblings[dotOf(d.Against)].seq
	case d.Action == conflict.Skip || (d.Conflict && d.Winner == conflict.Local):
		// The version stays (or ends) the local write's.
		nm.srcSeq = 0
		if s.meta != nil {
			nm.srcSeq = s.meta.srcSeq
		}
	}
	if d.Action == conflict.Skip {
		nm.version = local
		if s.meta != nil {
			nm.own, nm.ownStamps = s.meta.own, s.meta.ownStamps
		}
	}
	nm.withOwn(holderVector(c, before, d))
	switch {
	case !s.exists:
		nm.xid = ""
	case s.written:
		nm.xid = "@" // this transaction's xid, filled in by SQL
	default:
		nm.xid = s.xmin
	}
	if len(acc) > 0 {
		nm.counters = acc
	}
	// The version is written only over the tuple this decision read: an
	// absent row locks nothing, so another source's applier or the local
	// reader may have recorded a version for the key since.
	readXmin := ""
	if s.meta != nil {
		readXmin = s.meta.tupleXmin
	}
	ops = append(ops, op{kind: opMeta, key: c.Key, tbl: sh.Table, meta: nm, versioned: s.versioned, tupleXmin: readXmin})
	p := changePlan{}
	if d.Conflict && !in.merged {
		p.record = newConflictRecord(in.region, pol, *sh, in.seq, c, before, d)
		ops = append(ops, op{kind: opConflict, conflict: p.record})
		for _, w := range d.AlsoLost {
			r := overturnedRecord(in.region, pol, *sh, in.seq, c, before, d, w)
			p.more = append(p.more, r)
			ops = append(ops, op{kind: opConflict, conflict: r})
		}
	}
	for _, l := range joinLosses {
		if l.decided {
			if p.record != nil {
				p.record.lost = l.outcome
			}
			continue
		}
		r := siblingLossRecord(in.region, pol, *sh, in.seq, c, before, d, l)
		p.more = append(p.more, r)
		ops = append(ops, op{kind: opConflict, conflict: r})
	}
	nm.tupleXmin = ownTuple
	s.meta = nm
	p.ops, p.next = ops, s
	return p, nil
}

// holderVector is the vector the write holding the row after d was made
// with: a reinstated sibling's as kept, the local row's write's when it
// stays (meta.ownVector), else the remote change's as shipped.
func holderVector(c *replicator.Change, before rowState, d conflict.Decision) conflict.Vector {
	switch {
	case d.Action == conflict.Reinstate:
		return before.meta.siblings[dotOf(d.Against)].vector(d.Against)
	case d.Action == conflict.Skip || (d.Conflict && d.Winner == conflict.Local):
		return before.ownVersion().Vector
	}
	return c.Version.Vector
}
