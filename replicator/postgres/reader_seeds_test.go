package postgres

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// A write to a table is inside its seed's window when it committed after
// the seed began and before it ended; a seed still running (the data plane
// seeds alongside) has no end yet.
func TestUnseededWritesFallInsideTheSeedsWindow(t *testing.T) {
	r := &Reader{}
	if r.unseededWrite("public.tally", 100) {
		t.Fatal("no seed known, yet a write inside one")
	}
	r.seeds.Store(&map[string]seedWindow{
		"public.done":    {began: 100, ended: 200},
		"public.running": {began: 300, ended: math.MaxUint64},
	})
	for _, c := range []struct {
		table  string
		commit pglogrepl.LSN
		want   bool
	}{
		{"public.done", 100, false}, {"public.done", 150, true}, {"public.done", 200, false}, {"public.done", 250, false},
		{"public.running", 300, false}, {"public.running", 301, true}, {"public.running", 1 << 40, true},
		{"public.other", 150, false},
	} {
		if got := r.unseededWrite(c.table, c.commit); got != c.want {
			t.Errorf("%s at %d: %v, want %v", c.table, c.commit, got, c.want)
		}
	}
}

// A seed's first transaction can be decoded a moment before the reader's
// own queries see it: the reader reads the windows again until they show
// the seed, and gives up, naming the table, only when they never do.
func TestADecodedSeedIsAwaitedUntilVisible(t *testing.T) {
	r := &Reader{}
	reads := 0
	visibleAt := 3
	load := func() (map[string]seedWindow, error) {
		reads++
		if reads < visibleAt {
			return map[string]seedWindow{}, nil
		}
		return map[string]seedWindow{"public.tally": {began: 100, ended: math.MaxUint64}}, nil
	}
	if err := r.awaitSeed(context.Background(), "public.tally", load); err != nil {
		t.Fatalf("a seed visible at the third read: %v", err)
	}
	if reads != visibleAt {
		t.Fatalf("read the windows %d times, want %d", reads, visibleAt)
	}
	if !r.unseededWrite("public.tally", 150) {
		t.Fatal("the window read last is not the one kept")
	}
	// Known already: no read at all.
	if err := r.awaitSeed(context.Background(), "public.tally", load); err != nil || reads != visibleAt {
		t.Fatalf("a known seed read again (%d reads, %v)", reads, err)
	}
	// Never visible: the wait ends with ctx, or with an error naming it.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	never := func() (map[string]seedWindow, error) { return map[string]seedWindow{}, nil }
	if err := r.awaitSeed(ctx, "public.docs", never); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a seed never visible: %v, want the context's end", err)
	}
}
