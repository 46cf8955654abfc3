package indexer

import (
	"net/http"
	"strings"
	"testing"
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
