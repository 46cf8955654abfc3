package indexer

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"sync"

	"github.com/opensearch-project/opensearch-go/v4"
	"github.com/opensearch-project/opensearch-go/v4/opensearchapi"
	"github.com/opensearch-project/opensearch-go/v4/opensearchutil"
)

// openSearchBackend writes to OpenSearch 2.x/3.x through opensearch-go's
// bulk indexer.
type openSearchBackend struct {
	rest
	client *opensearchapi.Client
}

func openOpenSearch(c BackendConfig) (*openSearchBackend, error) {
	cfg := opensearch.Config{
		Addresses:  c.URLs,
		Username:   c.Username,
		Password:   c.Password,
		MaxRetries: 3,
	}
	if c.CACert != "" {
		pem, err := os.ReadFile(c.CACert)
		if err != nil {
			return nil, fmt.Errorf("search.ca_cert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("search.ca_cert: no certificate in %s", c.CACert)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		cfg.Transport = tr
	}
	client, err := opensearchapi.NewClient(opensearchapi.Config{Client: cfg})
	if err != nil {
		return nil, fmt.Errorf("opensearch client: %w", err)
	}
	return &openSearchBackend{rest: rest{p: client.Client, gcDeletes: "1h"}, client: client}, nil
}

func (b *openSearchBackend) Describe(ctx context.Context) (string, error) {
	return b.info(ctx, "opensearch")
}

func (b *openSearchBackend) Bulk(ctx context.Context, ops []Op) ([]Rejection, error) {
	ctx, cancel := context.WithTimeout(ctx, bulkTimeout)
	defer cancel()
	var mu sync.Mutex
	var out bulkOutcome
	bi, err := opensearchutil.NewBulkIndexer(opensearchutil.BulkIndexerConfig{
		Client:     b.client,
		NumWorkers: 1,
		FlushBytes: 8 << 20,
		Context:    ctx,
		OnError: func(_ context.Context, err error) {
			mu.Lock()
			defer mu.Unlock()
			out.item(-1, "", false, 0, "", "", err)
		},
	})
	if err != nil {
		return nil, err
	}
	vt := versionType
	for i := range ops {
		op := &ops[i]
		v := op.Version
		item := opensearchutil.BulkIndexerItem{
			Index:       op.Index,
			DocumentID:  op.ID,
			Version:     &v,
			VersionType: &vt,
			OnFailure: func(_ context.Context, _ opensearchutil.BulkIndexerItem, r opensearchapi.BulkRespItem, err error) {
				mu.Lock()
				defer mu.Unlock()
				errType, reason := "", ""
				if r.Error != nil {
					errType = r.Error.Type
					reason = r.Error.Type + ": " + r.Error.Reason
					if r.Error.Cause.Reason != "" {
						reason += " (" + r.Error.Cause.Type + ": " + r.Error.Cause.Reason + ")"
					}
				}
				out.item(i, op.Index, op.Delete, r.Status, errType, reason, err)
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

func (b *openSearchBackend) Close() error { return nil }
