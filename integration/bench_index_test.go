package integration

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/polyregion/polyregion/indexer"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// benchIndexRows is the table size of the index benchmark
// (BENCH_INDEX_ROWS overrides; default 1M).
func benchIndexRows() int {
	if v, err := strconv.Atoi(os.Getenv("BENCH_INDEX_ROWS")); err == nil && v > 0 {
		return v
	}
	return 1_000_000
}

var benchIndexSchema = []string{`CREATE TABLE public.docs (
	id bigint PRIMARY KEY, title text NOT NULL, body text NOT NULL, n integer NOT NULL,
	at timestamptz NOT NULL, tags text[] NOT NULL)`}

func fillDocs(ctx context.Context, r *Region, from, rows int) error {
	pool, err := r.Pool(ctx)
	if err != nil {
		return err
	}
	for lo := from; lo < from+rows; lo += benchTxnRows {
		hi := min(lo+benchTxnRows, from+rows) - 1
		if _, err := pool.Exec(ctx, `INSERT INTO public.docs SELECT g, 'title ' || g, repeat(md5(g::text) || ' ', 4), g % 1000,
			timestamptz '2026-01-01' + g * interval '1 second', ARRAY['t' || (g % 7), 't' || (g % 11)]
			FROM generate_series($1::bigint, $2::bigint) g`, lo, hi); err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkIndexFeed measures the search feed on a table of BENCH_INDEX_ROWS
// rows: the backfill (snapshot copy into a new generation) and the streaming
// path catching up the same number of rows inserted while it was stopped,
// for the embedded index and, where a node can run here, Elasticsearch
// (BENCH_INDEX_ENGINES=embedded,elasticsearch chooses).
func BenchmarkIndexFeed(b *testing.B) {
	rows := benchIndexRows()
	type result struct {
		kind             string
		backfill, stream float64
	}
	var results []result
	kinds := []string{indexer.KindEmbedded, indexer.KindElasticsearch}
	if v := os.Getenv("BENCH_INDEX_ENGINES"); v != "" {
		kinds = strings.Split(v, ",")
	}
	for _, kind := range kinds {
		bf, st, err := benchIndexKind(b, kind, rows)
		if err != nil {
			fmt.Printf("index benchmark %s: %v\n", kind, err)
			continue
		}
		results = append(results, result{kind, bf, st})
	}
	fmt.Printf("\nSearch feed, %d rows (docs/s)\n", rows)
	fmt.Printf("  %-15s %12s %12s\n", "engine", "backfill", "streaming")
	for _, r := range results {
		fmt.Printf("  %-15s %12.0f %12.0f\n", r.kind, r.backfill, r.stream)
	}
	for _, r := range results {
		fmt.Printf("index_backfill_docs_per_s_%s=%.0f\n", r.kind, r.backfill)
		fmt.Printf("index_stream_docs_per_s_%s=%.0f\n", r.kind, r.stream)
	}
}

func benchIndexKind(b *testing.B, kind string, rows int) (backfill, stream float64, err error) {
	dir := benchDir(b)
	ctx := context.Background()
	h, err := Start(ctx, Spec{Regions: []string{"us"}, SchemaSQL: benchIndexSchema, Tables: []TableSpec{{Name: "public.docs"}}, Dir: dir, Binary: binary})
	if err != nil {
		return 0, 0, err
	}
	defer h.Close()
	r := h.Regions[0]
	bc := indexer.BackendConfig{Kind: kind, Dir: filepath.Join(dir, "index")}
	if kind == indexer.KindElasticsearch {
		if err := SearchAvailable(SearchElasticsearch); err != nil {
			return 0, 0, err
		}
		node, err := StartSearchNode(ctx, SearchElasticsearch, filepath.Join(dir, "search"))
		if err != nil {
			return 0, 0, err
		}
		defer node.Stop()
		bc.URLs = []string{node.URL}
	}
	conn, err := postgres.Connect(ctx, r.Cluster.URL("polyregion", AppDB))
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(ctx)
	if err := postgres.Install(ctx, conn); err != nil {
		return 0, 0, err
	}
	if err := fillDocs(ctx, r, 1, rows); err != nil {
		return 0, 0, err
	}
	be, err := indexer.Open(ctx, bc)
	if err != nil {
		return 0, 0, err
	}
	defer be.Close()
	cfg := indexer.Config{Region: "us", Database: r.Cluster.URL("polyregion", AppDB), BackendKind: kind,
		Indices: []indexer.IndexSpec{{Table: "public.docs", Index: "docs"}},
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		Progress: func(p indexer.BuildProgress) {
			if p.Done || p.Rows%100_000 < 2000 {
				fmt.Printf("  %s backfill: %d / %d rows, %.0f docs/s\n", kind, p.Rows, p.Total, p.DocsPerSec)
			}
		},
	}
	start := time.Now()
	if _, err := indexer.Rebuild(ctx, cfg, be); err != nil {
		return 0, 0, err
	}
	backfill = float64(rows) / time.Since(start).Seconds()

	// The same number of rows through the stream: inserted while the feed
	// is stopped, then caught up.
	if err := fillDocs(ctx, r, rows+1, rows); err != nil {
		return 0, 0, err
	}
	var target string
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_current_wal_lsn()::text`).Scan(&target); err != nil {
		return 0, 0, err
	}
	cfg.Progress = nil
	feed, err := indexer.New(cfg, be)
	if err != nil {
		return 0, 0, err
	}
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start = time.Now()
	go func() { done <- feed.Run(fctx) }()
	defer func() { cancel(); <-done }()
	for {
		var caught bool
		if err := conn.QueryRow(ctx, `SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_catalog.pg_replication_slots
			WHERE slot_name LIKE 'polyregion_idx_us_%'`, target).Scan(&caught); err == nil && caught {
			break
		}
		if time.Since(start) > 30*time.Minute {
			return 0, 0, fmt.Errorf("streaming did not catch up: %+v", feed.Status())
		}
		time.Sleep(100 * time.Millisecond)
	}
	el := time.Since(start)
	if st := feed.Status(); st.DocsWritten < int64(rows) {
		return 0, 0, fmt.Errorf("streaming caught up with %d documents written, want %d", st.DocsWritten, rows)
	}
	return backfill, float64(rows) / el.Seconds(), nil
}
