package conflict

import (
	"math/rand"
	"testing"
	"time"
)

// Regions write one live row and exchange their updates in random orders,
// with skewed clocks; every time a region applies a peer's update, Decide's
// result under last-writer-wins equals FoldUpdate of the two versions, and
// folding a peer's whole backlog at once ends where applying it one update
// at a time does.
func TestFoldUpdateEqualsDecideForUpdatesOfALiveRow(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	regions := []RegionID{"ap", "eu", "us", "sa"}
	for round := 0; round < 2000; round++ {
		n := 2 + rng.Intn(3)
		held := make([]Version, n) // each region's version of the row
		inbox := make([][]Version, n)
		skew := make([]time.Duration, n)
		for i := range skew {
			skew[i] = time.Duration(rng.Intn(2000)-1000) * time.Millisecond
		}
		now := time.UnixMilli(1_800_000_000_000)
		for step := 0; step < 12; step++ {
			now = now.Add(time.Duration(rng.Intn(3)) * time.Millisecond)
			i := rng.Intn(n)
			if rng.Intn(2) == 0 || len(inbox[i]) == 0 {
				// A local update: ticks the region's entry, its timestamp
				// moved past the version it overwrote (as the reader does).
				v := Version{Vector: held[i].Vector.Tick(regions[i]), HLC: Next(now.Add(skew[i]), held[i].HLC), Origin: regions[i],
					Epoch: max(held[i].Epoch, uint64(rng.Intn(3)))}
				held[i] = v
				for j := range inbox {
					if j != i {
						inbox[j] = append(inbox[j], v)
					}
				}
				continue
			}
			// Apply a prefix of the inbox (arrival in order per source is
			// not needed for the fold; any subset order works).
			k := 1 + rng.Intn(len(inbox[i]))
			batch := inbox[i][:k]
			inbox[i] = inbox[i][k:]
			folded := held[i]
			for _, r := range batch {
				d := Decide(Policy{}, held[i], true, r, OpUpdate)
				want := d.Result
				want.Vector = Merge(want.Vector, nil)
				got := FoldUpdate(held[i], r)
				if got.Vector.String() != want.Vector.String() || got.HLC != want.HLC || got.Origin != want.Origin || got.Epoch != want.Epoch {
					t.Fatalf("round %d: local %v remote %v: Decide %v, FoldUpdate %v", round, held[i], r, want, got)
				}
				held[i] = want
				folded = FoldUpdate(folded, r)
			}
			if folded.Vector.String() != held[i].Vector.String() || folded.HLC != held[i].HLC || folded.Origin != held[i].Origin || folded.Epoch != held[i].Epoch {
				t.Fatalf("round %d: folding the batch gives %v, one by one %v", round, folded, held[i])
			}
		}
	}
}
