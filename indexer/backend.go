package indexer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Op is one document write or delete.
type Op struct {
	// Index is the physical index written.
	Index string
	ID    string
	// Version orders the writes of one document: the commit position of
	// the local transaction that made the change. An engine keeps the
	// highest version it has seen and refuses a lower one, so a replay or a
	// reordered delivery never lets an older row replace a newer one, and a
	// deleted row never comes back.
	Version int64
	Delete  bool
	Doc     []byte
	// Table and Key name the row, for the dead-letter table.
	Table, Key string
}

// Rejection is an operation the engine refused for a reason retrying cannot
// fix (a mapping conflict, a document too large). It goes to the dead-letter
// table; the rest of the batch is kept.
type Rejection struct {
	Op     int // index into the batch
	Status int
	Reason string
}

// Backend is a search engine holding the region's indices.
type Backend interface {
	// Describe names the engine and its version.
	Describe(ctx context.Context) (string, error)
	// CreateIndex creates a physical index with a mapping; an existing
	// index is left as it is.
	CreateIndex(ctx context.Context, name string, mapping map[string]any) error
	// SwapAlias points alias at physical alone, atomically.
	SwapAlias(ctx context.Context, alias, physical string) error
	// Exists reports whether a physical index exists.
	Exists(ctx context.Context, name string) (bool, error)
	// DeleteIndex removes a physical index; a missing one is no error.
	DeleteIndex(ctx context.Context, name string) error
	// Bulk applies the operations. An error means nothing can be assumed
	// and the whole batch is retried (operations are idempotent); otherwise
	// every operation was applied, refused as older than what the engine
	// holds (no error: that is the point of versions), or is listed as
	// rejected.
	Bulk(ctx context.Context, ops []Op) ([]Rejection, error)
	// Refresh makes the index's writes visible to searches and scans.
	Refresh(ctx context.Context, index string) error
	// Scan calls fn for every document of an index or alias.
	Scan(ctx context.Context, index string, fn func(id string, source []byte) error) error
	// ScanIDs calls fn with the id of every document of a physical index
	// (as of its last refresh). fn may write to the index meanwhile
	// (a TRUNCATE deletes what it is given): a document written after the
	// scan began may or may not be passed.
	ScanIDs(ctx context.Context, index string, fn func(id string) error) error
	Close() error
}

// BackendConfig selects and reaches the search engine.
type BackendConfig struct {
	// Kind is embedded (default), elasticsearch or opensearch.
	Kind string
	// URLs of the engine's nodes (elasticsearch, opensearch).
	URLs     []string
	Username string
	Password string
	APIKey   string // elasticsearch only
	// CACert is a PEM file of the CA that signed the engine's certificate.
	CACert string
	// Dir holds the embedded indices.
	Dir string
}

// Kinds of backend.
const (
	KindEmbedded      = "embedded"
	KindElasticsearch = "elasticsearch"
	KindOpenSearch    = "opensearch"
)

// Validate reports the first problem with the backend settings.
func (c *BackendConfig) Validate() error {
	switch c.Kind {
	case "", KindEmbedded:
		if c.Dir == "" {
			return errors.New("search.dir: a directory for the embedded index is required")
		}
	case KindElasticsearch, KindOpenSearch:
		if len(c.URLs) == 0 {
			return fmt.Errorf("search.urls: at least one %s URL is required", c.Kind)
		}
		for i, u := range c.URLs {
			// The URL may hold a password: the messages name it only by
			// its place in the list.
			p, err := url.Parse(u)
			if err != nil {
				return fmt.Errorf("search.urls[%d] is not a URL (a password in it must be percent-encoded)", i)
			}
			if (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
				return fmt.Errorf("search.urls[%d] is not an http(s) URL with a host (https://host:port)", i)
			}
		}
		if c.APIKey != "" && c.Kind != KindElasticsearch {
			return errors.New("search.api_key: only elasticsearch takes an API key")
		}
	default:
		return fmt.Errorf("search.kind: %q is not one of embedded, elasticsearch, opensearch", c.Kind)
	}
	return nil
}

// Open connects to the configured backend.
func Open(ctx context.Context, c BackendConfig) (Backend, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	switch c.Kind {
	case KindElasticsearch:
		return openElasticsearch(c)
	case KindOpenSearch:
		return openOpenSearch(c)
	default:
		return OpenEmbedded(c.Dir)
	}
}

// performer is what both engine clients offer: an HTTP round trip through
// their transport (addresses, retries, auth, TLS).
type performer interface {
	Perform(*http.Request) (*http.Response, error)
}

// rest implements the index administration both engines share (the same
// REST API) on top of a client's transport.
type rest struct {
	p performer
	// gcDeletes is how long the engine remembers a deleted document's
	// version (index.gc_deletes): replays older than that cannot be told
	// from new writes. Replays come from the unacknowledged stretch of the
	// stream, so minutes are plenty; an hour leaves room.
	gcDeletes string
}

// engineError is a non-2xx answer.
type engineError struct {
	Status int
	Body   string
}

func (e *engineError) Error() string {
	body := e.Body
	if len(body) > 500 {
		body = body[:500] + "..."
	}
	return fmt.Sprintf("search engine answered %d: %s", e.Status, body)
}

func (r *rest) do(ctx context.Context, method, path string, body any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := r.p.Perform(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return out, &engineError{Status: resp.StatusCode, Body: string(out)}
	}
	return out, nil
}

func (r *rest) info(ctx context.Context, engine string) (string, error) {
	b, err := r.do(ctx, http.MethodGet, "/", nil)
	if err != nil {
		return "", err
	}
	var v struct {
		Version struct {
			Number       string `json:"number"`
			Distribution string `json:"distribution"`
		} `json:"version"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return "", fmt.Errorf("engine info: %w", err)
	}
	return engine + " " + v.Version.Number, nil
}

func (r *rest) CreateIndex(ctx context.Context, name string, mapping map[string]any) error {
	body := map[string]any{
		"settings": map[string]any{"index": map[string]any{"gc_deletes": r.gcDeletes}},
		"mappings": mapping,
	}
	_, err := r.do(ctx, http.MethodPut, "/"+url.PathEscape(name), body)
	var ee *engineError
	if errors.As(err, &ee) && ee.Status == http.StatusBadRequest && strings.Contains(ee.Body, "resource_already_exists_exception") {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create index %s: %w", name, err)
	}
	return nil
}

func (r *rest) SwapAlias(ctx context.Context, alias, physical string) error {
	actions := []any{
		map[string]any{"add": map[string]any{"index": physical, "alias": alias}},
	}
	b, err := r.do(ctx, http.MethodGet, "/_alias/"+url.PathEscape(alias), nil)
	var ee *engineError
	switch {
	case err == nil:
		var cur map[string]any
		if err := json.Unmarshal(b, &cur); err != nil {
			return fmt.Errorf("alias %s: %w", alias, err)
		}
		for idx := range cur {
			if idx != physical {
				actions = append(actions, map[string]any{"remove": map[string]any{"index": idx, "alias": alias}})
			}
		}
	case errors.As(err, &ee) && ee.Status == http.StatusNotFound:
	default:
		return fmt.Errorf("alias %s: %w", alias, err)
	}
	if _, err := r.do(ctx, http.MethodPost, "/_aliases", map[string]any{"actions": actions}); err != nil {
		return fmt.Errorf("point alias %s at %s: %w", alias, physical, err)
	}
	return nil
}

func (r *rest) Exists(ctx context.Context, name string) (bool, error) {
	_, err := r.do(ctx, http.MethodHead, "/"+url.PathEscape(name), nil)
	var ee *engineError
	if errors.As(err, &ee) && ee.Status == http.StatusNotFound {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("index %s: %w", name, err)
	}
	return true, nil
}

func (r *rest) DeleteIndex(ctx context.Context, name string) error {
	_, err := r.do(ctx, http.MethodDelete, "/"+url.PathEscape(name), nil)
	var ee *engineError
	if errors.As(err, &ee) && ee.Status == http.StatusNotFound {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete index %s: %w", name, err)
	}
	return nil
}

func (r *rest) Refresh(ctx context.Context, index string) error {
	if _, err := r.do(ctx, http.MethodPost, "/"+url.PathEscape(index)+"/_refresh", nil); err != nil {
		return fmt.Errorf("refresh %s: %w", index, err)
	}
	return nil
}

func (r *rest) Scan(ctx context.Context, index string, fn func(id string, source []byte) error) error {
	return r.scroll(ctx, index, true, fn)
}

func (r *rest) ScanIDs(ctx context.Context, index string, fn func(id string) error) error {
	return r.scroll(ctx, index, false, func(id string, _ []byte) error { return fn(id) })
}

// scroll pages through every document of an index in a scroll context: a
// view of the index as of its last refresh, which writes made meanwhile do
// not change. withSource false reads the ids alone.
func (r *rest) scroll(ctx context.Context, index string, withSource bool, fn func(id string, source []byte) error) error {
	type page struct {
		ScrollID string `json:"_scroll_id"`
		Hits     struct {
			Hits []struct {
				ID     string          `json:"_id"`
				Source json.RawMessage `json:"_source"`
			} `json:"hits"`
		} `json:"hits"`
	}
	query := map[string]any{"size": 1000, "sort": []any{"_doc"}, "query": map[string]any{"match_all": map[string]any{}}}
	if !withSource {
		query["_source"] = false
	}
	b, err := r.do(ctx, http.MethodPost, "/"+url.PathEscape(index)+"/_search?scroll=2m", query)
	if err != nil {
		return fmt.Errorf("scan %s: %w", index, err)
	}
	var scrollID string
	defer func() {
		if scrollID != "" {
			// Also after ctx ended, but bounded: an engine that went
			// silent must not hold the feed's stop (the scroll expires
			// on its own).
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			_, _ = r.do(cctx, http.MethodDelete, "/_search/scroll", map[string]any{"scroll_id": scrollID})
		}
	}()
	for {
		var p page
		if err := json.Unmarshal(b, &p); err != nil {
			return fmt.Errorf("scan %s: %w", index, err)
		}
		scrollID = p.ScrollID
		if len(p.Hits.Hits) == 0 {
			return nil
		}
		for _, h := range p.Hits.Hits {
			if err := fn(h.ID, h.Source); err != nil {
				return err
			}
		}
		b, err = r.do(ctx, http.MethodPost, "/_search/scroll", map[string]any{"scroll": "2m", "scroll_id": scrollID})
		if err != nil {
			return fmt.Errorf("scan %s: %w", index, err)
		}
	}
}

// bulkOutcome collects what an engine's bulk indexer reports per item.
type bulkOutcome struct {
	rejected  []Rejection
	transport error
}

// item classifies one item's answer. 409 is a version conflict: the engine
// already holds this version or a newer one, which is success for a feed
// that may replay; so is 404 for a delete. 429, 5xx and errors about the
// index rather than the document (indexRefusals) are retried with the
// batch. errType is the error's type, such as version_conflict_engine_exception.
func (o *bulkOutcome) item(op int, index string, del bool, status int, errType, reason string, err error) {
	switch {
	case indexRefusals[errType]:
		// Before the delete rule: a delete's 404 from a missing index
		// is not a missing document.
		if o.transport == nil {
			o.transport = indexRefusal(index, status, errType, reason)
		}
	case del && status == http.StatusNotFound:
		// Deleting a document the engine never had: it records the
		// version all the same.
	case err != nil && status == 0:
		if o.transport == nil {
			o.transport = err
		}
	case status == http.StatusConflict:
	case status == http.StatusTooManyRequests || status >= 500 || status == 0:
		if o.transport == nil {
			o.transport = fmt.Errorf("search engine answered %d: %s", status, reason)
		}
	default:
		o.rejected = append(o.rejected, Rejection{Op: op, Status: status, Reason: reason})
	}
}

// indexRefusals are the per-item error types that are about the index, not
// the document: it is closed, blocked for writes (during a _shrink, _clone
// or _split, or read-only past the disk flood-stage watermark), missing, or
// not writable with the feed's credentials. They arrive as items of a bulk
// answer of 200 with a 400, 403 or 404 that would read as a document's
// fault; each passes once the index or the permissions are mended, while a
// dead letter would confirm the change and lose it for the index.
var indexRefusals = map[string]bool{
	"index_closed_exception":    true,
	"cluster_block_exception":   true,
	"index_not_found_exception": true,
	"security_exception":        true,
}

// indexRefusal is the error the feed reports (log and health) while it
// retries a batch an index refused: the index and the error type. A
// security_exception's reason names the user or API key id and roles,
// which the error type and the index already point to: it is left out.
func indexRefusal(index string, status int, errType, reason string) error {
	if errType == "index_not_found_exception" {
		// Retrying cannot bring it back: the feed starts over, finds the
		// index gone and builds it again (Feed.step).
		return fmt.Errorf("%w: %s (%d %s)", errIndexMissing, index, status, errType)
	}
	msg := fmt.Sprintf("index %s refuses writes (%d %s); the batch is retried until it takes them", index, status, errType)
	if errType != "security_exception" && reason != "" {
		msg += ": " + reason
	}
	return errors.New(msg)
}

// errIndexMissing marks a batch written to an index the engine no longer
// has (deleted by hand): bulkRetry gives it back instead of retrying.
var errIndexMissing = errors.New("index missing from the engine")

func (o *bulkOutcome) result() ([]Rejection, error) {
	if o.transport != nil {
		return nil, o.transport
	}
	return o.rejected, nil
}

// versionType makes an equal version acceptable: every change of one
// transaction carries the transaction's commit position, and a transaction
// may touch a row more than once (the last write is the one kept, and a
// replay writes the same content again).
const versionType = "external_gte"

// bulkTimeout bounds one bulk request.
const bulkTimeout = 2 * time.Minute
