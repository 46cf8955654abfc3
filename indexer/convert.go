package indexer

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/polyregion/polyregion/replicator"
)

// kind is how a PostgreSQL column type becomes a document field.
type kind int

const (
	kindText kind = iota
	kindKeyword
	kindInteger
	kindFloat
	kindBool
	kindTimestampTZ
	kindTimestamp
	kindDate
	kindJSON
	kindBytes
)

// column describes one indexed column: where it comes from, the field it
// becomes and how its text form converts.
type column struct {
	src   int    // index into the shape's columns
	field string // document field name
	kind  kind
	array int // array dimensions (0 for a scalar)
	typ   string
}

// kindOf maps a format_type() name to a field kind and its array depth.
func kindOf(typ string) (kind, int) {
	dims := 0
	for strings.HasSuffix(typ, "[]") {
		typ = strings.TrimSuffix(typ, "[]")
		dims++
	}
	base := typ
	if i := strings.IndexByte(base, '('); i >= 0 {
		// numeric(10,2), character varying(20), timestamp(3) with time zone
		base = strings.TrimSpace(base[:i] + base[strings.IndexByte(base, ')')+1:])
	}
	switch base {
	case "smallint", "integer", "bigint", "oid":
		return kindInteger, dims
	case "real", "double precision", "numeric":
		return kindFloat, dims
	case "boolean":
		return kindBool, dims
	case "timestamp with time zone":
		return kindTimestampTZ, dims
	case "timestamp without time zone":
		return kindTimestamp, dims
	case "date":
		return kindDate, dims
	case "json", "jsonb":
		return kindJSON, dims
	case "bytea":
		return kindBytes, dims
	case "text", "character varying", "character", "name", "citext":
		return kindText, dims
	default:
		// uuid, enums, inet, interval, time, money...: exact strings.
		return kindKeyword, dims
	}
}

// mappingOf is the engine field mapping for a column kind.
func mappingOf(k kind) map[string]any {
	switch k {
	case kindInteger:
		return map[string]any{"type": "long"}
	case kindFloat:
		return map[string]any{"type": "double"}
	case kindBool:
		return map[string]any{"type": "boolean"}
	case kindTimestampTZ, kindTimestamp, kindDate:
		return map[string]any{"type": "date", "format": "strict_date_optional_time||epoch_millis"}
	case kindJSON:
		return map[string]any{"type": "object", "dynamic": true}
	case kindBytes:
		return map[string]any{"type": "binary"}
	case kindText:
		return map[string]any{"type": "text", "fields": map[string]any{"keyword": map[string]any{"type": "keyword", "ignore_above": 256}}}
	default:
		return map[string]any{"type": "keyword"}
	}
}

// convert turns one value in PostgreSQL text form into its JSON field value.
// Values with no JSON counterpart (NaN, infinite timestamps) become null;
// the row in PostgreSQL is the record, the document a view of it.
func convert(k kind, text string) (any, error) {
	switch k {
	case kindInteger:
		return json.Number(text), nil
	case kindFloat:
		switch text {
		case "NaN", "Infinity", "-Infinity":
			return nil, nil
		}
		return json.Number(text), nil
	case kindBool:
		switch text {
		case "t", "true":
			return true, nil
		case "f", "false":
			return false, nil
		}
		return nil, fmt.Errorf("boolean %q", text)
	case kindTimestampTZ:
		if text == "infinity" || text == "-infinity" {
			return nil, nil
		}
		t, err := parseTimestamp(text, true)
		if err != nil {
			return nil, err
		}
		return t.UTC().Format("2006-01-02T15:04:05.999999Z"), nil
	case kindTimestamp:
		if text == "infinity" || text == "-infinity" {
			return nil, nil
		}
		t, err := parseTimestamp(text, false)
		if err != nil {
			return nil, err
		}
		return t.Format("2006-01-02T15:04:05.999999"), nil
	case kindDate:
		if text == "infinity" || text == "-infinity" || strings.HasSuffix(text, " BC") {
			return nil, nil
		}
		return text, nil
	case kindJSON:
		if !json.Valid([]byte(text)) {
			return nil, fmt.Errorf("invalid JSON")
		}
		return json.RawMessage(text), nil
	case kindBytes:
		if !strings.HasPrefix(text, `\x`) {
			return nil, fmt.Errorf("bytea not in hex form")
		}
		b, err := hex.DecodeString(text[2:])
		if err != nil {
			return nil, fmt.Errorf("bytea: %w", err)
		}
		return base64.StdEncoding.EncodeToString(b), nil
	default:
		return text, nil
	}
}

// parseTimestamp reads PostgreSQL's ISO output: "2024-01-02 03:04:05.123456+02"
// (zones may carry minutes and seconds: +05:30, -03:00:12).
func parseTimestamp(s string, zoned bool) (time.Time, error) {
	if strings.HasSuffix(s, " BC") {
		return time.Time{}, fmt.Errorf("timestamp %q before the common era", s)
	}
	if zoned {
		for _, layout := range []string{"2006-01-02 15:04:05.999999999-07", "2006-01-02 15:04:05.999999999-07:00", "2006-01-02 15:04:05.999999999-07:00:00"} {
			if t, err := time.Parse(layout, s); err == nil {
				return t, nil
			}
		}
		return time.Time{}, fmt.Errorf("timestamp %q", s)
	}
	t, err := time.Parse("2006-01-02 15:04:05.999999999", s)
	if err != nil {
		return time.Time{}, fmt.Errorf("timestamp %q", s)
	}
	return t, nil
}

// value converts a column's value, arrays included.
func (c *column) value(v replicator.Value) (any, error) {
	if v.Null {
		return nil, nil
	}
	if c.array == 0 {
		return convert(c.kind, v.Text)
	}
	arr, err := parseArray(v.Text)
	if err != nil {
		return nil, err
	}
	return convertArray(c.kind, arr)
}

func convertArray(k kind, a []any) (any, error) {
	out := make([]any, len(a))
	for i, e := range a {
		switch e := e.(type) {
		case nil:
			out[i] = nil
		case string:
			v, err := convert(k, e)
			if err != nil {
				return nil, err
			}
			out[i] = v
		case []any:
			v, err := convertArray(k, e)
			if err != nil {
				return nil, err
			}
			out[i] = v
		}
	}
	return out, nil
}

// parseArray reads PostgreSQL's array output ({1,2,NULL}, {"a b","c\"d"},
// {{1,2},{3,4}}, with an optional [1:2]= dimension prefix) into nested
// slices of strings and nils.
func parseArray(s string) ([]any, error) {
	if i := strings.Index(s, "="); i >= 0 && strings.HasPrefix(s, "[") {
		s = s[i+1:]
	}
	p := arrayParser{s: s}
	v, err := p.array()
	if err != nil {
		return nil, fmt.Errorf("array %q: %w", s, err)
	}
	if p.i != len(p.s) {
		return nil, fmt.Errorf("array %q: trailing text", s)
	}
	return v, nil
}

type arrayParser struct {
	s string
	i int
}

func (p *arrayParser) array() ([]any, error) {
	if p.i >= len(p.s) || p.s[p.i] != '{' {
		return nil, fmt.Errorf("expected { at %d", p.i)
	}
	p.i++
	out := []any{}
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		return out, nil
	}
	for {
		if p.i >= len(p.s) {
			return nil, fmt.Errorf("unterminated")
		}
		switch p.s[p.i] {
		case '{':
			sub, err := p.array()
			if err != nil {
				return nil, err
			}
			out = append(out, sub)
		case '"':
			p.i++
			var b strings.Builder
			for {
				if p.i >= len(p.s) {
					return nil, fmt.Errorf("unterminated quoted element")
				}
				c := p.s[p.i]
				if c == '\\' && p.i+1 < len(p.s) {
					b.WriteByte(p.s[p.i+1])
					p.i += 2
					continue
				}
				p.i++
				if c == '"' {
					break
				}
				b.WriteByte(c)
			}
			out = append(out, b.String())
		default:
			start := p.i
			for p.i < len(p.s) && p.s[p.i] != ',' && p.s[p.i] != '}' {
				p.i++
			}
			e := strings.TrimSpace(p.s[start:p.i])
			if e == "NULL" {
				out = append(out, nil)
			} else {
				out = append(out, e)
			}
		}
		if p.i >= len(p.s) {
			return nil, fmt.Errorf("unterminated")
		}
		switch p.s[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			return out, nil
		default:
			return nil, fmt.Errorf("unexpected %q at %d", p.s[p.i], p.i)
		}
	}
}

// maxIDBytes is the longest document id the engines accept.
const maxIDBytes = 512

// DocID derives a document id from primary key values in text form: the
// value itself for a one-column key; for a composite key the parts joined by
// '|' with '\' and '|' escaped. An id the engines cannot take is replaced by
// "sha256:" and the hex digest of the full id: one longer than they accept,
// and the empty id of a one-column key whose value is the empty string
// (Elasticsearch and OpenSearch would make up a new id for each write and
// refuse the delete; bbolt refuses an empty key). Every other id stays as
// it was, so existing indices keep their documents; like a long key's, the
// empty key's id is shared only by a key whose value is that very digest
// text. A composite key is never empty: it holds at least one '|'.
func DocID(parts []string) string {
	var id string
	if len(parts) == 1 {
		id = parts[0]
	} else {
		esc := make([]string, len(parts))
		for i, p := range parts {
			esc[i] = strings.NewReplacer(`\`, `\\`, `|`, `\|`).Replace(p)
		}
		id = strings.Join(esc, "|")
	}
	if id == "" || len(id) > maxIDBytes {
		sum := sha256.Sum256([]byte(id))
		return "sha256:" + hex.EncodeToString(sum[:])
	}
	return id
}
