package conflict

import (
	"fmt"
	"slices"
	"strings"
)

// Policy changes at configuration epochs. A table's policy may change while
// regions write: the control plane numbers each configuration (an epoch)
// and every write carries the epoch its origin ranks it under. A row's
// version carries the highest epoch among the writes in its history
// (Version.Epoch, merged like the vector), and the row's conflicts are
// ranked under that epoch's policy: once a write made under the new
// policy reached a row, the row's conflicts go by the new policy. The
// highest epoch is a function of the set of writes, so every region that
// has received the same writes ranks the row's competing writes (its
// frontier, see siblings.go) under the same policy and keeps the same
// winner, whatever the order they arrived in and whenever each region
// learned of the change.
//
// That holds when the regions follow the protocol below, because a region
// drops a losing write (does not keep it as a sibling) when no policy it
// knows could let it win again; a policy it does not know yet must not
// matter:
//
//  1. A change is announced as epoch N. From the moment a region learns of
//     it, its writes are stamped as known under N (in the stream; this is
//     not the epoch they are ranked under), and it records its fence: its
//     last write stamped before. A region that receives a write stamped
//     under an epoch it does not know waits until it knows that epoch.
//  2. A region ranks its own writes under N only once it has applied every
//     other region's writes up to that region's fence. Such a write has
//     seen every write to its row made before its origin learned of N, so
//     a write that a region dropped without knowing N is never in the
//     frontier of a row whose epoch is N or later.
//  3. A region keeps a losing write while the policy of any epoch from the
//     row's to the latest it knows could rank it above the winner or above
//     a write superseding the winner (mayReturnAt below).
//
// TestEpochChangeConvergesInEveryArrivalOrder checks the three together
// over random histories.
//
// A change may alter how writes are ranked (kind, priority, delete rule,
// resolver), not which columns merge: counter, max and min columns and
// column-level resolution change what the origin ships with a write, so
// NewEpochs refuses epochs that differ in them.

// Epochs are a table's policies by configuration epoch, as far as a region
// knows them: Policies[i] is the policy of epoch First+i, the last one the
// latest the region knows. An epoch below First counts as First (writes
// from before epochs were numbered carry 0).
type Epochs struct {
	First    uint64
	Policies []Policy
	prints   []string // Policies' fingerprints, set by NewEpochs
}

// NewEpochs returns the policies of epochs first, first+1, ... It refuses
// an empty list, and policies that differ in their counter, max or min
// columns or in column-level resolution.
func NewEpochs(first uint64, policies ...Policy) (Epochs, error) {
	if len(policies) == 0 {
		return Epochs{}, fmt.Errorf("no policy for epoch %d", first)
	}
	e := Epochs{First: first, Policies: slices.Clone(policies), prints: make([]string, len(policies))}
	base := policies[0].merging()
	for i, p := range policies {
		e.prints[i] = p.Fingerprint()
		if m := p.merging(); m != base {
			return Epochs{}, fmt.Errorf("epoch %d changes which columns merge (%s, epoch %d has %s): counter, max and min columns and column-level resolution cannot change at an epoch",
				first+uint64(i), m, first, base)
		}
	}
	return e, nil
}

// merging is what of p a change at an epoch must keep: the columns that
// merge instead of being ranked, and column-level resolution.
func (p Policy) merging() string {
	var b strings.Builder
	for _, l := range p.mergeLists() {
		cols := slices.Clone(l.cols)
		slices.Sort(cols)
		fmt.Fprintf(&b, "%s=%s ", l.name, strings.Join(slices.Compact(cols), ","))
	}
	b.WriteString("columns=" + p.Columns)
	return b.String()
}

// Latest is the highest epoch e holds.
func (e Epochs) Latest() uint64 { return e.First + uint64(len(e.Policies)) - 1 }

// Knows reports whether e holds the policy of epoch n (a write ranked or
// stamped under a later one must wait until the region learns it).
func (e Epochs) Knows(n uint64) bool { return n <= e.Latest() }

// At returns the policy of epoch n (First's below First, the latest's
// above the latest).
func (e Epochs) At(n uint64) Policy { return e.Policies[e.index(n)] }

func (e Epochs) index(n uint64) int {
	switch {
	case n <= e.First:
		return 0
	case n >= e.Latest():
		return len(e.Policies) - 1
	}
	return int(n - e.First)
}

// same reports whether epochs n and m have the same policy.
func (e Epochs) same(n, m uint64) bool {
	i, j := e.index(n), e.index(m)
	if i == j {
		return true
	}
	if e.prints != nil {
		return e.prints[i] == e.prints[j]
	}
	return e.Policies[i].Fingerprint() == e.Policies[j].Fingerprint()
}

// uniform reports whether every epoch from n to the latest has the policy
// of epoch r.
func (e Epochs) uniform(n, r uint64) bool {
	if len(e.Policies) == 1 {
		return true
	}
	for i := max(n, e.First); i <= e.Latest(); i++ {
		if !e.same(i, r) {
			return false
		}
	}
	return true
}

// KeepsSiblingsAt reports whether rows under e can keep siblings: under
// some epoch's policy they can (see Policy.KeepsSiblings), or the epochs'
// policies differ, so that a write that lost under one may win under
// another.
func (e Epochs) KeepsSiblingsAt() bool {
	for i, p := range e.Policies {
		if p.KeepsSiblings() || !e.same(e.First, e.First+uint64(i)) {
			return true
		}
	}
	return false
}

// DecideAt is Decide for a table whose policy is numbered by epochs: the
// writes that compete are ranked under the policy of the higher of the two
// versions' epochs (Decision.Epoch), and a write that lost is kept as a
// sibling while any policy from that epoch to the latest in e could let it
// win again. The caller must know every epoch remote carries (e.Knows), or
// wait until it does. With one policy it decides exactly as Decide.
func DecideAt(e Epochs, local Version, localExists bool, remote Version, op Op) Decision {
	return decide(e, local, localExists, remote, op, nil)
}

// rankFrontier decides when the row's write may not outrank its siblings
// under p (it won under an earlier epoch's policy) or a later epoch's
// policy may keep siblings p would drop. It ranks every competing write
// under p: the
// region's (the row's write unless the remote one supersedes it, and the
// siblings the remote one has not seen) among themselves first, in a fixed
// order, then the best of them against the remote one.
func rankFrontier(d Decision, p Policy, e Epochs, local Version, lw, rw Write, successor bool, open []Write, merged Vector) Decision {
	here := slices.Clone(open)
	if !successor {
		here = append(here, lw)
	}
	slices.SortFunc(here, byIdentity)
	asked := 0
	best := here[0]
	for _, s := range here[1:] {
		winner, reason, ok := contest(p, best, s, d.answers, &asked)
		if !ok {
			return external(d, local, best, s, reason)
		}
		if winner == Remote {
			best = s
		}
	}
	d.Against = best
	d.Kind = conflictKind(best.Deleted, rw.Deleted, d.op)
	winner, reason, ok := contest(p, best, rw, d.answers, &asked)
	if !ok {
		return external(d, local, best, rw, reason)
	}
	d.Winner = winner
	w := rw
	switch {
	case winner == Remote && rw.Deleted && lw.Deleted && !successor:
		d.Action = KeepLocal // the row stays deleted
	case winner == Remote:
		d.Action = ApplyRemote
	case !successor && best.same(lw):
		w, d.Action = lw, KeepLocal
	default:
		w, d.Action = best, Reinstate
	}
	if !successor && !best.same(lw) && !w.same(lw) {
		// The row's write had won under an earlier epoch's policy and
		// loses under this one: it is overwritten too.
		d.AlsoLost = []Write{lw}
	}
	d.Reason = fmt.Sprintf("epoch %d policy %s ranks the %d competing writes: %s", d.Epoch, p.Label(), len(here)+1, reason)
	var lost []Write
	for _, s := range append(here, rw) {
		if !s.same(w) {
			lost = append(lost, s)
		}
	}
	d.Result = w.version(merged, keepableAt(e, d.Epoch, w, lost))
	d.SaveLocal, d.SaveRemote = d.Result.holds(lw), d.Result.holds(rw)
	return d
}

// byIdentity orders writes by origin, then tick: the same order in every
// region.
func byIdentity(a, b Write) int {
	if c := strings.Compare(string(a.Origin), string(b.Origin)); c != 0 {
		return c
	}
	switch {
	case a.Tick < b.Tick:
		return -1
	case a.Tick > b.Tick:
		return 1
	}
	return 0
}

// keepableAt returns the writes of lost that the policy of some epoch from
// r (the row's) to the latest e holds may still rank above winner or above
// a write superseding it; the policy of epoch r ranked winner above all of
// them.
func keepableAt(e Epochs, r uint64, winner Write, lost []Write) []Write {
	var out []Write
	for _, s := range lost {
		if mayReturnAt(e, r, s, winner) {
			out = append(out, s)
		}
	}
	return out
}

func mayReturnAt(e Epochs, r uint64, s, winner Write) bool {
	for n := max(r, e.First); ; n++ {
		if e.same(n, r) {
			if mayReturn(e.At(r), s, winner) {
				return true
			}
		} else if mayOutrank(e.At(n), s, winner) {
			return true
		}
		if n >= e.Latest() {
			return false
		}
	}
}

// mayOutrank reports whether q may rank s above winner or above a write
// that supersedes winner (which carries a greater hybrid timestamp), when
// q is not the policy that ranked winner above s.
func mayOutrank(q Policy, s, winner Write) bool {
	if (q.ColumnLWW() || len(q.Max)+len(q.Min) > 0) && !s.Deleted {
		return true
	}
	if q.kind() != LastWriterWins {
		return true
	}
	switch {
	case q.Deletes == DeleteWins && s.Deleted, q.Deletes == UpdateWins && !s.Deleted:
		return true // against a write of the other kind, the rule picks s
	}
	return s.HLC >= winner.HLC
}
