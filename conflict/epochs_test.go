package conflict

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// A policy change during concurrent writes, over whole histories: epoch 2
// is announced while the regions write, each region learns of it at its
// own moment, records its fence and ranks its writes under epoch 2 once it
// applied every other region's writes up to that region's fence (the
// protocol in epochs.go). Every region, and an observer receiving the
// writes in every order that keeps each source's own, must end with the
// winner the documented rule names (the highest-ranked write of the
// frontier, under the policy of the highest epoch in the frontier), and
// name every write that lost in its log.

// epochRegion is one region's view of the change.
type epochRegion struct {
	knows     bool // learned of epoch 2
	fence     int  // its writes made before it learned
	effective bool // ranks its writes under epoch 2
	own       int  // writes made
	applied   map[RegionID]int
}

// epochHistory is a history whose writes also carry the epoch their origin
// ranked them under and the epoch it knew when it made them.
type epochHistory struct {
	*history
	epoch, known []uint64
}

// simulateEpochs runs one history under the protocol: the change is
// announced before write announce; from then on, before each step, a
// region that does not know of it may learn of it, and a region learns
// of it before applying a write stamped under it.
func simulateEpochs(t *testing.T, rng *rand.Rand, p1, p2 Policy, regions []RegionID, nwrites, announce int) (*epochHistory, map[RegionID]*replica) {
	h := &epochHistory{history: &history{arrivals: map[RegionID][]int{}}}
	reps := map[RegionID]*replica{}
	views := map[RegionID]*epochRegion{}
	for _, r := range regions {
		reps[r] = newReplica()
		views[r] = &epochRegion{applied: map[RegionID]int{}}
	}
	both := mustEpochs(t, p1, p2)
	only := mustEpochs(t, p1)
	epochsOf := func(r RegionID) Epochs {
		if views[r].knows {
			return both
		}
		return only
	}
	learn := func(r RegionID) {
		if v := views[r]; !v.knows {
			v.knows, v.fence = true, v.own
		}
	}
	// effective moves a region to epoch 2 once every region has a fence
	// and it applied every other region's writes up to it.
	effective := func() {
		for _, r := range regions {
			v := views[r]
			if !v.knows || v.effective {
				continue
			}
			ok := true
			for _, q := range regions {
				if q != r && (!views[q].knows || v.applied[q] < views[q].fence) {
					ok = false
				}
			}
			v.effective = ok
		}
	}
	step := func(n int) {
		if n < announce {
			return
		}
		if rng.IntN(3) == 0 {
			learn(regions[rng.IntN(len(regions))])
		}
		effective()
	}
	made := 0
	exchange(rng, regions, nwrites, func(r RegionID, i int) {
		step(made)
		made++
		rep, v := reps[r], views[r]
		deleted := rng.IntN(3) == 0
		op := OpUpdate
		switch {
		case deleted:
			op = OpDelete
		case !rep.exists:
			op = OpInsert
		}
		vec := rep.ver.Vector.Tick(r)
		hlc := max(rep.ver.Latest()+1, Timestamp(1+rng.IntN(6)))
		epoch, known := uint64(1), uint64(1)
		if v.effective {
			epoch = 2
		}
		if v.knows {
			known = 2
		}
		h.writes = append(h.writes, hwrite{w: Write{Origin: r, Tick: vec.Get(r), HLC: hlc, Deleted: deleted}, vec: vec, op: op, epoch: max(rep.ver.Epoch, epoch)})
		h.epoch = append(h.epoch, epoch)
		h.known = append(h.known, known)
		v.own++
		rep.write(i, h.writes[i])
		h.arrivals[r] = append(h.arrivals[r], i)
	}, func(dst RegionID, i int) {
		step(made)
		if h.known[i] == 2 {
			learn(dst) // it waits until it knows the epoch
		}
		reps[dst].applyAt(t, epochsOf(dst), h.history, i)
		views[dst].applied[h.writes[i].w.Origin]++
		h.arrivals[dst] = append(h.arrivals[dst], i)
		effective()
	})
	return h, reps
}

func mustEpochs(t *testing.T, ps ...Policy) Epochs {
	t.Helper()
	e, err := NewEpochs(1, ps...)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// expectedAt is the documented winner under epochs: the frontier's writes
// ranked by the policy of the highest epoch among all the writes.
func expectedAt(e Epochs, h *history) (winner int, lost []int) {
	var frontier []int
	var top uint64
	for i, hw := range h.writes {
		top = max(top, hw.epoch)
		seen := false
		for j, o := range h.writes {
			if j != i && o.w.saw(o.vec, hw.w) {
				seen = true
			}
		}
		if !seen {
			frontier = append(frontier, i)
		}
	}
	p := e.At(top)
	winner = frontier[0]
	for _, i := range frontier[1:] {
		if rank(p, h.writes[i].w, h.writes[winner].w) {
			winner = i
		}
	}
	for _, i := range frontier {
		if i != winner {
			lost = append(lost, i)
		}
	}
	return winner, lost
}

func (h *epochHistory) String() string {
	var b strings.Builder
	for i, hw := range h.writes {
		fmt.Fprintf(&b, "  w%d %s:%d hlc %d epoch %d (knew %d, row %d) %s vec %s\n", i, hw.w.Origin, hw.w.Tick, hw.w.HLC, h.epoch[i], h.known[i], hw.epoch, hw.op, hw.vec)
	}
	for _, r := range convergeRegions {
		if a, ok := h.arrivals[r]; ok {
			fmt.Fprintf(&b, "  %s applied %v\n", r, a)
		}
	}
	return b.String()
}

// TestEpochChangeConvergesInEveryArrivalOrder: every pair of different
// policies (every kind with every delete rule) as epochs 1 and 2, random
// histories of 2 to 4 regions and up to 6 writes with the change announced
// at a random point. The observers learn of epoch 2 when the first write
// stamped under it reaches them.
func TestEpochChangeConvergesInEveryArrivalOrder(t *testing.T) {
	histories := 400
	if testing.Short() {
		histories = 15
	}
	rng := rand.New(rand.NewPCG(13, 17))
	policies := convergePolicies()
	mixed := 0
	for _, p1 := range policies {
		for _, p2 := range policies {
			if p1.Fingerprint() == p2.Fingerprint() {
				continue
			}
			both := mustEpochs(t, p1, p2)
			only := mustEpochs(t, p1)
			label := p1.Label() + fmt.Sprint(p1.Priority) + " -> " + p2.Label() + fmt.Sprint(p2.Priority)
			for n := 0; n < histories; n++ {
				regions := convergeRegions[:2+rng.IntN(3)]
				nwrites := 2 + rng.IntN(5)
				h, reps := simulateEpochs(t, rng, p1, p2, regions, nwrites, rng.IntN(nwrites+1))
				winner, lost := expectedAt(both, h.history)
				if epochsIn(h) == 3 {
					mixed++
				}
				for _, r := range regions {
					reps[r].checkAt(t, label, h, winner, lost, "region "+string(r))
				}
				if len(h.writes) > 5 {
					continue // keep the observers' orders few
				}
				interleavings(h.history, func(order []int) {
					rep := newReplica()
					e := only
					for _, i := range order {
						if h.known[i] == 2 {
							e = both
						}
						rep.applyAt(t, e, h.history, i)
					}
					rep.checkAt(t, label, h, winner, lost, fmt.Sprintf("observer order %v", order))
					for _, i := range order {
						before := rep.ver
						rep.applyAt(t, both, h.history, i)
						if idOf(rep.ver) != idOf(before) {
							t.Fatalf("%s: redelivery of w%d changed the row's version\n%s", label, i, h)
						}
					}
				})
			}
		}
	}
	if !testing.Short() && mixed < 1000 {
		t.Fatalf("only %d histories had writes ranked under both epochs", mixed)
	}
}

// epochsIn returns 1 when h's writes are ranked under epoch 1 only, 2 when
// under epoch 2 only, 3 when under both.
func epochsIn(h *epochHistory) int {
	in := 0
	for _, e := range h.epoch {
		in |= int(e)
	}
	return in
}

func (rep *replica) checkAt(t *testing.T, label string, h *epochHistory, winner int, lost []int, where string) {
	t.Helper()
	var top uint64
	for _, hw := range h.writes {
		top = max(top, hw.epoch)
	}
	if rep.ver.Epoch != top {
		t.Fatalf("%s, %s: row's epoch %d, want %d (the highest of its writes')\n%s", label, where, rep.ver.Epoch, top, h)
	}
	rep.checkRow(t, label, h.history, h, winner, lost, where)
}
