package conflict

import (
	"cmp"
	"slices"
)

// Column-level last-writer-wins (Policy.Columns = ColumnLWW): concurrent
// updates that set different columns of a row are both kept; a column both
// set goes to the write with the later hybrid timestamp.
//
// Every column of a row carries a stamp, the write that last set it (its
// hybrid timestamp and region). A write stamps the columns it changes with
// its own stamp and leaves the others' as they were on the row it changed;
// an insert stamps every column. Whether the row exists is decided as for
// any row (the rule of the siblings: of the writes no other write has seen,
// the highest-ranked wins), under last-writer-wins with deletes:
// delete_wins, so a row is live exactly when no delete is among those
// writes. A live row holds, column by column, the value of the highest
// stamp among those writes' rows (JoinColumns). A live write that lost is
// kept as a sibling with its row and stamps, so that its columns still
// count once the winner is superseded or the row is deleted and inserted
// again.
//
// Why delete_wins: a row joined from several writes cannot be taken apart
// again, so a delete must never lose to a write concurrent with it. Under
// delete_wins a write that supersedes a delete is an insert, whose stamps
// are above those of every write the delete saw; so joining every row a
// region still knows gives the same columns as joining the rows of the
// writes no other write has seen, in any arrival order. Priority and
// resolvers rank writes apart from their timestamps and break that: a
// column set later by a lower-ranked region would not replace the value it
// saw. Hence only last-writer-wins.

// ColumnLWW is Policy.Columns for column-level last-writer-wins.
const ColumnLWW = "column_lww"

// Stamp names the write that last set a column: its hybrid timestamp and
// its region, ranked as last-writer-wins ranks writes.
type Stamp struct {
	HLC    Timestamp `json:"hlc"`
	Origin RegionID  `json:"origin"`
}

// compare ranks two stamps: by timestamp, then region byte order.
func (s Stamp) compare(o Stamp) int {
	if c := cmp.Compare(s.HLC, o.HLC); c != 0 {
		return c
	}
	return cmp.Compare(s.Origin, o.Origin)
}

// Own is the stamp v's write gives the columns it sets.
func (v Version) Own() Stamp { return Stamp{HLC: v.HLC, Origin: v.Origin} }

// StampOf is the stamp of column col in a row versioned v: v.Stamps holds
// the columns v's write did not set, the others carry v's own stamp.
func (v Version) StampOf(col string) Stamp {
	if s, ok := v.Stamps[col]; ok {
		return s
	}
	return v.Own()
}

// ColumnLWW reports whether p resolves updates column by column.
func (p Policy) ColumnLWW() bool { return p.Columns == ColumnLWW }

// Stamped reports whether column col carries a stamp under p: a column of
// a column_lww table that is not merged otherwise (counter, max, min). Key
// columns are the caller's to leave out.
func (p Policy) Stamped(col string) bool { return p.ColumnLWW() && p.Merge(col) == "" }

// LocalStamps are the stamps of a local write's version (see
// Version.Stamps): an update of a live row keeps prior's stamps for the
// columns it did not change (changed[i] says whether it changed cols[i]);
// an insert, a delete or an update of a row with no live version sets them
// all (nil).
func LocalStamps(prior Version, priorLive bool, op Op, cols []string, changed []bool) map[string]Stamp {
	if op != OpUpdate || !priorLive {
		return nil
	}
	var out map[string]Stamp
	for i, c := range cols {
		if changed[i] {
			continue
		}
		if out == nil {
			out = make(map[string]Stamp, len(cols)-i)
		}
		out[c] = prior.StampOf(c)
	}
	return out
}

// JoinColumns joins the rows of live writes column by column: for each of
// cols, the index in rows of the version whose stamp for it is highest
// (the first of equal ones: equal stamps name the same write, so the same
// value), and the stamps of the joined row as a version whose own write is
// winner holds them (those that are not winner's own).
func JoinColumns(cols []string, rows []Version, winner Version) (from []int, stamps map[string]Stamp) {
	from = make([]int, len(cols))
	if len(rows) == 0 {
		return from, nil
	}
	own := winner.Own()
	for i, c := range cols {
		best := 0
		for j := 1; j < len(rows); j++ {
			if rows[j].StampOf(c).compare(rows[best].StampOf(c)) > 0 {
				best = j
			}
		}
		from[i] = best
		if s := rows[best].StampOf(c); s != own {
			if stamps == nil {
				stamps = map[string]Stamp{}
			}
			stamps[c] = s
		}
	}
	return from, stamps
}

// LostColumns are the columns write w set itself (those carrying its own
// stamp) that a row versioned joined no longer holds from w.
func LostColumns(cols []string, w, joined Version) []string {
	own := w.Own()
	var lost []string
	for _, c := range cols {
		if w.StampOf(c) == own && joined.StampOf(c) != own {
			lost = append(lost, c)
		}
	}
	return lost
}

// Source is a write whose row counts in a joined row: the local row's
// write, the remote one, or a sibling.
type Source struct {
	Side  Side  // Local: the local row (Write is its write); Remote: the remote change's row
	Write Write // the write (for a sibling, Side is 0)
}

// JoinSources are the writes whose rows a live row joins after decision d
// under column_lww (d.Result not deleted): the local row when it is live
// (it holds the join of the writes it kept), every live write among the
// result's siblings and the one a Reinstate brings back (their rows as
// kept), and the remote write when it is live. Rows of writes the remote
// one has seen may be among them: its stamps are above theirs, so they
// change nothing.
func JoinSources(d Decision, local Version, localLive bool, remote Version, op Op) []Source {
	var out []Source
	if localLive {
		out = append(out, Source{Side: Local, Write: Write{Origin: local.Origin, Tick: local.Vector.Get(local.Origin), HLC: local.HLC}})
	}
	rw := Write{Origin: remote.Origin, Tick: remote.Vector.Get(remote.Origin), HLC: remote.HLC, Deleted: op == OpDelete}
	sibs := d.Result.Siblings
	if d.Action == Reinstate {
		sibs = append(slices.Clone(sibs), d.Against)
	}
	for _, s := range sibs {
		if !s.Deleted && !s.same(rw) {
			out = append(out, Source{Write: s})
		}
	}
	if !rw.Deleted {
		out = append(out, Source{Side: Remote, Write: rw})
	}
	return out
}
