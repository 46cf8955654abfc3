package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A search engine that goes away degrades the region (200, "serving
// degraded", naming the index) without making it unavailable: applications
// still read and write their local PostgreSQL. Back, the region serves
// again.
func TestHealthDegradedWhileTheSearchEngineIsDown(t *testing.T) {
	if err := SearchAvailable(SearchOpenSearch); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("opensearch cannot run here: %v", err)
		}
		t.Skipf("opensearch cannot run here: %v", err)
	}
	dir := testDir(t)
	ctx := ctxFor(t, 5*time.Minute)
	node, err := StartSearchNode(ctx, SearchOpenSearch, filepath.Join(dir, "search"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Stop() })
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: indexSchema, Tables: indexTables,
		Configure: func(region string, c *RegionConfig) {
			c.Health = map[string]string{"hold": "1s", "probe_interval": "250ms"}
			c.Search = searchSection("opensearch", node.URL, "", indexSpecs("-"+region))
		}})
	us := h.Regions[0]
	waitHealth(t, us, time.Minute, "serving", isServing)

	if err := node.Stop(); err != nil {
		t.Fatal(err)
	}
	_, body := waitHealth(t, us, time.Minute, "degraded naming the index", func(code int, body string) bool {
		return code == 200 && strings.HasPrefix(body, "serving degraded\n") && strings.Contains(body, "index")
	})
	t.Logf("us /health with the search engine down:\n%s", body)

	if err := node.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitHealth(t, us, time.Minute, "serving again", isServing)
}
