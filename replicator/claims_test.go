package replicator

import (
	"context"
	"errors"
	"hash/fnv"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// claimAsync claims ids in the background; done receives the release
// once granted.
func claimAsync(c *Claims, ids ...uint64) (done chan func()) {
	done = make(chan func(), 1)
	go func() {
		release, _, err := c.Claim(context.Background(), ids)
		if err != nil {
			panic(err)
		}
		done <- release
	}()
	return done
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestClaimsExcludeSharedRowsOnly(t *testing.T) {
	c := NewClaims()
	r1, waited, err := c.Claim(context.Background(), []uint64{1, 2, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	if waited || c.Held() != 3 {
		t.Fatalf("held %d rows, want 3 (duplicates claimed once)", c.Held())
	}
	// Disjoint rows go at once.
	r2, _, err := c.Claim(context.Background(), []uint64{4, 5})
	if err != nil {
		t.Fatal(err)
	}
	shared := claimAsync(c, 3, 6)
	waitFor(t, "the claim sharing row 3 to wait", func() bool { return c.Waiting() == 1 })
	select {
	case <-shared:
		t.Fatal("a claim of a held row was granted")
	case <-time.After(20 * time.Millisecond):
	}
	r2()
	select {
	case <-shared:
		t.Fatal("granted when an unrelated claim was released")
	case <-time.After(20 * time.Millisecond):
	}
	r1()
	r3 := <-shared
	if c.Held() != 2 || c.Waiting() != 0 {
		t.Fatalf("held %d, waiting %d; want 2 held, none waiting", c.Held(), c.Waiting())
	}
	r3()
	if c.Held() != 0 {
		t.Fatalf("held %d after every release", c.Held())
	}
}

// A claim waiting for a row is not overtaken by a later one that wants the
// same row, even when that one could go at once otherwise.
func TestClaimsAreGrantedInOrderAmongThoseSharingRows(t *testing.T) {
	c := NewClaims()
	r1, _, _ := c.Claim(context.Background(), []uint64{1})
	big := claimAsync(c, 1, 2, 3)
	waitFor(t, "the large claim to wait", func() bool { return c.Waiting() == 1 })
	small := claimAsync(c, 3)
	waitFor(t, "the small claim to wait", func() bool { return c.Waiting() == 2 })
	// Row 3 is free, but the large claim asked for it first.
	select {
	case <-small:
		t.Fatal("a later claim overtook an earlier one waiting for the same row")
	case <-time.After(20 * time.Millisecond):
	}
	// A claim sharing nothing with the waiting ones still goes at once.
	r4, waited, err := c.Claim(context.Background(), []uint64{9})
	if err != nil || waited {
		t.Fatal(err)
	}
	r4()
	r1()
	rb := <-big
	select {
	case <-small:
		t.Fatal("granted while the earlier claim holds its row")
	case <-time.After(20 * time.Millisecond):
	}
	rb()
	(<-small)()
}

func TestAClaimGivenUpHoldsNothing(t *testing.T) {
	c := NewClaims()
	r1, _, _ := c.Claim(context.Background(), []uint64{1})
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 1)
	go func() {
		_, waited, err := c.Claim(ctx, []uint64{1, 2})
		if !waited {
			err = errors.New("not waited")
		}
		errs <- err
	}()
	waitFor(t, "the claim to wait", func() bool { return c.Waiting() == 1 })
	// A later claim of row 2 waits behind it, and goes once it is given up.
	later := claimAsync(c, 2)
	waitFor(t, "the later claim to wait", func() bool { return c.Waiting() == 2 })
	cancel()
	if err := <-errs; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want the context's error", err)
	}
	(<-later)()
	r1()
	if c.Held() != 0 || c.Waiting() != 0 {
		t.Fatalf("held %d, waiting %d after everything ended", c.Held(), c.Waiting())
	}
}

// Many claimers over a few rows: no two ever hold one row at once, and
// every claim is granted.
func TestClaimsUnderConcurrency(t *testing.T) {
	c := NewClaims()
	var holders [8]atomic.Int32
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				ids := []uint64{uint64((g + i) % 8), uint64((g * i) % 8), uint64(i % 3)}
				release, _, err := c.Claim(context.Background(), ids)
				if err != nil {
					t.Error(err)
					return
				}
				uniq := slices.Compact(slices.Sorted(slices.Values(ids)))
				for _, id := range uniq {
					if holders[id].Add(1) > 1 {
						t.Errorf("row %d held by two claims at once", id)
					}
				}
				time.Sleep(time.Duration(i%3) * 10 * time.Microsecond)
				for _, id := range uniq {
					holders[id].Add(-1)
				}
				release()
			}
		}()
	}
	wg.Wait()
	if c.Held() != 0 || c.Waiting() != 0 {
		t.Fatalf("held %d, waiting %d after every claimer ended", c.Held(), c.Waiting())
	}
}

func TestNilClaimsClaimNothing(t *testing.T) {
	var c *Claims
	release, waited, err := c.Claim(context.Background(), []uint64{1})
	if err != nil || waited {
		t.Fatalf("a nil Claims waited (%v) or failed: %v", waited, err)
	}
	release()
	if ClaimID("public.a", `["1"]`) == ClaimID("public.b", `["1"]`) || ClaimID("public.ab", `["1"]`) == ClaimID("public.a", `b["1"]`) {
		t.Fatal("ClaimID does not tell the rows of different tables apart")
	}
	h := fnv.New64a()
	h.Write([]byte("public.a\x00[\"1\"]"))
	if ClaimID("public.a", `["1"]`) != h.Sum64() {
		t.Fatal("ClaimID is not FNV-1a of the table, a zero byte and the key")
	}
}
