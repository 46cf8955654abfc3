package conflict

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// Max columns over whole histories, the rule the applier follows for
// them: a live row's max column is the greatest among the own values of
// the live writes no other write has seen (a write's own value is its
// region's after it, merged values included; a delete removes what it
// saw). A region works it out at every decision from the own rows of the
// result's write and its live siblings, keeps the write's own row apart
// when the row holds more, and a sibling made of the local row keeps that
// own row. Every arrival order must end with the same row: x from the
// winning write, m as the rule says.

// mrow is a row of the max model: x goes by the policy, m is a max column.
type mrow struct{ x, m int }

type mreplica struct {
	ver  Version
	row  *mrow // nil when absent
	own  *mrow // the write's own row when row holds more
	kept map[Write]mrow
}

func (rep *mreplica) ownRow() mrow {
	if rep.own != nil {
		return *rep.own
	}
	return *rep.row
}

func (rep *mreplica) apply(t *testing.T, p Policy, w mwrite) {
	t.Helper()
	local := rep.ver
	d := Decide(p, local, rep.row != nil || len(local.Vector) > 0, w.ver, w.op)
	if d.Action == Skip {
		return
	}
	lw := Write{Origin: local.Origin, Tick: local.Vector.Get(local.Origin)}
	if d.SaveLocal && rep.row != nil {
		rep.kept[lw] = rep.ownRow()
	}
	if d.SaveRemote && w.row != nil {
		rep.kept[dot(w.w)] = *w.row
	}
	rep.ver = d.Result
	if d.Result.Deleted {
		rep.row, rep.own = nil, nil
		return
	}
	var top mrow
	switch d.Action {
	case ApplyRemote:
		top = *w.row
	case KeepLocal:
		top = rep.ownRow()
	case Reinstate:
		top = rep.kept[dot(d.Against)]
	}
	out := top
	n := 1
	for _, s := range d.Result.Siblings {
		if s.Deleted {
			continue
		}
		k, ok := rep.kept[dot(s)]
		if !ok {
			t.Fatalf("live sibling %v kept without its row", s)
		}
		out.m = max(out.m, k.m)
		n++
	}
	rep.row, rep.own = &out, nil
	if n > 1 {
		rep.own = &top
	}
}

// mwrite is a write of the max model: its version and own row.
type mwrite struct {
	hwrite
	ver Version
	row *mrow
}

func TestMaxColumnsConvergeInEveryArrivalOrder(t *testing.T) {
	histories := 4000
	if testing.Short() {
		histories = 100
	}
	p := Policy{Deletes: DeleteWins, Max: []string{"m"}}
	rng := rand.New(rand.NewPCG(13, 21))
	for n := 0; n < histories; n++ {
		regions := convergeRegions[:2+rng.IntN(3)]
		var ws []mwrite
		reps := map[RegionID]*mreplica{}
		for _, r := range regions {
			reps[r] = &mreplica{kept: map[Write]mrow{}}
		}
		exchange(rng, regions, 2+rng.IntN(4), func(r RegionID, i int) {
			rep := reps[r]
			op := OpUpdate
			switch {
			case rng.IntN(4) == 0:
				op = OpDelete
			case rep.row == nil:
				op = OpInsert
			}
			vec := rep.ver.Vector.Tick(r)
			hlc := max(rep.ver.Latest()+1, Timestamp(1+rng.IntN(6)))
			ver := Version{Vector: vec, HLC: hlc, Origin: r, Deleted: op == OpDelete}
			var row *mrow
			switch op {
			case OpInsert:
				row = &mrow{x: i, m: rng.IntN(10)}
			case OpUpdate: // the trigger keeps m from moving back
				row = &mrow{x: i, m: max(rep.row.m, rng.IntN(10))}
			}
			ws = append(ws, mwrite{hwrite: hwrite{w: Write{Origin: r, Tick: vec.Get(r), HLC: hlc, Deleted: op == OpDelete}, vec: vec, op: op}, ver: ver, row: row})
			rep.ver, rep.row, rep.own = ver, row, nil
		}, func(dst RegionID, i int) { reps[dst].apply(t, p, ws[i]) })
		// The rule: the highest-ranked of the writes no other write has
		// seen decides the row and x; m is the greatest of the live ones'.
		h := &history{}
		for _, w := range ws {
			h.writes = append(h.writes, w.hwrite)
		}
		winner, lost := expected(p, h)
		var want *mrow
		if !ws[winner].w.Deleted {
			want = &mrow{x: ws[winner].row.x, m: ws[winner].row.m}
			for _, i := range lost {
				if !ws[i].w.Deleted {
					want.m = max(want.m, ws[i].row.m)
				}
			}
		}
		check := func(rep *mreplica, where string) {
			t.Helper()
			if (rep.row == nil) != (want == nil) || (want != nil && *rep.row != *want) {
				t.Fatalf("%s: row %v, want %v\n%s", where, rep.row, want, mstring(ws))
			}
		}
		for _, r := range regions {
			check(reps[r], "region "+string(r))
		}
		interleavings(h, func(order []int) {
			rep := &mreplica{kept: map[Write]mrow{}}
			for _, i := range order {
				rep.apply(t, p, ws[i])
			}
			check(rep, fmt.Sprintf("observer order %v", order))
		})
	}
}

func mstring(ws []mwrite) string {
	s := ""
	for i, w := range ws {
		s += fmt.Sprintf("  w%d %s:%d hlc %d %s vec %s row %v\n", i, w.w.Origin, w.w.Tick, w.w.HLC, w.op, w.vec, w.row)
	}
	return s
}
