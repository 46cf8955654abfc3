package integration

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/indexer"
)

// docsIndex is one region whose public.docs holds rows, an embedded index
// and a feed's configuration over them (title indexed, body left out), for
// tests that drive the feed and rebuilds from the test process.
type docsIndex struct {
	r     *Region
	conn  *pgx.Conn // polyregion's session: the feed's state
	be    indexer.Backend
	specs []indexer.IndexSpec
	cfg   indexer.Config
}

func newDocsIndex(t *testing.T, ctx context.Context, h *Harness, rows, batch int) *docsIndex {
	t.Helper()
	r := h.Regions[0]
	d := &docsIndex{r: r, conn: installedSchema(t, ctx, r)}
	if err := fillDocs(ctx, r, 1, rows); err != nil {
		t.Fatal(err)
	}
	be, err := indexer.Open(ctx, indexer.BackendConfig{Kind: indexer.KindEmbedded, Dir: filepath.Join(h.Spec.Dir, "index")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	d.be = be
	d.specs = []indexer.IndexSpec{{Table: "public.docs", Index: "docs", Exclude: []string{"body"}}}
	d.cfg = indexer.Config{Region: "us", Database: r.Cluster.URL("polyregion", AppDB), BackendKind: indexer.KindEmbedded, Indices: d.specs,
		BatchDocs: batch, PollInterval: 200 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	return d
}

// state is a generation's state.
func (d *docsIndex) state(t *testing.T, ctx context.Context, gen int) (s string) {
	t.Helper()
	if err := d.conn.QueryRow(ctx, `SELECT state FROM polyregion.index_generation WHERE gen = $1`, gen).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// startFeed runs a feed of cfg on be until the returned function stops it
// (at most once; a failed feed fails the test).
func startFeed(t *testing.T, ctx context.Context, cfg indexer.Config, be indexer.Backend) (stop func()) {
	t.Helper()
	feed, err := indexer.New(cfg, be)
	if err != nil {
		t.Fatal(err)
	}
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- feed.Run(fctx) }()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
		})
	}
}

// indexedDocs is newDocsIndex in a region of its own whose first
// generation a feed has built and made live, the feed stopped.
func indexedDocs(t *testing.T, rows, batch int) (context.Context, *docsIndex) {
	t.Helper()
	h := startClusters(t, Spec{Regions: []string{"us"}, SchemaSQL: benchIndexSchema, Tables: []TableSpec{{Name: "public.docs"}}})
	ctx := ctxFor(t, 4*time.Minute)
	d := newDocsIndex(t, ctx, h, rows, batch)
	stop := startFeed(t, ctx, d.cfg, d.be)
	waitIndexed(ctx, t, d.r, d.be, d.specs, time.Minute)
	stop()
	return ctx, d
}
