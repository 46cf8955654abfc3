package conflict

// Siblings: with three or more regions, a pairwise rule that does not
// follow causality (region priority, the delete rules, a custom resolver)
// cannot converge by looking at two versions alone. Say priority A > C > B,
// v1 written in A, v2 written in B after seeing v1, v3 written in C
// concurrently with both. v2 supersedes v1, v3 beats v2, v1 beats v3: no
// order of the three is consistent with both causality and the policy, so
// a region receiving v1, v3, v2 and one receiving v2, v3, v1 would keep
// different rows.
//
// The rule that converges looks at the set of writes instead: of all the
// writes to a row, the ones no other write has seen (the frontier) compete,
// and the policy picks the highest-ranked of them (above: v2 and v3
// compete, v1 is superseded by v2, and v3 wins). The frontier is a function
// of the set of writes, not of their arrival order, so every region ends
// with the same winner once it has received the same writes. A region
// keeps the frontier as the winning write plus its siblings, the frontier's
// other writes; when a write supersedes the winner, it competes with the
// siblings it has not seen, and a sibling may win again (Reinstate).
//
// A sibling that can never beat any write that supersedes the winner is
// not kept: under last-writer-wins every such write has a higher hybrid
// timestamp (Next), so without a delete rule no sibling is ever kept, and
// with one only those that the rule, not the timestamp, decided against.

// Write names one write to a row and what the policies rank it by. Origin
// and Tick (the origin's count in the write's vector) identify it: a
// region's writes to a row are sequential, so another write has seen this
// one exactly when its vector's count for Origin is at least Tick.
type Write struct {
	Origin  RegionID
	Tick    uint64
	HLC     Timestamp
	Deleted bool
}

// Latest is the highest hybrid timestamp among v's write and its
// siblings: a write made on top of v must carry a greater one (Next), so
// that every write's timestamp exceeds those of all the writes it has seen
// (a sibling that is not kept never has a greater timestamp than the
// write it lost to). Siblings may carry greater timestamps than the
// winner's when a delete rule or a priority decided.
func (v Version) Latest() Timestamp {
	t := v.HLC
	for _, s := range v.Siblings {
		t = max(t, s.HLC)
	}
	return t
}

// saw reports whether a write whose vector is vec has seen s.
func (w Write) saw(vec Vector, s Write) bool { return vec.Get(s.Origin) >= s.Tick }

// same reports whether w and o are the same write.
func (w Write) same(o Write) bool { return w.Origin == o.Origin && w.Tick == o.Tick }

// version is w as the row's version: the merged vector and the siblings.
func (w Write) version(vec Vector, siblings []Write) Version {
	return Version{Vector: vec, HLC: w.HLC, Origin: w.Origin, Deleted: w.Deleted, Siblings: siblings}
}

// holds reports whether w is one of v's siblings.
func (v Version) holds(w Write) bool {
	for _, s := range v.Siblings {
		if s.same(w) {
			return true
		}
	}
	return false
}

// keepable returns the writes of lost that may still beat a write
// superseding winner (nil when none).
func keepable(p Policy, winner Write, lost []Write) []Write {
	var out []Write
	for _, s := range lost {
		if mayReturn(p, s, winner) {
			out = append(out, s)
		}
	}
	return out
}

// KeepsSiblings reports whether rows under p can keep siblings: every
// policy but last-writer-wins without a delete rule, under which a write
// that supersedes the winner outranks everything that lost to it.
func (p Policy) KeepsSiblings() bool {
	return p.kind() != LastWriterWins || p.Deletes != DeleteByPolicy
}

// mayReturn reports whether s, which lost to winner, can beat some write
// that supersedes winner. Such a write carries a hybrid timestamp above
// winner's, which is at least s's when the timestamp decided between them.
func mayReturn(p Policy, s, winner Write) bool {
	if (p.ColumnLWW() || len(p.Max)+len(p.Min) > 0) && !s.Deleted {
		return true // its columns count in the row while no write has seen it
	}
	if p.kind() != LastWriterWins {
		return true // priority or a resolver may rank s above a later write
	}
	switch p.Deletes {
	case DeleteWins:
		// Two live writes went by timestamp, and a later write beats s
		// (a delete by the rule); a delete, or a live write that lost to
		// one by the rule, may beat a later live write.
		return s.Deleted || winner.Deleted
	case UpdateWins:
		return !s.Deleted || !winner.Deleted
	}
	return false
}
