package node

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"

	"github.com/polyregion/polyregion/regions"
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

// A snapshot served to a joining region reads this region's replicated
// tables and spools within the configured budget (join.spool); unset, the
// default.
func TestASnapshotServedSpoolsWithinTheConfiguredBudget(t *testing.T) {
	cfg := Config{Region: "us", Database: "postgres://polyregion@localhost/app",
		Cluster: regions.Cluster{Tables: []regions.Table{{Name: "public.kv"}, {Name: "public.notes"}}}}
	for _, spool := range []int64{0, 64 << 20} {
		cfg.SpoolBytes = spool
		sc := snapshotConfig(cfg, nil, slog.New(slog.DiscardHandler))
		if sc.SpoolBytes != spool || sc.Region != "us" || sc.ConnString != cfg.Database || !slices.Equal(sc.Tables, []string{"public.kv", "public.notes"}) {
			t.Errorf("join.spool %d: snapshot config %+v", spool, sc)
		}
	}
}
