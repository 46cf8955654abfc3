package indexer

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// An Elasticsearch node that accepts connections but never answers a bulk
// request (a wedged node): Bulk gives up at its context's deadline and
// its request is cancelled, so nothing waits on the node, and no request
// goes on holding its batch, after Bulk returned. Before, the bulk
// indexer's worker sent the request without the context: it stayed
// blocked, and a batch over the indexer's flush size never returned.
func TestElasticsearchBulkEndsWithItsContext(t *testing.T) {
	var cancelled atomic.Int32
	release := make(chan struct{}) // lets requests still waiting go when the test ends
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Elastic-Product", "Elasticsearch")
		if !strings.HasSuffix(r.URL.Path, "/_bulk") {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"version":{"number":"8.15.0"}}`))
			return
		}
		_, _ = io.Copy(io.Discard, r.Body) // the server watches the connection once the body is read
		select {
		case <-r.Context().Done():
			cancelled.Add(1)
		case <-release:
		}
	}))
	defer srv.Close()
	defer close(release)
	be, err := openElasticsearch(BackendConfig{Kind: "elasticsearch", URLs: []string{srv.URL}})
	if err != nil {
		t.Fatal(err)
	}
	doc := []byte(`{"body":"` + string(bytes.Repeat([]byte("x"), 1<<20)) + `"}`)
	for _, c := range []struct {
		name string
		docs int
	}{{"one small batch", 1}, {"a batch over the flush size", 12}} {
		ops := make([]Op, c.docs)
		for i := range ops {
			ops[i] = Op{Index: "t", ID: string(rune('a' + i)), Version: 1, Doc: doc}
		}
		before := cancelled.Load()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		done := make(chan error, 1)
		go func() {
			_, err := be.Bulk(ctx, ops)
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil {
				t.Fatalf("%s: Bulk to a node that never answers returned no error", c.name)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: Bulk did not return 5 s after its context's deadline of 300 ms", c.name)
		}
		cancel()
		deadline := time.Now().Add(2 * time.Second)
		for cancelled.Load() == before && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if cancelled.Load() == before {
			t.Fatalf("%s: the bulk request still waits on the node after Bulk returned", c.name)
		}
	}
}
