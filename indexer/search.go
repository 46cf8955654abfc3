package indexer

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/blevesearch/bleve/v2"
	"github.com/blevesearch/bleve/v2/search/query"
)

// SearchHandler serves searches of the embedded indices:
//
//	GET /search/{index}?q=QUERY&size=N&from=M
//
// QUERY uses bleve's query-string syntax (field:value, +must, -must_not,
// "phrases", ranges like age:>30); an empty query matches everything. The
// answer is {"total": N, "hits": [{"_id", "_score", "_source"}]}.
func (e *Embedded) SearchHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "use GET", http.StatusMethodNotAllowed)
			return
		}
		name := strings.TrimPrefix(r.URL.Path, "/search/")
		if name == "" || strings.Contains(name, "/") {
			http.Error(w, "path must be /search/{index}", http.StatusNotFound)
			return
		}
		size, from := 10, 0
		if v := r.URL.Query().Get("size"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 1000 {
				http.Error(w, "size: an integer from 0 to 1000", http.StatusBadRequest)
				return
			}
			size = n
		}
		if v := r.URL.Query().Get("from"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				http.Error(w, "from: a non-negative integer", http.StatusBadRequest)
				return
			}
			from = n
		}
		e.mu.Lock()
		_, isAlias := e.aliases[name]
		e.mu.Unlock()
		if !isAlias {
			http.Error(w, "no index "+strconv.Quote(name), http.StatusNotFound)
			return
		}
		v, err := e.view(name)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		var q query.Query
		if qs := r.URL.Query().Get("q"); qs != "" {
			q = bleve.NewQueryStringQuery(qs)
		} else {
			q = bleve.NewMatchAllQuery()
		}
		if vq, ok := q.(query.ValidatableQuery); ok {
			if err := vq.Validate(); err != nil {
				http.Error(w, "q: "+err.Error(), http.StatusBadRequest)
				return
			}
		}
		req := bleve.NewSearchRequestOptions(q, size, from, false)
		res, err := v.SearchInContext(r.Context(), req)
		if err != nil {
			http.Error(w, "search: "+err.Error(), http.StatusBadRequest)
			return
		}
		type hit struct {
			ID     string          `json:"_id"`
			Score  float64         `json:"_score"`
			Source json.RawMessage `json:"_source"`
		}
		out := struct {
			Total uint64 `json:"total"`
			Hits  []hit  `json:"hits"`
		}{Total: res.Total, Hits: []hit{}}
		for _, h := range res.Hits {
			src, err := e.Source(name, h.ID)
			if err != nil || src == nil {
				continue
			}
			out.Hits = append(out.Hits, hit{ID: h.ID, Score: h.Score, Source: src})
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
}
