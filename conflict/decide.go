package conflict

import (
	"fmt"
	"strconv"
)

// Version is a row's version: what the replicator records per row.
type Version struct {
	Vector  Vector
	HLC     Timestamp
	Origin  RegionID // region of the write that produced this version
	Deleted bool     // tombstone
}

// Clone returns a deep copy of v (its Vector is a new, non-nil map).
func (v Version) Clone() Version {
	v.Vector = v.Vector.Clone()
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
)

// String returns "apply_remote", "keep_local", "skip" or "external".
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
	}
	return "Action(" + strconv.Itoa(int(a)) + ")"
}

// Decision is the outcome of Decide for one row.
type Decision struct {
	Order    Order   // Compare(local.Vector, remote.Vector)
	Conflict bool    // true exactly when Order == Concurrent
	Kind     Kind    // set when Conflict
	Action   Action  // what to do with the row's columns
	Winner   Side    // set when Conflict and Action != External
	Result   Version // the row's version after the decision (store it unless Action is Skip or External)
	Reason   string  // short human text explaining the decision
}

// candidate is one side of a concurrent pair, as the ranking sees it.
type candidate struct {
	side    Side
	hlc     Timestamp
	origin  RegionID
	deleted bool
}

func (c candidate) version(vec Vector) Version {
	return Version{Vector: vec, HLC: c.hlc, Origin: c.origin, Deleted: c.deleted}
}

func (c candidate) what() string {
	if c.deleted {
		return "delete"
	}
	return "update"
}

// Decide is the whole decision for one row. local is the row's current
// version in this region (localExists=false and an empty local.Vector mean
// the row was never seen here); remote is the incoming write's version, op
// its operation (op, not remote.Deleted, says whether the remote is a
// delete).
//
// Compare(local.Vector, remote.Vector) decides first:
//
//   - Before (remote dominates): ApplyRemote; Result is remote with
//     Vector = Merge(local, remote) (which equals remote's). A never-seen
//     row is Before every remote with a non-empty vector.
//   - After or Equal: Skip; Result is local (Vector normalised by Merge,
//     which only drops zero entries).
//   - Concurrent, but the remote write has seen the write holding the row
//     (remote.Vector has local.Origin's tick of it): the local vector is
//     ahead only by writes that already lost to that one, so the remote is
//     its causal successor: ApplyRemote with the merged vector, no
//     conflict.
//   - Concurrent otherwise: a conflict. Kind comes from op and whether the local row
//     is live (exists and is not deleted). When exactly one side is a
//     delete/tombstone and the policy has a delete rule, that rule picks the
//     winner (DeleteWins: the deleting side; UpdateWins: the live side).
//     Otherwise the policy kind does: LastWriterWins, or RegionPriority with
//     ties going to LastWriterWins. CustomSQL gives Action External with
//     Result the unchanged local version, except that delete/delete is
//     decided by LastWriterWins. The ranking ends with Origin byte order and
//     then tombstone over live, so any two different writes are strictly
//     ordered; if all three are identical, Local wins.
//     Result is the winning write: Vector = Merge(local, remote), and HLC,
//     Origin and Deleted are the winner's. Action is ApplyRemote if the
//     winner is Remote, else KeepLocal. DeleteDelete is always KeepLocal
//     (the row stays deleted), with the winning tombstone in Result.
func Decide(p Policy, local Version, localExists bool, remote Version, op Op) Decision {
	order := Compare(local.Vector, remote.Vector)
	d := Decision{Order: order}
	switch order {
	case Before:
		d.Action = ApplyRemote
		d.Result = Version{
			Vector:  Merge(local.Vector, remote.Vector),
			HLC:     remote.HLC,
			Origin:  remote.Origin,
			Deleted: op == OpDelete,
		}
		// Constant texts on the paths every applied row takes (the vectors
		// are in Result): formatting them was a tenth of the applier's CPU.
		d.Reason = "causal: remote vector dominates local"
		return d
	case After, Equal:
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

	if seen := local.Vector.Get(local.Origin); local.Origin != "" && seen > 0 && remote.Vector.Get(local.Origin) >= seen {
		// The remote write has seen the write that holds the row (its
		// origin's tick of it); what it has not seen are writes that
		// already lost to that one. It overwrote what it read: a causal
		// successor, not a conflict.
		d.Action = ApplyRemote
		d.Result = Version{
			Vector:  Merge(local.Vector, remote.Vector),
			HLC:     remote.HLC,
			Origin:  remote.Origin,
			Deleted: op == OpDelete,
		}
		d.Reason = fmt.Sprintf("causal: remote %q has seen the winning write %s:%d (local %q also holds writes that lost to it)",
			remote.Vector.String(), local.Origin, seen, local.Vector.String())
		return d
	}
	l := candidate{side: Local, hlc: local.HLC, origin: local.Origin, deleted: local.Deleted || !localExists}
	r := candidate{side: Remote, hlc: remote.HLC, origin: remote.Origin, deleted: op == OpDelete}
	d.Conflict = true
	d.Kind = conflictKind(l.deleted, r.deleted, op)
	winner, reason, external := pick(p, l, r)
	if external {
		d.Action = External
		d.Result = local.Clone()
		d.Reason = reason
		return d
	}
	return settle(d, local.Vector, remote.Vector, l, r, winner, reason)
}

// ResolveExternal finishes a CustomSQL decision once the resolver picked a
// side; local and remote must be the versions given to Decide. The result
// follows the same rules as a decision made by Decide: Result is the
// winner's write with the merged vector. A decision whose Action is not
// External, or a winner that is neither Local nor Remote, comes back
// unchanged, so the caller still sees External and must not store Result.
func ResolveExternal(d Decision, local, remote Version, winner Side) Decision {
	if d.Action != External || (winner != Local && winner != Remote) {
		return d
	}
	l := candidate{side: Local, hlc: local.HLC, origin: local.Origin, deleted: d.Kind == UpdateDelete || d.Kind == DeleteDelete}
	r := candidate{side: Remote, hlc: remote.HLC, origin: remote.Origin, deleted: d.Kind == DeleteUpdate || d.Kind == DeleteDelete}
	return settle(d, local.Vector, remote.Vector, l, r, winner, d.Reason+"; resolver chose "+winner.String())
}

// settle fills in a conflict decision once the winner is known.
func settle(d Decision, localVec, remoteVec Vector, l, r candidate, winner Side, reason string) Decision {
	w := l
	if winner == Remote {
		w = r
	}
	d.Winner = winner
	d.Result = w.version(Merge(localVec, remoteVec))
	switch {
	case d.Kind == DeleteDelete:
		d.Action = KeepLocal
		reason = "delete_delete: row stays deleted; " + reason
	case winner == Remote:
		d.Action = ApplyRemote
	default:
		d.Action = KeepLocal
	}
	d.Reason = reason
	return d
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
