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
	"time"

	"github.com/blevesearch/bleve/v2"
	"github.com/blevesearch/bleve/v2/mapping"
	"go.etcd.io/bbolt"
)

// Embedded is the zero-setup backend: bleve indices in a local directory,
// searched through SearchHandler. Each document's source and version are
// kept beside its index (the version also for an hour after a delete; see
// embedded_deletes.go), so the same ordering rules hold as for the
// external engines.
type Embedded struct {
	dir string
	now func() time.Time

	mu      sync.Mutex
	open    map[string]*physical // physical name -> index
	aliases map[string]string    // alias -> physical name
	// views are the search handles of aliases, swapped in place.
	views map[string]*view
}

// physical is one physical index: bleve's inverted index for searches, and
// beside it a bolt file with each document's source and version (deleted
// documents keep their version for a while), written in one transaction
// per batch.
type physical struct {
	idx  bleve.Index
	meta *bbolt.DB
}

var (
	bucketVersion = []byte("version")
	bucketSource  = []byte("source")
)

func (p *physical) close() error {
	return errors.Join(p.idx.Close(), p.meta.Close())
}

// openMeta opens (creating) a physical index's document store; another
// process holding it is an error after a second, not a hang. A store
// written before deletions were listed has its deletions listed as made
// at now.
func openMeta(path string, now time.Time) (*bbolt.DB, error) {
	db, err := bbolt.Open(path, 0o640, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("embedded index store %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketVersion, bucketSource} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return listDeleted(tx, now)
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("embedded index store %s: %w", path, err)
	}
	return db, nil
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
	e := &Embedded{dir: dir, now: time.Now, open: map[string]*physical{}, aliases: map[string]string{}, views: map[string]*view{}}
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

func (e *Embedded) metaPath(name string) string { return filepath.Join(e.dir, name+".docs") }

// Describe names the engine.
func (e *Embedded) Describe(context.Context) (string, error) {
	return "embedded (bleve) in " + e.dir, nil
}

// index returns an open physical index (or the one an alias points at).
func (e *Embedded) index(name string) (*physical, error) {
	if phys, ok := e.aliases[name]; ok {
		name = phys
	}
	if p, ok := e.open[name]; ok {
		return p, nil
	}
	if _, err := os.Stat(e.path(name)); err != nil {
		return nil, fmt.Errorf("open embedded index %s: %w", name, err)
	}
	meta, err := openMeta(e.metaPath(name), e.now())
	if err != nil {
		return nil, err
	}
	idx, err := bleve.Open(e.path(name))
	if err != nil {
		_ = meta.Close()
		return nil, fmt.Errorf("open embedded index %s: %w", name, err)
	}
	p := &physical{idx: idx, meta: meta}
	e.open[name] = p
	return p, nil
}

// CreateIndex creates a physical index with a mapping built from the engine
// mapping the feed derives from the table.
func (e *Embedded) CreateIndex(_ context.Context, name string, m map[string]any) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, err := os.Stat(e.path(name)); err == nil {
		return nil
	}
	meta, err := openMeta(e.metaPath(name), e.now())
	if err != nil {
		return err
	}
	idx, err := bleve.New(e.path(name), bleveMapping(m))
	if err != nil {
		_ = meta.Close()
		return fmt.Errorf("create embedded index %s: %w", name, err)
	}
	e.open[name] = &physical{idx: idx, meta: meta}
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
	p, err := e.index(physical)
	if err != nil {
		return err
	}
	idx := p.idx
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
	if p, ok := e.open[name]; ok {
		_ = p.close()
		delete(e.open, name)
	}
	if err := errors.Join(os.RemoveAll(e.path(name)), os.RemoveAll(e.metaPath(name))); err != nil {
		return fmt.Errorf("delete embedded index %s: %w", name, err)
	}
	return nil
}

// embeddedBatchBytes bounds the documents the embedded index takes in one
// batch: bleve needs some 50 to 130 times a batch's size in memory while it
// indexes it (the most for one long word), so a larger batch is applied in
// parts of about this size.
const embeddedBatchBytes = 1 << 20

// Bulk applies ops in order; a write older than the version held is
// skipped, as an external engine would refuse it. Sources and versions are
// committed (synced) before the inverted index takes the batch; a batch
// retried after a failure in between carries the same versions and is
// applied again. A batch of more than embeddedBatchBytes of documents is
// applied in parts, in order.
func (e *Embedded) Bulk(_ context.Context, ops []Op) ([]Rejection, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var rejected []Rejection
	byIndex := map[string][]int{}
	var order []string
	for i := range ops {
		if _, ok := byIndex[ops[i].Index]; !ok {
			order = append(order, ops[i].Index)
		}
		byIndex[ops[i].Index] = append(byIndex[ops[i].Index], i)
	}
	for _, name := range order {
		p, err := e.index(name)
		if err != nil {
			return nil, err
		}
		for _, part := range bulkParts(ops, byIndex[name], embeddedBatchBytes) {
			rej, err := p.apply(ops, part, e.now())
			if err != nil {
				return nil, fmt.Errorf("embedded index %s: %w", name, err)
			}
			rejected = append(rejected, rej...)
		}
	}
	return rejected, nil
}

// bulkParts splits the operations at idx (positions in ops) into runs, in
// order, of at most maxBytes of documents each (a longer document makes a
// run of its own).
func bulkParts(ops []Op, idx []int, maxBytes int) [][]int {
	var parts [][]int
	start, size := 0, 0
	for j, i := range idx {
		n := len(ops[i].Doc)
		if j > start && size+n > maxBytes {
			parts = append(parts, idx[start:j])
			start, size = j, 0
		}
		size += n
	}
	if start < len(idx) {
		parts = append(parts, idx[start:])
	}
	return parts
}

// apply writes the operations at idx (positions in ops) to one physical
// index: sources and versions first, in one bolt transaction (which also
// drops versions of documents deleted long enough before now), then the
// inverted index in one bleve batch.
func (p *physical) apply(ops []Op, idx []int, now time.Time) ([]Rejection, error) {
	var rejected []Rejection
	b := p.idx.NewBatch()
	err := p.meta.Update(func(tx *bbolt.Tx) error {
		vb, sb := tx.Bucket(bucketVersion), tx.Bucket(bucketSource)
		for _, i := range idx {
			op := &ops[i]
			if cur := vb.Get([]byte(op.ID)); len(cur) == 8 && op.Version < int64(binary.BigEndian.Uint64(cur)) {
				continue
			}
			if op.Delete {
				b.Delete(op.ID)
				if err := sb.Delete([]byte(op.ID)); err != nil {
					return err
				}
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
				if err := sb.Put([]byte(op.ID), op.Doc); err != nil {
					return err
				}
			}
			var v [8]byte
			binary.BigEndian.PutUint64(v[:], uint64(op.Version))
			if err := vb.Put([]byte(op.ID), v[:]); err != nil {
				return err
			}
			if op.Delete {
				if err := noteDeleted(tx, now, []byte(op.ID), v[:]); err != nil {
					return err
				}
			}
		}
		return purgeDeleted(tx, now.Add(-deletedVersionsKept), purgePerBatch)
	})
	if err != nil {
		return nil, err
	}
	if err := p.idx.Batch(b); err != nil {
		return nil, err
	}
	return rejected, nil
}

// scanIDsPage is how many ids ScanIDs reads in one store transaction.
const scanIDsPage = 1000

// ScanIDs calls fn with the id of every document of an index, in id order.
// It reads them in pages and calls fn between its reads, so fn may write to
// the index (a store write transaction would wait for a read one this
// goroutine still held open).
func (e *Embedded) ScanIDs(ctx context.Context, index string, fn func(id string) error) error {
	e.mu.Lock()
	p, err := e.index(index)
	e.mu.Unlock()
	if err != nil {
		return err
	}
	var after []byte
	for {
		ids := make([]string, 0, scanIDsPage)
		err := p.meta.View(func(tx *bbolt.Tx) error {
			c := tx.Bucket(bucketSource).Cursor()
			k, _ := c.First()
			if after != nil {
				if k, _ = c.Seek(after); k != nil && string(k) == string(after) {
					k, _ = c.Next()
				}
			}
			for ; k != nil && len(ids) < scanIDsPage; k, _ = c.Next() {
				ids = append(ids, string(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, id := range ids {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := fn(id); err != nil {
				return err
			}
		}
		if len(ids) < scanIDsPage {
			return nil
		}
		after = []byte(ids[len(ids)-1])
	}
}

// Refresh is immediate for the embedded index.
func (e *Embedded) Refresh(context.Context, string) error { return nil }

// Scan calls fn for every document of an index or alias, in id order.
func (e *Embedded) Scan(ctx context.Context, index string, fn func(id string, source []byte) error) error {
	e.mu.Lock()
	p, err := e.index(index)
	e.mu.Unlock()
	if err != nil {
		return err
	}
	return p.meta.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketSource).ForEach(func(k, v []byte) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			return fn(string(k), v)
		})
	})
}

// view is the search handle of an alias (or physical index).
func (e *Embedded) view(name string) (bleve.IndexAlias, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if v, ok := e.views[name]; ok {
		return v.alias, nil
	}
	p, err := e.index(name)
	if err != nil {
		return nil, err
	}
	v := &view{alias: bleve.NewIndexAlias(p.idx), cur: p.idx}
	e.views[name] = v
	return v.alias, nil
}

// Source returns a document's stored source.
func (e *Embedded) Source(index, id string) ([]byte, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, err := e.index(index)
	if err != nil {
		return nil, err
	}
	var src []byte
	err = p.meta.View(func(tx *bbolt.Tx) error {
		if v := tx.Bucket(bucketSource).Get([]byte(id)); v != nil {
			src = append([]byte(nil), v...)
		}
		return nil
	})
	return src, err
}

// Close closes every open index.
func (e *Embedded) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	for name, p := range e.open {
		errs = append(errs, p.close())
		delete(e.open, name)
	}
	return errors.Join(errs...)
}
