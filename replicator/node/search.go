package node

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/polyregion/polyregion/indexer"
)

// SearchConfig feeds the region's search index from every local commit.
type SearchConfig struct {
	Backend indexer.BackendConfig
	// Feed's Region and Database are filled from the region's config.
	Feed indexer.Config
}

// search is a running index feed.
type search struct {
	feed *indexer.Feed
	be   indexer.Backend
	// handler serves /search/ for the embedded index (nil otherwise).
	handler http.Handler
}

// startSearch opens the engine and starts the feed; it stops with ctx.
// An engine that is away is no error: the feed waits for it.
func startSearch(ctx context.Context, cfg Config, log *slog.Logger) (*search, <-chan error, error) {
	sc := *cfg.Search
	fc := sc.Feed
	fc.Region, fc.Database = string(cfg.Region), cfg.Database
	fc.BackendKind = sc.Backend.Kind
	fc.Logger = log.With("part", "index")
	be, err := indexer.Open(ctx, sc.Backend)
	if err != nil {
		return nil, nil, fmt.Errorf("search: %w", err)
	}
	feed, err := indexer.New(fc, be)
	if err != nil {
		_ = be.Close()
		return nil, nil, err
	}
	s := &search{feed: feed, be: be}
	if e, ok := be.(*indexer.Embedded); ok {
		s.handler = e.SearchHandler()
	}
	done := make(chan error, 1)
	go func() {
		err := feed.Run(ctx)
		_ = be.Close()
		done <- err
	}()
	return s, done, nil
}
