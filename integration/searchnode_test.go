package integration

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	elasticsearch "github.com/elastic/go-elasticsearch/v8"
	"github.com/opensearch-project/opensearch-go/v4"
	"github.com/opensearch-project/opensearch-go/v4/opensearchapi"
)

// requireSearch fails the test in CI when a search engine cannot run (CI
// must exercise it; .ci/setup-search installs it) and skips it elsewhere.
func requireSearch(t *testing.T, kind SearchKind) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: starts a real search node (run without -short)")
	}
	if err := SearchAvailable(kind); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s node cannot run: %v", kind, err)
		}
		t.Skipf("%s node cannot run here (.ci/setup-search installs what it needs): %v", kind, err)
	}
}

// startSearchNodeT starts a node in a fresh directory; it is stopped when the
// test ends, and its log is printed if the test failed.
func startSearchNodeT(t *testing.T, ctx context.Context, kind SearchKind) *SearchNode {
	t.Helper()
	requireSearch(t, kind)
	dir := t.TempDir()
	start := time.Now()
	n, err := StartSearchNode(ctx, kind, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s %s up at %s in %s", kind, n.Version, n.URL, time.Since(start).Round(100*time.Millisecond))
	t.Cleanup(func() {
		if err := n.Stop(); err != nil {
			t.Errorf("stopping: %v", err)
		}
		if t.Failed() {
			t.Logf("--- %s node log (end) ---\n%s", kind, n.Logs(8000))
		}
	})
	return n
}

// restartT restarts the node (after a graceful stop, or after SIGKILL) and
// checks that it comes back at the same address.
func restartT(t *testing.T, ctx context.Context, n *SearchNode, kill bool) {
	t.Helper()
	url := n.URL
	if kill {
		if err := n.Kill(); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	if err := n.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if n.URL != url {
		t.Fatalf("restarted at %s, was %s", n.URL, url)
	}
	t.Logf("restarted (kill=%v) in %s", kill, time.Since(start).Round(100*time.Millisecond))
}

func TestSearchNodeElasticsearch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	n := startSearchNodeT(t, ctx, SearchElasticsearch)
	if !strings.HasPrefix(n.Version, "8.") {
		t.Fatalf("Elasticsearch version %q, want 8.x", n.Version)
	}

	es, err := elasticsearch.NewClient(elasticsearch.Config{Addresses: []string{n.URL}})
	if err != nil {
		t.Fatal(err)
	}
	// The client's product check needs the X-Elastic-Product header of a
	// real Elasticsearch 8.
	info, err := es.Info(es.Info.WithContext(ctx))
	if err != nil {
		t.Fatalf("info (product check): %v", err)
	}
	var root struct {
		Version struct {
			Number string `json:"number"`
		} `json:"version"`
	}
	err = json.NewDecoder(info.Body).Decode(&root)
	info.Body.Close()
	if err != nil || root.Version.Number != n.Version {
		t.Fatalf("info: version %q (%v), want %q", root.Version.Number, err, n.Version)
	}

	index := func(id string, version int, vtype, body string) int {
		t.Helper()
		res, err := es.Index("items", strings.NewReader(body),
			es.Index.WithContext(ctx), es.Index.WithDocumentID(id),
			es.Index.WithVersion(version), es.Index.WithVersionType(vtype), es.Index.WithRefresh("true"))
		if err != nil {
			t.Fatalf("index %s v%d: %v", id, version, err)
		}
		defer res.Body.Close()
		return res.StatusCode
	}
	del := func(id string, version int) int {
		t.Helper()
		res, err := es.Delete("items", id, es.Delete.WithContext(ctx),
			es.Delete.WithVersion(version), es.Delete.WithVersionType("external"), es.Delete.WithRefresh("true"))
		if err != nil {
			t.Fatalf("delete %s v%d: %v", id, version, err)
		}
		defer res.Body.Close()
		return res.StatusCode
	}
	type doc struct {
		Found   bool            `json:"found"`
		Version int             `json:"_version"`
		Source  json.RawMessage `json:"_source"`
	}
	get := func(id string) (int, doc) {
		t.Helper()
		res, err := es.Get("items", id, es.Get.WithContext(ctx))
		if err != nil {
			t.Fatalf("get %s: %v", id, err)
		}
		defer res.Body.Close()
		var d doc
		if res.StatusCode == http.StatusOK {
			if err := json.NewDecoder(res.Body).Decode(&d); err != nil {
				t.Fatal(err)
			}
		}
		return res.StatusCode, d
	}

	if s := index("1", 5, "external_gte", `{"name":"first"}`); s != http.StatusCreated {
		t.Fatalf("index v5: status %d", s)
	}
	if s := index("1", 5, "external_gte", `{"name":"one"}`); s != http.StatusOK {
		t.Fatalf("index again at v5 (external_gte): status %d, want 200", s)
	}
	if s := index("1", 4, "external_gte", `{"name":"stale"}`); s != http.StatusConflict {
		t.Fatalf("index at older v4: status %d, want 409", s)
	}
	if s := index("2", 3, "external", `{"name":"two"}`); s != http.StatusCreated {
		t.Fatalf("index doc 2: status %d", s)
	}
	if s := del("2", 2); s != http.StatusConflict {
		t.Fatalf("delete at older version: status %d, want 409", s)
	}
	if s := del("2", 7); s != http.StatusOK {
		t.Fatalf("delete at v7: status %d", s)
	}

	check := func(when string) {
		t.Helper()
		s, d := get("1")
		if s != http.StatusOK || !d.Found || d.Version != 5 || string(d.Source) != `{"name":"one"}` {
			t.Fatalf("%s: doc 1: status %d, %+v", when, s, d)
		}
		if s, _ := get("2"); s != http.StatusNotFound {
			t.Fatalf("%s: deleted doc 2: status %d, want 404", when, s)
		}
	}
	check("before restart")
	// The delete's tombstone (version 7) refuses an older write while the
	// node runs (for index.gc_deletes, 60s by default).
	if s := del("2", 6); s != http.StatusConflict {
		t.Fatalf("delete below the tombstone's version: status %d, want 409", s)
	}
	restartT(t, ctx, n, false)
	check("after a graceful restart")
	// Tombstones live in memory only: after a restart the engine no longer
	// knows version 7, so an older delete is a plain not_found (and an older
	// index would recreate the document). Recorded here, not asserted.
	t.Logf("after restart, delete below the tombstone's version: status %d (409 before the restart)", del("2", 6))
	restartT(t, ctx, n, true)
	check("after SIGKILL and restart")
}

func TestSearchNodeOpenSearch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	n := startSearchNodeT(t, ctx, SearchOpenSearch)
	if !strings.HasPrefix(n.Version, "2.") {
		t.Fatalf("OpenSearch version %q, want 2.x", n.Version)
	}

	c, err := opensearchapi.NewClient(opensearchapi.Config{Client: opensearch.Config{Addresses: []string{n.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx, nil)
	if err != nil {
		t.Fatalf("info: %v", err)
	}
	if info.Version.Number != n.Version || info.Version.Distribution != "opensearch" {
		t.Fatalf("info: %s %s, want opensearch %s", info.Version.Distribution, info.Version.Number, n.Version)
	}

	status := func(in opensearchapi.Inspect, err error) int {
		t.Helper()
		if in.Response == nil {
			t.Fatalf("no response: %v", err)
		}
		return in.Response.StatusCode
	}
	index := func(id string, version int, vtype, body string) int {
		t.Helper()
		res, err := c.Index(ctx, opensearchapi.IndexReq{
			Index: "items", DocumentID: id, Body: strings.NewReader(body),
			Params: opensearchapi.IndexParams{Version: new(version), VersionType: vtype, Refresh: "true"},
		})
		return status(res.Inspect(), err)
	}
	del := func(id string, version int) int {
		t.Helper()
		res, err := c.Document.Delete(ctx, opensearchapi.DocumentDeleteReq{
			Index: "items", DocumentID: id,
			Params: opensearchapi.DocumentDeleteParams{Version: new(version), VersionType: "external", Refresh: "true"},
		})
		return status(res.Inspect(), err)
	}
	get := func(id string) (int, *opensearchapi.DocumentGetResp) {
		t.Helper()
		res, err := c.Document.Get(ctx, opensearchapi.DocumentGetReq{Index: "items", DocumentID: id})
		return status(res.Inspect(), err), res
	}

	if s := index("1", 5, "external_gte", `{"name":"first"}`); s != http.StatusCreated {
		t.Fatalf("index v5: status %d", s)
	}
	if s := index("1", 5, "external_gte", `{"name":"one"}`); s != http.StatusOK {
		t.Fatalf("index again at v5 (external_gte): status %d, want 200", s)
	}
	if s := index("1", 4, "external_gte", `{"name":"stale"}`); s != http.StatusConflict {
		t.Fatalf("index at older v4: status %d, want 409", s)
	}
	if s := index("2", 3, "external", `{"name":"two"}`); s != http.StatusCreated {
		t.Fatalf("index doc 2: status %d", s)
	}
	if s := del("2", 2); s != http.StatusConflict {
		t.Fatalf("delete at older version: status %d, want 409", s)
	}
	if s := del("2", 7); s != http.StatusOK {
		t.Fatalf("delete at v7: status %d", s)
	}

	check := func(when string) {
		t.Helper()
		s, d := get("1")
		if s != http.StatusOK || !d.Found || d.Version != 5 || string(d.Source) != `{"name":"one"}` {
			t.Fatalf("%s: doc 1: status %d, found %v, version %d, source %s", when, s, d.Found, d.Version, d.Source)
		}
		if s, _ := get("2"); s != http.StatusNotFound {
			t.Fatalf("%s: deleted doc 2: status %d, want 404", when, s)
		}
	}
	check("before restart")
	// The delete's tombstone (version 7) refuses an older write while the
	// node runs (for index.gc_deletes, 60s by default).
	if s := del("2", 6); s != http.StatusConflict {
		t.Fatalf("delete below the tombstone's version: status %d, want 409", s)
	}
	restartT(t, ctx, n, false)
	check("after a graceful restart")
	// Tombstones live in memory only: after a restart the engine no longer
	// knows version 7, so an older delete is a plain not_found (and an older
	// index would recreate the document). Recorded here, not asserted.
	t.Logf("after restart, delete below the tombstone's version: status %d (409 before the restart)", del("2", 6))
	restartT(t, ctx, n, true)
	check("after SIGKILL and restart")
}
