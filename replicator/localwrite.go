package replicator

// A local write's version: what the origin region's reader decides for each
// row change its applications made, from the row's recorded state alone (no
// I/O; the reader reads the recorded state and writes the outcome).

import (
	"fmt"
	"slices"
	"time"

	"github.com/polyregion/polyregion/conflict"
)

// Recorded is what a region holds for a row before a local write: its
// version and, for tables with counters, each counter's recorded sum (a
// tombstone's included). The zero value is a row with nothing recorded.
type Recorded struct {
	Version  conflict.Version
	Counters map[string]string
}

// LocalWrite is one row change of a local transaction as the change
// stream carried it.
type LocalWrite struct {
	Region conflict.RegionID
	Commit time.Time // the transaction's commit time
	Op     conflict.Op
	Shape  Shape
	Row    []Value // the new row (the key only for a delete)
	// Old is the row as the write found it, when the stream carries it:
	// all of it when OldFull (REPLICA IDENTITY FULL), else the old key at
	// most.
	Old     []Value
	OldFull bool
	// Epoch is the configuration epoch the region ranks the write under
	// (0 under the founding configuration; see conflict/epochs.go).
	Epoch uint64
	// Unseeded: the row's state before the write was never shipped (a row
	// of a table being seeded that its seed had not reached yet). The
	// write is the row's first shipped state, whatever old row the stream
	// carries: its counters ship their whole values and every column
	// counts as changed.
	Unseeded bool
}

// Versioned is a local write's outcome: its version, the counter sums it
// leaves recorded (nil for a table without counters) and the deltas it
// ships (counters of an insert or update).
type Versioned struct {
	Version  conflict.Version
	Counters map[string]string
	Deltas   map[string]string
}

// VersionLocalWrite decides a local write's version under policy p:
//
//   - its vector is the recorded one ticked for the region, so it follows
//     every write the row held;
//   - its hybrid timestamp is the commit time moved past the recorded
//     version and its siblings: causally later writes to a row always
//     carry larger timestamps, whatever the clocks say, and the value does
//     not depend on when the reader got to the write;
//   - its epoch is the higher of the recorded one and the write's own: a
//     row's conflicts are ranked under the latest epoch any of its writes
//     was made under;
//   - column stamps (column_lww): the columns an update did not change keep
//     the stamps they had (without the full old row every column counts as
//     changed);
//   - counters: with the full old row an update's delta is exact (new minus
//     the value the write found), whatever the recorded sums say, and the
//     recorded sums move by it (appliers add peers' increments to the sums
//     of counter-only rows in place, possibly before the write is
//     versioned); without it the delta is new minus the recorded sum. A
//     row written before replication started has no sum recorded: its old
//     value, when the stream carries it, is the starting point. An
//     unchanged (TOASTed) counter moves by 0. A delete keeps the sums in
//     its tombstone: deltas that arrive while the row is deleted still
//     count. An Unseeded write ignores the old row: its delta is its whole
//     value.
func VersionLocalWrite(p conflict.Policy, prior Recorded, w LocalWrite) (Versioned, error) {
	out := Versioned{Version: conflict.Version{
		Vector:  prior.Version.Vector.Tick(w.Region),
		HLC:     conflict.Next(w.Commit, prior.Version.Latest()),
		Origin:  w.Region,
		Deleted: w.Op == conflict.OpDelete,
		Epoch:   max(prior.Version.Epoch, w.Epoch),
	}}
	full, old := w.Old, w.Old
	if !w.OldFull {
		full = nil
	}
	if w.Unseeded {
		full, old = nil, nil
	}
	if cols := StampedColumns(w.Shape, p); len(cols) > 0 {
		changed := ChangedColumns(w.Shape, cols, full, w.Row)
		out.Version.Stamps = conflict.LocalStamps(prior.Version, !prior.Version.Deleted, w.Op, cols, changed)
	}
	if len(p.Counters) == 0 {
		return out, nil
	}
	if w.Op == conflict.OpDelete {
		out.Counters = prior.Counters
		return out, nil
	}
	out.Counters, out.Deltas = map[string]string{}, map[string]string{}
	for _, col := range p.Counters {
		i := slices.Index(w.Shape.Columns, col)
		if i < 0 {
			continue
		}
		v := w.Row[i]
		oldV, known := prior.Counters[col]
		sum := oldV // the recorded sum the delta moves
		switch {
		case full != nil && i < len(full) && !full[i].Unchanged:
			oldV = full[i].Text // "" for NULL
			if !known {
				sum = oldV
			}
		case !known && old != nil && i < len(old) && !old[i].Null && !old[i].Unchanged:
			// A row written before replication started: its old value
			// comes from the stream.
			oldV = old[i].Text
			sum = oldV
		}
		if v.Unchanged {
			out.Counters[col], out.Deltas[col] = sum, "0"
			continue
		}
		newV := ""
		if !v.Null {
			newV = v.Text
		}
		d, err := conflict.CounterDelta(oldV, newV)
		if err != nil {
			return out, fmt.Errorf("counter %s: %w", col, err)
		}
		out.Counters[col], out.Deltas[col] = newV, d
		if full != nil {
			if out.Counters[col], err = conflict.MergeCounter(sum, d); err != nil {
				return out, fmt.Errorf("counter %s: %w", col, err)
			}
		}
	}
	return out, nil
}

// StampedColumns are the columns of sh that carry stamps under p: not in
// the key, not merged otherwise (nil when p is not column_lww).
func StampedColumns(sh Shape, p conflict.Policy) []string {
	if !p.ColumnLWW() {
		return nil
	}
	var out []string
	for i, c := range sh.Columns {
		if !sh.IsKey(i) && p.Stamped(c) {
			out = append(out, c)
		}
	}
	return out
}

// ChangedColumns says, for each of cols, whether an update changed it: its
// new value differs from the old row's (which REPLICA IDENTITY FULL puts
// in the change stream). An unchanged TOAST value was not changed; without
// the old row every column counts as changed.
func ChangedColumns(sh Shape, cols []string, old, row []Value) []bool {
	out := make([]bool, len(cols))
	for j, c := range cols {
		i := slices.Index(sh.Columns, c)
		switch {
		case i < 0 || i >= len(row):
			out[j] = true
		case row[i].Unchanged:
		case old == nil || i >= len(old) || old[i].Unchanged:
			out[j] = true
		default:
			out[j] = old[i].Null != row[i].Null || old[i].Text != row[i].Text
		}
	}
	return out
}
