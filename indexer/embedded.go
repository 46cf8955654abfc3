package indexer

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/blevesearch/bleve/v2"
	"github.com/blevesearch/bleve/v2/mapping"
)

// Embedded is the zero-setup backend: bleve indices in a local directory,
// searched through SearchHandler. Each document's version is kept beside
// it (and after its delete), so the same ordering rules hold as for the
// external engines.
type Embedded struct {
	dir string

	mu      sync.Mutex
	open    map[string]bleve.Index // physical name -> index
	aliases map[string]string      // alias -> physical name
	// views are the search handles of aliases, swapped in place.
	views map[string]*view
}

// view is what searches of one name go through.
type view struct {
	alias bleve.IndexAlias
	cur   bleve.Index
}

// OpenEmbedded opens (creating if needed) the indices kept in dir.
func OpenEmbedded(dir string) (*Embedded, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("search.dir: %w", err)
	}
	e := &Embedded{dir: dir, open: map[string]bleve.Index{}, aliases: map[string]string{}, views: map[string]*view{}}
	b, err := os.ReadFile(e.aliasFile())
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &e.aliases); err != nil {
			return nil, fmt.Errorf("embedded index aliases %s: %w", e.aliasFile(), err)
		}
	case errors.Is(err, os.ErrNotExist):
	default:
		return nil, err
	}
	return e, nil
}

func (e *Embedded) aliasFile() string { return filepath.Join(e.dir, "aliases.json") }

func (e *Embedded) path(name string) string { return filepath.Join(e.dir, name+".bleve") }

// Describe names the engine.
func (e *Embedded) Describe(context.Context) (string, error) {
	return "embedded (bleve) in " + e.dir, nil
}

// index returns an open physical index (or the one an alias points at).
func (e *Embedded) index(name string) (bleve.Index, error) {
	if phys, ok := e.aliases[name]; ok {
		name = phys
	}
	if idx, ok := e.open[name]; ok {
		return idx, nil
	}
	idx, err := bleve.Open(e.path(name))
	if err != nil {
		return nil, fmt.Errorf("open embedded index %s: %w", name, err)
	}
	e.open[name] = idx
	return idx, nil
}

// CreateIndex creates a physical index with a mapping built from the engine
// mapping the feed derives from the table.
func (e *Embedded) CreateIndex(_ context.Context, name string, m map[string]any) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, err := os.Stat(e.path(name)); err == nil {
		return nil
	}
	idx, err := bleve.New(e.path(name), bleveMapping(m))
	if err != nil {
		return fmt.Errorf("create embedded index %s: %w", name, err)
	}
	e.open[name] = idx
	return nil
}

func bleveMapping(m map[string]any) mapping.IndexMapping {
	doc := bleve.NewDocumentMapping()
	props, _ := m["properties"].(map[string]any)
	for field, p := range props {
		pm, _ := p.(map[string]any)
		var fm *mapping.FieldMapping
		switch pm["type"] {
		case "long", "double":
			fm = bleve.NewNumericFieldMapping()
		case "boolean":
			fm = bleve.NewBooleanFieldMapping()
		case "date":
			fm = bleve.NewDateTimeFieldMapping()
		case "keyword":
			fm = bleve.NewKeywordFieldMapping()
		case "text":
			fm = bleve.NewTextFieldMapping()
		default:
			continue // objects and binary: dynamic or not indexed
		}
		doc.AddFieldMappingsAt(field, fm)
	}
	im := bleve.NewIndexMapping()
	im.DefaultMapping = doc
	return im
}

// SwapAlias points alias at physical and saves the aliases.
func (e *Embedded) SwapAlias(_ context.Context, alias, physical string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	idx, err := e.index(physical)
	if err != nil {
		return err
	}
	next := map[string]string{}
	for k, v := range e.aliases {
		next[k] = v
	}
	next[alias] = physical
	b, err := json.MarshalIndent(next, "", "  ")
	if err != nil {
		return err
	}
	tmp := e.aliasFile() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o640); err != nil {
		return err
	}
	if err := os.Rename(tmp, e.aliasFile()); err != nil {
		return err
	}
	e.aliases = next
	if v, ok := e.views[alias]; ok && v.cur != idx {
		v.alias.Swap([]bleve.Index{idx}, []bleve.Index{v.cur})
		v.cur = idx
	}
	return nil
}

// Exists reports whether a physical index exists.
func (e *Embedded) Exists(_ context.Context, name string) (bool, error) {
	_, err := os.Stat(e.path(name))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// DeleteIndex closes and removes a physical index.
func (e *Embedded) DeleteIndex(_ context.Context, name string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if idx, ok := e.open[name]; ok {
		_ = idx.Close()
		delete(e.open, name)
	}
	if err := os.RemoveAll(e.path(name)); err != nil {
		return fmt.Errorf("delete embedded index %s: %w", name, err)
	}
	return nil
}

func versionKey(id string) []byte { return []byte("v:" + id) }
func sourceKey(id string) []byte  { return []byte("s:" + id) }

// Bulk applies ops in order; a write older than the version held is
// skipped, as an external engine would refuse it.
func (e *Embedded) Bulk(_ context.Context, ops []Op) ([]Rejection, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	batches := map[string]*bleve.Batch{}
	indexes := map[string]bleve.Index{}
	held := map[string]int64{} // index \x00 id -> version written in this batch
	var rejected []Rejection
	for i := range ops {
		op := &ops[i]
		idx, ok := indexes[op.Index]
		if !ok {
			var err error
			if idx, err = e.index(op.Index); err != nil {
				return nil, err
			}
			indexes[op.Index] = idx
			batches[op.Index] = idx.NewBatch()
		}
		k := op.Index + "\x00" + op.ID
		cur, seen := held[k]
		if !seen {
			b, err := idx.GetInternal(versionKey(op.ID))
			if err != nil {
				return nil, err
			}
			if len(b) == 8 {
				cur, seen = int64(binary.BigEndian.Uint64(b)), true
			}
		}
		if seen && op.Version < cur {
			continue
		}
		b := batches[op.Index]
		if op.Delete {
			b.Delete(op.ID)
			b.DeleteInternal(sourceKey(op.ID))
		} else {
			var doc map[string]any
			if err := json.Unmarshal(op.Doc, &doc); err != nil {
				rejected = append(rejected, Rejection{Op: i, Status: 400, Reason: "document is not a JSON object: " + err.Error()})
				continue
			}
			if err := b.Index(op.ID, doc); err != nil {
				rejected = append(rejected, Rejection{Op: i, Status: 400, Reason: err.Error()})
				continue
			}
			b.SetInternal(sourceKey(op.ID), op.Doc)
		}
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], uint64(op.Version))
		b.SetInternal(versionKey(op.ID), v[:])
		held[k] = op.Version
	}
	for name, b := range batches {
		if err := indexes[name].Batch(b); err != nil {
			return nil, fmt.Errorf("embedded index %s: %w", name, err)
		}
	}
	return rejected, nil
}

// DeleteAll removes every document (their versions stay).
func (e *Embedded) DeleteAll(ctx context.Context, index string) error {
	var ids []string
	if err := e.Scan(ctx, index, func(id string, _ []byte) error {
		ids = append(ids, id)
		return nil
	}); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	idx, err := e.index(index)
	if err != nil {
		return err
	}
	b := idx.NewBatch()
	for _, id := range ids {
		b.Delete(id)
		b.DeleteInternal(sourceKey(id))
	}
	return idx.Batch(b)
}

// Refresh is immediate for the embedded index.
func (e *Embedded) Refresh(context.Context, string) error { return nil }

// Scan calls fn for every document of an index or alias.
func (e *Embedded) Scan(ctx context.Context, index string, fn func(id string, source []byte) error) error {
	e.mu.Lock()
	idx, err := e.index(index)
	e.mu.Unlock()
	if err != nil {
		return err
	}
	adv, err := idx.Advanced()
	if err != nil {
		return err
	}
	r, err := adv.Reader()
	if err != nil {
		return err
	}
	defer r.Close()
	dr, err := r.DocIDReaderAll()
	if err != nil {
		return err
	}
	defer dr.Close()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		iid, err := dr.Next()
		if err != nil {
			return err
		}
		if iid == nil {
			return nil
		}
		id, err := r.ExternalID(iid)
		if err != nil {
			return err
		}
		src, err := idx.GetInternal(sourceKey(id))
		if err != nil {
			return err
		}
		if err := fn(id, src); err != nil {
			return err
		}
	}
}

// view is the search handle of an alias (or physical index).
func (e *Embedded) view(name string) (bleve.IndexAlias, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if v, ok := e.views[name]; ok {
		return v.alias, nil
	}
	idx, err := e.index(name)
	if err != nil {
		return nil, err
	}
	v := &view{alias: bleve.NewIndexAlias(idx), cur: idx}
	e.views[name] = v
	return v.alias, nil
}

// Source returns a document's stored source.
func (e *Embedded) Source(index, id string) ([]byte, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	idx, err := e.index(index)
	if err != nil {
		return nil, err
	}
	return idx.GetInternal(sourceKey(id))
}

// Close closes every open index.
func (e *Embedded) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	for name, idx := range e.open {
		errs = append(errs, idx.Close())
		delete(e.open, name)
	}
	return errors.Join(errs...)
}
