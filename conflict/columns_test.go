package conflict

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func TestLocalStampsKeepWhatTheUpdateDidNotChange(t *testing.T) {
	cols := []string{"a", "b", "c"}
	prior := Version{HLC: 10, Origin: "us", Stamps: map[string]Stamp{"c": {HLC: 5, Origin: "eu"}}}
	got := LocalStamps(prior, true, OpUpdate, cols, []bool{true, false, false})
	want := map[string]Stamp{"b": {HLC: 10, Origin: "us"}, "c": {HLC: 5, Origin: "eu"}}
	if !maps.Equal(got, want) {
		t.Fatalf("update: stamps %v, want %v", got, want)
	}
	for _, tc := range []struct {
		name string
		live bool
		op   Op
	}{{"insert", true, OpInsert}, {"delete", true, OpDelete}, {"update of a deleted row", false, OpUpdate}} {
		if got := LocalStamps(prior, tc.live, tc.op, cols, []bool{false, false, false}); got != nil {
			t.Fatalf("%s: stamps %v, want none (every column the write's own)", tc.name, got)
		}
	}
}

func TestJoinColumnsTakesEachColumnsLatestWrite(t *testing.T) {
	cols := []string{"email", "bio", "name"}
	// us set email at 20; eu set bio at 30; both kept name from the insert at 10.
	us := Version{HLC: 20, Origin: "us", Stamps: map[string]Stamp{"bio": {10, "ap"}, "name": {10, "ap"}}}
	eu := Version{HLC: 30, Origin: "eu", Stamps: map[string]Stamp{"email": {10, "ap"}, "name": {10, "ap"}}}
	from, stamps := JoinColumns(cols, []Version{us, eu}, eu)
	if !slices.Equal(from, []int{0, 1, 0}) {
		t.Fatalf("from %v, want email from us, bio from eu, name from the first (equal stamps)", from)
	}
	want := map[string]Stamp{"email": {20, "us"}, "name": {10, "ap"}}
	if !maps.Equal(stamps, want) {
		t.Fatalf("stamps %v, want %v", stamps, want)
	}
	joined := eu
	joined.Stamps = stamps
	if lost := LostColumns(cols, us, joined); len(lost) != 0 {
		t.Fatalf("us lost %v, want nothing (its email is kept)", lost)
	}
	// Both set email: the later one keeps it, the other lost it.
	eu.Stamps = map[string]Stamp{"name": {10, "ap"}}
	_, stamps = JoinColumns(cols, []Version{us, eu}, eu)
	joined.Stamps = stamps
	if lost := LostColumns(cols, us, joined); !slices.Equal(lost, []string{"email"}) {
		t.Fatalf("us lost %v, want [email]", lost)
	}
	if lost := LostColumns(cols, eu, joined); len(lost) != 0 {
		t.Fatalf("eu lost %v, want nothing", lost)
	}
}

func TestColumnLWWPolicyIsValidatedAndFingerprinted(t *testing.T) {
	ok := Policy{Deletes: DeleteWins, Columns: ColumnLWW}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid policy refused: %v", err)
	}
	if ok.Fingerprint() == (Policy{Deletes: DeleteWins}).Fingerprint() {
		t.Fatal("column_lww does not change the fingerprint")
	}
	if (Policy{}).Fingerprint() != `kind="last_writer_wins";priority=[];deletes="";counters=[];resolver=""` {
		t.Fatalf("fingerprint of a policy without columns changed: %s", (Policy{}).Fingerprint())
	}
	for _, tc := range []struct {
		p    Policy
		want string
	}{
		{Policy{Columns: ColumnLWW}, "needs policy last_writer_wins with deletes: delete_wins"},
		{Policy{Kind: RegionPriority, Priority: []RegionID{"a"}, Deletes: DeleteWins, Columns: ColumnLWW}, "needs policy last_writer_wins"},
		{Policy{Deletes: DeleteWins, Columns: "columns"}, `unknown columns rule "columns"`},
	} {
		err := tc.p.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("policy %+v: error %v, want one saying %q", tc.p, err, tc.want)
		}
	}
}

// Convergence of column-level last-writer-wins over whole histories, as
// TestEveryPolicyConvergesInEveryArrivalOrder checks it for whole rows:
// writes set random columns of a row (inserts all of them, updates one or
// more), delete it and insert it again; every region and every arrival
// order must end with the row the documented rule names (deleted when a
// delete is among the writes no other write has seen, else each column
// from the highest stamp among those writes' rows), and every such write
// whose data is lost must be named, as overwritten, in every region's log.

var joinCols = []string{"x", "y", "z"}

// cwrite is a write of a column history: its version (with stamps) and
// row, as the region that made it versioned it.
type cwrite struct {
	hwrite
	ver Version
	row map[string]string // nil for a delete
}

// creplica is one region's copy of the row, kept as an applier keeps it.
type creplica struct {
	ver    Version
	exists bool
	row    map[string]string
	own    *cwrite          // the row's write's own row and stamps, when the row holds more
	kept   map[Write]cwrite // siblings' rows and versions, by write
	lost   map[Write]bool   // writes the log names as overwritten
}

// ownRow is the row's write's own row and version (stamps).
func (rep *creplica) ownRow() cwrite {
	if rep.own != nil {
		return *rep.own
	}
	return cwrite{ver: rep.ver, row: rep.row}
}

// maxCol is a max column of the simulated rows: not stamped, the greatest
// among the own rows of the result's write and its live siblings.
const maxCol = "m"

func atoi(s string) int {
	n := 0
	fmt.Sscan(s, &n)
	return n
}

func newCReplica() *creplica {
	return &creplica{kept: map[Write]cwrite{}, lost: map[Write]bool{}}
}

// versionRow is a source's version and row.
func (rep *creplica) source(t *testing.T, s Source, remote cwrite) (Version, map[string]string) {
	switch s.Side {
	case Local:
		return rep.ver, rep.row
	case Remote:
		return remote.ver, remote.row
	}
	k, ok := rep.kept[dot(s.Write)]
	if !ok {
		t.Fatalf("sibling %v joined but not kept", s.Write)
	}
	return k.ver, k.row
}

// apply applies a remote write as the applier does.
func (rep *creplica) apply(t *testing.T, p Policy, cw cwrite) {
	t.Helper()
	local := rep.ver
	localLive := rep.exists && !local.Deleted
	d := Decide(p, local, rep.exists || len(local.Vector) > 0, cw.ver, cw.op)
	if d.Action == Skip {
		return
	}
	if d.Action == External {
		t.Fatalf("external decision under %s", p.Label())
	}
	lw := Write{Origin: local.Origin, Tick: local.Vector.Get(local.Origin)}
	if d.SaveLocal && rep.row != nil {
		rep.kept[lw] = rep.ownRow()
	}
	if d.SaveRemote {
		rep.kept[dot(cw.w)] = cw
	}
	result := d.Result
	var row map[string]string
	var own *cwrite
	if !result.Deleted {
		srcs := JoinSources(d, local, localLive, cw.ver, cw.op)
		vers := make([]Version, len(srcs))
		rows := make([]map[string]string, len(srcs))
		for i, s := range srcs {
			vers[i], rows[i] = rep.source(t, s, cw)
		}
		from, stamps := JoinColumns(joinCols, vers, result)
		result.Stamps = stamps
		row = map[string]string{}
		for i, c := range joinCols {
			row[c] = rows[from[i]][c]
		}
		// The max column, from the own rows of the result's write and its
		// live siblings.
		var top cwrite
		switch d.Action {
		case ApplyRemote:
			top = cw
		case KeepLocal:
			top = rep.ownRow()
		case Reinstate:
			top = rep.kept[dot(d.Against)]
		}
		m, n := atoi(top.row[maxCol]), 1
		for _, s := range result.Siblings {
			if k, ok := rep.kept[dot(s)]; ok && !s.Deleted {
				m, n = max(m, atoi(k.row[maxCol])), n+1
			}
		}
		row[maxCol] = fmt.Sprint(m)
		if n > 1 {
			own = &cwrite{ver: top.ver, row: top.row}
		}
	}
	// Logged as overwritten: the write the decision ranked below the
	// winner, when its data is gone, and every live sibling whose columns
	// the row held before and does not now.
	lostNow := func(v Version) bool {
		return result.Deleted || len(LostColumns(joinCols, v, result)) > 0
	}
	if d.Conflict {
		loser, lv := cw.w, cw.ver
		if d.Winner == Remote {
			loser = d.Against
			lv = local
			if k, ok := rep.kept[dot(loser)]; ok {
				lv = k.ver
			}
		}
		if !loser.Deleted && lostNow(lv) {
			rep.lost[dot(loser)] = true
		}
	}
	for _, s := range result.Siblings {
		k, ok := rep.kept[dot(s)]
		if s.Deleted || !ok {
			continue
		}
		if localLive && len(LostColumns(joinCols, k.ver, local)) == 0 && lostNow(k.ver) {
			rep.lost[dot(s)] = true
		}
	}
	rep.ver, rep.exists, rep.row, rep.own = result, !result.Deleted, row, own
}

// write makes a local write: it changes the row as the region holds it.
func (rep *creplica) write(rng *rand.Rand, i int, r RegionID, hlc Timestamp) cwrite {
	live := rep.exists && !rep.ver.Deleted
	op := OpUpdate
	switch {
	case rng.IntN(4) == 0:
		op = OpDelete
	case !live:
		op = OpInsert
	}
	changed := make([]bool, len(joinCols))
	var row map[string]string
	if op != OpDelete {
		row = map[string]string{}
		maps.Copy(row, rep.row)
		// The trigger keeps the max column from moving back.
		row[maxCol] = fmt.Sprint(max(atoi(rep.row[maxCol]), rng.IntN(10)))
		n := 0
		for j, c := range joinCols {
			if op == OpInsert || rng.IntN(2) == 0 || (j == len(joinCols)-1 && n == 0) {
				changed[j] = true
				row[c] = fmt.Sprintf("w%d", i)
				n++
			}
		}
	}
	vec := rep.ver.Vector.Tick(r)
	ver := Version{Vector: vec, HLC: hlc, Origin: r, Deleted: op == OpDelete,
		Stamps: LocalStamps(rep.ver, live, op, joinCols, changed)}
	cw := cwrite{hwrite: hwrite{w: Write{Origin: r, Tick: vec.Get(r), HLC: hlc, Deleted: op == OpDelete}, vec: vec, op: op}, ver: ver, row: row}
	rep.ver, rep.exists, rep.row, rep.own = ver, op != OpDelete, row, nil
	return cw
}

// expectedJoin is the documented outcome: the row (nil when deleted) and
// the writes whose data it lost, of those no other write has seen.
func expectedJoin(ws []cwrite) (row map[string]string, lost []int) {
	var frontier []int
	deleted := false
	for i, cw := range ws {
		seen := false
		for j, o := range ws {
			if j != i && o.w.saw(o.vec, cw.w) {
				seen = true
			}
		}
		if !seen {
			frontier = append(frontier, i)
			deleted = deleted || cw.w.Deleted
		}
	}
	if deleted {
		for _, i := range frontier {
			if !ws[i].w.Deleted {
				lost = append(lost, i)
			}
		}
		return nil, lost
	}
	vers := make([]Version, len(frontier))
	for k, i := range frontier {
		vers[k] = ws[i].ver
	}
	from, stamps := JoinColumns(joinCols, vers, vers[0])
	joined := vers[0]
	joined.Stamps = stamps
	row = map[string]string{}
	for k, c := range joinCols {
		row[c] = ws[frontier[from[k]]].row[c]
	}
	m := 0
	for _, i := range frontier {
		m = max(m, atoi(ws[i].row[maxCol]))
	}
	row[maxCol] = fmt.Sprint(m)
	for _, i := range frontier {
		if len(LostColumns(joinCols, ws[i].ver, joined)) > 0 {
			lost = append(lost, i)
		}
	}
	return row, lost
}

func TestColumnLWWConvergesInEveryArrivalOrder(t *testing.T) {
	histories := 4000
	if testing.Short() {
		histories = 100
	}
	p := Policy{Deletes: DeleteWins, Columns: ColumnLWW, Max: []string{maxCol}}
	rng := rand.New(rand.NewPCG(5, 17))
	for n := 0; n < histories; n++ {
		regions := convergeRegions[:2+rng.IntN(3)]
		nwrites := 2 + rng.IntN(4)
		var ws []cwrite
		reps := map[RegionID]*creplica{}
		for _, r := range regions {
			reps[r] = newCReplica()
		}
		exchange(rng, regions, nwrites, func(r RegionID, i int) {
			rep := reps[r]
			hlc := max(rep.ver.Latest()+1, Timestamp(1+rng.IntN(6)))
			ws = append(ws, rep.write(rng, i, r, hlc))
		}, func(dst RegionID, i int) { reps[dst].apply(t, p, ws[i]) })
		want, lost := expectedJoin(ws)
		check := func(rep *creplica, where string) {
			t.Helper()
			if (want == nil) != !rep.exists || !maps.Equal(rep.row, want) {
				t.Fatalf("%s: row %v (exists %v), want %v\n%s", where, rep.row, rep.exists, want, cstring(ws))
			}
			for _, i := range lost {
				if !rep.lost[dot(ws[i].w)] {
					t.Fatalf("%s: w%d lost data and is not logged as overwritten\n%s", where, i, cstring(ws))
				}
			}
		}
		for _, r := range regions {
			check(reps[r], "region "+string(r))
		}
		h := &history{}
		for _, cw := range ws {
			h.writes = append(h.writes, cw.hwrite)
		}
		interleavings(h, func(order []int) {
			rep := newCReplica()
			for _, i := range order {
				rep.apply(t, p, ws[i])
			}
			check(rep, fmt.Sprintf("observer order %v", order))
			for _, i := range order {
				before := maps.Clone(rep.row)
				rep.apply(t, p, ws[i])
				if !maps.Equal(before, rep.row) {
					t.Fatalf("redelivery of w%d changed the row", i)
				}
			}
		})
	}
}

func cstring(ws []cwrite) string {
	var b strings.Builder
	for i, cw := range ws {
		fmt.Fprintf(&b, "  w%d %s:%d hlc %d %s vec %s stamps %v row %v\n", i, cw.w.Origin, cw.w.Tick, cw.w.HLC, cw.op, cw.vec, cw.ver.Stamps, cw.row)
	}
	return b.String()
}

// FuzzJoinColumnsIsASemilattice: joining rows column by column is
// commutative, associative and idempotent, whatever the stamps, so a row
// joined from several writes does not depend on the order they were
// joined in.
func FuzzJoinColumnsIsASemilattice(f *testing.F) {
	f.Add(uint64(1), uint64(2))
	f.Add(uint64(99), uint64(7))
	f.Fuzz(func(t *testing.T, seed1, seed2 uint64) {
		rng := rand.New(rand.NewPCG(seed1, seed2))
		regions := []RegionID{"", "a", "b"}
		stamp := func() Stamp { return Stamp{HLC: Timestamp(rng.IntN(4)), Origin: regions[rng.IntN(3)]} }
		type jrow struct {
			ver Version
			val map[string]Stamp // each column's value is the stamp it carries
		}
		mk := func() jrow {
			v := Version{HLC: Timestamp(rng.IntN(4)), Origin: regions[rng.IntN(3)], Stamps: map[string]Stamp{}}
			for _, c := range joinCols {
				if rng.IntN(2) == 0 {
					v.Stamps[c] = stamp()
				}
			}
			val := map[string]Stamp{}
			for _, c := range joinCols {
				val[c] = v.StampOf(c)
			}
			return jrow{v, val}
		}
		join := func(rows ...jrow) jrow {
			vers := make([]Version, len(rows))
			for i, r := range rows {
				vers[i] = r.ver
			}
			winner := vers[0]
			from, stamps := JoinColumns(joinCols, vers, winner)
			out := jrow{ver: Version{HLC: winner.HLC, Origin: winner.Origin, Stamps: stamps}, val: map[string]Stamp{}}
			for i, c := range joinCols {
				out.val[c] = rows[from[i]].val[c]
			}
			return out
		}
		same := func(x, y jrow) bool {
			for _, c := range joinCols {
				if x.val[c] != y.val[c] || x.ver.StampOf(c) != y.ver.StampOf(c) {
					return false
				}
			}
			return true
		}
		a, b, c := mk(), mk(), mk()
		if !same(join(a, b), join(b, a)) {
			t.Fatalf("not commutative: %+v %+v", a, b)
		}
		if !same(join(a, join(b, c)), join(join(a, b), c)) {
			t.Fatalf("not associative: %+v %+v %+v", a, b, c)
		}
		if !same(join(a, a), a) {
			t.Fatalf("not idempotent: %+v", a)
		}
	})
}
