package indexer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// Difference is how one index differs from its table.
type Difference struct {
	Index string
	Table string
	Rows  int // rows in the table
	Docs  int // documents in the index
	// Missing, Extra and Changed list up to ten document ids each.
	Missing, Extra, Changed []string
	MissingN, ExtraN        int
	ChangedN                int
}

// Equal reports whether the index holds exactly the table's rows.
func (d Difference) Equal() bool { return d.MissingN == 0 && d.ExtraN == 0 && d.ChangedN == 0 }

func (d Difference) String() string {
	if d.Equal() {
		return fmt.Sprintf("%s: %d documents equal to the %d rows of %s", d.Index, d.Docs, d.Rows, d.Table)
	}
	return fmt.Sprintf("%s: %d rows in %s, %d documents; missing %d %v, extra %d %v, changed %d %v",
		d.Index, d.Rows, d.Table, d.Docs, d.MissingN, d.Missing, d.ExtraN, d.Extra, d.ChangedN, d.Changed)
}

// Scanner reads an index's documents: every Backend, or a client of the
// embedded index's search endpoint.
type Scanner interface {
	Refresh(ctx context.Context, index string) error
	Scan(ctx context.Context, index string, fn func(id string, source []byte) error) error
}

// Verify compares each index (through its alias) with its table: the same
// ids, and for each the same content (a hash of the canonical JSON of the
// document the table's row renders to). Compare a quiet region, or expect
// the index to trail by its lag. Rows whose documents are over
// DefaultMaxDocumentBytes are expected in the dead-letter table, not in the
// index; VerifyLimited takes a configured limit.
func Verify(ctx context.Context, conn *pgx.Conn, be Scanner, specs []IndexSpec) ([]Difference, error) {
	return VerifyLimited(ctx, conn, be, specs, DefaultMaxDocumentBytes)
}

// VerifyLimited is Verify for a feed whose documents are bounded by
// maxDocumentBytes (Config.MaxDocumentBytes; 0 for the default).
func VerifyLimited(ctx context.Context, conn *pgx.Conn, be Scanner, specs []IndexSpec, maxDocumentBytes int) ([]Difference, error) {
	if maxDocumentBytes <= 0 {
		maxDocumentBytes = DefaultMaxDocumentBytes
	}
	var out []Difference
	for _, spec := range specs {
		d, err := verifyOne(ctx, conn, be, spec, maxDocumentBytes)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

func verifyOne(ctx context.Context, conn *pgx.Conn, be Scanner, spec IndexSpec, maxDoc int) (Difference, error) {
	d := Difference{Index: spec.Index, Table: spec.Table}
	shape, err := postgres.LoadShape(ctx, conn, spec.Table)
	if err != nil {
		return d, err
	}
	tm, err := newTableMap(spec, shape)
	if err != nil {
		return d, err
	}
	want := map[string][32]byte{}
	cols := make([]string, len(shape.Columns))
	for i, c := range shape.Columns {
		cols[i] = quoteIdent(c) + "::text"
	}
	rows, err := conn.Query(ctx, "SELECT "+strings.Join(cols, ", ")+" FROM "+qualified(spec.Table))
	if err != nil {
		return d, fmt.Errorf("verify %s: %w", spec.Table, err)
	}
	for rows.Next() {
		vals := textValues(rows.RawValues())
		id, err := tm.id(vals)
		if err != nil {
			rows.Close()
			return d, err
		}
		if tm.oversize(maxDoc, textLens(vals)) != "" {
			continue // in the dead-letter table, not the index
		}
		doc, err := tm.doc(vals)
		if err != nil || docOversize(doc, maxDoc) != "" {
			continue // in the dead-letter table, not the index
		}
		h, err := contentHash(doc)
		if err != nil {
			rows.Close()
			return d, err
		}
		want[id] = h
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return d, fmt.Errorf("verify %s: %w", spec.Table, err)
	}
	d.Rows = len(want)
	if err := be.Refresh(ctx, spec.Index); err != nil {
		return d, err
	}
	seen := map[string]bool{}
	note := func(list *[]string, n *int, id string) {
		*n++
		if len(*list) < 10 {
			*list = append(*list, id)
		}
	}
	err = be.Scan(ctx, spec.Index, func(id string, src []byte) error {
		d.Docs++
		seen[id] = true
		w, ok := want[id]
		if !ok {
			note(&d.Extra, &d.ExtraN, id)
			return nil
		}
		h, err := contentHash(src)
		if err != nil {
			return fmt.Errorf("document %s: %w", id, err)
		}
		if h != w {
			note(&d.Changed, &d.ChangedN, id)
		}
		return nil
	})
	if err != nil {
		return d, fmt.Errorf("verify %s: %w", spec.Index, err)
	}
	var missing []string
	for id := range want {
		if !seen[id] {
			missing = append(missing, id)
		}
	}
	sort.Strings(missing)
	for _, id := range missing {
		note(&d.Missing, &d.MissingN, id)
	}
	return d, nil
}

// contentHash hashes a document's canonical JSON (keys sorted, numbers as
// written).
func contentHash(doc []byte) ([32]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return [32]byte{}, err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(b), nil
}
