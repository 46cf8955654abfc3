package postgres

import (
	"math"
	"testing"

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
