package postgres

import (
	"context"
	"slices"
	"testing"
)

// TestUnchangedSinceSettlesRowsTheBarrierCannotVersion: a row read with
// the same xmin before and after a key barrier is settled (its recorded
// version, or none, is taken as its version) and stays settled in later
// attempts while its xmin holds; a row whose xmin changed, or that is
// absent, stays stale.
func TestUnchangedSinceSettlesRowsTheBarrierCannotVersion(t *testing.T) {
	k := func(key string) metaKey { return metaKey{"public.t", key} }
	a, b, c, d := k(`["a"]`), k(`["b"]`), k(`["c"]`), k(`["d"]`)
	states := map[metaKey]*rowState{
		a: {exists: true, xmin: "100"},                          // from before replication: no version
		b: {exists: true, xmin: "200", meta: &meta{xid: "150"}}, // written locally before the barrier
		c: {exists: true, xmin: "300", meta: &meta{xid: "300"}}, // versioned
		d: {exists: false, meta: &meta{xid: "400", srcSeq: 1}},  // gone, its version live
	}
	settled := map[metaKey]string{}

	// Attempt 1: a and b were read before the barrier at the same xmin;
	// d was absent. After it, b was written again (xmin 210).
	before := xminsRead([]metaKey{a, b, d}, states)
	if _, ok := before[d]; ok {
		t.Fatalf("an absent row has no xmin to compare: %v", before)
	}
	states[b].xmin = "210"
	still := unchangedSince(before, settled, []metaKey{a, b, d}, states)
	if !slices.Equal(still, []metaKey{b, d}) {
		t.Fatalf("attempt 1: still stale %v, want b and d", still)
	}
	if m := states[a].meta; m == nil || m.xid != "100" {
		t.Fatalf("a settled with %+v, want its version taken at xmin 100", m)
	}

	// Attempt 2 reads every row again: a is unversioned again as read, and
	// must stay settled though it was not stale before this barrier; b
	// holds at 210 this time and settles.
	states[a].meta = nil
	before = xminsRead([]metaKey{b, d}, states)
	still = unchangedSince(before, settled, []metaKey{a, b, d}, states)
	if !slices.Equal(still, []metaKey{d}) {
		t.Fatalf("attempt 2: still stale %v, want d", still)
	}
	if m := states[b].meta; m.xid != "210" {
		t.Fatalf("b settled at xid %s, want 210", m.xid)
	}

	// Attempt 3: a was written locally meanwhile (xmin 500): it is stale
	// again, for a reason a barrier can end.
	states[a].xmin, states[a].meta = "500", nil
	still = unchangedSince(map[metaKey]string{}, settled, []metaKey{a, d}, states)
	if !slices.Equal(still, []metaKey{a, d}) {
		t.Fatalf("attempt 3: still stale %v, want a and d", still)
	}
}

func TestAReaderWaitEndsWhenItsEndCloses(t *testing.T) {
	end := make(chan struct{})
	ctx, stopped := untilClosed(context.Background(), end)
	close(end)
	<-ctx.Done()
	if !stopped() {
		t.Error("a wait ended by its end does not say so")
	}
	ctx, stopped = untilClosed(context.Background(), make(chan struct{}))
	if ctx.Err() != nil || stopped() {
		t.Error("a wait released before its end closed says the end ended it")
	}
	ctx, stopped = untilClosed(context.Background(), nil)
	if ctx.Err() != nil || stopped() {
		t.Error("a wait with no end says it ended")
	}
}
