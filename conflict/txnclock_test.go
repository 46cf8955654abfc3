package conflict

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// txnWrite is one row write of a simulated transaction: the row's vector
// after it (today's per-row metadata) and the transaction's clock.
type txnWrite struct {
	key   int
	vec   Vector
	clock TxnClock
}

// txnRegion is one region of the simulation: each row's vector and row
// clock, and what the region has applied or made.
type txnRegion struct {
	id      RegionID
	applied Vector
	vecs    map[int]Vector
	rows    map[int]RowClock
}

// write makes a local transaction writing keys.
func (g *txnRegion) write(keys []int) []txnWrite {
	c := TxnClock{Dot: Dot{Origin: g.id, Seq: g.applied.Get(g.id) + 1}, Frontier: g.applied.Clone()}
	g.applied = c.Covered()
	var out []txnWrite
	for _, k := range keys {
		g.vecs[k] = g.vecs[k].Tick(g.id)
		g.rows[k] = RowClock{Heads: []Dot{c.Dot}, Cover: c.Covered()}
		out = append(out, txnWrite{key: k, vec: g.vecs[k], clock: c})
	}
	return out
}

// apply applies a peer's transaction and reports every row where the two
// kinds of metadata order the write differently.
func (g *txnRegion) apply(ws []txnWrite) []string {
	var diffs []string
	g.applied = Merge(g.applied, ws[0].clock.Covered())
	for _, w := range ws {
		byVec := Compare(g.vecs[w.key], w.vec)
		byClock := g.rows[w.key].Compare(w.clock)
		if byVec != byClock && !(skipped(byVec) && skipped(byClock)) {
			diffs = append(diffs, fmt.Sprintf("%s applying %s:%d to key %d: vectors %s vs %s say %s, clocks say %s",
				g.id, w.clock.Dot.Origin, w.clock.Dot.Seq, w.key, g.vecs[w.key], w.vec, byVec, byClock))
		}
		g.vecs[w.key] = Merge(g.vecs[w.key], w.vec)
		g.rows[w.key] = g.rows[w.key].Absorb(w.clock, byClock)
	}
	return diffs
}

func skipped(o Order) bool { return o == After || o == Equal }

// runTxnHistory has regions make transactions on a few rows and exchange
// them in per-source order, causally delivered or not, and returns the
// decisions on which the two kinds of metadata disagree.
func runTxnHistory(rng *rand.Rand, causal bool) []string {
	regions := convergeRegions[:2+rng.IntN(3)]
	nkeys := 1 + rng.IntN(3)
	gs := map[RegionID]*txnRegion{}
	queues := map[RegionID]map[RegionID][][]txnWrite{}
	for _, r := range regions {
		gs[r] = &txnRegion{id: r, applied: Vector{}, vecs: map[int]Vector{}, rows: map[int]RowClock{}}
		queues[r] = map[RegionID][][]txnWrite{}
	}
	var diffs []string
	deliver := func(dst RegionID) bool {
		var srcs []RegionID
		for _, s := range regions {
			q := queues[dst][s]
			if len(q) > 0 && (!causal || Deliverable(gs[dst].applied, q[0][0].clock)) {
				srcs = append(srcs, s)
			}
		}
		if len(srcs) == 0 {
			return false
		}
		s := srcs[rng.IntN(len(srcs))]
		t := queues[dst][s][0]
		queues[dst][s] = queues[dst][s][1:]
		diffs = append(diffs, gs[dst].apply(t)...)
		return true
	}
	for n := 2 + rng.IntN(6); n > 0; {
		if rng.IntN(2) == 0 && deliver(regions[rng.IntN(len(regions))]) {
			continue
		}
		r := regions[rng.IntN(len(regions))]
		keys := []int{rng.IntN(nkeys)}
		if k := rng.IntN(nkeys); rng.IntN(2) == 0 && k != keys[0] {
			keys = append(keys, k)
		}
		t := gs[r].write(keys)
		for _, o := range regions {
			if o != r {
				queues[o][r] = append(queues[o][r], t)
			}
		}
		n--
	}
	for progress := true; progress; {
		progress = false
		for _, r := range regions {
			for deliver(r) {
				progress = true
			}
		}
	}
	return diffs
}

// TestTxnClocksDecideAsRowVectors: over random histories (2-4 regions, 1-3
// rows, transactions writing one or two of them), transaction clocks order
// every applied write exactly as per-row version vectors do when delivery
// is causal; with per-source order alone they do not (a write would be
// taken as seen by a region that has not applied it), which is why a data
// plane on transaction clocks must deliver causally.
func TestTxnClocksDecideAsRowVectors(t *testing.T) {
	histories := 20000
	if testing.Short() {
		histories = 500
	}
	rng := rand.New(rand.NewPCG(3, 9))
	for i := 0; i < histories; i++ {
		if diffs := runTxnHistory(rng, true); len(diffs) > 0 {
			t.Fatalf("causal delivery, history %d: %v", i, diffs)
		}
	}
	fifo := 0
	for i := 0; i < histories; i++ {
		if len(runTxnHistory(rng, false)) > 0 {
			fifo++
		}
	}
	if fifo == 0 {
		t.Fatalf("per-source delivery: clocks and vectors agreed in all %d histories; the package doc says they cannot", histories)
	}
	t.Logf("per-source delivery without causal order: %d of %d histories have a decision the two order differently", fifo, histories)
}

func TestDeliverableNeedsTheWholePast(t *testing.T) {
	c := TxnClock{Dot: Dot{Origin: "b", Seq: 3}, Frontier: Vector{"a": 5, "b": 2}}
	for _, tc := range []struct {
		applied Vector
		want    bool
	}{
		{Vector{"a": 5, "b": 2}, true},
		{Vector{"a": 7, "b": 2, "c": 1}, true},
		{Vector{"a": 4, "b": 2}, false}, // a:5 not applied yet
		{Vector{"a": 5, "b": 1}, false}, // b:2 not applied yet
		{Vector{"a": 5, "b": 3}, false}, // applied already
	} {
		if got := Deliverable(tc.applied, c); got != tc.want {
			t.Errorf("Deliverable(%s, %v) = %v, want %v", tc.applied, c, got, tc.want)
		}
	}
	if !c.Saw(Dot{"a", 5}) || c.Saw(Dot{"a", 6}) || !c.Saw(Dot{"b", 3}) || c.Saw(Dot{"b", 4}) {
		t.Errorf("Saw is wrong for %v", c)
	}
}
