package node

import (
	"io"
	"log/slog"
	"testing"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
)

func floorsRound(region conflict.RegionID, members ...conflict.RegionID) *tombstones {
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	return newTombstones(Config{Region: region, Cluster: regions.Cluster{Regions: members}}, nil, nil, discard)
}

// A region settles its own deletes no further than it has versioned, even
// with no other member to wait for: a floor only rises, and one recorded
// as "everything" would hold for the deletes a region that joins later
// writes concurrently with.
func TestOwnDeletesAreSettledNoFurtherThanVersioned(t *testing.T) {
	got := floorsRound("us", "us").settledHere(nil, nil, 41)
	if got["us"] != 41 {
		t.Fatalf("alone, us settled its own deletes up to %d, want 41 (what it versioned)", got["us"])
	}
	g := floorsRound("us", "us", "eu", "ap")
	adverts := map[conflict.RegionID]Watermark{
		"eu": {Applied: map[conflict.RegionID]int64{"us": 90, "ap": 7}, Versioned: 30},
		"ap": {Applied: map[conflict.RegionID]int64{"us": 80, "eu": 25}, Versioned: 9},
	}
	applied := map[conflict.RegionID]int64{"eu": 30, "ap": 9}
	got = g.settledHere(adverts, applied, 70)
	want := map[string]int64{"us": 70, "eu": 25, "ap": 7}
	for o, n := range want {
		if got[o] != n {
			t.Fatalf("settled %v, want %v", got, want)
		}
	}
	// A peer whose writes have not all arrived here settles nothing of
	// the origins it is waited for on.
	applied["ap"] = 8
	if got := g.settledHere(adverts, applied, 70); got["us"] != 0 || got["eu"] != 0 || got["ap"] != 7 {
		t.Fatalf("with ap's writes not all applied, settled %v; want us and eu at 0, ap at 7", got)
	}
}

// A tombstone is collected only once every member settled it: the
// lowest floor among this region's and every member's advertised ones.
// A member that advertised none (one that has not spoken, or runs an
// earlier release) holds every collection up; a removed one holds none.
func TestTombstonesAreCollectedOnlyWhereEveryMemberSettledThem(t *testing.T) {
	g := floorsRound("us", "us", "eu", "ap")
	own := map[string]int64{"us": 70, "eu": 25, "ap": 7}
	adverts := map[conflict.RegionID]Watermark{
		"eu": {Settled: map[string]int64{"us": 60, "eu": 40, "ap": 9}},
		"ap": {Settled: map[string]int64{"us": 65, "eu": 20, "ap": 3}},
	}
	got := g.settledEverywhere(adverts, own)
	if got["us"] != 60 || got["eu"] != 20 || got["ap"] != 3 {
		t.Fatalf("collectable %v, want us 60, eu 20, ap 3", got)
	}
	adverts["ap"] = Watermark{Applied: map[conflict.RegionID]int64{"us": 99}}
	for o, n := range g.settledEverywhere(adverts, own) {
		if n != 0 {
			t.Fatalf("with ap advertising no floors, %s's tombstones are collectable up to %d", o, n)
		}
	}
	g.removed = func(r conflict.RegionID) bool { return r == "ap" }
	if got := g.settledEverywhere(adverts, own); got["us"] != 60 || got["eu"] != 25 || got["ap"] != 7 {
		t.Fatalf("with ap removed, collectable %v, want us 60, eu 25, ap 7", got)
	}
}
