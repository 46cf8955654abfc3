package postgres

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestKeyBarrierContentRoundTrips(t *testing.T) {
	keys := []metaKey{{"public.t", `["1"]`}, {"public.u", `["a","b\u0000c"]`}, {"s.v", ""}}
	b := encodeKeyBarrier(42, keys)
	// What EmitKeyBarrier appends: the emitting transaction's id.
	kb, err := decodeKeyBarrier(append(b, "1234"...))
	if err != nil {
		t.Fatal(err)
	}
	if kb.token != 42 || len(kb.keys) != len(keys) {
		t.Fatalf("decoded token %d and %d keys, want 42 and %d", kb.token, len(kb.keys), len(keys))
	}
	for _, k := range keys {
		if !kb.keys[k] {
			t.Fatalf("key %v lost", k)
		}
	}
	if _, err := decodeKeyBarrier(b[:len(b)-1]); err == nil {
		t.Fatal("a truncated barrier decoded")
	}
	if _, err := decodeKeyBarrier(b[:5]); err == nil {
		t.Fatal("a barrier shorter than its header decoded")
	}
}

func TestKeyBarrierTooLargeIsPlain(t *testing.T) {
	var keys []metaKey
	for range 3 {
		keys = append(keys, metaKey{"public.t", strings.Repeat("k", keyBarrierMaxBytes/3)})
	}
	if encodeKeyBarrier(1, keys) != nil {
		t.Fatal("a barrier past keyBarrierMaxBytes was encoded")
	}
	if encodeKeyBarrier(1, keys[:2]) == nil {
		t.Fatal("a barrier within keyBarrierMaxBytes was not encoded")
	}
}

func TestHoldsUnversioned(t *testing.T) {
	rel := &relation{name: "public.t"}
	txn := func(keys ...string) *pendingTxn {
		p := &pendingTxn{}
		for _, k := range keys {
			p.changes = append(p.changes, rawChange{rel: rel, key: k})
		}
		return p
	}
	want := map[metaKey]bool{{"public.t", "2"}: true}
	cases := []struct {
		name string
		s    readSession
		held bool
	}{
		{"nothing held", readSession{}, false},
		{"other keys batched", readSession{batch: []*pendingTxn{txn("1", "3")}}, false},
		{"the key batched", readSession{batch: []*pendingTxn{txn("1"), txn("3", "2")}}, true},
		{"the key in flight", readSession{inflightBatch: []*pendingTxn{txn("2")}, inflight: true}, true},
		{"the same key of another table", readSession{batch: []*pendingTxn{{changes: []rawChange{{rel: &relation{name: "public.u"}, key: "2"}}}}}, false},
		{"a transaction being decoded", readSession{cur: txn()}, true},
	}
	for _, c := range cases {
		if got := c.s.holdsUnversioned(want); got != c.held {
			t.Errorf("%s: holdsUnversioned = %v, want %v", c.name, got, c.held)
		}
	}
}

// A barrier of the same token passed before the waiter's own is another
// waiter's, decoded again after a restart: it does not release the wait.
func TestWaitBarrierNeedsItsOwnPosition(t *testing.T) {
	r := NewReader(ReaderConfig{})
	token, done := r.ExpectBarrier()
	defer done()
	r.passBarrier(token, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := r.WaitBarrier(ctx, 200, token); err == nil {
		t.Fatal("a barrier passed at 100 released the wait for the one at 200")
	}
	r.passBarrier(token, 200)
	if err := r.WaitBarrier(context.Background(), 200, token); err != nil {
		t.Fatal(err)
	}
	done()
	r.passBarrier(token, 300) // forgotten: nothing recorded
	if _, ok := r.barriers[token]; ok {
		t.Fatal("a forgotten token was recorded")
	}
}
