package postgres

import (
	"testing"
	"time"
)

func TestContentionShrinksOnLockFailuresAndRecovers(t *testing.T) {
	c := newContention(200*time.Millisecond, time.Second)
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
	// Failures go down to one transaction at a time, and the wait never
	// reaches deadlock_timeout: in a cycle the applier gives way first.
	for i := 0; i < 10; i++ {
		c.failed(c.chunk(300))
	}
	if got := c.chunk(300); got != 1 {
		t.Fatalf("after many failures: chunk %d, want 1", got)
	}
	if c.timeout != 750*time.Millisecond {
		t.Fatalf("after many failures: timeout %s, want 750ms (3/4 of deadlock_timeout)", c.timeout)
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
	// A server with a short deadlock_timeout lowers the base too.
	if c := newContention(200*time.Millisecond, 100*time.Millisecond); c.timeout != 75*time.Millisecond || c.cap != 75*time.Millisecond {
		t.Fatalf("deadlock_timeout 100ms: timeout %s cap %s, want 75ms both", c.timeout, c.cap)
	}
}
