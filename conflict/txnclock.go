package conflict

// Causal metadata per transaction instead of per row (the groundwork of a
// data plane that records one version per transaction): a transaction
// carries its dot (its region and that region's sequence number of it)
// and the frontier of what its region had applied, transitively, when it
// committed. "W saw V" is then "W's frontier covers V's dot", and a row's
// version is the set of writes to it that no other write absorbed into it
// has seen (its heads) together with everything those writes had seen.
//
// That decides exactly as per-row version vectors do only under causal
// delivery: a region applies a transaction once it has applied every
// transaction the transaction's frontier covers. Per-source order alone
// is not enough: a region that applied U from one source, where U's region
// had seen V from another, has not necessarily applied V, yet U's
// frontier would make every later local write look as if it had seen V;
// V would then be taken as overwritten by those writes instead of being
// decided as a concurrent write. TestTxnClocksDecideAsRowVectors checks
// both statements over random histories.

// Dot names a transaction: its region and the region's count of it (its
// outbox sequence number).
type Dot struct {
	Origin RegionID
	Seq    uint64
}

// TxnClock is a transaction's causal metadata: its dot and the frontier
// of the transactions its region had applied or made before it (the
// region's own count is Seq-1).
type TxnClock struct {
	Dot      Dot
	Frontier Vector
}

// Saw reports whether the transaction had seen the one named d (or is it).
func (c TxnClock) Saw(d Dot) bool {
	if d.Origin == c.Dot.Origin {
		return d.Seq <= c.Dot.Seq
	}
	return c.Frontier.Get(d.Origin) >= d.Seq
}

// Covered is the frontier with the transaction itself: what a region has
// seen once it applied it.
func (c TxnClock) Covered() Vector {
	v := c.Frontier.Clone()
	if c.Dot.Seq > v.Get(c.Dot.Origin) {
		v[c.Dot.Origin] = c.Dot.Seq
	}
	return v
}

// Deliverable reports whether a region that has applied (or made) the
// transactions applied names may apply c under causal delivery: c is the
// next of its origin and everything c's region had seen is applied.
func Deliverable(applied Vector, c TxnClock) bool {
	if applied.Get(c.Dot.Origin) != c.Dot.Seq-1 {
		return false
	}
	for r, n := range c.Frontier {
		if r != c.Dot.Origin && applied.Get(r) < n {
			return false
		}
	}
	return true
}

// RowClock is a row's version in transaction terms: the writes to it that
// no other write it absorbed has seen (Heads), and Cover, everything the
// writes it absorbed had seen (their covered frontiers joined).
type RowClock struct {
	Heads []Dot
	Cover Vector
}

// Compare orders a row's version against a remote write to it, as
// Compare orders their version vectors: After (or Equal) when the row has
// absorbed the remote write, Before when the remote write had seen every
// head, Concurrent otherwise.
func (r RowClock) Compare(remote TxnClock) Order {
	local := r.Cover.Get(remote.Dot.Origin) >= remote.Dot.Seq
	sawAll := true
	for _, h := range r.Heads {
		if !remote.Saw(h) {
			sawAll = false
			break
		}
	}
	switch {
	case local && sawAll:
		return Equal
	case local:
		return After
	case sawAll:
		return Before
	}
	return Concurrent
}

// Absorb is the row's version after a write whose clock is c was applied
// to it, given how the row compared to it: a write that saw every head
// replaces them, a concurrent one joins them, one already absorbed
// changes nothing.
func (r RowClock) Absorb(c TxnClock, o Order) RowClock {
	switch o {
	case After, Equal:
		return r
	case Before:
		return RowClock{Heads: []Dot{c.Dot}, Cover: Merge(r.Cover, c.Covered())}
	}
	heads := append(make([]Dot, 0, len(r.Heads)+1), r.Heads...)
	return RowClock{Heads: append(heads, c.Dot), Cover: Merge(r.Cover, c.Covered())}
}
