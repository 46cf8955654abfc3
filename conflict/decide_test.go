package conflict

import (
	"maps"
	"slices"
	"strings"
	"testing"
)

func ver(vec string, hlc Timestamp, origin RegionID, deleted bool) Version {
	v, err := ParseVector(vec)
	if err != nil {
		panic(err)
	}
	return Version{Vector: v, HLC: hlc, Origin: origin, Deleted: deleted}
}

// id is the identity of a write: what must agree between regions.
type id struct {
	HLC     Timestamp
	Origin  RegionID
	Deleted bool
	Vector  string
}

func idOf(v Version) id { return id{v.HLC, v.Origin, v.Deleted, v.Vector.String()} }

func TestDecide(t *testing.T) {
	lww := Policy{}
	prio := Policy{Kind: RegionPriority, Priority: []RegionID{"eu", "us"}}
	custom := Policy{Kind: CustomSQL, Resolver: "public.pick"}

	tests := []struct {
		name        string
		p           Policy
		local       Version
		localExists bool
		remote      Version
		op          Op

		order   Order
		kind    Kind
		action  Action
		winner  Side
		result  Version // Vector as a string via ver()
		reasons []string
	}{
		// Causal cases: no conflict, no policy.
		{name: "never seen, insert", p: lww, local: Version{}, localExists: false, remote: ver("eu:1", 10, "eu", false), op: OpInsert,
			order: Before, action: ApplyRemote, result: ver("eu:1", 10, "eu", false), reasons: []string{"causal", "dominates"}},
		{name: "never seen, delete", p: lww, local: Version{}, localExists: false, remote: ver("eu:1", 10, "eu", true), op: OpDelete,
			order: Before, action: ApplyRemote, result: ver("eu:1", 10, "eu", true)},
		{name: "row exists without version", p: prio, local: Version{}, localExists: true, remote: ver("us:1", 10, "us", false), op: OpUpdate,
			order: Before, action: ApplyRemote, result: ver("us:1", 10, "us", false)},
		{name: "remote dominates live row, lower hlc is irrelevant", p: lww, local: ver("eu:1", 50, "eu", false), localExists: true, remote: ver("eu:1,us:1", 10, "us", false), op: OpUpdate,
			order: Before, action: ApplyRemote, result: ver("eu:1,us:1", 10, "us", false)},
		{name: "remote delete dominates", p: Policy{Deletes: UpdateWins}, local: ver("eu:1", 5, "eu", false), localExists: true, remote: ver("eu:1,us:1", 6, "us", true), op: OpDelete,
			order: Before, action: ApplyRemote, result: ver("eu:1,us:1", 6, "us", true)},
		{name: "remote re-insert dominates tombstone", p: Policy{Deletes: DeleteWins}, local: ver("eu:2", 5, "eu", true), localExists: false, remote: ver("eu:2,us:1", 6, "us", false), op: OpInsert,
			order: Before, action: ApplyRemote, result: ver("eu:2,us:1", 6, "us", false)},
		{name: "duplicate", p: lww, local: ver("eu:1,us:2", 7, "us", false), localExists: true, remote: ver("eu:1,us:2", 7, "us", false), op: OpUpdate,
			order: Equal, action: Skip, result: ver("eu:1,us:2", 7, "us", false), reasons: []string{"already applied"}},
		{name: "old remote", p: lww, local: ver("eu:1,us:2", 7, "us", false), localExists: true, remote: ver("us:1", 99, "us", true), op: OpDelete,
			order: After, action: Skip, result: ver("eu:1,us:2", 7, "us", false), reasons: []string{"already includes"}},
		{name: "old remote vs tombstone", p: lww, local: ver("eu:3", 7, "eu", true), localExists: false, remote: ver("eu:2", 6, "eu", false), op: OpUpdate,
			order: After, action: Skip, result: ver("eu:3", 7, "eu", true)},

		// Last writer wins.
		{name: "insert/insert remote later", p: lww, local: ver("eu:1", 10, "eu", false), localExists: true, remote: ver("us:1", 20, "us", false), op: OpInsert,
			order: Concurrent, kind: InsertInsert, action: ApplyRemote, winner: Remote, result: ver("eu:1,us:1", 20, "us", false),
			reasons: []string{"last_writer_wins: remote hlc", "> local hlc"}},
		{name: "update/update local later", p: lww, local: ver("eu:2,us:1", 30, "eu", false), localExists: true, remote: ver("eu:1,us:2", 20, "us", false), op: OpUpdate,
			order: Concurrent, kind: UpdateUpdate, action: KeepLocal, winner: Local, result: ver("eu:2,us:2", 30, "eu", false),
			reasons: []string{"last_writer_wins: local hlc"}},
		{name: "equal hlc, higher origin wins (remote)", p: lww, local: ver("eu:1", 10, "eu", false), localExists: true, remote: ver("us:1", 10, "us", false), op: OpUpdate,
			order: Concurrent, kind: UpdateUpdate, action: ApplyRemote, winner: Remote, result: ver("eu:1,us:1", 10, "us", false),
			reasons: []string{`equal hlc`, `remote origin "us" > local origin "eu"`}},
		{name: "equal hlc, higher origin wins (local)", p: lww, local: ver("us:1", 10, "us", false), localExists: true, remote: ver("eu:1", 10, "eu", false), op: OpUpdate,
			order: Concurrent, kind: UpdateUpdate, action: KeepLocal, winner: Local, result: ver("eu:1,us:1", 10, "us", false)},
		{name: "origin byte order: us-west > us", p: lww, local: ver("us:1", 10, "us", false), localExists: true, remote: ver("us-west:1", 10, "us-west", false), op: OpUpdate,
			order: Concurrent, kind: UpdateUpdate, action: ApplyRemote, winner: Remote, result: ver("us:1,us-west:1", 10, "us-west", false)},
		{name: "update vs tombstone by lww: resurrect", p: lww, local: ver("eu:2", 10, "eu", true), localExists: true, remote: ver("eu:1,us:1", 20, "us", false), op: OpUpdate,
			order: Concurrent, kind: UpdateDelete, action: ApplyRemote, winner: Remote, result: ver("eu:2,us:1", 20, "us", false)},
		{name: "insert vs missing row counts as tombstone", p: lww, local: ver("eu:2", 30, "eu", false), localExists: false, remote: ver("eu:1,us:1", 20, "us", false), op: OpInsert,
			order: Concurrent, kind: UpdateDelete, action: KeepLocal, winner: Local, result: ver("eu:2,us:1", 30, "eu", true)},
		{name: "delete vs live row by lww: local later", p: lww, local: ver("eu:2", 30, "eu", false), localExists: true, remote: ver("eu:1,us:1", 20, "us", true), op: OpDelete,
			order: Concurrent, kind: DeleteUpdate, action: KeepLocal, winner: Local, result: ver("eu:2,us:1", 30, "eu", false)},
		{name: "delete vs live row by lww: remote later", p: lww, local: ver("eu:2", 10, "eu", false), localExists: true, remote: ver("eu:1,us:1", 20, "us", true), op: OpDelete,
			order: Concurrent, kind: DeleteUpdate, action: ApplyRemote, winner: Remote, result: ver("eu:2,us:1", 20, "us", true)},
		{name: "delete/delete remote later: keep local, remote tombstone recorded", p: lww, local: ver("eu:2", 10, "eu", true), localExists: true, remote: ver("eu:1,us:1", 20, "us", true), op: OpDelete,
			order: Concurrent, kind: DeleteDelete, action: KeepLocal, winner: Remote, result: ver("eu:2,us:1", 20, "us", true),
			reasons: []string{"delete_delete: row stays deleted", "last_writer_wins"}},
		{name: "delete/delete local later", p: lww, local: ver("eu:2", 30, "eu", true), localExists: false, remote: ver("eu:1,us:1", 20, "us", true), op: OpDelete,
			order: Concurrent, kind: DeleteDelete, action: KeepLocal, winner: Local, result: ver("eu:2,us:1", 30, "eu", true)},
		{name: "same origin and hlc: tombstone wins", p: lww, local: ver("eu:1", 10, "eu", false), localExists: true, remote: ver("us:1", 10, "eu", true), op: OpDelete,
			order: Concurrent, kind: DeleteUpdate, action: ApplyRemote, winner: Remote, result: ver("eu:1,us:1", 10, "eu", true), reasons: []string{"tombstone beats"}},
		{name: "identical writes: local kept", p: lww, local: ver("eu:1", 10, "eu", false), localExists: true, remote: ver("us:1", 10, "eu", false), op: OpUpdate,
			order: Concurrent, kind: UpdateUpdate, action: KeepLocal, winner: Local, result: ver("eu:1,us:1", 10, "eu", false), reasons: []string{"keeping local"}},
		{name: "unknown kind behaves as lww", p: Policy{Kind: "bogus"}, local: ver("eu:1", 10, "eu", false), localExists: true, remote: ver("us:1", 20, "us", false), op: OpUpdate,
			order: Concurrent, kind: UpdateUpdate, action: ApplyRemote, winner: Remote, result: ver("eu:1,us:1", 20, "us", false)},
		{name: "op decides tombstone, not remote.Deleted", p: lww, local: ver("eu:1", 10, "eu", false), localExists: true, remote: ver("us:1", 20, "us", true), op: OpUpdate,
			order: Concurrent, kind: UpdateUpdate, action: ApplyRemote, winner: Remote, result: ver("eu:1,us:1", 20, "us", false)},

		// Delete rules.
		{name: "delete_wins: local tombstone beats later update", p: Policy{Deletes: DeleteWins}, local: ver("eu:2", 10, "eu", true), localExists: true, remote: ver("eu:1,us:1", 99, "us", false), op: OpUpdate,
			order: Concurrent, kind: UpdateDelete, action: KeepLocal, winner: Local, result: ver("eu:2,us:1", 10, "eu", true),
			reasons: []string{"delete_wins: local delete beats remote update"}},
		{name: "delete_wins: remote delete beats later local update", p: Policy{Deletes: DeleteWins}, local: ver("eu:2", 99, "eu", false), localExists: true, remote: ver("eu:1,us:1", 10, "us", true), op: OpDelete,
			order: Concurrent, kind: DeleteUpdate, action: ApplyRemote, winner: Remote, result: ver("eu:2,us:1", 10, "us", true)},
		{name: "update_wins: remote update beats later tombstone", p: Policy{Deletes: UpdateWins}, local: ver("eu:2", 99, "eu", true), localExists: true, remote: ver("eu:1,us:1", 10, "us", false), op: OpUpdate,
			order: Concurrent, kind: UpdateDelete, action: ApplyRemote, winner: Remote, result: ver("eu:2,us:1", 10, "us", false),
			reasons: []string{"update_wins: remote update beats local delete"}},
		{name: "update_wins: local row beats later remote delete", p: Policy{Deletes: UpdateWins}, local: ver("eu:2", 10, "eu", false), localExists: true, remote: ver("eu:1,us:1", 99, "us", true), op: OpDelete,
			order: Concurrent, kind: DeleteUpdate, action: KeepLocal, winner: Local, result: ver("eu:2,us:1", 10, "eu", false)},
		{name: "delete_wins: update/update still lww", p: Policy{Deletes: DeleteWins}, local: ver("eu:2", 10, "eu", false), localExists: true, remote: ver("eu:1,us:1", 20, "us", false), op: OpUpdate,
			order: Concurrent, kind: UpdateUpdate, action: ApplyRemote, winner: Remote, result: ver("eu:2,us:1", 20, "us", false)},
		{name: "update_wins: delete/delete still lww, keep local", p: Policy{Deletes: UpdateWins}, local: ver("eu:2", 10, "eu", true), localExists: true, remote: ver("eu:1,us:1", 20, "us", true), op: OpDelete,
			order: Concurrent, kind: DeleteDelete, action: KeepLocal, winner: Remote, result: ver("eu:2,us:1", 20, "us", true)},

		// Region priority.
		{name: "priority: remote eu outranks local us despite lower hlc", p: prio, local: ver("us:1", 50, "us", false), localExists: true, remote: ver("eu:1", 10, "eu", false), op: OpUpdate,
			order: Concurrent, kind: UpdateUpdate, action: ApplyRemote, winner: Remote, result: ver("eu:1,us:1", 10, "eu", false),
			reasons: []string{`region_priority: remote origin "eu" (priority 1) outranks local origin "us" (priority 2)`}},
		{name: "priority: local eu outranks remote us", p: prio, local: ver("eu:1", 10, "eu", false), localExists: true, remote: ver("us:1", 50, "us", false), op: OpInsert,
			order: Concurrent, kind: InsertInsert, action: KeepLocal, winner: Local, result: ver("eu:1,us:1", 10, "eu", false)},
		{name: "priority: listed beats unlisted", p: prio, local: ver("ap:1", 50, "ap", false), localExists: true, remote: ver("us:1", 10, "us", false), op: OpUpdate,
			order: Concurrent, kind: UpdateUpdate, action: ApplyRemote, winner: Remote, result: ver("ap:1,us:1", 10, "us", false),
			reasons: []string{`local origin "ap" (unlisted)`}},
		{name: "priority: unlisted tie goes to lww", p: prio, local: ver("ap:1", 50, "ap", false), localExists: true, remote: ver("sa:1", 10, "sa", false), op: OpUpdate,
			order: Concurrent, kind: UpdateUpdate, action: KeepLocal, winner: Local, result: ver("ap:1,sa:1", 50, "ap", false),
			reasons: []string{"region_priority: tie (unlisted), then last_writer_wins"}},
		{name: "priority: delete by policy", p: prio, local: ver("us:1", 50, "us", false), localExists: true, remote: ver("eu:1", 10, "eu", true), op: OpDelete,
			order: Concurrent, kind: DeleteUpdate, action: ApplyRemote, winner: Remote, result: ver("eu:1,us:1", 10, "eu", true)},
		{name: "priority: delete/delete by priority", p: prio, local: ver("eu:1", 10, "eu", true), localExists: true, remote: ver("us:1", 50, "us", true), op: OpDelete,
			order: Concurrent, kind: DeleteDelete, action: KeepLocal, winner: Local, result: ver("eu:1,us:1", 10, "eu", true)},
		{name: "priority + update_wins: low-priority update beats high-priority delete", p: Policy{Kind: RegionPriority, Priority: prio.Priority, Deletes: UpdateWins},
			local: ver("eu:1", 50, "eu", true), localExists: true, remote: ver("us:1", 10, "us", false), op: OpUpdate,
			order: Concurrent, kind: UpdateDelete, action: ApplyRemote, winner: Remote, result: ver("eu:1,us:1", 10, "us", false)},

		// Custom SQL.
		{name: "custom: update/update goes external", p: custom, local: ver("eu:1", 10, "eu", false), localExists: true, remote: ver("us:1", 20, "us", false), op: OpUpdate,
			order: Concurrent, kind: UpdateUpdate, action: External, result: ver("eu:1", 10, "eu", false),
			reasons: []string{"custom_sql", "public.pick"}},
		{name: "custom: delete by policy goes external", p: custom, local: ver("eu:1", 10, "eu", false), localExists: true, remote: ver("us:1", 20, "us", true), op: OpDelete,
			order: Concurrent, kind: DeleteUpdate, action: External, result: ver("eu:1", 10, "eu", false)},
		{name: "custom: delete rule decides", p: Policy{Kind: CustomSQL, Resolver: "public.pick", Deletes: DeleteWins}, local: ver("eu:1", 10, "eu", false), localExists: true, remote: ver("us:1", 5, "us", true), op: OpDelete,
			order: Concurrent, kind: DeleteUpdate, action: ApplyRemote, winner: Remote, result: ver("eu:1,us:1", 5, "us", true)},
		{name: "custom: delete/delete by lww", p: custom, local: ver("eu:1", 30, "eu", true), localExists: true, remote: ver("us:1", 20, "us", true), op: OpDelete,
			order: Concurrent, kind: DeleteDelete, action: KeepLocal, winner: Local, result: ver("eu:1,us:1", 30, "eu", true)},
		{name: "custom: causal cases never go external", p: custom, local: ver("eu:1", 30, "eu", false), localExists: true, remote: ver("eu:1,us:1", 20, "us", false), op: OpUpdate,
			order: Before, action: ApplyRemote, result: ver("eu:1,us:1", 20, "us", false)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			local, remote := tt.local.Clone(), tt.remote.Clone()
			d := Decide(tt.p, tt.local, tt.localExists, tt.remote, tt.op)
			if d.Order != tt.order || d.Conflict != (tt.order == Concurrent) || d.Kind != tt.kind || d.Action != tt.action || d.Winner != tt.winner {
				t.Errorf("got order=%v conflict=%v kind=%q action=%v winner=%v\nwant order=%v kind=%q action=%v winner=%v\nreason: %s",
					d.Order, d.Conflict, d.Kind, d.Action, d.Winner, tt.order, tt.kind, tt.action, tt.winner, d.Reason)
			}
			if idOf(d.Result) != idOf(tt.result) {
				t.Errorf("Result = %+v, want %+v", idOf(d.Result), idOf(tt.result))
			}
			if d.Action != External && !maps.Equal(d.Result.Vector, Merge(tt.local.Vector, tt.remote.Vector)) {
				t.Errorf("Result.Vector = %v, want Merge = %v", d.Result.Vector, Merge(tt.local.Vector, tt.remote.Vector))
			}
			if d.Reason == "" {
				t.Errorf("empty Reason")
			}
			for _, r := range tt.reasons {
				if !strings.Contains(d.Reason, r) {
					t.Errorf("Reason %q does not mention %q", d.Reason, r)
				}
			}
			if idOf(local) != idOf(tt.local) || idOf(remote) != idOf(tt.remote) {
				t.Errorf("Decide modified its inputs")
			}
			// The result shares no memory with the inputs.
			if d.Result.Vector != nil {
				d.Result.Vector["zz"] = 1
				if tt.local.Vector.Get("zz") != 0 || tt.remote.Vector.Get("zz") != 0 {
					t.Errorf("Result.Vector aliases an input")
				}
			}
		})
	}
}

func TestResolveExternal(t *testing.T) {
	p := Policy{Kind: CustomSQL, Resolver: "public.pick"}
	local := ver("eu:2", 30, "eu", false)
	remote := ver("eu:1,us:1", 20, "us", false)
	d := Decide(p, local, true, remote, OpUpdate)
	if d.Action != External || d.Winner != 0 || d.Kind != UpdateUpdate {
		t.Fatalf("Decide = %+v, want External update_update", d)
	}

	r := ResolveExternal(d, local, remote, Remote)
	if r.Action != ApplyRemote || r.Winner != Remote || !r.Conflict || r.Kind != UpdateUpdate || r.Order != Concurrent {
		t.Errorf("resolve remote = %+v", r)
	}
	if idOf(r.Result) != idOf(ver("eu:2,us:1", 20, "us", false)) {
		t.Errorf("resolve remote Result = %+v", idOf(r.Result))
	}
	if !strings.Contains(r.Reason, "resolver chose remote") || !strings.Contains(r.Reason, "public.pick") {
		t.Errorf("Reason = %q", r.Reason)
	}

	l := ResolveExternal(d, local, remote, Local)
	if l.Action != KeepLocal || l.Winner != Local || idOf(l.Result) != idOf(ver("eu:2,us:1", 30, "eu", false)) {
		t.Errorf("resolve local = %+v", l)
	}

	// Invalid side or a decision that is not External: unchanged.
	if got := ResolveExternal(d, local, remote, Side(0)); got.Action != External || got.Reason != d.Reason {
		t.Errorf("invalid side: %+v", got)
	}
	done := Decide(Policy{}, local, true, remote, OpUpdate)
	if got := ResolveExternal(done, local, remote, Remote); got.Action != done.Action || got.Winner != done.Winner || idOf(got.Result) != idOf(done.Result) {
		t.Errorf("non-external decision changed: %+v", got)
	}

	// Tombstones: kinds carry which side is deleted.
	tomb := ver("eu:2", 30, "eu", true)
	d = Decide(p, tomb, true, remote, OpUpdate)
	if d.Action != External || d.Kind != UpdateDelete {
		t.Fatalf("Decide = %+v", d)
	}
	if got := ResolveExternal(d, tomb, remote, Local); got.Action != KeepLocal || !got.Result.Deleted {
		t.Errorf("keep local tombstone: %+v", got)
	}
	if got := ResolveExternal(d, tomb, remote, Remote); got.Action != ApplyRemote || got.Result.Deleted {
		t.Errorf("resurrect: %+v", got)
	}
	del := ver("eu:1,us:1", 20, "us", true)
	d = Decide(p, local, true, del, OpDelete)
	if got := ResolveExternal(d, local, del, Remote); got.Action != ApplyRemote || !got.Result.Deleted || got.Kind != DeleteUpdate {
		t.Errorf("remote delete: %+v", got)
	}
}

func TestStringers(t *testing.T) {
	checks := map[string]string{
		OpInsert.String(): "insert", OpUpdate.String(): "update", OpDelete.String(): "delete", Op(0).String(): "Op(0)",
		Local.String(): "local", Remote.String(): "remote", Side(7).String(): "Side(7)",
		ApplyRemote.String(): "apply_remote", KeepLocal.String(): "keep_local", Skip.String(): "skip", External.String(): "external", Reinstate.String(): "reinstate", Action(0).String(): "Action(0)",
	}
	for got, want := range checks {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

func TestVersionClone(t *testing.T) {
	v := ver("eu:1", 5, "eu", true)
	c := v.Clone()
	c.Vector["eu"] = 9
	if v.Vector["eu"] != 1 || c.HLC != 5 || c.Origin != "eu" || !c.Deleted {
		t.Errorf("Clone: %+v from %+v", c, v)
	}
	if (Version{}).Clone().Vector == nil {
		t.Errorf("Clone of zero Version has nil Vector")
	}
}

// fold applies writes in order to a row that starts never-seen, as a region
// would, resolving External decisions with resolve.
func fold(p Policy, writes []Version, ops []Op, order []int, existsAfterDelete bool) Version {
	cur, exists := Version{}, false
	for _, i := range order {
		d := Decide(p, cur, exists, writes[i], ops[i])
		if d.Action == External {
			d = ResolveExternal(d, cur, writes[i], simulatedResolver(cur, writes[i], d.Kind))
		}
		if d.Action == Skip {
			continue
		}
		cur = d.Result
		exists = existsAfterDelete || !cur.Deleted
	}
	return cur
}

// simulatedResolver stands in for a deterministic SQL resolver. It ranks like
// last-writer-wins, so that delete/delete (always decided by lww) agrees with
// it and arrival order does not matter.
func simulatedResolver(local, remote Version, k Kind) Side {
	l := candidate{side: Local, hlc: local.HLC, origin: local.Origin, deleted: k == UpdateDelete || k == DeleteDelete}
	r := candidate{side: Remote, hlc: remote.HLC, origin: remote.Origin, deleted: k == DeleteUpdate || k == DeleteDelete}
	s, _ := lastWriter(l, r)
	return s
}

// TestArrivalOrderWithRules pins the cases that made Result carry the
// winner's own HLC rather than max(local, remote). With the max, an earlier
// conflict won by a delete rule or by priority would leave a merged version
// whose inflated HLC wins later last-writer-wins tie-breaks it should lose,
// and regions would diverge.
func TestArrivalOrderWithRules(t *testing.T) {
	tests := []struct {
		name   string
		p      Policy
		writes []Version
		want   id
	}{
		{
			name: "update_wins with two updates and a later delete",
			p:    Policy{Deletes: UpdateWins},
			writes: []Version{
				ver("ap:1", 10, "ap", false),
				ver("eu:1", 20, "eu", false),
				ver("us:1", 30, "us", true),
			},
			want: id{20, "eu", false, "ap:1,eu:1,us:1"},
		},
		{
			name: "delete_wins with two deletes and a later update",
			p:    Policy{Deletes: DeleteWins},
			writes: []Version{
				ver("ap:1", 30, "ap", false),
				ver("eu:1", 10, "eu", true),
				ver("us:1", 20, "us", true),
			},
			want: id{20, "us", true, "ap:1,eu:1,us:1"},
		},
		{
			name: "priority with unlisted ties",
			p:    Policy{Kind: RegionPriority, Priority: []RegionID{"us"}, Deletes: UpdateWins},
			writes: []Version{
				ver("ap:1", 10, "ap", false),
				ver("eu:1", 20, "eu", false),
				ver("us:1", 30, "us", true),
			},
			want: id{20, "eu", false, "ap:1,eu:1,us:1"},
		},
	}
	perms := [][]int{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}}
	for _, tt := range tests {
		ops := make([]Op, len(tt.writes))
		for i, w := range tt.writes {
			ops[i] = OpUpdate
			if w.Deleted {
				ops[i] = OpDelete
			}
		}
		for _, perm := range perms {
			if got := idOf(fold(tt.p, tt.writes, ops, perm, true)); got != tt.want {
				t.Errorf("%s: order %v ends in %+v, want %+v", tt.name, perm, got, tt.want)
			}
		}
	}
}

// A write that has seen the write holding a row is its causal successor even
// when the row's vector also holds writes that lost to that one: applied,
// not logged as a conflict. (Found by the partition scenario: after ap-70
// beat eu-81 in eu, us-96 written on top of ap-70 was logged as a conflict.)
func TestCausalSuccessorOfWinnerIsNoConflict(t *testing.T) {
	local := ver("ap:6,eu:4,us:3", 70, "ap", false)  // ap-70 won over eu-81 (eu:4)
	remote := ver("ap:6,eu:3,us:4", 96, "us", false) // us-96 read ap-70, never saw eu-81
	for _, p := range []Policy{{Kind: LastWriterWins}, {Kind: RegionPriority, Priority: []RegionID{"eu", "ap", "us"}}} {
		d := Decide(p, local, true, remote, OpUpdate)
		if d.Conflict || d.Action != ApplyRemote || d.Order != Concurrent {
			t.Fatalf("%v: %+v, want a non-conflicting apply", p.Kind, d)
		}
		if d.Result.Vector.String() != "ap:6,eu:4,us:4" || d.Result.Origin != "us" {
			t.Fatalf("%v: result %+v", p.Kind, d.Result)
		}
	}
	// A write that has not seen the winner is still a conflict.
	stale := ver("ap:5,eu:3,us:4", 96, "us", false)
	if d := Decide(Policy{Kind: LastWriterWins}, local, true, stale, OpUpdate); !d.Conflict {
		t.Fatalf("write that never saw ap:6: %+v, want a conflict", d)
	}
}

// The README's example, decision by decision, in a region receiving v1,
// v3, v2 (priority a > c > b; v2 saw v1; v3 saw neither).
func TestDecideKeepsAndReinstatesSiblings(t *testing.T) {
	p := Policy{Kind: RegionPriority, Priority: []RegionID{"a", "c", "b"}}
	v1 := ver("a:1", 10, "a", false)
	v2 := ver("a:1,b:1", 20, "b", false)
	v3 := ver("c:1", 15, "c", false)

	d := Decide(p, Version{}, false, v1, OpInsert)
	if d.Action != ApplyRemote || d.Conflict || len(d.Result.Siblings) != 0 {
		t.Fatalf("v1: %+v", d)
	}
	d = Decide(p, d.Result, true, v3, OpInsert)
	if d.Action != KeepLocal || d.Kind != InsertInsert || !d.SaveRemote || d.SaveLocal {
		t.Fatalf("v3 against v1: %+v", d)
	}
	want := []Write{{Origin: "c", Tick: 1, HLC: 15}}
	if !slices.Equal(d.Result.Siblings, want) || d.Result.Origin != "a" {
		t.Fatalf("v3 against v1: result %+v, want v1 with sibling v3", d.Result)
	}
	if d.Result.Latest() != 15 {
		t.Fatalf("Latest = %v, want the sibling's 15", d.Result.Latest())
	}
	d = Decide(p, d.Result, true, v2, OpUpdate)
	if d.Action != Reinstate || !d.Conflict || d.Winner != Local || d.Against != want[0] || d.SaveLocal {
		t.Fatalf("v2 after v1 and v3: %+v", d)
	}
	// v2 lost and is kept: a later write that saw v3 but not v2 would meet it.
	if d.Result.Origin != "c" || d.Result.HLC != 15 || d.Result.Vector.String() != "a:1,b:1,c:1" ||
		!slices.Equal(d.Result.Siblings, []Write{{Origin: "b", Tick: 1, HLC: 20}}) || !d.SaveRemote {
		t.Fatalf("v2 after v1 and v3: result %+v, want v3 with sibling v2", d.Result)
	}
	if !strings.Contains(d.Reason, "sibling c:1") {
		t.Fatalf("reason %q does not name the sibling", d.Reason)
	}

	// The local row's write losing to a remote one is kept, when it may win
	// again, and said so.
	d = Decide(p, v3, true, v1, OpUpdate)
	if d.Action != ApplyRemote || !d.SaveLocal || d.SaveRemote || !slices.Equal(d.Result.Siblings, want) {
		t.Fatalf("v1 against local v3: %+v", d)
	}
	// Under last-writer-wins a loser never wins again: nothing kept.
	d = Decide(Policy{}, v3, true, ver("a:1", 20, "a", false), OpUpdate)
	if d.SaveLocal || len(d.Result.Siblings) != 0 {
		t.Fatalf("lww kept a sibling: %+v", d)
	}
}

// A custom resolver is asked once per pair, in a fixed order, when a write
// meets several siblings.
func TestResolveExternalAgainstSeveralSiblings(t *testing.T) {
	p := Policy{Kind: CustomSQL, Resolver: "public.pick"}
	local := ver("a:1,b:1,c:1", 10, "a", false)
	local.Siblings = []Write{{Origin: "c", Tick: 1, HLC: 12}, {Origin: "b", Tick: 1, HLC: 11}}
	remote := ver("a:1,d:1", 20, "d", false) // saw a's write, not b's or c's
	d := Decide(p, local, true, remote, OpUpdate)
	var asked [][2]Write
	for d.Action == External {
		asked = append(asked, d.Contest)
		// The resolver ranks c's write highest.
		w := Remote
		if d.Contest[0].Origin == "c" {
			w = Local
		}
		d = ResolveExternal(d, local, remote, w)
	}
	wantAsked := [][2]Write{
		{local.Siblings[1], local.Siblings[0]},               // b against c
		{local.Siblings[0], {Origin: "d", Tick: 1, HLC: 20}}, // c against the remote
	}
	if !slices.Equal(asked, wantAsked) {
		t.Fatalf("asked %+v, want %+v", asked, wantAsked)
	}
	if d.Action != Reinstate || d.Against.Origin != "c" || d.Result.Origin != "c" {
		t.Fatalf("result %+v", d)
	}
	// b (lost to c) and the remote (lost to c) stay siblings.
	if len(d.Result.Siblings) != 2 || !d.SaveRemote {
		t.Fatalf("siblings %+v, SaveRemote %v", d.Result.Siblings, d.SaveRemote)
	}
}
