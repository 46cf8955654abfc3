package postgres

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

// A row with a name decided by the policy and a counter column; and a
// counter-only row.
var (
	planShape   = replicator.Shape{Table: "public.clients", Columns: []string{"id", "name", "hits"}, Types: []string{"bigint", "text", "bigint"}, Key: []int{0}}
	planTotals  = replicator.Shape{Table: "public.totals", Columns: []string{"id", "hits"}, Types: []string{"bigint", "bigint"}, Key: []int{0}}
	lww         = conflict.Policy{}
	lwwCounters = conflict.Policy{Counters: []string{"hits"}}
	deleteWins  = conflict.Policy{Counters: []string{"hits"}, Deletes: conflict.DeleteWins}
)

const planSeq = replicator.Seq(77)

func vals(vs ...string) []replicator.Value {
	out := make([]replicator.Value, len(vs))
	for i, v := range vs {
		out[i] = replicator.Value{Text: v}
	}
	return out
}

func text(s string) *string { return &s }

// liveRow is a local row as the applier reads it: its values, the
// transaction that wrote it and its recorded version.
func liveRow(hits string, v conflict.Version, srcSeq int64) rowState {
	return rowState{exists: true, xmin: "700", values: map[string]*string{"hits": text(hits)}, versioned: true,
		meta: &meta{version: v, xid: "700", srcSeq: srcSeq, tupleXmin: "701", counters: map[string]string{"hits": hits}}}
}

func version(hlc conflict.Timestamp, origin conflict.RegionID, vec conflict.Vector) conflict.Version {
	return conflict.Version{Vector: vec, HLC: hlc, Origin: origin}
}

// plan decides c against s as applyChange does (no custom resolver, no
// max or min columns, no column-level policy) and plans its writes.
func plan(t *testing.T, pol conflict.Policy, sh replicator.Shape, s rowState, c replicator.Change) (changePlan, conflict.Decision, error) {
	t.Helper()
	d := conflict.Decide(pol, s.version(), s.exists || s.meta != nil, c.Version, c.Op)
	txn := &replicator.Txn{Seq: planSeq}
	p, err := planChange(changeInput{region: "ap", pol: pol, sh: &sh, seq: planSeq, c: &c, s: s, d: d, merged: losesNothing(sh, pol, d),
		sibs: keptSiblings(sh, txn, &c, &s, d)})
	return p, d, err
}

// kinds lists a plan's writes, in order.
func kinds(p changePlan) string {
	names := map[opKind]string{opInsert: "insert", opUpdate: "update", opDelete: "delete", opMeta: "version", opConflict: "conflict", opOther: "other"}
	var out []string
	for _, o := range p.ops {
		out = append(out, names[o.kind])
	}
	return strings.Join(out, ",")
}

func opOf(p changePlan, k opKind) *op {
	for i := range p.ops {
		if p.ops[i].kind == k {
			return &p.ops[i]
		}
	}
	return nil
}

func rowText(row []replicator.Value) string {
	var out []string
	for _, v := range row {
		switch {
		case v.Unchanged:
			out = append(out, "-")
		case v.Null:
			out = append(out, "NULL")
		default:
			out = append(out, v.Text)
		}
	}
	return strings.Join(out, "|")
}

func TestPlanChange(t *testing.T) {
	us1 := version(100, "us", conflict.Vector{"us": 1})
	for _, tc := range []struct {
		name string
		pol  conflict.Policy
		sh   replicator.Shape
		s    rowState
		c    replicator.Change
		// what the plan must do
		writes    string // kinds, in order
		row       string // the row written (insert or update), "-" for a column left alone
		version   conflict.Version
		srcSeq    int64
		xid       string
		counters  map[string]string
		readXmin  string // the version tuple the version write is conditioned on
		winner    string // the conflict record's winner ("" when none is logged)
		exists    bool   // the row afterwards
		nextHits  string // the row's counter afterwards ("" when it does not exist)
		parkMatch string
	}{
		{
			name: "an insert of a new key inserts the row with its counters and records its version",
			pol:  lwwCounters, sh: planShape, s: rowState{},
			c:      replicator.Change{Op: conflict.OpInsert, Key: `["1"]`, Row: vals("1", "a", "5"), Deltas: map[string]string{"hits": "5"}, Version: us1},
			writes: "insert,version", row: "1|a|5", version: us1, srcSeq: int64(planSeq), xid: "@", counters: map[string]string{"hits": "5"},
			exists: true, nextHits: "5",
		},
		{
			name: "an update that saw the local write replaces the row; the counter moves by its delta, not to its value",
			pol:  lwwCounters, sh: planShape, s: liveRow("10", us1, 3),
			c: replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: vals("1", "b", "7"), Deltas: map[string]string{"hits": "2"},
				Version: version(200, "eu", conflict.Vector{"us": 1, "eu": 1})},
			writes: "update,version", row: "1|b|12", version: version(200, "eu", conflict.Vector{"us": 1, "eu": 1}), srcSeq: int64(planSeq), xid: "@",
			counters: map[string]string{"hits": "12"}, readXmin: "701", exists: true, nextHits: "12",
		},
		{
			name: "concurrent updates: the later write wins, its row is written and the local write is logged as the loser",
			pol:  lww, sh: planShape, s: liveRow("10", version(300, "us", conflict.Vector{"us": 2}), 3),
			c: replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: vals("1", "b", "7"),
				Version: version(400, "eu", conflict.Vector{"us": 1, "eu": 1})},
			writes: "update,version,conflict", row: "1|b|7", version: version(400, "eu", conflict.Vector{"us": 2, "eu": 1}), srcSeq: int64(planSeq), xid: "@",
			readXmin: "701", winner: "remote", exists: true, nextHits: "",
		},
		{
			name: "concurrent updates: the local write wins; only the version (still the local write's) and the log are written",
			pol:  lww, sh: planShape, s: liveRow("10", version(500, "us", conflict.Vector{"us": 2}), 3),
			c: replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: vals("1", "b", "7"),
				Version: version(400, "eu", conflict.Vector{"us": 1, "eu": 1})},
			writes: "version,conflict", version: version(500, "us", conflict.Vector{"us": 2, "eu": 1}), srcSeq: 3, xid: "700",
			readXmin: "701", winner: "local", exists: true, nextHits: "",
		},
		{
			name: "concurrent updates of the local write's counters: the local write wins, the remote increment is still added",
			pol:  lwwCounters, sh: planShape, s: liveRow("10", version(500, "us", conflict.Vector{"us": 2}), 3),
			c: replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: vals("1", "b", "7"), Deltas: map[string]string{"hits": "3"},
				Version: version(400, "eu", conflict.Vector{"us": 1, "eu": 1})},
			writes: "update,version,conflict", row: "-|-|13", version: version(500, "us", conflict.Vector{"us": 2, "eu": 1}), srcSeq: 3, xid: "@",
			counters: map[string]string{"hits": "13"}, readXmin: "701", winner: "local", exists: true, nextHits: "13",
		},
		{
			name: "concurrent increments of a counter-only row merge: both kept, nothing logged",
			pol:  lwwCounters, sh: planTotals, s: liveRow("10", version(500, "us", conflict.Vector{"us": 2}), 3),
			c: replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: vals("1", "4"), Deltas: map[string]string{"hits": "3"},
				Version: version(400, "eu", conflict.Vector{"us": 1, "eu": 1})},
			writes: "update,version", row: "-|13", version: version(500, "us", conflict.Vector{"us": 2, "eu": 1}), srcSeq: 3, xid: "@",
			counters: map[string]string{"hits": "13"}, readXmin: "701", exists: true, nextHits: "13",
		},
		{
			name: "a delete that saw the row removes it; the tombstone keeps the counter's sum as it was",
			pol:  lwwCounters, sh: planShape, s: liveRow("10", us1, 3),
			c: replicator.Change{Op: conflict.OpDelete, Key: `["1"]`, Deltas: map[string]string{"hits": "-10"},
				Version: conflict.Version{Vector: conflict.Vector{"us": 1, "eu": 1}, HLC: 200, Origin: "eu", Deleted: true}},
			writes: "delete,version", version: conflict.Version{Vector: conflict.Vector{"us": 1, "eu": 1}, HLC: 200, Origin: "eu", Deleted: true},
			srcSeq: int64(planSeq), xid: "", counters: map[string]string{"hits": "10"}, readXmin: "701", exists: false,
		},
		{
			name: "a tombstone that wins keeps adding concurrent increments to its sums; the row stays deleted",
			pol:  deleteWins, sh: planShape,
			s: rowState{versioned: true, meta: &meta{version: conflict.Version{Vector: conflict.Vector{"us": 2}, HLC: 500, Origin: "us", Deleted: true}, srcSeq: 3,
				tupleXmin: "701", counters: map[string]string{"hits": "10"}}},
			c: replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: vals("1", "b", "14"), Deltas: map[string]string{"hits": "4"},
				Version: version(600, "eu", conflict.Vector{"us": 1, "eu": 1})},
			writes: "version,conflict", version: conflict.Version{Vector: conflict.Vector{"us": 2, "eu": 1}, HLC: 500, Origin: "us", Deleted: true},
			srcSeq: 3, xid: "", counters: map[string]string{"hits": "14"}, readXmin: "701", winner: "local", exists: false,
		},
		{
			name: "a change the local row has already seen writes nothing",
			pol:  lwwCounters, sh: planShape, s: liveRow("10", version(500, "us", conflict.Vector{"us": 2, "eu": 2}), 3),
			c: replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: vals("1", "b", "7"),
				Version: version(400, "eu", conflict.Vector{"us": 1, "eu": 1})},
			writes: "", exists: true, nextHits: "10",
		},
		{
			name: "a write the row has seen through a later write that saw it still adds its increment (each write's delta once, in any order)",
			pol:  lwwCounters, sh: planShape, s: liveRow("10", version(500, "us", conflict.Vector{"us": 2, "eu": 2}), 3),
			c: replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: vals("1", "b", "7"), Deltas: map[string]string{"hits": "5"},
				Version: version(400, "eu", conflict.Vector{"us": 1, "eu": 1})},
			writes: "update,version", row: "-|-|15", version: version(500, "us", conflict.Vector{"us": 2, "eu": 2}), srcSeq: 3, xid: "@",
			counters: map[string]string{"hits": "15"}, readXmin: "701", exists: true, nextHits: "15",
		},
		{
			name: "an update of a row absent here that did not send a TOAST column is parked",
			pol:  lww, sh: planShape, s: rowState{},
			c: replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: []replicator.Value{{Text: "1"}, {Unchanged: true}, {Text: "7"}},
				Version: version(400, "eu", conflict.Vector{"eu": 1})},
			parkMatch: `column "name" was not sent (unchanged TOAST value)`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, d, err := plan(t, tc.pol, tc.sh, tc.s, tc.c)
			if err != nil {
				t.Fatal(err)
			}
			if tc.parkMatch != "" {
				if !strings.Contains(p.park, tc.parkMatch) || len(p.ops) > 0 {
					t.Fatalf("park %q with %d writes; want parked: %s", p.park, len(p.ops), tc.parkMatch)
				}
				return
			}
			if p.park != "" {
				t.Fatalf("parked: %s", p.park)
			}
			if got := kinds(p); got != tc.writes {
				t.Fatalf("writes %q, want %q (decision %+v)", got, tc.writes, d)
			}
			if w := opOf(p, opInsert); w != nil && rowText(w.row) != tc.row {
				t.Errorf("inserted row %s, want %s", rowText(w.row), tc.row)
			}
			if w := opOf(p, opUpdate); w != nil && rowText(w.row) != tc.row {
				t.Errorf("updated row %s, want %s", rowText(w.row), tc.row)
			}
			if m := opOf(p, opMeta); m != nil {
				v := m.meta.version
				if conflict.Compare(v.Vector, tc.version.Vector) != conflict.Equal || v.HLC != tc.version.HLC || v.Origin != tc.version.Origin || v.Deleted != tc.version.Deleted {
					t.Errorf("version %v@%d from %s deleted=%v, want %v@%d from %s deleted=%v", v.Vector, v.HLC, v.Origin, v.Deleted,
						tc.version.Vector, tc.version.HLC, tc.version.Origin, tc.version.Deleted)
				}
				if m.meta.srcSeq != tc.srcSeq {
					t.Errorf("source sequence %d, want %d", m.meta.srcSeq, tc.srcSeq)
				}
				if m.meta.xid != tc.xid {
					t.Errorf("xid %q, want %q", m.meta.xid, tc.xid)
				}
				if len(m.meta.counters) != len(tc.counters) || m.meta.counters["hits"] != tc.counters["hits"] {
					t.Errorf("recorded sums %v, want %v", m.meta.counters, tc.counters)
				}
				if m.tupleXmin != tc.readXmin {
					t.Errorf("version written over tuple %q, want %q", m.tupleXmin, tc.readXmin)
				}
				if p.next.meta != m.meta || p.next.meta.tupleXmin != ownTuple {
					t.Errorf("the row's state does not carry the version written")
				}
			}
			switch {
			case tc.winner == "" && (p.record != nil || opOf(p, opConflict) != nil):
				t.Errorf("a conflict was logged: %+v", p.record)
			case tc.winner != "" && (p.record == nil || p.record.winner != tc.winner):
				t.Errorf("conflict record %+v, want one won by %s", p.record, tc.winner)
			case tc.winner != "" && (p.record.region != "ap" || p.record.sourceSeq != int64(planSeq) || p.record.key != tc.c.Key):
				t.Errorf("conflict record names region %s, source sequence %d, key %s", p.record.region, p.record.sourceSeq, p.record.key)
			}
			if p.next.exists != tc.exists {
				t.Errorf("row exists afterwards: %v, want %v", p.next.exists, tc.exists)
			}
			if tc.nextHits != "" {
				if h := p.next.values["hits"]; h == nil || *h != tc.nextHits {
					t.Errorf("the row's counter afterwards %v, want %s", h, tc.nextHits)
				}
			}
		})
	}
}

// The plan works on a copy: the row's state as read is left as it was, so
// a write that fails in the careful path can put it back.
func TestPlanChangeLeavesTheRowStateAsRead(t *testing.T) {
	s := liveRow("10", version(100, "us", conflict.Vector{"us": 1}), 3)
	p, _, err := plan(t, lwwCounters, planShape, s, replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: vals("1", "b", "7"),
		Deltas: map[string]string{"hits": "2"}, Version: version(200, "eu", conflict.Vector{"us": 1, "eu": 1})})
	if err != nil {
		t.Fatal(err)
	}
	if *s.values["hits"] != "10" || s.meta.srcSeq != 3 || s.written || len(s.pending) != 0 {
		t.Fatalf("row state changed: hits %s, source sequence %d, written %v, %d pending", *s.values["hits"], s.meta.srcSeq, s.written, len(s.pending))
	}
	if !p.next.written || *p.next.values["hits"] != "12" || len(p.next.pending) != 1 {
		t.Fatalf("next state: written %v, hits %s, %d pending", p.next.written, *p.next.values["hits"], len(p.next.pending))
	}
}

// A change older than the row (a write the row's version has seen) only
// adds its increments. When the row's image was not read, the write waits
// in pending with the row as read marked unloaded, so that a later change
// of the batch that needs the image (a max column merged with a sibling, a
// conflict record) reads the row and folds the increment in, instead of
// finding the row written and no image.
func TestPlanChangeAnIncrementLeavesTheRowToBeRead(t *testing.T) {
	s := liveRow("10", version(300, "eu", conflict.Vector{"eu": 2, "us": 1}), 3)
	p, d, err := plan(t, deleteWins, planShape, s, replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: vals("1", "b", "7"),
		Deltas: map[string]string{"hits": "2"}, Version: version(200, "us", conflict.Vector{"eu": 1, "us": 1})})
	if err != nil {
		t.Fatal(err)
	}
	if d.Action != conflict.Skip || kinds(p) != "update,version" || rowText(opOf(p, opUpdate).row) != "-|-|12" {
		t.Fatalf("decision %v, writes %s: want the increment alone", d.Action, kinds(p))
	}
	n := p.next
	if !n.written || !n.baseDeferred || len(n.pending) != 1 || n.image != nil {
		t.Fatalf("next state: written %v, base deferred %v, %d pending, image %s", n.written, n.baseDeferred, len(n.pending), n.image)
	}
	// Folding waits for the row as read.
	n.foldImage()
	if n.image != nil || len(n.pending) != 1 {
		t.Fatalf("folded without the row as read: image %s, %d pending", n.image, len(n.pending))
	}
	// With the image known, the increment is folded in as before.
	s.image = []byte(`{"id": "1", "name": "a", "hits": "10"}`)
	p, _, err = plan(t, deleteWins, planShape, s, replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: vals("1", "b", "7"),
		Deltas: map[string]string{"hits": "2"}, Version: version(200, "us", conflict.Vector{"eu": 1, "us": 1})})
	if err != nil {
		t.Fatal(err)
	}
	n = p.next
	n.foldImage()
	if n.baseDeferred || string(n.image) != `{"hits":"12","id":"1","name":"a"}` {
		t.Fatalf("image %s (base deferred %v), want the row as read with the increment", n.image, n.baseDeferred)
	}
}

func TestPlanChangeRefusesAMalformedDelta(t *testing.T) {
	_, _, err := plan(t, lwwCounters, planShape, liveRow("10", version(100, "us", conflict.Vector{"us": 1}), 3),
		replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: vals("1", "b", "7"), Deltas: map[string]string{"hits": "two"},
			Version: version(200, "eu", conflict.Vector{"us": 1, "eu": 1})})
	if err == nil || !strings.Contains(err.Error(), "public.clients.hits") {
		t.Fatalf("err = %v; want one naming the counter", err)
	}
}

// Under column_lww two concurrent updates that set different columns both
// keep what they set: the row written holds the local write's name and the
// remote write's email, and the conflict is logged as merged (nothing of
// the losing write is gone). When both set the same column, the later
// write's value stays and the loser is logged as overwritten.
func TestPlanChangeJoinsColumns(t *testing.T) {
	sh := replicator.Shape{Table: "public.profiles", Columns: []string{"id", "name", "email"}, Types: []string{"bigint", "text", "text"}, Key: []int{0}}
	pol := conflict.Policy{Columns: conflict.ColumnLWW}
	base := conflict.Stamp{HLC: 100, Origin: "us"}
	// The local write (us, 300) set the name over the row both had seen.
	localV := conflict.Version{Vector: conflict.Vector{"us": 2}, HLC: 300, Origin: "us", Stamps: map[string]conflict.Stamp{"email": base}}
	local := rowState{exists: true, xmin: "700", versioned: true, image: []byte(`{"id":"1","name":"local name","email":"old@example.com"}`),
		meta: &meta{version: localV, xid: "700", srcSeq: 3, tupleXmin: "701"}}
	for _, tc := range []struct {
		name           string
		remoteStamps   map[string]conflict.Stamp // the columns the remote write did not set
		remoteRow      []replicator.Value
		wantName       string
		wantEmail      string
		wantLostByPlan conflict.Outcome
	}{
		{
			name:         "different columns: both kept",
			remoteStamps: map[string]conflict.Stamp{"name": base},
			remoteRow:    vals("1", "old name", "new@example.com"),
			wantName:     "local name", wantEmail: "new@example.com", wantLostByPlan: conflict.Merged,
		},
		{
			name:         "the same column: the later write's value",
			remoteStamps: map[string]conflict.Stamp{"email": base},
			remoteRow:    vals("1", "remote name", "old@example.com"),
			wantName:     "remote name", wantEmail: "old@example.com", wantLostByPlan: conflict.Overwritten,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The remote write (eu, 400) had not seen the local one.
			remote := conflict.Version{Vector: conflict.Vector{"us": 1, "eu": 1}, HLC: 400, Origin: "eu", Stamps: tc.remoteStamps}
			p, d, err := plan(t, pol, sh, local, replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: tc.remoteRow, Version: remote})
			if err != nil || p.park != "" {
				t.Fatalf("err %v, park %q", err, p.park)
			}
			if !d.Conflict {
				t.Fatalf("decision %+v: want a conflict", d)
			}
			w := opOf(p, opUpdate)
			if w == nil {
				t.Fatalf("writes %s: want the joined row written", kinds(p))
			}
			// A column left alone keeps the local row's value.
			got := map[string]string{}
			for i, col := range sh.Columns {
				switch v := w.row[i]; {
				case v.Unchanged && col == "name":
					got[col] = "local name"
				case v.Unchanged && col == "email":
					got[col] = "old@example.com"
				default:
					got[col] = v.Text
				}
			}
			if got["name"] != tc.wantName || got["email"] != tc.wantEmail {
				t.Fatalf("row written %s: name %q, email %q; want %q, %q", rowText(w.row), got["name"], got["email"], tc.wantName, tc.wantEmail)
			}
			if p.record == nil || p.record.outcome() != tc.wantLostByPlan {
				t.Fatalf("conflict record %+v: want one whose loser was %s", p.record, tc.wantLostByPlan)
			}
			m := opOf(p, opMeta).meta.version
			if m.StampOf("name") != (conflict.Stamp{HLC: 300, Origin: "us"}) && tc.wantName == "local name" {
				t.Errorf("name stamped %+v: want the local write's", m.StampOf("name"))
			}
			if m.StampOf("email") == base && tc.wantEmail == "new@example.com" {
				t.Errorf("email stamped %+v: want the remote write's", m.StampOf("email"))
			}
		})
	}
}

// Under region priority a write that lost is kept as a sibling while it may
// win again. Here the row holds a's write with c's (which lost to it) kept;
// b's update supersedes a's but not c's, and c outranks b: c's row comes
// back, under c's version and source sequence, and b's write is kept as the
// new sibling, row and all.
func TestPlanChangeReinstatesASibling(t *testing.T) {
	sh := replicator.Shape{Table: "public.docs", Columns: []string{"id", "name"}, Types: []string{"bigint", "text"}, Key: []int{0}}
	pol := conflict.Policy{Kind: conflict.RegionPriority, Priority: []conflict.RegionID{"a", "c", "b"}}
	v1 := conflict.Version{Vector: conflict.Vector{"a": 1}, HLC: 10, Origin: "a"}
	v3 := conflict.Version{Vector: conflict.Vector{"c": 1}, HLC: 15, Origin: "c"}
	d := conflict.Decide(pol, conflict.Version{}, false, v1, conflict.OpInsert)
	d = conflict.Decide(pol, d.Result, true, v3, conflict.OpInsert)
	if len(d.Result.Siblings) != 1 {
		t.Fatalf("setup: %+v", d)
	}
	cDot := dotOf(d.Result.Siblings[0])
	s := rowState{exists: true, xmin: "700", versioned: true, image: []byte(`{"id":"1","name":"from a"}`),
		meta: &meta{version: d.Result, xid: "700", srcSeq: 4, tupleXmin: "701",
			siblings: siblingSet{cDot: {row: []byte(`{"id":"1","name":"from c"}`), seq: 9, vv: "c:1"}}}}
	v2 := conflict.Version{Vector: conflict.Vector{"a": 1, "b": 1}, HLC: 20, Origin: "b"}
	p, dec, err := plan(t, pol, sh, s, replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: vals("1", "from b"), Version: v2})
	if err != nil || p.park != "" {
		t.Fatalf("err %v, park %q", err, p.park)
	}
	if dec.Action != conflict.Reinstate {
		t.Fatalf("decision %+v: want c's write reinstated", dec)
	}
	if got := kinds(p); got != "update,version,conflict" {
		t.Fatalf("writes %q", got)
	}
	if w := opOf(p, opUpdate); rowText(w.row) != "1|from c" {
		t.Fatalf("row written %s: want c's", rowText(w.row))
	}
	m := opOf(p, opMeta).meta
	if m.version.Origin != "c" || m.srcSeq != 9 || m.xid != "@" {
		t.Fatalf("version from %s, source sequence %d, xid %q: want c's write (sequence 9), written here", m.version.Origin, m.srcSeq, m.xid)
	}
	bDot := dotKey{"b", 1}
	if sd, ok := m.siblings[bDot]; !ok || string(rowImage(sh, vals("1", "from b"), nil)) != string(sd.row) || sd.seq != int64(planSeq) {
		t.Fatalf("siblings kept %+v: want b's write with its row and sequence %d", m.siblings, planSeq)
	}
	if p.record == nil || p.record.winner != "local" || p.record.localOrigin != "c" || p.record.remoteOrigin != "b" {
		t.Fatalf("conflict record %+v: want c's sibling winning over b's write", p.record)
	}
}

// A row that absorbs a write without giving it the row (a concurrent write
// that lost) has a vector that holds more than its write's own. Every region
// names that write with the vector it was made with, so that is what the
// row keeps apart (meta.ownVV) and what a conflict record, a sibling and a
// custom resolver get: here us, eu and ap update a row at once, and the
// region deciding holds us's write and meets eu's, then ap's.
func TestPlanChangeKeepsTheHoldingWritesOwnVector(t *testing.T) {
	u := version(100, "us", conflict.Vector{"us": 2})
	e := version(200, "eu", conflict.Vector{"us": 1, "eu": 1})
	a := version(150, "ap", conflict.Vector{"us": 1, "ap": 1})
	s := liveRow("10", u, 3)
	s.image = []byte(`{"hits":"10","id":"1","name":"us"}`)

	// eu's write wins and holds the row; the row's vector also holds us's.
	p, d, err := plan(t, lww, planShape, s, replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: vals("1", "eu", "10"), Version: e})
	if err != nil || d.Winner != conflict.Remote {
		t.Fatalf("eu's write: %v, %+v", err, d)
	}
	m := opOf(p, opMeta).meta
	if m.version.Vector.String() != "eu:1,us:2" || m.ownVV.String() != "eu:1,us:1" {
		t.Fatalf("after eu's write: row vector %s, own %s; want eu:1,us:2 and eu:1,us:1", m.version.Vector, m.ownVV)
	}
	if own := ownValue(m); own == nil || *own != `{"vv":"eu:1,us:1"}` {
		t.Fatalf("stored own %v", own)
	}
	if p.record.localVersion != "us:2" {
		t.Fatalf("first record's local version %s, want us:2", p.record.localVersion)
	}

	// ap's write loses to eu's: the record names eu's write as eu and ap
	// name it, and the row keeps eu's own vector.
	s = p.next
	s.image = []byte(`{"hits":"10","id":"1","name":"eu"}`)
	p, d, err = plan(t, lww, planShape, s, replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: vals("1", "ap", "10"), Version: a})
	if err != nil || d.Winner != conflict.Local {
		t.Fatalf("ap's write: %v, %+v", err, d)
	}
	if p.record.localVersion != "eu:1,us:1" || p.record.remoteVersion != "ap:1,us:1" {
		t.Fatalf("record names eu's write %s and ap's %s; want eu:1,us:1 and ap:1,us:1", p.record.localVersion, p.record.remoteVersion)
	}
	m = opOf(p, opMeta).meta
	if m.version.Vector.String() != "ap:1,eu:1,us:2" || m.ownVV.String() != "eu:1,us:1" {
		t.Fatalf("after ap's write: row vector %s, own %s", m.version.Vector, m.ownVV)
	}
	held := p.next
	img, v := resolverArgs(planShape, &replicator.Change{Key: `["1"]`, Version: a}, &held, conflict.Write{Origin: "eu", Tick: 1, HLC: 200})
	var rv conflict.Version
	if err := json.Unmarshal(v, &rv); err != nil || rv.Vector.String() != "eu:1,us:1" || img == "null" {
		t.Fatalf("resolver's local argument %s (%v), image %s: want eu's own vector", v, err, img)
	}

	// Under region priority a higher region's write takes the row and
	// eu's is kept as a sibling, with its own vector.
	prio := conflict.Policy{Kind: conflict.RegionPriority, Priority: []conflict.RegionID{"sa", "eu", "us", "ap"}}
	sa := version(120, "sa", conflict.Vector{"us": 1, "sa": 1})
	p, d, err = plan(t, prio, planShape, held, replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: vals("1", "sa", "10"), Version: sa})
	if err != nil || !d.SaveLocal {
		t.Fatalf("sa's write: %v, %+v", err, d)
	}
	m = opOf(p, opMeta).meta
	if sd, ok := m.siblings[dotKey{"eu", 1}]; !ok || sd.vv != "eu:1,us:1" {
		t.Fatalf("siblings %+v: want eu's write kept with eu:1,us:1", m.siblings)
	}
	if m.ownVV.String() != "sa:1,us:1" {
		t.Fatalf("sa's write holds the row with own %s, want sa:1,us:1", m.ownVV)
	}

	// A write that saw everything holds the row with its own vector.
	all := version(300, "us", conflict.Vector{"us": 3, "eu": 1, "ap": 1, "sa": 1})
	p, _, err = plan(t, prio, planShape, p.next, replicator.Change{Op: conflict.OpUpdate, Key: `["1"]`, Row: vals("1", "us", "10"), Version: all})
	if err != nil {
		t.Fatal(err)
	}
	if m = opOf(p, opMeta).meta; m.ownVV != nil || ownValue(m) != nil {
		t.Fatalf("own %s kept for a write that saw the whole row", m.ownVV)
	}
}

// A custom resolver gets the local row's write as it was made, as every
// region holds it: its own row (not the one its max column was merged
// into here) and its own vector (not the row's, which absorbed more).
func TestResolverArgsNameTheLocalWriteAsMade(t *testing.T) {
	sh := replicator.Shape{Table: "public.usage", Columns: []string{"id", "note", "seen"}, Types: []string{"bigint", "text", "timestamptz"}, Key: []int{0}}
	own := rowImage(sh, vals("1", "eu", "2026-01-01 00:00:05+00"), nil)
	s := rowState{exists: true, xmin: "700", versioned: true,
		image: rowImage(sh, vals("1", "eu", "2026-01-01 00:00:09+00"), nil), // seen: the max merged from a sibling
		meta:  &meta{version: version(200, "eu", conflict.Vector{"eu": 1, "us": 2}), ownVV: conflict.Vector{"eu": 1, "us": 1}, own: own, xid: "700", tupleXmin: "701"}}
	remote := version(150, "ap", conflict.Vector{"ap": 1, "us": 1})
	img, v := resolverArgs(sh, &replicator.Change{Key: `["1"]`, Version: remote}, &s, conflict.Write{Origin: "eu", Tick: 1, HLC: 200})
	var got conflict.Version
	if err := json.Unmarshal(v, &got); err != nil {
		t.Fatal(err)
	}
	if img != string(own) || got.Vector.String() != "eu:1,us:1" || got.Origin != "eu" || got.HLC != 200 {
		t.Fatalf("local argument %s, version %s: want the write's own row %s and vector eu:1,us:1", img, v, own)
	}
}
