package indexer

import (
	"fmt"

	"github.com/jackc/pglogrepl"

	"github.com/polyregion/polyregion/replicator"
)

// Documents are bounded in size (Config.MaxDocumentBytes). A row is
// measured from the lengths of its values' text forms before its document
// is rendered, so a value far over the limit is never copied, converted or
// sent; a row that passes is rendered and its document checked exactly.
// Either way a refused row is recorded with its size and the limit, and the
// feed goes on.

// settingMaxDocumentBytes names the setting in messages.
const settingMaxDocumentBytes = "search.max_document_bytes"

// renderFactor bounds the work spent on a row whose size is only known
// once rendered (plain json, arrays, numbers): a row whose indexed values
// come to more than this many times the limit as text is not rendered.
const renderFactor = 4

// sizeFloor is a lower bound of the size of the JSON value a value of this
// column renders to, given the length of its text form: rendering never
// gives less.
func (c *column) sizeFloor(textLen int) int64 {
	n := int64(textLen)
	if c.array > 0 {
		// A dimension prefix ([1:2]=) is dropped, and elements may become
		// null: no useful floor.
		return 0
	}
	switch c.kind {
	case kindText, kindKeyword:
		return n + 2 // the text quoted; escapes only add
	case kindInteger:
		return n // the digits as they are
	case kindBytes:
		if n < 2 {
			return 0
		}
		// \x and two hex digits a byte become base64 (4 characters for 3
		// bytes), quoted.
		return 2*(n-2)/3 + 2
	case kindJSON:
		if c.typ == "jsonb" {
			// jsonb's text puts one space after each ',' and ':', and
			// each of those follows at least one other character: at most
			// a third of it is dropped when compacted.
			return n / 2
		}
		return 0 // json keeps whatever whitespace it was given
	default:
		// Floats, booleans, dates and timestamps: short, and some become
		// null.
		return 0
	}
}

// oversize returns why a row's document is not to be rendered, or "" when
// it may be. textLen holds the length of each column's text form by its
// position in the table (0 for NULL and for a value not known).
func (m *tableMap) oversize(limit int, textLen []int) string {
	floor, text := m.measure(textLen)
	if floor > int64(limit) {
		return fmt.Sprintf("document is at least %d bytes, over the limit of %d bytes (%s)", floor, limit, settingMaxDocumentBytes)
	}
	if text > int64(renderFactor)*int64(limit) {
		return fmt.Sprintf("document not rendered: its indexed values are %d bytes as text, more than %d times the limit of %d bytes (%s)", text, renderFactor, limit, settingMaxDocumentBytes)
	}
	return ""
}

// measure returns a lower bound of the size of a row's document and the
// length of its indexed values as text, from the length of each column's
// text form by its position in the table.
func (m *tableMap) measure(textLen []int) (floor, text int64) {
	floor = 2 // {}
	for i, c := range m.cols {
		n := textLen[c.src]
		if i > 0 {
			floor++ // ,
		}
		floor += int64(len(c.field)) + 3 // "field":
		floor += c.sizeFloor(n)
		text += int64(n)
	}
	return floor, text
}

// docOversize returns why a rendered document is refused, or "".
func docOversize(doc []byte, limit int) string {
	if len(doc) > limit {
		return fmt.Sprintf("document is %d bytes, over the limit of %d bytes (%s)", len(doc), limit, settingMaxDocumentBytes)
	}
	return ""
}

// textLens is the length of each value of a row as its text.
func textLens(row []replicator.Value) []int {
	out := make([]int, len(row))
	for i, v := range row {
		if !v.Null && !v.Unchanged {
			out[i] = len(v.Text)
		}
	}
	return out
}

// tupleLens is the length of each value of a streamed row (0 for NULL and
// for an unchanged value the stream did not carry).
func tupleLens(n int, t *pglogrepl.TupleData) []int {
	out := make([]int, n)
	if t == nil {
		return out
	}
	for i, c := range t.Columns {
		if i >= n {
			break
		}
		if c.DataType == pglogrepl.TupleDataTypeText || c.DataType == pglogrepl.TupleDataTypeBinary {
			out[i] = len(c.Data)
		}
	}
	return out
}

// values converts a streamed row's key columns and, when doc is set, its
// indexed columns; every other column is left NULL, so a large value of a
// column the index does not hold is never copied.
func (m *tableMap) values(t *pglogrepl.TupleData, doc bool) []replicator.Value {
	n := len(m.shape.Columns)
	vals := make([]replicator.Value, n)
	for i := range vals {
		vals[i].Null = true
	}
	m.convert(vals, t, true, doc)
	return vals
}

// convert sets vals' key columns (keys) and indexed columns (doc) from t.
func (m *tableMap) convert(vals []replicator.Value, t *pglogrepl.TupleData, keys, doc bool) {
	if t == nil {
		return
	}
	n := len(vals)
	set := func(i int) {
		if i >= len(t.Columns) || i >= n {
			return
		}
		switch c := t.Columns[i]; c.DataType {
		case pglogrepl.TupleDataTypeNull:
			vals[i] = replicator.Value{Null: true}
		case pglogrepl.TupleDataTypeToast:
			vals[i] = replicator.Value{Unchanged: true}
		default:
			vals[i] = replicator.Value{Text: string(c.Data)}
		}
	}
	if keys {
		for _, k := range m.shape.Key {
			set(k)
		}
	}
	if doc {
		for _, c := range m.cols {
			set(c.src)
		}
	}
}
