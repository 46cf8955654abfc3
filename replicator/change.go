// Package replicator is the data plane: it reads the local change stream,
// ships local-origin transactions to every peer region and applies peers'
// transactions locally.
//
// Guarantees (see the project's architecture notes for the full list):
//   - a source transaction is applied all-or-nothing, and the transactions of
//     one source region in source commit order;
//   - progress per source region is stored in the same local transaction as
//     the rows it covers, so a crash never applies a transaction twice or
//     skips one;
//   - changes applied from a peer are never shipped back out;
//   - every row carries a version vector, and concurrent writes are resolved
//     by the table's policy (package conflict) and recorded in the conflict
//     log.
package replicator

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/polyregion/polyregion/conflict"
)

// Seq numbers the transactions a region ships, in its local commit order.
// It is dense from 1 and never reused.
type Seq uint64

// Value is one column value in PostgreSQL text format.
type Value struct {
	Text string `json:"v,omitempty"`
	// Null is set for SQL NULL.
	Null bool `json:"n,omitempty"`
	// Unchanged is set for a TOASTed column the update did not touch: its
	// value was not sent and must never be written (and never as NULL).
	Unchanged bool `json:"u,omitempty"`
}

// Shape is the column layout of a table as the source region sees it.
type Shape struct {
	Table   string   `json:"table"`
	Columns []string `json:"columns"`
	Types   []string `json:"types"` // format_type() of each column
	Key     []int    `json:"key"`   // indexes into Columns of the primary key, in key order
}

// IsKey reports whether column i is part of the primary key.
func (s Shape) IsKey(i int) bool { return slices.Contains(s.Key, i) }

// Equal reports whether two shapes describe the same columns and key.
func (s Shape) Equal(o Shape) bool { return s.Diff(o) == "" }

// Diff names the first difference between two shapes, or "" when equal.
func (s Shape) Diff(o Shape) string {
	if s.Table != o.Table {
		return fmt.Sprintf("table %s vs %s", s.Table, o.Table)
	}
	idx := map[string]int{}
	for i, c := range o.Columns {
		idx[c] = i
	}
	for i, c := range s.Columns {
		j, ok := idx[c]
		if !ok {
			return fmt.Sprintf("column %q missing on one side", c)
		}
		if s.Types[i] != o.Types[j] {
			return fmt.Sprintf("column %q is %s on one side and %s on the other", c, s.Types[i], o.Types[j])
		}
	}
	if len(s.Columns) != len(o.Columns) {
		seen := map[string]bool{}
		for _, c := range s.Columns {
			seen[c] = true
		}
		for _, c := range o.Columns {
			if !seen[c] {
				return fmt.Sprintf("column %q missing on one side", c)
			}
		}
	}
	if len(s.Key) != len(o.Key) {
		return "primary keys differ"
	}
	for i := range s.Key {
		if s.Columns[s.Key[i]] != o.Columns[o.Key[i]] {
			return "primary keys differ"
		}
	}
	return ""
}

// KeyOf returns the canonical key of a row: the JSON array of the primary key
// values in text form.
func (s Shape) KeyOf(vals []Value) (string, error) {
	parts := make([]string, len(s.Key))
	for i, k := range s.Key {
		if k >= len(vals) {
			return "", fmt.Errorf("%s: key column %d missing from row", s.Table, k)
		}
		v := vals[k]
		if v.Null || v.Unchanged {
			return "", fmt.Errorf("%s: key column %q has no value", s.Table, s.Columns[k])
		}
		parts[i] = v.Text
	}
	b, err := json.Marshal(parts)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// Change is one row change with the version the row has after it.
type Change struct {
	// T indexes Txn.Shapes.
	T  int         `json:"t"`
	Op conflict.Op `json:"o"`
	// Key is Shape.KeyOf the row (the old key for a delete).
	Key string `json:"k"`
	// Row holds every column of the new row (nil for a delete).
	Row []Value `json:"r,omitempty"`
	// Deltas holds, for each counter column, the increment this write made.
	Deltas map[string]string `json:"d,omitempty"`
	// Version is the row's version after this write.
	Version conflict.Version `json:"ver"`
}

// Txn is one source transaction, shipped and applied as a unit.
type Txn struct {
	Origin conflict.RegionID `json:"origin"`
	Seq    Seq               `json:"seq"`
	// LSN is the commit position in the origin region (for operators).
	LSN        string   `json:"lsn"`
	CommitUnix int64    `json:"commit_us"` // commit time, microseconds since the Unix epoch
	Shapes     []Shape  `json:"shapes"`
	Changes    []Change `json:"changes"`
	// A transaction too large to hold in memory travels in parts: Part
	// numbers them from 0 and More is set on every part but the last. The
	// parts are applied in one local transaction.
	Part int  `json:"part,omitempty"`
	More bool `json:"more,omitempty"`
	// Known is the latest configuration epoch the origin knew when it
	// shipped the transaction (0 under the founding configuration): a
	// region that does not know that epoch yet waits for it before it
	// applies the transaction (see conflict/epochs.go).
	Known uint64 `json:"known,omitempty"`
}

// Encode serialises a transaction for the outbox and the wire, in the
// binary form (see codec.go).
func (t *Txn) Encode() ([]byte, error) {
	return t.appendBinary(make([]byte, 0, t.binarySize())), nil
}

// DecodeTxn is the inverse of Encode, with the checks a receiver needs. It
// also reads the JSON form earlier versions wrote, which may still sit in
// outboxes.
func DecodeTxn(b []byte) (*Txn, error) {
	var t *Txn
	switch {
	case len(b) == 0:
		return nil, fmt.Errorf("decode transaction: empty payload")
	case b[0] == binaryMagic:
		var err error
		if t, err = decodeBinary(b); err != nil {
			return nil, err
		}
	case isJSON(b):
		t = new(Txn)
		if err := json.Unmarshal(b, t); err != nil {
			return nil, fmt.Errorf("decode transaction: %w", err)
		}
	default:
		return nil, fmt.Errorf("decode transaction: payload starts with byte 0x%02x, neither the binary form nor JSON", b[0])
	}
	if err := t.check(); err != nil {
		return nil, err
	}
	return t, nil
}

// check validates what the rest of the replicator relies on: shapes whose
// types and key match their columns, and changes that name a shape, a known
// operation and, except deletes, a value for every column.
func (t *Txn) check() error {
	for i, s := range t.Shapes {
		if len(s.Types) != len(s.Columns) {
			return fmt.Errorf("decode transaction %s/%d: shape %d (%s) has %d types for %d columns", t.Origin, t.Seq, i, s.Table, len(s.Types), len(s.Columns))
		}
		for _, k := range s.Key {
			if k < 0 || k >= len(s.Columns) {
				return fmt.Errorf("decode transaction %s/%d: shape %d (%s) has key column %d of %d", t.Origin, t.Seq, i, s.Table, k, len(s.Columns))
			}
		}
	}
	for i, c := range t.Changes {
		if c.T < 0 || c.T >= len(t.Shapes) {
			return fmt.Errorf("decode transaction %s/%d: change %d names shape %d of %d", t.Origin, t.Seq, i, c.T, len(t.Shapes))
		}
		if c.Op < conflict.OpInsert || c.Op > conflict.OpDelete {
			return fmt.Errorf("decode transaction %s/%d: change %d has unknown operation %d", t.Origin, t.Seq, i, int(c.Op))
		}
		if c.Op != conflict.OpDelete && len(c.Row) != len(t.Shapes[c.T].Columns) {
			return fmt.Errorf("decode transaction %s/%d: change %d has %d values for %d columns", t.Origin, t.Seq, i, len(c.Row), len(t.Shapes[c.T].Columns))
		}
	}
	return nil
}
