package conflict

import (
	"maps"
	"math"
	"math/big"
	"slices"
	"testing"
)

// source turns fuzz bytes into choices; exhausted input reads as zeros.
type source struct{ data []byte }

func (s *source) byte() byte {
	if len(s.data) == 0 {
		return 0
	}
	b := s.data[0]
	s.data = s.data[1:]
	return b
}

func (s *source) intn(n int) int { return int(s.byte()) % n }
func (s *source) bool() bool     { return s.byte()&1 == 1 }

var pool = []RegionID{"ap", "eu", "us", "sa", "us-west"}

// count is small most of the time, sometimes huge.
func (s *source) count() uint64 {
	b := s.byte()
	switch b {
	case 255:
		return math.MaxUint64 - 1
	case 254:
		return math.MaxUint64
	}
	return uint64(b % 5) // 0 included: zero entries must not matter
}

func (s *source) vector() Vector {
	v := Vector{}
	for _, r := range pool {
		if s.bool() {
			v[r] = s.count()
		}
	}
	return v
}

func (s *source) hlc() Timestamp {
	if s.byte() == 255 {
		return MaxTimestamp
	}
	return MakeTimestamp(int64(s.intn(3)), uint16(s.intn(3)))
}

func (s *source) policy() Policy {
	var p Policy
	switch s.intn(4) {
	case 1:
		p.Kind = LastWriterWins
	case 2:
		p.Kind = RegionPriority
		perm := s.perm(len(pool))
		for _, i := range perm[:1+s.intn(len(pool))] {
			p.Priority = append(p.Priority, pool[i])
		}
	case 3:
		p.Kind = CustomSQL
		p.Resolver = "public.pick"
	}
	p.Deletes = []DeleteRule{DeleteByPolicy, DeleteWins, UpdateWins}[s.intn(3)]
	return p
}

func (s *source) perm(n int) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	for i := n - 1; i > 0; i-- {
		j := s.intn(i + 1)
		p[i], p[j] = p[j], p[i]
	}
	return p
}

func (s *source) op(deleted bool) Op {
	if deleted {
		return OpDelete
	}
	if s.bool() {
		return OpInsert
	}
	return OpUpdate
}

func FuzzMerge(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{1, 1, 1, 2, 0, 0, 1, 3, 1, 1, 0, 1, 4, 1, 2})
	f.Add([]byte{1, 255, 1, 254, 1, 0, 1, 1, 1, 2, 1, 3, 1, 4, 1, 255, 0, 1, 254})
	f.Add([]byte{1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 2})
	f.Add([]byte("merge me: any bytes make three vectors"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := &source{data: data}
		a, b, c := s.vector(), s.vector(), s.vector()
		a0, b0 := a.Clone(), b.Clone()

		ab := Merge(a, b)
		if !maps.Equal(ab, Merge(b, a)) {
			t.Fatalf("not commutative: %v %v", a, b)
		}
		if !maps.Equal(Merge(ab, c), Merge(a, Merge(b, c))) {
			t.Fatalf("not associative: %v %v %v", a, b, c)
		}
		if !maps.Equal(Merge(a, a), Merge(a, nil)) || !maps.Equal(Merge(ab, b), ab) || !maps.Equal(Merge(ab, ab), ab) {
			t.Fatalf("not idempotent: %v %v", a, b)
		}
		for r, n := range ab {
			if n == 0 {
				t.Fatalf("Merge kept a zero entry for %q", r)
			}
			if n != max(a[r], b[r]) {
				t.Fatalf("Merge[%q] = %d, want max(%d, %d)", r, n, a[r], b[r])
			}
		}
		for _, x := range []Vector{a, b} {
			if o := Compare(x, ab); o != Before && o != Equal {
				t.Fatalf("Compare(%v, Merge = %v) = %v", x, ab, o)
			}
			if o := Compare(ab, x); o != After && o != Equal {
				t.Fatalf("Compare(Merge = %v, %v) = %v", ab, x, o)
			}
		}

		o := Compare(a, b)
		if Compare(b, a) != o.reverse() {
			t.Fatalf("Compare not antisymmetric: %v / %v", o, Compare(b, a))
		}
		if (o == Equal) != (a.String() == b.String()) {
			t.Fatalf("Compare = %v but strings %q / %q", o, a, b)
		}
		switch o {
		case Before:
			if !maps.Equal(ab, Merge(b, nil)) {
				t.Fatalf("a before b but Merge != b")
			}
		case After:
			if !maps.Equal(ab, Merge(a, nil)) {
				t.Fatalf("a after b but Merge != a")
			}
		}
		for _, r := range pool {
			if a.Get(r) == math.MaxUint64 {
				continue // Tick would panic by design
			}
			tk := a.Tick(r)
			if Compare(a, tk) != Before || tk.Get(r) != a.Get(r)+1 || !maps.Equal(a, a0) {
				t.Fatalf("Tick(%q) of %v = %v", r, a, tk)
			}
		}

		for _, x := range []Vector{a, b, ab} {
			p, err := ParseVector(x.String())
			if err != nil || !maps.Equal(p, Merge(x, nil)) {
				t.Fatalf("round trip %v -> %q -> %v, %v", x, x.String(), p, err)
			}
		}
		if !maps.Equal(a, a0) || !maps.Equal(b, b0) {
			t.Fatalf("inputs modified")
		}
	})
}

func FuzzDecideSymmetric(f *testing.F) {
	f.Add([]byte{})
	// policy kind, [priority], delete rule, then two versions.
	f.Add([]byte{0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0})
	f.Add([]byte{2, 3, 1, 4, 2, 1, 2, 1, 1, 1, 0, 0, 0, 0, 2, 2, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0, 3, 0, 1})
	f.Add([]byte{3, 1, 1, 2, 1, 0, 1, 3, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 1, 3, 0, 0, 0, 1, 2, 2, 0, 0})
	f.Add([]byte{1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1})
	f.Add([]byte("symmetric decisions regardless of which side is local"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := &source{data: data}
		p := s.policy()
		mk := func() (Version, Op) {
			v := Version{Vector: s.vector(), HLC: s.hlc(), Origin: pool[s.intn(len(pool))], Deleted: s.bool()}
			return v, s.op(v.Deleted)
		}
		a, opA := mk()
		b, opB := mk()
		a0, b0 := a.Clone(), b.Clone()
		if Compare(a.Vector, b.Vector) == Concurrent && (sawWinner(a, b) || sawWinner(b, a)) {
			// Two single writes where one has seen the other's own tick are
			// causally ordered, so their vectors compare; concurrent vectors
			// with a seen tick only arise for a merged local state, which
			// TestCausalSuccessorOfWinnerIsNoConflict covers.
			return
		}

		d1 := Decide(p, a, true, b, opB) // a local
		d2 := Decide(p, b, true, a, opA) // b local
		if !maps.Equal(a.Vector, a0.Vector) || !maps.Equal(b.Vector, b0.Vector) {
			t.Fatalf("inputs modified")
		}
		merged := Merge(a.Vector, b.Vector)

		for _, d := range []Decision{d1, d2} {
			if d.Conflict != (d.Order == Concurrent) || (d.Kind != "") != d.Conflict {
				t.Fatalf("conflict/kind inconsistent: %+v", d)
			}
			if (d.Winner != 0) != (d.Conflict && d.Action != External) {
				t.Fatalf("winner set wrongly: %+v", d)
			}
			if d.Action != External && !maps.Equal(d.Result.Vector, merged) {
				t.Fatalf("Result.Vector = %v, want Merge = %v", d.Result.Vector, merged)
			}
			if d.Reason == "" {
				t.Fatalf("empty reason")
			}
		}
		if d1.Order != d2.Order.reverse() {
			t.Fatalf("orders %v / %v", d1.Order, d2.Order)
		}
		if d1.Conflict {
			if !swappedKinds(d1.Kind, d2.Kind) {
				t.Fatalf("kinds %q / %q", d1.Kind, d2.Kind)
			}
			want := UpdateUpdate
			switch {
			case a.Deleted && opB == OpDelete:
				want = DeleteDelete
			case opB == OpDelete:
				want = DeleteUpdate
			case a.Deleted:
				want = UpdateDelete
			case opB == OpInsert:
				want = InsertInsert
			}
			if d1.Kind != want {
				t.Fatalf("kind %q, want %q (local deleted %v, op %v)", d1.Kind, want, a.Deleted, opB)
			}
		}
		if d1.Order == Equal {
			// Equal vectors mean the same write: each side skips.
			if d1.Action != Skip || d2.Action != Skip || idOf(d1.Result) != idOf(a) || idOf(d2.Result) != idOf(b) {
				t.Fatalf("equal: %+v / %+v", d1, d2)
			}
			return
		}

		if d1.Action == External || d2.Action == External {
			if d1.Action != External || d2.Action != External || p.kind() != CustomSQL || !swappedKinds(d1.Kind, d2.Kind) {
				t.Fatalf("external on one side only: %+v / %+v", d1, d2)
			}
			if idOf(d1.Result) != idOf(a) || idOf(d2.Result) != idOf(b) {
				t.Fatalf("External Result is not the unchanged local version")
			}
			// The resolver picks the same write in both regions: a is Local
			// in d1 and Remote in d2.
			for _, pickA := range []bool{true, false} {
				s1, s2 := Remote, Local
				if pickA {
					s1, s2 = Local, Remote
				}
				r1, r2 := ResolveExternal(d1, a, b, s1), ResolveExternal(d2, b, a, s2)
				checkSymmetric(t, p, a, b, r1, r2, merged)
			}
			return
		}
		checkSymmetric(t, p, a, b, d1, d2, merged)
	})
}

// sawWinner reports whether w has seen local's winning write (its origin's
// tick).
func sawWinner(local, w Version) bool {
	t := local.Vector.Get(local.Origin)
	return local.Origin != "" && t > 0 && w.Vector.Get(local.Origin) >= t
}

// swappedKinds reports whether k1 and k2 describe the same collision seen
// from the two sides.
func swappedKinds(k1, k2 Kind) bool {
	live := func(k Kind) bool { return k == InsertInsert || k == UpdateUpdate }
	switch {
	case live(k1):
		return live(k2) // insert or update depends on the op, not the side
	case k1 == UpdateDelete:
		return k2 == DeleteUpdate
	case k1 == DeleteUpdate:
		return k2 == UpdateDelete
	}
	return k1 == DeleteDelete && k2 == DeleteDelete
}

func checkSymmetric(t *testing.T, p Policy, a, b Version, d1, d2 Decision, merged Vector) {
	t.Helper()
	if idOf(d1.Result) != idOf(d2.Result) {
		t.Fatalf("policy %+v\na=%+v\nb=%+v\nResult differs with argument order:\n%+v (%s)\n%+v (%s)",
			p, idOf(a), idOf(b), idOf(d1.Result), d1.Reason, idOf(d2.Result), d2.Reason)
	}
	if !maps.Equal(d1.Result.Vector, merged) || !maps.Equal(d2.Result.Vector, merged) {
		t.Fatalf("Result.Vector is not Merge")
	}
	if d1.Order != Concurrent {
		return
	}
	// The winner is one of the two writes, named from each side.
	w1, w2 := b, a
	if d1.Winner == Local {
		w1 = a
	}
	if d2.Winner == Remote {
		w2 = a
	} else {
		w2 = b
	}
	if d1.Result.HLC != w1.HLC || d1.Result.Origin != w1.Origin || d2.Result.HLC != w2.HLC || d2.Result.Origin != w2.Origin {
		t.Fatalf("Result is not the winner's write: %+v / %+v", d1, d2)
	}
	for _, d := range []Decision{d1, d2} {
		want := KeepLocal
		if d.Winner == Remote && d.Kind != DeleteDelete {
			want = ApplyRemote
		}
		if d.Action != want {
			t.Fatalf("action %v, want %v for %+v", d.Action, want, d)
		}
	}
	if a.Deleted != b.Deleted {
		switch p.Deletes {
		case DeleteWins:
			if !d1.Result.Deleted {
				t.Fatalf("delete_wins but live result: %+v", d1)
			}
		case UpdateWins:
			if d1.Result.Deleted {
				t.Fatalf("update_wins but deleted result: %+v", d1)
			}
		}
	}
	if p.kind() == LastWriterWins && p.Deletes == DeleteByPolicy && a.HLC != b.HLC && d1.Result.HLC != max(a.HLC, b.HLC) {
		t.Fatalf("lww picked the lower hlc: %+v", d1)
	}
}

func FuzzArrivalOrder(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0, 1, 1, 0, 1, 2, 3, 1, 1, 0, 1, 2, 0, 1, 1, 1, 2, 0, 0, 1, 2, 1, 0, 1, 1, 2, 2, 1, 0})
	f.Add([]byte{2, 4, 3, 2, 1, 0, 2, 1, 1, 1, 2, 0, 0, 1, 2, 2, 1, 1, 0, 0, 1, 1, 1, 0, 2, 1, 0, 1, 0, 1, 1, 2, 0, 1, 1, 1, 0})
	f.Add([]byte{3, 2, 1, 1, 3, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1})
	f.Add([]byte{1, 1, 2, 4, 0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2})
	f.Add([]byte("three regions write the same row at once, then four causally related writes"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := &source{data: data}
		concurrentWrites(t, s)
		causalWrites(t, s)
	})
}

// concurrentWrites: three pairwise-concurrent writes from three regions,
// any policy, applied in every order, end in the same version.
func concurrentWrites(t *testing.T, s *source) {
	p := s.policy()
	regions := s.perm(len(pool))[:3]
	writes := make([]Version, 3)
	ops := make([]Op, 3)
	for i := range writes {
		writes[i] = Version{Vector: Vector{}, HLC: s.hlc(), Origin: pool[regions[i]], Deleted: s.bool()}
		ops[i] = s.op(writes[i].Deleted)
		for _, r := range pool {
			if n := s.intn(4); n > 0 {
				writes[i].Vector[r] = uint64(n)
			}
		}
	}
	// Each write's own region entry is beyond what the others have seen.
	for i, w := range writes {
		seen := uint64(0)
		for j, o := range writes {
			if j != i {
				seen = max(seen, o.Vector[w.Origin])
			}
		}
		w.Vector[w.Origin] = seen + 1 + uint64(s.intn(2))
	}
	want := Merge(Merge(writes[0].Vector, writes[1].Vector), writes[2].Vector).String()
	checkAllOrders(t, p, writes, ops, want)

	// The fold's winner beats each other write pairwise.
	final := fold(p, writes, ops, []int{0, 1, 2}, true)
	for i, w := range writes {
		if w.HLC == final.HLC && w.Origin == final.Origin && (ops[i] == OpDelete) == final.Deleted {
			continue
		}
		var winner Version
		for j, x := range writes {
			if x.HLC == final.HLC && x.Origin == final.Origin && (ops[j] == OpDelete) == final.Deleted {
				winner = x
			}
		}
		d := Decide(p, winner, true, w, ops[i])
		if d.Action == External {
			d = ResolveExternal(d, winner, w, simulatedResolver(winner, w, d.Kind))
		}
		if d.Winner != Local {
			t.Fatalf("policy %+v: final %+v does not beat %+v pairwise: %s", p, idOf(final), idOf(w), d.Reason)
		}
	}
}

// causalWrites: four writes with a random causal history under
// last-writer-wins (HLCs respect causality), applied in every order, end in
// the write with the highest (HLC, Origin).
func causalWrites(t *testing.T, s *source) {
	p := Policy{}
	if s.bool() {
		p.Kind = LastWriterWins
	}
	const n = 4
	writes := make([]Version, n)
	ops := make([]Op, n)
	for i := range writes {
		origin := pool[s.intn(3)] // few regions: same-region chains happen
		vec := Vector{}
		var floor Timestamp
		for j := range i {
			// A region has seen all its own earlier writes; others at random.
			if writes[j].Origin == origin || s.bool() {
				vec = Merge(vec, writes[j].Vector)
				floor = max(floor, writes[j].HLC)
			}
		}
		deleted := s.bool()
		writes[i] = Version{
			Vector:  vec.Tick(origin),
			HLC:     Next(ms(int64(s.intn(4))), floor),
			Origin:  origin,
			Deleted: deleted,
		}
		ops[i] = s.op(deleted)
	}
	all := Vector{}
	best := writes[0]
	for _, w := range writes {
		all = Merge(all, w.Vector)
		if w.HLC > best.HLC || (w.HLC == best.HLC && w.Origin > best.Origin) {
			best = w
		}
	}
	final := checkAllOrders(t, p, writes, ops, all.String())
	if final.HLC != best.HLC || final.Origin != best.Origin || final.Deleted != best.Deleted {
		t.Fatalf("final %+v, want the last writer %+v", idOf(final), idOf(best))
	}
}

// checkAllOrders folds writes in every permutation, both with tombstones
// recorded as existing rows and as missing ones, and checks they all agree,
// that the vector is the merge of all writes, and that redelivery is skipped.
func checkAllOrders(t *testing.T, p Policy, writes []Version, ops []Op, wantVec string) Version {
	t.Helper()
	idx := make([]int, len(writes))
	for i := range idx {
		idx[i] = i
	}
	var first Version
	var firstOrder []int
	n := 0
	permute(idx, 0, func(order []int) {
		for _, existsAfterDelete := range []bool{true, false} {
			got := fold(p, writes, ops, order, existsAfterDelete)
			if n == 0 {
				first, firstOrder = got, slices.Clone(order)
			} else if idOf(got) != idOf(first) {
				var ws []id
				for _, w := range writes {
					ws = append(ws, idOf(w))
				}
				t.Fatalf("policy %+v\nwrites %+v\nops %v\norder %v -> %+v\norder %v -> %+v",
					p, ws, ops, firstOrder, idOf(first), order, idOf(got))
			}
			n++
		}
	})
	if first.Vector.String() != wantVec {
		t.Fatalf("final vector %v, want merge of all %s", first.Vector, wantVec)
	}
	found := false
	for i, w := range writes {
		if w.HLC == first.HLC && w.Origin == first.Origin && (ops[i] == OpDelete) == first.Deleted {
			found = true
		}
		d := Decide(p, first, !first.Deleted, w, ops[i])
		if d.Action != Skip || idOf(d.Result) != idOf(first) {
			t.Fatalf("redelivery of write %d was not skipped: %+v", i, d)
		}
	}
	if !found {
		t.Fatalf("final %+v is none of the writes", idOf(first))
	}
	return first
}

func permute(a []int, k int, visit func([]int)) {
	if k == len(a) {
		visit(a)
		return
	}
	for i := k; i < len(a); i++ {
		a[k], a[i] = a[i], a[k]
		permute(a, k+1, visit)
		a[k], a[i] = a[i], a[k]
	}
}

func FuzzCounter(f *testing.F) {
	seeds := [][2]string{
		{"0", "0"}, {"12", "15"}, {"15", "-3"}, {"", "7"}, {"7", ""}, {"", ""},
		{"1.50", "2"}, {"2", "1.50"}, {"-0.001", "1000"}, {"0.1", "0.30"},
		{"9223372036854775807", "-9223372036854775808"},
		{"123456789012345678901234567890", "-0.000000000000000000001"},
		{"+5", ".5"}, {"5.", "-.25"}, {"007", "-0"},
		{"NaN", "1"}, {"1", "Infinity"}, {"1e3", "2"}, {"x", "1"}, {"1.2.3", "4"},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		da, errA := parseDecimal(a)
		db, errB := parseDecimal(b)
		delta, err := CounterDelta(a, b)
		if (err != nil) != (errA != nil || errB != nil) {
			t.Fatalf("CounterDelta(%q, %q) error %v, parse errors %v / %v", a, b, err, errA, errB)
		}
		sum, errSum := MergeCounter(a, b)
		if (errSum != nil) != (err != nil) {
			t.Fatalf("MergeCounter(%q, %q) error %v vs CounterDelta error %v", a, b, errSum, err)
		}
		if err != nil {
			return
		}
		scale := max(da.scale, db.scale)

		// Round trip: old + (new - old) == new, at the larger scale.
		got, err := MergeCounter(a, delta)
		if err != nil {
			t.Fatalf("MergeCounter(%q, %q): %v", a, delta, err)
		}
		want := decimal{unscaled: db.rescale(scale), scale: scale}.String()
		if got != want {
			t.Fatalf("MergeCounter(%q, CounterDelta(%q, %q) = %q) = %q, want %q", a, a, b, delta, got, want)
		}

		// Against big.Rat.
		ra, rb, rd, rs := rat(t, a), rat(t, b), rat(t, delta), rat(t, sum)
		if new(big.Rat).Sub(rb, ra).Cmp(rd) != 0 {
			t.Fatalf("delta %q != %q - %q", delta, b, a)
		}
		if new(big.Rat).Add(ra, rb).Cmp(rs) != 0 {
			t.Fatalf("sum %q != %q + %q", sum, a, b)
		}

		// Commutative, canonical, scale = larger scale.
		if sum2, _ := MergeCounter(b, a); sum2 != sum {
			t.Fatalf("MergeCounter not commutative: %q vs %q", sum, sum2)
		}
		for _, out := range []string{delta, sum, got} {
			d, err := parseDecimal(out)
			if err != nil || d.String() != out || d.scale != scale {
				t.Fatalf("result %q not canonical at scale %d (%v)", out, scale, err)
			}
			if again, _ := MergeCounter(out, "0"); again != out {
				t.Fatalf("MergeCounter(%q, 0) = %q", out, again)
			}
		}
	})
}

func rat(t *testing.T, s string) *big.Rat {
	t.Helper()
	if s == "" {
		return new(big.Rat)
	}
	if s[len(s)-1] == '.' {
		s += "0"
	}
	r, ok := new(big.Rat).SetString(s)
	if !ok {
		t.Fatalf("big.Rat cannot parse %q", s)
	}
	return r
}
