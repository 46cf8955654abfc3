package indexer

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esutil"
)

// elasticBackend writes to Elasticsearch 8 through go-elasticsearch's bulk
// indexer.
type elasticBackend struct {
	rest
	client *elasticsearch.Client
}

func openElasticsearch(c BackendConfig) (*elasticBackend, error) {
	cfg := elasticsearch.Config{
		Addresses:  c.URLs,
		Username:   c.Username,
		Password:   c.Password,
		APIKey:     c.APIKey,
		MaxRetries: 3,
	}
	if c.CACert != "" {
		pem, err := os.ReadFile(c.CACert)
		if err != nil {
			return nil, fmt.Errorf("search.ca_cert: %w", err)
		}
		cfg.CACert = pem
	}
	client, err := elasticsearch.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("elasticsearch client: %w", err)
	}
	return &elasticBackend{rest: rest{p: client, gcDeletes: "1h"}, client: client}, nil
}

func (b *elasticBackend) Describe(ctx context.Context) (string, error) {
	return b.info(ctx, "elasticsearch")
}

func (b *elasticBackend) Bulk(ctx context.Context, ops []Op) ([]Rejection, error) {
	ctx, cancel := context.WithTimeout(ctx, bulkTimeout)
	defer cancel()
	var mu sync.Mutex
	var out bulkOutcome
	bi, err := esutil.NewBulkIndexer(esutil.BulkIndexerConfig{
		Client:     b.client,
		NumWorkers: 1, // one request at a time: the batch is already large
		FlushBytes: 8 << 20,
		// The indexer's worker sends its requests without a context of
		// its own (context.Background): this one makes them end with the
		// call, so a node that never answers holds nothing after Bulk
		// returned, and a batch over FlushBytes does not wait for ever.
		OnFlushStart: func(context.Context) context.Context { return ctx },
		OnError: func(_ context.Context, err error) {
			mu.Lock()
			defer mu.Unlock()
			out.item(-1, "", false, 0, "", "", err)
		},
	})
	if err != nil {
		return nil, err
	}
	for i := range ops {
		op := &ops[i]
		v := op.Version
		item := esutil.BulkIndexerItem{
			Index:       op.Index,
			DocumentID:  op.ID,
			Version:     &v,
			VersionType: versionType,
			OnFailure: func(_ context.Context, _ esutil.BulkIndexerItem, r esutil.BulkIndexerResponseItem, err error) {
				mu.Lock()
				defer mu.Unlock()
				reason := r.Error.Type + ": " + r.Error.Reason
				if r.Error.Cause.Reason != "" {
					reason += " (" + r.Error.Cause.Type + ": " + r.Error.Cause.Reason + ")"
				}
				out.item(i, op.Index, op.Delete, r.Status, r.Error.Type, reason, err)
			},
		}
		if op.Delete {
			item.Action = "delete"
		} else {
			item.Action = "index"
			item.Body = bytes.NewReader(op.Doc)
		}
		if err := bi.Add(ctx, item); err != nil {
			_ = bi.Close(context.Background())
			return nil, err
		}
	}
	if err := bi.Close(ctx); err != nil {
		return nil, err
	}
	return out.result()
}

func (b *elasticBackend) Close() error { return nil }
