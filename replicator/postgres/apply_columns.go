package postgres

// Column-level last-writer-wins in the applier: the row a decision leaves
// live is joined column by column from the rows of the writes it keeps,
// and each write that lost a column it set is logged (see the conflict
// package's columns.go).

import (
	"fmt"
	"slices"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

// joinRow is the row a decision leaves under column_lww when the row stays
// live (see conflict.JoinSources): column by column, the value of the
// highest stamp among the local row, the remote change's row and the live
// siblings' rows as kept (sibs: the siblings the decision keeps; the row's
// old ones for a sibling it brings back). It sets d.Result.Stamps; write
// is false when every column comes from the local row. The local row's
// image must be loaded.
func joinRow(sh replicator.Shape, pol conflict.Policy, c *replicator.Change, s *rowState, local conflict.Version, d *conflict.Decision, sibs siblingSet) (row []replicator.Value, write bool, err error) {
	cols := replicator.StampedColumns(sh, pol)
	localLive := s.exists && !local.Deleted
	if !d.Conflict && d.Action == conflict.ApplyRemote && len(d.Result.Siblings) == 0 {
		// The remote write has seen every write the row holds: its
		// stamps are above theirs, its row is the join.
		d.Result.Stamps = c.Version.Stamps
		return c.Row, true, nil
	}
	srcs := conflict.JoinSources(*d, local, localLive, c.Version, c.Op)
	vers := make([]conflict.Version, len(srcs))
	rows := make([][]replicator.Value, len(srcs))
	for i, src := range srcs {
		switch src.Side {
		case conflict.Local:
			if s.image == nil {
				return nil, false, fmt.Errorf("apply: %s key %s: the local row's image is not loaded for a column join", sh.Table, c.Key)
			}
			if rows[i], err = imageRow(sh, s.image); err != nil {
				return nil, false, err
			}
			vers[i] = local
		case conflict.Remote:
			vers[i], rows[i] = c.Version, c.Row
		default:
			sd, ok := sibs[dotOf(src.Write)]
			if !ok && s.meta != nil {
				sd, ok = s.meta.siblings[dotOf(src.Write)]
			}
			if !ok || sd.row == nil {
				return nil, false, fmt.Errorf("apply: %s key %s: sibling %s:%d joins the row but no row was kept for it", sh.Table, c.Key, src.Write.Origin, src.Write.Tick)
			}
			if rows[i], err = imageRow(sh, sd.row); err != nil {
				return nil, false, err
			}
			vers[i] = conflict.Version{HLC: src.Write.HLC, Origin: src.Write.Origin, Stamps: sd.stamps}
		}
	}
	from, stamps := conflict.JoinColumns(cols, vers, d.Result)
	d.Result.Stamps = stamps
	// Key and merged columns: from the last source (the remote row when
	// live); counters are summed by the caller, and max and min columns
	// worked out by maxMinValues (left alone here when the row exists).
	base := rows[len(rows)-1]
	row = make([]replicator.Value, len(sh.Columns))
	copy(row, base)
	if s.exists {
		for i, col := range sh.Columns {
			if m := pol.Merge(col); m == "max" || m == "min" {
				row[i] = replicator.Value{Unchanged: true}
			}
		}
	}
	fromLocal := localLive && srcs[0].Side == conflict.Local
	for j, col := range cols {
		i := indexOf(sh.Columns, col)
		k := from[j]
		v := rows[k][i]
		if v.Unchanged {
			// Not sent: any source with the same stamp holds the value.
			for k2 := range rows {
				if !rows[k2][i].Unchanged && vers[k2].StampOf(col) == vers[k].StampOf(col) {
					v, k = rows[k2][i], k2
					break
				}
			}
		}
		if v.Unchanged && !(fromLocal && vers[0].StampOf(col) == vers[k].StampOf(col)) {
			return nil, false, fmt.Errorf("column %q: its latest value was not sent (unchanged TOAST value) and no row here holds it", col)
		}
		row[i] = v
		switch {
		case fromLocal && k == 0:
			// The local row keeps it: the update leaves it alone.
			row[i] = replicator.Value{Unchanged: true}
		default:
			write = true
		}
	}
	if fromLocal && !write {
		return nil, false, nil
	}
	return row, true, nil
}

// columnLoss is what a column_lww decision cost a write: the decision's
// own losing write (decided; its record takes the outcome), or a live
// sibling whose columns the row held before the decision and does not
// after it (logged in a record of its own).
type columnLoss struct {
	decided bool
	outcome conflict.Outcome
	sibling conflict.Write
	cols    []string
}

// columnLosses works out, for a column_lww decision, whether its losing
// write lost data and which siblings lost columns they had kept. row is
// the joined row (nil when the row keeps the local one, or is deleted).
func columnLosses(sh replicator.Shape, pol conflict.Policy, c *replicator.Change, s *rowState, local conflict.Version, d conflict.Decision, sibs siblingSet, row []replicator.Value) []columnLoss {
	cols := replicator.StampedColumns(sh, pol)
	result := d.Result
	var lrow []replicator.Value // the local row as the decision found it
	if s.image != nil {
		lrow, _ = imageRow(sh, s.image)
	}
	final := row
	if !result.Deleted {
		// Columns the joined row leaves alone hold the local row's values.
		if final == nil {
			final = lrow
		} else if lrow != nil {
			final = slices.Clone(final)
			for i, v := range final {
				if v.Unchanged && i < len(lrow) {
					final[i] = lrow[i]
				}
			}
		}
	}
	// lost: the columns v set itself that the final row holds from
	// another write with another value (the whole row when it is deleted).
	lost := func(v conflict.Version, vrow []replicator.Value, against conflict.Version, arow []replicator.Value, deleted bool) []string {
		if deleted {
			return []string{"(the row)"}
		}
		var out []string
		for _, col := range conflict.LostColumns(cols, v, against) {
			i := indexOf(sh.Columns, col)
			if vrow != nil && arow != nil && i < len(vrow) && i < len(arow) && !vrow[i].Unchanged && vrow[i] == arow[i] {
				continue // the same value
			}
			out = append(out, col)
		}
		return out
	}
	sibling := func(w conflict.Write) (conflict.Version, []replicator.Value) {
		sd, ok := sibs[dotOf(w)]
		if !ok && s.meta != nil {
			sd = s.meta.siblings[dotOf(w)]
		}
		var r []replicator.Value
		if sd.row != nil {
			r, _ = imageRow(sh, sd.row)
		}
		return conflict.Version{HLC: w.HLC, Origin: w.Origin, Stamps: sd.stamps}, r
	}
	localWrite := dotKey{local.Origin, local.Vector.Get(local.Origin)}
	remoteWrite := dotKey{c.Version.Origin, c.Version.Vector.Get(c.Version.Origin)}
	var out []columnLoss
	if d.Conflict {
		var v conflict.Version
		var vrow []replicator.Value
		deleted := false
		switch {
		case d.Winner == conflict.Local:
			v, vrow, deleted = c.Version, c.Row, c.Op == conflict.OpDelete
		case dotOf(d.Against) == localWrite:
			v, vrow, deleted = local, lrow, d.Against.Deleted
		default:
			v, vrow = sibling(d.Against)
			deleted = d.Against.Deleted
		}
		o := conflict.Merged
		if !deleted && len(lost(v, vrow, result, final, result.Deleted)) > 0 {
			o = conflict.Overwritten
		}
		out = append(out, columnLoss{decided: true, outcome: o})
	}
	localLive := s.exists && !local.Deleted
	if !localLive {
		return out // nothing was held before
	}
	for _, w := range result.Siblings {
		if k := dotOf(w); w.Deleted || k == localWrite || k == remoteWrite || (d.Conflict && k == dotOf(d.Against)) {
			continue
		}
		v, vrow := sibling(w)
		if len(lost(v, vrow, local, lrow, false)) > 0 {
			continue // lost before, and logged then
		}
		if l := lost(v, vrow, result, final, result.Deleted); len(l) > 0 {
			out = append(out, columnLoss{sibling: w, cols: l})
		}
	}
	return out
}

// siblingLossRecord logs a sibling's columns lost to a remote write (or its
// row, when the remote delete won): the sibling is the record's local side.
func siblingLossRecord(region conflict.RegionID, pol conflict.Policy, sh replicator.Shape, seq replicator.Seq, c *replicator.Change, before rowState, d conflict.Decision, l columnLoss) *conflictRow {
	d.Against, d.Winner, d.Kind = l.sibling, conflict.Remote, conflict.UpdateUpdate
	d.Reason = fmt.Sprintf("%s: columns %v kept from sibling %s:%d now hold a later write's values", conflict.ColumnLWW, l.cols, l.sibling.Origin, l.sibling.Tick)
	if c.Op == conflict.OpDelete {
		d.Kind = conflict.DeleteUpdate
		d.Reason = fmt.Sprintf("%s: the remote delete wins over sibling %s:%d", conflict.DeleteWins, l.sibling.Origin, l.sibling.Tick)
	}
	r := newConflictRecord(region, pol, sh, seq, c, before, d)
	r.lost = conflict.Overwritten
	return r
}
