package postgres

import (
	"testing"

	"github.com/polyregion/polyregion/conflict"
)

// A region's first write to a key follows a tombstone that is settled
// here, its siblings included, outright; any other write, or a tombstone
// not settled, is decided as usual.
func TestAFirstWriteSupersedesASettledTombstone(t *testing.T) {
	first := conflict.Version{Vector: conflict.Vector{"ap": 1}, Origin: "ap"}
	tomb := func(origin conflict.RegionID, seq int64, sibs siblingSet) *meta {
		return &meta{version: conflict.Version{Vector: conflict.Vector{"us": 3, "eu": 4}, Origin: origin, Deleted: true}, srcSeq: seq, siblings: sibs}
	}
	floors := map[string]int64{"eu": 100, "us": 50}
	cases := []struct {
		name string
		v    conflict.Version
		m    *meta
		want bool
	}{
		{"settled tombstone", first, tomb("eu", 100, nil), true},
		{"tombstone past the floor", first, tomb("eu", 101, nil), false},
		{"origin with no floor", first, tomb("sa", 1, nil), false},
		{"sibling settled", first, tomb("eu", 7, siblingSet{{origin: "us", tick: 3}: {seq: 50}}), true},
		{"sibling past its floor", first, tomb("eu", 7, siblingSet{{origin: "us", tick: 3}: {seq: 51}}), false},
		{"not a first write", conflict.Version{Vector: conflict.Vector{"ap": 2}, Origin: "ap"}, tomb("eu", 7, nil), false},
		{"a write that saw other writes", conflict.Version{Vector: conflict.Vector{"ap": 1, "us": 3}, Origin: "ap"}, tomb("eu", 7, nil), false},
		{"live row", first, &meta{version: conflict.Version{Vector: conflict.Vector{"eu": 4}, Origin: "eu"}, srcSeq: 7}, false},
		{"no version", first, nil, false},
	}
	for _, c := range cases {
		if got := SupersedesSettled(c.v, c.m, floors); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
