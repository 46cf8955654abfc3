package postgres

import (
	"fmt"
	"slices"
	"sort"
)

// A join's load commits in parts (units), so a load cut short (either
// replicator killed, the link broken) goes on where it stopped instead of
// starting again from nothing: the snapshot's source sends a commit frame
// ('C', a SnapshotUnit) after each part, and the joining region commits
// the part with the positions of the snapshot it came from. The next
// attempt asks, with the request, for what is still missing (a
// SnapshotResume) from a new snapshot.
//
// A table that stands alone (no foreign key ties it to a replicated table,
// itself included, and the source has no change of it parked) goes in
// chunks of its primary key's order: each chunk its rows, and the versions
// and tombstones of its key range. The other tables go whole, together, in
// one part with their parked changes: rows tied by a foreign key must come
// from one snapshot.
//
// Parts may so come from several snapshots. The region streams every
// source from the earliest of its parts' positions (JoinStart); up to the
// latest of them (the replay bound) its applier drops each change of a row
// whose part's snapshot held it already, and applies the others as the
// source applied them after that snapshot (see apply_replay.go). Nothing
// is lost or applied twice, whichever snapshot each row came from.

// SnapshotUnit is one committed part of a load: the tables it holds whole
// (Tables, with After nil), or one table's chunk: its rows after the
// previous chunk's last key up to After (the key columns' text forms), or
// to the end of the table when After is nil.
type SnapshotUnit struct {
	Tables []string `json:"tables"`
	After  []string `json:"after,omitempty"`
}

// SnapshotResume is what a joining region has loaded of its source so far:
// the tables done, and for each table loaded in part the last key loaded.
type SnapshotResume struct {
	Done  []string            `json:"done,omitempty"`
	After map[string][]string `json:"after,omitempty"`
}

// Empty reports whether nothing was loaded yet.
func (r SnapshotResume) Empty() bool { return len(r.Done) == 0 && len(r.After) == 0 }

// done reports whether table was loaded completely.
func (r SnapshotResume) done(table string) bool { return slices.Contains(r.Done, table) }

// Loaded lists the tables holding loaded rows, done or in part.
func (r SnapshotResume) Loaded() []string {
	out := append([]string(nil), r.Done...)
	for t := range r.After {
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	sort.Strings(out)
	return out
}

// Unknown names the tables r holds rows of that tables does not list.
func (r SnapshotResume) Unknown(tables []string) []string {
	var out []string
	for _, t := range r.Loaded() {
		if !slices.Contains(tables, t) {
			out = append(out, t)
		}
	}
	return out
}

// loadedUnit is a committed unit as join_units records it.
type loadedUnit struct {
	Tables    []string
	After     []string // nil: the tables are done
	Positions []SnapshotPosition
}

// resumeFrom is what units (in the order they were committed) loaded.
func resumeFrom(units []loadedUnit) SnapshotResume {
	var r SnapshotResume
	for _, u := range units {
		r.add(u)
	}
	return r
}

// add records that u was committed after what r holds.
func (r *SnapshotResume) add(u loadedUnit) {
	for _, t := range u.Tables {
		if u.After == nil {
			if !r.done(t) {
				r.Done = append(r.Done, t)
			}
			delete(r.After, t)
			continue
		}
		if r.After == nil {
			r.After = map[string][]string{}
		}
		r.After[t] = u.After
	}
	sort.Strings(r.Done)
}

// JoinStart is where a region whose load came in units streams every
// source from: after the earliest of the units' positions (a source a
// unit's snapshot had applied nothing of counts as 0 there). replay is,
// per source, the latest of them: up to there a change may be one some
// unit holds already.
func JoinStart(units [][]SnapshotPosition) (start []SnapshotPosition, replay map[string]int64, err error) {
	if len(units) == 0 {
		return nil, nil, fmt.Errorf("join: no part of the load was committed")
	}
	lowest := map[string]SnapshotPosition{}
	replay = map[string]int64{}
	count := map[string]int{}
	for _, ps := range units {
		seen := map[string]bool{}
		for _, p := range ps {
			if seen[p.Region] {
				return nil, nil, fmt.Errorf("join: a part's positions list region %s twice", p.Region)
			}
			seen[p.Region] = true
			count[p.Region]++
			if l, ok := lowest[p.Region]; !ok || p.Seq < l.Seq {
				lowest[p.Region] = p
			}
			replay[p.Region] = max(replay[p.Region], p.Seq)
		}
	}
	for r, p := range lowest {
		if count[r] < len(units) {
			// Some unit's snapshot had applied nothing of r.
			p = SnapshotPosition{Region: r}
		}
		start = append(start, p)
	}
	sort.Slice(start, func(i, j int) bool { return start[i].Region < start[j].Region })
	return start, replay, nil
}
