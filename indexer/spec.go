package indexer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/polyregion/polyregion/replicator"
)

// IndexSpec maps one table to one index.
type IndexSpec struct {
	// Table is the schema-qualified table name.
	Table string
	// Index is the name applications search: an alias in front of the
	// physical index, so a rebuild swaps in with no downtime.
	Index string
	// Columns, when set, lists the only columns indexed (the primary key
	// need not be among them; it is always the document id).
	Columns []string
	// Exclude lists columns never indexed.
	Exclude []string
	// Rename maps a column to a different field name.
	Rename map[string]string
}

var indexName = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`)

// Validate reports the first problem with a spec, naming it.
func (s *IndexSpec) Validate() error {
	if s.Table == "" || !strings.Contains(s.Table, ".") {
		return fmt.Errorf("table %q: a schema-qualified name is required", s.Table)
	}
	if !indexName.MatchString(s.Index) || len(s.Index) > 200 {
		return fmt.Errorf("index %q for %s: lower-case letters, digits, '_', '-', '.' only, starting with a letter or digit", s.Index, s.Table)
	}
	for _, c := range s.Exclude {
		if slices.Contains(s.Columns, c) {
			return fmt.Errorf("index %s: column %q both included and excluded", s.Index, c)
		}
	}
	seen := map[string]string{}
	for from, to := range s.Rename {
		if to == "" || strings.HasPrefix(to, "_") {
			return fmt.Errorf("index %s: rename of %q: field names must be non-empty and not start with '_'", s.Index, from)
		}
		if prev, ok := seen[to]; ok {
			return fmt.Errorf("index %s: columns %q and %q both renamed to %q", s.Index, prev, from, to)
		}
		seen[to] = from
	}
	return nil
}

// tableMap turns rows of one table shape into documents of one index.
type tableMap struct {
	spec  IndexSpec
	shape replicator.Shape
	cols  []column
}

func newTableMap(spec IndexSpec, shape replicator.Shape) (*tableMap, error) {
	m := &tableMap{spec: spec, shape: shape}
	fields := map[string]string{}
	for _, c := range spec.Columns {
		if !slices.Contains(shape.Columns, c) {
			return nil, fmt.Errorf("index %s: column %q is not in table %s", spec.Index, c, spec.Table)
		}
	}
	for from := range spec.Rename {
		if !slices.Contains(shape.Columns, from) {
			return nil, fmt.Errorf("index %s: renamed column %q is not in table %s", spec.Index, from, spec.Table)
		}
	}
	for i, name := range shape.Columns {
		if len(spec.Columns) > 0 && !slices.Contains(spec.Columns, name) {
			continue
		}
		if slices.Contains(spec.Exclude, name) {
			continue
		}
		field := name
		if to, ok := spec.Rename[name]; ok {
			field = to
		}
		if prev, ok := fields[field]; ok {
			return nil, fmt.Errorf("index %s: columns %q and %q would both be field %q", spec.Index, prev, name, field)
		}
		fields[field] = name
		k, dims := kindOf(shape.Types[i])
		m.cols = append(m.cols, column{src: i, field: field, kind: k, array: dims, typ: shape.Types[i]})
	}
	if len(m.cols) == 0 {
		return nil, fmt.Errorf("index %s: no column of %s is indexed", spec.Index, spec.Table)
	}
	return m, nil
}

// Mapping is the engine mapping of the index's fields.
func (m *tableMap) Mapping() map[string]any {
	props := map[string]any{}
	for _, c := range m.cols {
		props[c.field] = mappingOf(c.kind)
	}
	return map[string]any{"dynamic": true, "properties": props}
}

// id is the document id of a row (or of a deleted row's key values).
func (m *tableMap) id(row []replicator.Value) (string, error) {
	parts := make([]string, len(m.shape.Key))
	for i, k := range m.shape.Key {
		if k >= len(row) || row[k].Null || row[k].Unchanged {
			return "", fmt.Errorf("%s: key column %q has no value", m.spec.Table, m.shape.Columns[k])
		}
		parts[i] = row[k].Text
	}
	return DocID(parts), nil
}

// idFromKey is the document id of a canonical key (replicator.Shape.KeyOf).
func idFromKey(key string) (string, error) {
	var parts []string
	if err := json.Unmarshal([]byte(key), &parts); err != nil {
		return "", fmt.Errorf("key %s: %w", key, err)
	}
	return DocID(parts), nil
}

// errUnchanged is returned by doc when an indexed column's value was not in
// the stream (an unchanged TOASTed value); the caller reads the row.
var errUnchanged = errors.New("unchanged column value not in the stream")

// doc renders the document of a row. Field order follows the table.
func (m *tableMap) doc(row []replicator.Value) ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, c := range m.cols {
		v := row[c.src]
		if v.Unchanged {
			return nil, errUnchanged
		}
		val, err := c.value(v)
		if err != nil {
			return nil, fmt.Errorf("column %q (%s): %w", m.shape.Columns[c.src], c.typ, err)
		}
		if i > 0 {
			b.WriteByte(',')
		}
		name, _ := json.Marshal(c.field)
		b.Write(name)
		b.WriteByte(':')
		enc, err := json.Marshal(val)
		if err != nil {
			return nil, fmt.Errorf("column %q: %w", m.shape.Columns[c.src], err)
		}
		b.Write(enc)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// unchanged lists the columns of row the stream did not carry.
func (m *tableMap) unchanged(row []replicator.Value) []int {
	var out []int
	for _, c := range m.cols {
		if row[c.src].Unchanged {
			out = append(out, c.src)
		}
	}
	return out
}
