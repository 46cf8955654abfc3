package indexer

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Per-item errors about the index rather than the document (closed,
// blocked for writes, missing, not writable with the feed's credentials)
// pass once the index is mended: the batch is retried, nothing of it is
// dead-lettered, and the error names the index and the error type.
func TestBulkOutcomeRetriesIndexLevelErrors(t *testing.T) {
	cases := []struct {
		del     bool
		status  int
		errType string
		reason  string
	}{
		{false, http.StatusBadRequest, "index_closed_exception", "index_closed_exception: closed"},
		{false, http.StatusForbidden, "cluster_block_exception", "cluster_block_exception: index [p-1] blocked by: [FORBIDDEN/8/index write (api)];"},
		{true, http.StatusForbidden, "cluster_block_exception", "cluster_block_exception: index [p-1] blocked by: [FORBIDDEN/12/index read-only / allow delete (api)];"},
		{false, http.StatusNotFound, "index_not_found_exception", "index_not_found_exception: no such index [p-1]"},
		{true, http.StatusNotFound, "index_not_found_exception", "index_not_found_exception: no such index [p-1]"},
		{false, http.StatusForbidden, "security_exception", "security_exception: action [indices:data/write/bulk[s]] is unauthorized for user [feed]"},
	}
	for _, c := range cases {
		var o bulkOutcome
		o.item(1, "p-1", c.del, c.status, c.errType, c.reason, nil)
		rej, err := o.result()
		if err == nil || len(rej) != 0 {
			t.Errorf("%s (%d, delete %v): rejections %v, error %v; want the batch retried", c.errType, c.status, c.del, rej, err)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, "p-1") || !strings.Contains(msg, c.errType) {
			t.Errorf("%s: %q does not name the index and the error type", c.errType, msg)
		}
		if c.errType == "security_exception" && strings.Contains(err.Error(), "user [feed]") {
			t.Errorf("%q names the feed's user", err)
		}
	}
	// A document's own fault still goes to the dead-letter table.
	var o bulkOutcome
	o.item(3, "p-1", false, http.StatusBadRequest, "document_parsing_exception", "document_parsing_exception: failed to parse field [n]", nil)
	if rej, err := o.result(); err != nil || len(rej) != 1 || rej[0].Op != 3 {
		t.Fatalf("mapping conflict: rejections %v, error %v", rej, err)
	}
}

// missingIndexBackend answers every batch as an engine that lost the index.
type missingIndexBackend struct {
	Backend
	calls int
}

func (b *missingIndexBackend) Bulk(context.Context, []Op) ([]Rejection, error) {
	b.calls++
	var o bulkOutcome
	o.item(0, "p-1", false, http.StatusNotFound, "index_not_found_exception", "no such index [p-1]", nil)
	return o.result()
}

// An index deleted by hand does not come back by retrying: the batch is
// given back at once, so the feed starts over, finds it gone and builds
// it again.
func TestBulkRetryGivesBackABatchForAMissingIndex(t *testing.T) {
	be := &missingIndexBackend{}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := bulkRetry(ctx, Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, be, []Op{{Index: "p-1", ID: "1", Version: 1}}, nil)
	if !errors.Is(err, errIndexMissing) || be.calls != 1 {
		t.Fatalf("bulkRetry: %v after %d calls, want errIndexMissing after one", err, be.calls)
	}
}
