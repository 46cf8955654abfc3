package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// TestIndexRefusesOversizedDocumentAndGoesOn: a value far over the
// configured document limit (8 MiB against search.max_document_bytes of
// 1 MiB), written in one region and replicated to the other, is refused by
// every region's index feed before it is rendered: it lands in
// polyregion.index_dead_letter with a reason naming the limit, an update
// that leaves the large value unchanged (TOASTed, so read back from the
// table) is refused the same way, as is a large row the first backfill
// meets; the rows written after it are indexed and found by a search, and
// no replicator's memory grows with the value.
func TestIndexRefusesOversizedDocumentAndGoesOn(t *testing.T) {
	const (
		limit    = 1 << 20 // search.max_document_bytes in this test
		bigValue = 8 << 20 // the value written, 8 times the limit
		later    = 20      // rows written after the large one
	)
	dir := testDir(t)
	schema := []string{`CREATE TABLE public.notes (id bigint PRIMARY KEY, title text NOT NULL, body text)`}
	tables := []TableSpec{{Name: "public.notes"}}
	h := startClusters(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: tables,
		Configure: func(region string, c *RegionConfig) {
			c.Search = &SearchSection{Kind: "embedded", Dir: filepath.Join(dir, region+"-index"), FlushInterval: "100ms",
				Indices: []SearchIndex{{Table: "public.notes", Index: "notes"}}}
		}})
	ctx := ctxFor(t, 5*time.Minute)
	for _, r := range h.Regions {
		setSearchSetting(t, r.ConfigPath, "max_document_bytes", limit)
		// A large row already there when the index is first built: the
		// backfill refuses it too.
		mustExec(t, ctx, r, `INSERT INTO public.notes VALUES (0, 'preexisting', repeat('y', $1::int))`, bigValue)
	}
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatalf("replicators did not come up: %v", err)
	}
	us := h.Regions[0]
	mustExec(t, ctx, us, `INSERT INTO public.notes VALUES (1, 'prelude', 'written ahead of the large value')`)
	for _, r := range h.Regions {
		waitSearchIDs(ctx, t, r, "title:prelude", []string{"1"}, time.Minute)
	}

	// Watch every replicator's Go heap while the large value goes through.
	watchCtx, stopWatch := context.WithCancel(ctx)
	peakHeap := map[string]float64{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, r := range h.Regions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for watchCtx.Err() == nil {
				if v, ok := metricValue(scrapeMetrics(watchCtx, r), "go_memstats_heap_alloc_bytes"); ok {
					mu.Lock()
					peakHeap[r.Name] = max(peakHeap[r.Name], v)
					mu.Unlock()
				}
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}

	// One row far over the limit (a single long token, the most costly
	// shape for an index), then an update of another column that leaves it
	// unchanged, then ordinary rows.
	mustExec(t, ctx, us, `INSERT INTO public.notes VALUES (2, 'large', repeat('x', $1::int))`, bigValue)
	mustExec(t, ctx, us, `UPDATE public.notes SET title = 'large retitled' WHERE id = 2`)
	var want []string
	for i := 3; i < 3+later; i++ {
		mustExec(t, ctx, us, `INSERT INTO public.notes VALUES ($1, $2, 'an ordinary note')`, i, fmt.Sprintf("after%d", i))
		want = append(want, strconv.Itoa(i))
	}
	if err := h.WaitConverged(ctx, tableNames(tables), 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	reason := fmt.Sprintf("over the limit of %d bytes (search.max_document_bytes)", limit)
	for _, r := range h.Regions {
		// The rows after the large one are indexed and searchable.
		for i := 3; i < 3+later; i++ {
			waitSearchIDs(ctx, t, r, fmt.Sprintf("title:after%d", i), []string{strconv.Itoa(i)}, 2*time.Minute)
		}
		// The insert and the update of the large row are both refused,
		// with the size and the setting in the reason, and nothing of it
		// is in the index.
		recorded := eventually(ctx, 30*time.Second, func() bool {
			return queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.index_dead_letter
				WHERE doc_id = '2' AND position($1 in reason) > 0 AND doc IS NULL`, reason) == 2
		})
		if !recorded {
			t.Errorf("region %s: want the insert and the update of row 2 in polyregion.index_dead_letter with a reason containing %q; found %d rows for it",
				r.Name, reason, queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.index_dead_letter WHERE doc_id = '2'`))
		} else {
			t.Logf("region %s: %s", r.Name, queryString(t, ctx, r, `SELECT reason FROM polyregion.index_dead_letter WHERE doc_id = '2' ORDER BY id LIMIT 1`))
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.index_dead_letter
				WHERE doc_id = '0' AND position($1 in reason) > 0`, reason); n != 1 {
			t.Errorf("region %s: the large row the backfill met is in the dead-letter table %d times, want once", r.Name, n)
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.index_dead_letter WHERE doc_id NOT IN ('0', '2')`); n != 0 {
			t.Errorf("region %s: %d other rows in the dead-letter table", r.Name, n)
		}
		ids := searchIDs(ctx, t, r, "")
		if ids["0"] || ids["2"] {
			t.Errorf("region %s: an oversized row is in the index: %v", r.Name, ids)
		}
		for _, id := range append([]string{"1"}, want...) {
			if !ids[id] {
				t.Errorf("region %s: row %s is not in the index", r.Name, id)
			}
		}
	}
	stopWatch()
	wg.Wait()

	// Memory: the value is 8 MiB; a replicator must not hold it many
	// times over. Before documents were bounded, this test saw each region's
	// replicator peak near 3 GB (the embedded index took the value in).
	for _, r := range h.Regions {
		rss, err := r.PeakRSS()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("region %s: peak RSS %.0f MB, peak Go heap (sampled) %.0f MB", r.Name, float64(rss)/(1<<20), peakHeap[r.Name]/(1<<20))
		if rss > 200<<20 {
			t.Errorf("region %s: replicator peak RSS %.0f MB with one %d MiB value; want under 200 MB", r.Name, float64(rss)/(1<<20), bigValue>>20)
		}
	}
}

// setSearchSetting sets search.<key> in a region's config file.
func setSearchSetting(t *testing.T, path, key string, value any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	search, ok := doc["search"].(map[string]any)
	if !ok {
		t.Fatalf("%s has no search: section", path)
	}
	search[key] = value
	if b, err = yaml.Marshal(doc); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// scrapeMetrics returns a region's /metrics exposition ("" when it did not
// answer).
func scrapeMetrics(ctx context.Context, r *Region) string {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(rctx, http.MethodGet, "http://"+r.HTTPListen+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// searchIDs returns the ids of the documents a query finds in a region's
// embedded notes index (every document for an empty query).
func searchIDs(ctx context.Context, t *testing.T, r *Region, q string) map[string]bool {
	t.Helper()
	docs := searchDocs(ctx, t, r, q)
	if docs == nil {
		return nil
	}
	ids := map[string]bool{}
	for id := range docs {
		ids[id] = true
	}
	return ids
}

// searchDocs returns the documents a query finds in a region's embedded
// notes index, by id (nil while the index does not answer).
func searchDocs(ctx context.Context, t *testing.T, r *Region, q string) map[string]map[string]any {
	t.Helper()
	u := "http://" + r.HTTPListen + "/search/notes?size=1000"
	if q != "" {
		u += "&q=" + url.QueryEscape(q)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("region %s: search %q: %v", r.Name, q, err)
	}
	defer resp.Body.Close()
	var out struct {
		Hits []struct {
			ID     string         `json:"_id"`
			Source map[string]any `json:"_source"`
		} `json:"hits"`
	}
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("region %s: search %q: %v", r.Name, q, err)
	}
	docs := map[string]map[string]any{}
	for _, h := range out.Hits {
		docs[h.ID] = h.Source
	}
	return docs
}

// waitSearchIDs waits until a query finds exactly the given ids.
func waitSearchIDs(ctx context.Context, t *testing.T, r *Region, q string, want []string, timeout time.Duration) {
	t.Helper()
	waitFor(ctx, t, timeout, fmt.Sprintf("region %s: search %q finds %v", r.Name, q, want), func() bool {
		ids := searchIDs(ctx, t, r, q)
		if len(ids) != len(want) {
			return false
		}
		for _, id := range want {
			if !ids[id] {
				return false
			}
		}
		return true
	})
}

// eventually reports whether cond held within timeout.
func eventually(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
	return true
}
