package node

import (
	"errors"
	"fmt"
	"testing"

	"github.com/polyregion/polyregion/replicator/link"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// A load is tried again after failures of the link or the source, never
// after a refusal that asking again cannot change.
func TestRetryJoin(t *testing.T) {
	for _, c := range []struct {
		err   error
		retry bool
	}{
		{errors.New("unexpected EOF"), true},
		{errors.New("snapshot from us: HTTP 503: region us could not take a snapshot (its log says why); try again"), true},
		{fmt.Errorf("snapshot from us: %w: the joining region loaded tables public.gone", link.ErrSnapshotRefused), false},
		{fmt.Errorf("snapshot from us: %w", link.ErrUnauthorized), false},
		{fmt.Errorf("snapshot from us: %w", link.ErrNotServed), false},
		{&link.MismatchError{Peer: "us"}, false},
		{fmt.Errorf("%w: region eu loaded rows of another source", postgres.ErrCannotJoin), false},
	} {
		if got := retryJoin(c.err); got != c.retry {
			t.Errorf("retryJoin(%v) = %v, want %v", c.err, got, c.retry)
		}
	}
}
