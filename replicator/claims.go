package replicator

import (
	"context"
	"slices"
	"sync"
)

// Claims keeps the appliers of one process (one per source region) off
// each other's rows: before an apply transaction begins, its applier
// claims the rows it is going to read and lock, and it gives them back
// once the transaction has ended.
//
// Without it, two appliers whose batches share rows waited for each
// other's row locks in the server. Each such wait is bounded by the
// applier's lock timeout, which is there to give way to applications (an
// applier must not hold its rows while it waits for one an application
// holds), so when the other applier's transaction ran longer than that,
// the batch failed and was applied again, in smaller parts. In a region
// catching up with several sources whose transactions share rows (a
// joining region above all), that happened tens of times a minute, often
// to both sides of one wait.
//
// A claim is all or nothing and waits holding nothing, so claims alone
// cannot close a cycle: a waiter waits only for holders, and a holder
// never waits for a claim. Claims are granted in the order they were
// asked for among those that share a row: a large batch is not overtaken
// for ever by smaller ones. Rows are told apart by a hash of their table
// and key (ClaimID); two rows with the same hash only make one claim wait
// for the other. Safe for concurrent use; a nil *Claims claims nothing.
type Claims struct {
	mu      sync.Mutex
	held    map[uint64]struct{}
	waiting []*claim // in the order they were asked for
}

type claim struct {
	ids     []uint64
	granted chan struct{}
}

// NewClaims returns claims of which no row is held.
func NewClaims() *Claims {
	return &Claims{held: map[uint64]struct{}{}}
}

// ClaimID names a table's row by its key (Shape.KeyOf) for Claim: the
// 64-bit FNV-1a hash of the table, a zero byte and the key, computed in
// place (one per change an applier takes in, so nothing is allocated).
func ClaimID(table, key string) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(table); i++ {
		h = (h ^ uint64(table[i])) * prime
	}
	h *= prime // the zero byte
	for i := 0; i < len(key); i++ {
		h = (h ^ uint64(key[i])) * prime
	}
	return h
}

// Claim waits until none of ids is held and no claim asked for earlier
// and still waiting wants one of them, then holds them all until release
// is called (once); waited tells whether it was not granted at once. It
// returns ctx's error, holding nothing, when ctx ends first.
func (c *Claims) Claim(ctx context.Context, ids []uint64) (release func(), waited bool, err error) {
	if c == nil || len(ids) == 0 {
		return func() {}, false, nil
	}
	ids = slices.Clone(ids)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	w := &claim{ids: ids, granted: make(chan struct{})}
	c.mu.Lock()
	c.waiting = append(c.waiting, w)
	c.grant()
	select {
	case <-w.granted:
	default:
		waited = true
	}
	c.mu.Unlock()
	release = func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, id := range ids {
			delete(c.held, id)
		}
		c.grant()
	}
	select {
	case <-w.granted:
		return release, waited, nil
	case <-ctx.Done():
	}
	c.mu.Lock()
	select {
	case <-w.granted:
		c.mu.Unlock()
		release()
	default:
		c.waiting = slices.DeleteFunc(c.waiting, func(o *claim) bool { return o == w })
		c.grant()
		c.mu.Unlock()
	}
	return nil, true, ctx.Err()
}

// grant gives every waiting claim, in order, its rows when none of them is
// held or wanted by a claim before it still waiting. Called with mu held.
func (c *Claims) grant() {
	var wanted map[uint64]struct{}
	kept := c.waiting[:0]
	for _, w := range c.waiting {
		free := true
		for _, id := range w.ids {
			_, held := c.held[id]
			_, before := wanted[id]
			if held || before {
				free = false
				break
			}
		}
		if free {
			for _, id := range w.ids {
				c.held[id] = struct{}{}
			}
			close(w.granted)
			continue
		}
		kept = append(kept, w)
		if wanted == nil {
			wanted = map[uint64]struct{}{}
		}
		for _, id := range w.ids {
			wanted[id] = struct{}{}
		}
	}
	clear(c.waiting[len(kept):])
	c.waiting = kept
}

// Held reports how many rows are held (for tests).
func (c *Claims) Held() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.held)
}

// Waiting reports how many claims wait (for tests).
func (c *Claims) Waiting() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiting)
}
