package conflict

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// Convergence over whole histories: regions write one row, each with its own
// causal view, and exchange the writes in per-source order. Every policy,
// every arrival order: all regions must end with the same winning write and
// the same row, the winner must be the one the policies' documented rule
// names (the highest-ranked write no other write has seen), and every write
// whose data is lost must be named as a loser in every region's log.

var convergeRegions = []RegionID{"a", "b", "c", "d"}

// convergePolicies is every policy kind with every delete rule.
func convergePolicies() []Policy {
	var out []Policy
	for _, rule := range []DeleteRule{DeleteByPolicy, DeleteWins, UpdateWins} {
		out = append(out,
			Policy{Deletes: rule},
			Policy{Kind: RegionPriority, Priority: []RegionID{"a", "c", "b"}, Deletes: rule}, // d unlisted
			Policy{Kind: CustomSQL, Resolver: "public.pick", Deletes: rule},
		)
	}
	return out
}

// hwrite is one write of a history.
type hwrite struct {
	w   Write
	vec Vector // the write's own vector
	op  Op
	// epoch is the write's version's epoch: the highest of the epoch its
	// origin ranked it under and the row's there (see epochs_test.go).
	epoch uint64
}

// history is writes in the order they were made, and each region's
// arrival order of the others' writes (its own at the time it made them).
type history struct {
	writes []hwrite
	// arrivals[r] lists write indexes in the order region r applied or
	// made them.
	arrivals map[RegionID][]int
}

// replica is one region's copy of the row.
type replica struct {
	ver    Version
	exists bool
	data   int           // index of the write whose row is shown; -1 when none
	store  map[Write]int // siblings' rows, by write (Origin and Tick)
	losers map[int]bool  // writes the log names as having lost
}

func newReplica() *replica {
	return &replica{data: -1, store: map[Write]int{}, losers: map[int]bool{}}
}

func dot(w Write) Write { return Write{Origin: w.Origin, Tick: w.Tick} }

// resolverKey ranks writes for the simulated custom resolver, a total
// order: live writes by a hash of their identity, above tombstones, which
// go by last-writer-wins (as delete/delete always does).
func resolverRank(a, b Write) Side {
	ka, kb := resolverKey(a), resolverKey(b)
	if ka >= kb {
		return Local
	}
	return Remote
}

func resolverKey(w Write) string {
	if w.Deleted {
		return fmt.Sprintf("0/%020d/%s", uint64(w.HLC), w.Origin)
	}
	h := fnv.New64a()
	fmt.Fprintf(h, "%s:%d", w.Origin, w.Tick)
	return fmt.Sprintf("1/%020d", h.Sum64())
}

// apply applies write i to rep as an applier would.
func (rep *replica) apply(t *testing.T, p Policy, h *history, i int) {
	t.Helper()
	rep.applyAt(t, Epochs{Policies: []Policy{p}}, h, i)
}

// applyAt applies write i to rep as an applier that knows the policies e
// would.
func (rep *replica) applyAt(t *testing.T, e Epochs, h *history, i int) {
	t.Helper()
	hw := h.writes[i]
	remote := Version{Vector: hw.vec, HLC: hw.w.HLC, Origin: hw.w.Origin, Deleted: hw.w.Deleted, Epoch: hw.epoch}
	local := rep.ver
	localExists := rep.exists || len(local.Vector) > 0
	d := DecideAt(e, local, localExists, remote, hw.op)
	for n := 0; d.Action == External; n++ {
		if n > 8 {
			t.Fatalf("resolver asked more than 8 times: %+v", d)
		}
		d = ResolveExternal(d, local, remote, resolverRank(d.Contest[0], d.Contest[1]))
	}
	if d.Action == Skip {
		return
	}
	lw := Write{Origin: local.Origin, Tick: local.Vector.Get(local.Origin)}
	if d.SaveLocal {
		rep.store[lw] = rep.data
	}
	if d.SaveRemote {
		rep.store[dot(hw.w)] = i
	}
	if d.Conflict {
		if d.Winner == Remote {
			rep.losers[h.index(d.Against)] = true
		} else {
			rep.losers[i] = true
		}
		for _, w := range d.AlsoLost {
			rep.losers[h.index(w)] = true
		}
	}
	switch d.Action {
	case ApplyRemote:
		rep.exists, rep.data = hw.op != OpDelete, i
		if !rep.exists {
			rep.data = -1
		}
	case Reinstate:
		if d.Against.Deleted {
			rep.exists, rep.data = false, -1
		} else {
			row, ok := rep.store[dot(d.Against)]
			if !ok || row < 0 {
				t.Fatalf("reinstated sibling %v has no row stored", d.Against)
			}
			rep.exists, rep.data = true, row
		}
	}
	for _, s := range d.Result.Siblings {
		if s.Origin == d.Result.Origin && s.Tick == d.Result.Vector.Get(s.Origin) {
			t.Fatalf("the winning write %v is among its own siblings (decision %+v)", s, d)
		}
		if remote.Vector.Get(s.Origin) >= s.Tick && d.Result.Origin == hw.w.Origin && (d.Action == ApplyRemote) {
			t.Fatalf("sibling %v was seen by the write that won (decision %+v)", s, d)
		}
		if row, ok := rep.store[dot(s)]; !s.Deleted && (!ok || row < 0) {
			t.Fatalf("live sibling %v kept without its row (decision %+v)", s, d)
		}
	}
	rep.ver = d.Result
}

// write makes write i in rep (the region's own): it has seen the row as
// the region holds it, siblings included.
func (rep *replica) write(i int, hw hwrite) {
	rep.ver = Version{Vector: hw.vec, HLC: hw.w.HLC, Origin: hw.w.Origin, Deleted: hw.w.Deleted, Epoch: hw.epoch}
	rep.exists = !hw.w.Deleted
	rep.data = i
	if hw.w.Deleted {
		rep.data = -1
	}
}

func (h *history) index(w Write) int {
	for i, hw := range h.writes {
		if hw.w.same(w) {
			return i
		}
	}
	return -1
}

// simulate has regions write the row and exchange their writes, each
// region applying what arrives as an applier would, and making its own
// writes on the row as it holds it (as the reader versions them: on top of
// the row's vector, with a hybrid timestamp above the row's write's, not
// necessarily above its siblings'). It returns the history and the
// regions' copies once every write has arrived everywhere.
func simulate(t *testing.T, rng *rand.Rand, p Policy, regions []RegionID, nwrites int) (*history, map[RegionID]*replica) {
	h := &history{arrivals: map[RegionID][]int{}}
	reps := map[RegionID]*replica{}
	for _, r := range regions {
		reps[r] = newReplica()
	}
	exchange(rng, regions, nwrites, func(r RegionID, i int) {
		rep := reps[r]
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
		h.writes = append(h.writes, hwrite{w: Write{Origin: r, Tick: vec.Get(r), HLC: hlc, Deleted: deleted}, vec: vec, op: op})
		rep.write(i, h.writes[i])
		h.arrivals[r] = append(h.arrivals[r], i)
	}, func(dst RegionID, i int) {
		reps[dst].apply(t, p, h, i)
		h.arrivals[dst] = append(h.arrivals[dst], i)
	})
	return h, reps
}

// exchange runs a simulated history: the regions make nwrites writes in
// all (write(r, i) makes write i in region r, picked at random), and each
// write reaches every other region in the order its region made them,
// deliveries of different sources interleaved with each other and with the
// writes at random (apply(dst, i) applies write i in dst). When it returns
// every write has arrived everywhere.
func exchange(rng *rand.Rand, regions []RegionID, nwrites int, write func(r RegionID, i int), apply func(dst RegionID, i int)) {
	queues := map[RegionID]map[RegionID][]int{} // dst -> src -> writes not yet applied
	for _, r := range regions {
		queues[r] = map[RegionID][]int{}
	}
	deliver := func(dst RegionID) bool {
		var srcs []RegionID
		for _, s := range regions {
			if len(queues[dst][s]) > 0 {
				srcs = append(srcs, s)
			}
		}
		if len(srcs) == 0 {
			return false
		}
		s := srcs[rng.IntN(len(srcs))]
		i := queues[dst][s][0]
		queues[dst][s] = queues[dst][s][1:]
		apply(dst, i)
		return true
	}
	for n := 0; n < nwrites; {
		if rng.IntN(3) == 0 && deliver(regions[rng.IntN(len(regions))]) {
			continue
		}
		r := regions[rng.IntN(len(regions))]
		write(r, n)
		for _, o := range regions {
			if o != r {
				queues[o][r] = append(queues[o][r], n)
			}
		}
		n++
	}
	for _, r := range regions {
		for deliver(r) {
		}
	}
}

// rank orders two concurrent writes the way the policies document it.
func rank(p Policy, a, b Write) bool { // a above b
	if p.Deletes != DeleteByPolicy && a.Deleted != b.Deleted {
		return a.Deleted == (p.Deletes == DeleteWins)
	}
	switch p.kind() {
	case CustomSQL:
		if !(a.Deleted && b.Deleted) {
			return resolverKey(a) > resolverKey(b)
		}
	case RegionPriority:
		if ra, rb := p.priorityRank(a.Origin), p.priorityRank(b.Origin); ra != rb {
			return ra < rb
		}
	}
	if a.HLC != b.HLC {
		return a.HLC > b.HLC
	}
	if a.Origin != b.Origin {
		return a.Origin > b.Origin
	}
	return a.Deleted && !b.Deleted
}

// expected is the documented winner: the highest-ranked write that no
// other write has seen, and the writes that lost (the others of them).
func expected(p Policy, h *history) (winner int, lost []int) {
	return expectedAt(Epochs{Policies: []Policy{p}}, h)
}

// interleavings calls visit with every order of the writes that keeps each
// origin's writes in the order they were made.
func interleavings(h *history, visit func([]int)) {
	bySrc := map[RegionID][]int{}
	var srcs []RegionID
	for i, hw := range h.writes {
		if len(bySrc[hw.w.Origin]) == 0 {
			srcs = append(srcs, hw.w.Origin)
		}
		bySrc[hw.w.Origin] = append(bySrc[hw.w.Origin], i)
	}
	next := map[RegionID]int{}
	order := make([]int, 0, len(h.writes))
	var rec func()
	rec = func() {
		if len(order) == len(h.writes) {
			visit(order)
			return
		}
		for _, s := range srcs {
			if next[s] < len(bySrc[s]) {
				order = append(order, bySrc[s][next[s]])
				next[s]++
				rec()
				next[s]--
				order = order[:len(order)-1]
			}
		}
	}
	rec()
}

func (rep *replica) check(t *testing.T, p Policy, h *history, winner int, lost []int, where string) {
	t.Helper()
	rep.checkRow(t, fmt.Sprintf("policy %s %v", p.Label(), p.Priority), h, h, winner, lost, where)
}

// checkRow checks that rep holds the winner's row and names every loser;
// show describes the history in a failure.
func (rep *replica) checkRow(t *testing.T, label string, h *history, show fmt.Stringer, winner int, lost []int, where string) {
	t.Helper()
	w := h.writes[winner].w
	got := Write{Origin: rep.ver.Origin, Tick: rep.ver.Vector.Get(rep.ver.Origin), HLC: rep.ver.HLC, Deleted: rep.ver.Deleted}
	wantData := winner
	if w.Deleted {
		wantData = -1
	}
	if got != w || rep.data != wantData || rep.exists == w.Deleted {
		t.Fatalf("%s, %s: row holds write %v (data %d, exists %v), want write %d %v\n%s", label, where, got, rep.data, rep.exists, winner, w, show)
	}
	for _, i := range lost {
		if !rep.losers[i] {
			t.Fatalf("%s, %s: write %d %v lost and is not named in the conflict log\n%s", label, where, i, h.writes[i].w, show)
		}
	}
}

func (h *history) String() string {
	var b strings.Builder
	for i, hw := range h.writes {
		fmt.Fprintf(&b, "  w%d %s:%d hlc %d %s vec %s\n", i, hw.w.Origin, hw.w.Tick, hw.w.HLC, hw.op, hw.vec)
	}
	for _, r := range convergeRegions {
		if a, ok := h.arrivals[r]; ok {
			fmt.Fprintf(&b, "  %s applied %v\n", r, a)
		}
	}
	return b.String()
}

// TestEveryPolicyConvergesInEveryArrivalOrder: random histories of 2 to 4
// regions and up to 5 writes (deletes, re-inserts, causal links of every
// shape), every policy; the regions of the simulation and an observer
// receiving the writes in every order that keeps each source's own order.
func TestEveryPolicyConvergesInEveryArrivalOrder(t *testing.T) {
	histories := 3000
	if testing.Short() {
		histories = 60
	}
	rng := rand.New(rand.NewPCG(7, 11))
	for _, p := range convergePolicies() {
		for n := 0; n < histories; n++ {
			regions := convergeRegions[:2+rng.IntN(3)]
			h, reps := simulate(t, rng, p, regions, 2+rng.IntN(4))
			winner, lost := expected(p, h)
			for _, r := range regions {
				// A region's own writes are named by the decisions that
				// went against them when later writes arrived.
				reps[r].check(t, p, h, winner, lost, "region "+string(r))
			}
			interleavings(h, func(order []int) {
				rep := newReplica()
				for _, i := range order {
					rep.apply(t, p, h, i)
				}
				rep.check(t, p, h, winner, lost, fmt.Sprintf("observer order %v", order))
				// Every write again: all skipped.
				for _, i := range order {
					before := rep.ver
					rep.apply(t, p, h, i)
					if idOf(rep.ver) != idOf(before) {
						t.Fatalf("redelivery of w%d changed the row's version", i)
					}
				}
			})
		}
	}
}

// The README's example: priority a > c > b; v1 in a, v2 in b after seeing
// v1, v3 in c concurrently with both. Every order ends in v3.
func TestPriorityCounterexampleConverges(t *testing.T) {
	p := Policy{Kind: RegionPriority, Priority: []RegionID{"a", "c", "b"}}
	h := &history{writes: []hwrite{
		{w: Write{Origin: "a", Tick: 1, HLC: 10}, vec: Vector{"a": 1}, op: OpInsert},
		{w: Write{Origin: "b", Tick: 1, HLC: 20}, vec: Vector{"a": 1, "b": 1}, op: OpUpdate},
		{w: Write{Origin: "c", Tick: 1, HLC: 15}, vec: Vector{"c": 1}, op: OpInsert},
	}}
	winner, lost := expected(p, h)
	if winner != 2 || !slices.Equal(lost, []int{1}) {
		t.Fatalf("expected winner %d lost %v, want 2 [1]", winner, lost)
	}
	for _, order := range [][]int{{0, 2, 1}, {1, 2, 0}, {0, 1, 2}, {2, 0, 1}, {2, 1, 0}, {1, 0, 2}} {
		rep := newReplica()
		for _, i := range order {
			rep.apply(t, p, h, i)
		}
		rep.check(t, p, h, winner, lost, fmt.Sprintf("order %v", order))
	}
}
