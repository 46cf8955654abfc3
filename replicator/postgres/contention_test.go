package postgres

import (
	"testing"
	"time"
)

func TestContentionShrinksOnLockFailuresAndRecovers(t *testing.T) {
	c := newContention(200 * time.Millisecond)
	if got := c.chunk(300); got != 300 {
		t.Fatalf("calm: chunk %d, want the whole batch", got)
	}
	// A lock failure of a 300-transaction batch: a quarter as many, twice
	// the wait.
	c.failed(300)
	if got, want := c.chunk(300), 75; got != want {
		t.Fatalf("after one failure: chunk %d, want %d", got, want)
	}
	if c.timeout != 400*time.Millisecond {
		t.Fatalf("after one failure: timeout %s, want 400ms", c.timeout)
	}
	// Failures go down to one transaction at a time and, past the cap,
	// waiting without limit.
	for i := 0; i < 10; i++ {
		c.failed(c.chunk(300))
	}
	if got := c.chunk(300); got != 1 {
		t.Fatalf("after many failures: chunk %d, want 1", got)
	}
	if c.timeout != 0 {
		t.Fatalf("after many failures: timeout %s, want none", c.timeout)
	}
	// Calm commits grow it back step by step to the configured state.
	for i := 0; i < 40*calmCommits && (c.limit != 0 || c.timeout != c.base); i++ {
		c.succeeded()
	}
	if c.limit != 0 || c.timeout != c.base {
		t.Fatalf("never recovered: limit %d timeout %s", c.limit, c.timeout)
	}
	// Fewer than calmCommits commits after a failure change nothing.
	c.failed(8)
	for i := 0; i < calmCommits-1; i++ {
		c.succeeded()
	}
	if c.limit != 2 || c.timeout != 400*time.Millisecond {
		t.Fatalf("grew too early: limit %d timeout %s", c.limit, c.timeout)
	}
}
