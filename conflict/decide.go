package conflict

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// Version is a row's version: what the replicator records per row.
type Version struct {
	Vector  Vector
	HLC     Timestamp
	Origin  RegionID // region of the write that produced this version
	Deleted bool     // tombstone
	// Siblings are concurrent writes that lost to this one and that no
	// later write has seen, kept where they may still win (see Write).
	Siblings []Write `json:",omitempty"`
	// Stamps, under column-level last-writer-wins, name the write that last
	// set each column this version's write did not set (see StampOf).
	Stamps map[string]Stamp `json:",omitempty"`
	// Epoch is the highest configuration epoch among the writes in the
	// row's history (see epochs.go): its conflicts are ranked under that
	// epoch's policy. 0 before epochs were numbered.
	Epoch uint64 `json:",omitempty"`
}

// Clone returns a deep copy of v (its Vector is a new, non-nil map).
func (v Version) Clone() Version {
	v.Vector = v.Vector.Clone()
	v.Siblings = slices.Clone(v.Siblings)
	v.Stamps = maps.Clone(v.Stamps)
	return v
}

// Op is a row operation.
type Op int

// Operations.
const (
	OpInsert Op = iota + 1
	OpUpdate
	OpDelete
)

// String returns "insert", "update" or "delete".
func (o Op) String() string {
	switch o {
	case OpInsert:
		return "insert"
	case OpUpdate:
		return "update"
	case OpDelete:
		return "delete"
	}
	return "Op(" + strconv.Itoa(int(o)) + ")"
}

// Kind says what collided in a conflict.
type Kind string

// Conflict kinds.
const (
	InsertInsert Kind = "insert_insert" // remote insert hits a concurrent live local row
	UpdateUpdate Kind = "update_update" // remote update hits a concurrent live local row
	UpdateDelete Kind = "update_delete" // remote update/insert vs concurrent local tombstone
	DeleteUpdate Kind = "delete_update" // remote delete vs concurrent live local row
	DeleteDelete Kind = "delete_delete" // remote delete vs concurrent local tombstone
)

// Side names one side of a decision.
type Side int

// Sides.
const (
	Local Side = iota + 1
	Remote
)

// String returns "local" or "remote".
func (s Side) String() string {
	switch s {
	case Local:
		return "local"
	case Remote:
		return "remote"
	}
	return "Side(" + strconv.Itoa(int(s)) + ")"
}

// Action is what the caller does with the row.
type Action int

// Actions.
const (
	ApplyRemote Action = iota + 1 // remote's non-counter columns replace local (or remote delete applied)
	KeepLocal                     // local non-counter columns stay
	Skip                          // remote is older or equal: nothing changes, not a conflict (duplicate or already seen)
	External                      // CustomSQL: caller must run Policy.Resolver and then call ResolveExternal
	Reinstate                     // a sibling wins: its row (or its delete) replaces the local row; see Decision.Against
)

// String returns "apply_remote", "keep_local", "skip", "external" or
// "reinstate".
func (a Action) String() string {
	switch a {
	case ApplyRemote:
		return "apply_remote"
	case KeepLocal:
		return "keep_local"
	case Skip:
		return "skip"
	case External:
		return "external"
	case Reinstate:
		return "reinstate"
	}
	return "Action(" + strconv.Itoa(int(a)) + ")"
}

// Decision is the outcome of Decide for one row.
type Decision struct {
	Order    Order   // Compare(local.Vector, remote.Vector)
	Conflict bool    // true exactly when Order == Concurrent
	Kind     Kind    // set when Conflict
	Action   Action  // what to do with the row's columns
	Winner   Side    // set when Conflict and Action != External; Local when a sibling is reinstated
	Result   Version // the row's version after the decision (store it unless Action is Skip or External)
	Reason   string  // short human text explaining the decision
	// Against is the write the remote one was ranked against when
	// Conflict: the row's own write, or a sibling when the remote
	// supersedes the row's write but not its siblings (the one Reinstate
	// brings back when Action is Reinstate).
	Against Write
	// SaveLocal and SaveRemote: the local row's write (the remote one) is
	// among Result.Siblings; keep its row for a later Reinstate.
	SaveLocal, SaveRemote bool
	// Contest is, for External, the two writes the resolver must rank: the
	// first as its local argument, the second as its remote one.
	Contest [2]Write
	// Epoch is the epoch whose policy ranks the writes: the highest of the
	// two versions' (see epochs.go). Result.Epoch is Epoch.
	Epoch uint64
	// AlsoLost are writes other than the remote one and Against that lose
	// in this decision: the row's write, when it had won under an earlier
	// epoch's policy and a sibling outranks it under a later one.
	AlsoLost []Write

	// What ResolveExternal needs to decide again.
	epochs      Epochs
	localExists bool
	op          Op
	answers     []Side
}

// candidate is one side of a concurrent pair, as the ranking sees it.
type candidate struct {
	side    Side
	hlc     Timestamp
	origin  RegionID
	deleted bool
}

func (c candidate) what() string {
	if c.deleted {
		return "delete"
	}
	return "update"
}

// Decide is the whole decision for one row. local is the row's current
// version in this region (localExists=false and an empty local.Vector mean
// the row was never seen here), with its siblings; remote is the incoming
// write's version, op its operation (op, not remote.Deleted, says whether
// the remote is a delete).
//
// Compare(local.Vector, remote.Vector) decides first:
//
//   - After or Equal: Skip; Result is local (Vector normalised by Merge,
//     which only drops zero entries; siblings kept).
//   - The remote write has seen the write holding the row (Before, or
//     Concurrent with remote.Vector holding local.Origin's tick of that
//     write): it is that write's causal successor. Siblings it has seen are
//     dropped. With none left, ApplyRemote, no conflict. Otherwise the
//     remote competes with the siblings it has not seen, a conflict: the
//     highest-ranked of them wins (ApplyRemote, or Reinstate when a
//     sibling does); Against is the highest-ranked sibling, the one the
//     remote was ranked against.
//   - Concurrent otherwise: a conflict between the write holding the row
//     and the remote one. Kind comes from op and whether the local row
//     is live (exists and is not deleted). When exactly one side is a
//     delete/tombstone and the policy has a delete rule, that rule picks the
//     winner (DeleteWins: the deleting side; UpdateWins: the live side).
//     Otherwise the policy kind does: LastWriterWins, or RegionPriority with
//     ties going to LastWriterWins. CustomSQL gives Action External, except
//     that delete/delete is decided by LastWriterWins. The ranking ends
//     with Origin byte order and then tombstone over live, so any two
//     different writes are strictly ordered; if all three are identical,
//     Local wins. Action is ApplyRemote if the remote wins, else KeepLocal;
//     DeleteDelete is always KeepLocal (the row stays deleted), with the
//     winning tombstone in Result.
//
// Except for Skip, Result.Vector is Merge(local, remote), and HLC, Origin
// and Deleted are the winning write's. Result.Siblings are the writes that lost
// and may still win once the winner is superseded (see Write); SaveLocal
// and SaveRemote say that the local row's write or the remote one is among
// them, so the caller keeps its row for a later Reinstate.
func Decide(p Policy, local Version, localExists bool, remote Version, op Op) Decision {
	return decide(Epochs{Policies: []Policy{p}}, local, localExists, remote, op, nil)
}

// ResolveExternal finishes a CustomSQL decision once the resolver ranked
// the two writes in Decision.Contest (the first as its local argument, the
// second as its remote one); local and remote must be the versions given
// to Decide. The answer may lead to another External decision, when the
// remote write competes with more than one sibling: ask the resolver
// again. The result follows the same rules as a decision made by Decide. A
// decision whose Action is not External, or a winner that is neither Local
// nor Remote, comes back unchanged, so the caller still sees External and
// must not store Result.
func ResolveExternal(d Decision, local, remote Version, winner Side) Decision {
	if d.Action != External || (winner != Local && winner != Remote) {
		return d
	}
	return decide(d.epochs, local, d.localExists, remote, d.op, append(slices.Clone(d.answers), winner))
}

// decide is DecideAt with the custom resolver's answers so far, in the
// order its contests come up.
func decide(e Epochs, local Version, localExists bool, remote Version, op Op, answers []Side) Decision {
	d := decideIn(e, local, localExists, remote, op, answers)
	if d.Action != External {
		d.Result.Epoch = d.Epoch
	}
	return d
}

func decideIn(e Epochs, local Version, localExists bool, remote Version, op Op, answers []Side) Decision {
	order := Compare(local.Vector, remote.Vector)
	d := Decision{Order: order, epochs: e, localExists: localExists, op: op, answers: answers, Epoch: max(local.Epoch, remote.Epoch)}
	if order == After || order == Equal {
		d.Action = Skip
		d.Result = local.Clone()
		d.Result.Vector = Merge(local.Vector, remote.Vector)
		if order == Equal {
			d.Reason = "causal: remote vector equals local (already applied)"
		} else {
			d.Reason = "causal: local vector already includes remote"
		}
		return d
	}
	merged := Merge(local.Vector, remote.Vector)
	lw := Write{Origin: local.Origin, Tick: local.Vector.Get(local.Origin), HLC: local.HLC, Deleted: local.Deleted || !localExists}
	rw := Write{Origin: remote.Origin, Tick: remote.Vector.Get(remote.Origin), HLC: remote.HLC, Deleted: op == OpDelete}
	var open []Write // siblings the remote has not seen
	for _, s := range local.Siblings {
		if !rw.saw(remote.Vector, s) {
			open = append(open, s)
		}
	}
	successor := order == Before || (local.Origin != "" && lw.Tick > 0 && rw.saw(remote.Vector, lw))
	if successor && len(open) == 0 {
		d.Action = ApplyRemote
		d.Result = rw.version(merged, nil)
		if order == Before {
			// Constant texts on the paths every applied row takes (the
			// vectors are in Result): formatting them was a tenth of the
			// applier's CPU.
			d.Reason = "causal: remote vector dominates local"
		} else {
			d.Reason = fmt.Sprintf("causal: remote %q has seen the winning write %s:%d (local %q also holds writes that lost to it)",
				remote.Vector.String(), local.Origin, lw.Tick, local.Vector.String())
		}
		return d
	}
	d.Conflict = true
	// The row's write outranks its siblings under the policy of the row's
	// epoch. When that is the policy of every epoch from there to the
	// latest, the remote write meets the row's write alone and the
	// siblings that may still win are those that policy keeps; otherwise
	// every competing write is ranked again (see epochs.go).
	p := e.At(d.Epoch)
	if !e.uniform(local.Epoch, d.Epoch) {
		return rankFrontier(d, p, e, local, lw, rw, successor, open, merged)
	}
	asked := 0
	if !successor {
		// The write holding the row against the remote one.
		d.Kind = conflictKind(lw.Deleted, rw.Deleted, op)
		d.Against = lw
		winner, reason, ok := contest(p, lw, rw, answers, &asked)
		if !ok {
			return external(d, local, lw, rw, reason)
		}
		w, lost := rw, lw
		d.Action, d.Winner = ApplyRemote, Remote
		if winner == Local {
			w, lost = lw, rw
			d.Action, d.Winner = KeepLocal, Local
		}
		if d.Kind == DeleteDelete {
			d.Action = KeepLocal
			reason = "delete_delete: row stays deleted; " + reason
		}
		d.Reason = reason
		d.Result = w.version(merged, keepable(p, w, append(open, lost)))
		d.SaveLocal, d.SaveRemote = d.Result.holds(lw), d.Result.holds(rw)
		return d
	}
	// The remote write supersedes the row's, not these siblings: the
	// highest-ranked of them and the remote wins. Siblings are ranked in a
	// fixed order, so every region asks a resolver the same questions.
	slices.SortFunc(open, func(a, b Write) int {
		if c := strings.Compare(string(a.Origin), string(b.Origin)); c != 0 {
			return c
		}
		return cmp.Compare(a.Tick, b.Tick)
	})
	best := open[0]
	for _, s := range open[1:] {
		winner, reason, ok := contest(p, best, s, answers, &asked)
		if !ok {
			return external(d, local, best, s, reason)
		}
		if winner == Remote {
			best = s
		}
	}
	d.Against = best
	d.Kind = conflictKind(best.Deleted, rw.Deleted, op)
	winner, reason, ok := contest(p, best, rw, answers, &asked)
	if !ok {
		return external(d, local, best, rw, reason)
	}
	w := rw
	d.Winner = winner
	d.Action = ApplyRemote
	if winner == Local {
		w = best
		d.Action = Reinstate
		reason = fmt.Sprintf("remote supersedes the row's write but not sibling %s:%d, which wins: %s", best.Origin, best.Tick, reason)
	} else {
		reason = fmt.Sprintf("remote supersedes the row's write and beats sibling %s:%d: %s", best.Origin, best.Tick, reason)
	}
	d.Reason = reason
	var lost []Write
	for _, s := range append(open, rw) {
		if !s.same(w) {
			lost = append(lost, s)
		}
	}
	d.Result = w.version(merged, keepable(p, w, lost))
	d.SaveRemote = d.Result.holds(rw)
	return d
}

// external returns the decision that asks the custom resolver to rank a
// (its local argument) against b (its remote one).
func external(d Decision, local Version, a, b Write, reason string) Decision {
	d.Action = External
	d.Winner = 0
	d.Contest = [2]Write{a, b}
	d.Result = local.Clone()
	d.Reason = reason
	return d
}

// contest ranks two concurrent writes under p: a plays the local side, b
// the remote one. For CustomSQL it takes the next of the resolver's
// answers; ok is false when there is none yet.
func contest(p Policy, a, b Write, answers []Side, asked *int) (winner Side, reason string, ok bool) {
	l := candidate{side: Local, hlc: a.HLC, origin: a.Origin, deleted: a.Deleted}
	r := candidate{side: Remote, hlc: b.HLC, origin: b.Origin, deleted: b.Deleted}
	winner, reason, external := pick(p, l, r)
	if !external {
		return winner, reason, true
	}
	if *asked >= len(answers) {
		return 0, reason, false
	}
	winner = answers[*asked]
	*asked++
	return winner, reason + "; resolver chose " + winner.String(), true
}

func conflictKind(localDeleted, remoteDeleted bool, op Op) Kind {
	switch {
	case remoteDeleted && localDeleted:
		return DeleteDelete
	case remoteDeleted:
		return DeleteUpdate
	case localDeleted:
		return UpdateDelete
	case op == OpInsert:
		return InsertInsert
	}
	return UpdateUpdate
}

// pick chooses the winner of two concurrent candidates. external is true
// when the policy defers to its SQL resolver.
func pick(p Policy, l, r candidate) (winner Side, reason string, external bool) {
	if l.deleted != r.deleted {
		del, live := l, r
		if r.deleted {
			del, live = r, l
		}
		switch p.Deletes {
		case DeleteWins:
			return del.side, fmt.Sprintf("%s: %s delete beats %s update", DeleteWins, del.side, live.side), false
		case UpdateWins:
			return live.side, fmt.Sprintf("%s: %s update beats %s delete", UpdateWins, live.side, del.side), false
		}
	}
	prefix := ""
	switch p.kind() {
	case CustomSQL:
		if !(l.deleted && r.deleted) {
			return 0, fmt.Sprintf("%s: %s %s vs %s %s; run resolver %s", CustomSQL, l.side, l.what(), r.side, r.what(), p.Resolver), true
		}
	case RegionPriority:
		lr, rr := p.priorityRank(l.origin), p.priorityRank(r.origin)
		if lr != rr {
			w, o := l, r
			if rr < lr {
				w, o = r, l
			}
			return w.side, fmt.Sprintf("%s: %s origin %q (%s) outranks %s origin %q (%s)",
				RegionPriority, w.side, string(w.origin), p.rankText(w.origin), o.side, string(o.origin), p.rankText(o.origin)), false
		}
		prefix = fmt.Sprintf("%s: tie (%s), then ", RegionPriority, p.rankText(l.origin))
	}
	winner, reason = lastWriter(l, r)
	return winner, prefix + reason, false
}

// lastWriter ranks by HLC, then Origin byte order, then tombstone over live;
// if all are identical, Local wins.
func lastWriter(l, r candidate) (Side, string) {
	switch {
	case l.hlc != r.hlc:
		w, o := l, r
		if r.hlc > l.hlc {
			w, o = r, l
		}
		return w.side, fmt.Sprintf("%s: %s hlc %s > %s hlc %s", LastWriterWins, w.side, w.hlc, o.side, o.hlc)
	case l.origin != r.origin:
		w, o := l, r
		if r.origin > l.origin {
			w, o = r, l
		}
		return w.side, fmt.Sprintf("%s: equal hlc %s, %s origin %q > %s origin %q", LastWriterWins, l.hlc, w.side, string(w.origin), o.side, string(o.origin))
	case l.deleted != r.deleted:
		w, o := l, r
		if r.deleted {
			w, o = r, l
		}
		return w.side, fmt.Sprintf("%s: equal hlc %s and origin %q, %s tombstone beats %s live row", LastWriterWins, l.hlc, string(l.origin), w.side, o.side)
	}
	return Local, fmt.Sprintf("%s: identical hlc %s, origin %q and tombstone; keeping local", LastWriterWins, l.hlc, string(l.origin))
}
