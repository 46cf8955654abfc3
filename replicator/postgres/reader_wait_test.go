package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// TestTheReaderHurriesForTheNearestWait: with appliers waiting for two
// positions, the reader versions its batch as soon as it has passed the
// nearer one (waitedFor), then the other; a wait for a position already
// versioned registers nothing.
func TestTheReaderHurriesForTheNearestWait(t *testing.T) {
	r := NewReader(ReaderConfig{})
	r.advance(10)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.WaitVersioned(ctx, 10); err != nil {
		t.Fatal(err)
	}
	if got := r.waitedFor(); got != 0 {
		t.Fatalf("after a wait for a versioned position: waitedFor %s, want none", got)
	}
	done := map[pglogrepl.LSN]chan error{100: make(chan error, 1), 50: make(chan error, 1)}
	for l, ch := range done {
		go func() { ch <- r.WaitVersioned(ctx, l) }()
	}
	waitUntil := func(want pglogrepl.LSN) {
		t.Helper()
		for r.waitedFor() != want {
			if ctx.Err() != nil {
				t.Fatalf("waitedFor %s, want %s", r.waitedFor(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitUntil(50)
	r.advance(60)
	if err := <-done[50]; err != nil {
		t.Fatal(err)
	}
	waitUntil(100)
	select {
	case err := <-done[100]:
		t.Fatalf("the wait for 100 ended at 60: %v", err)
	default:
	}
	r.advance(100)
	if err := <-done[100]; err != nil {
		t.Fatal(err)
	}
	waitUntil(0)
	if len(r.waits) != 0 {
		t.Fatalf("waits left behind: %v", r.waits)
	}
}
