package audit

import (
	"cmp"
	"container/heap"
	"fmt"
	"slices"
	"time"

	"github.com/polyregion/polyregion/conflict"
)

// A report is built in one pass over the records in identity order
// (CompareRecords): the records of one conflict come together, and so do
// the conflicts of one row. The builder holds the conflict being read, the
// detail rows it keeps (Filters.Limit of them), the summary's groups and a
// count per minute for the trend; never all the records, however many the
// logs hold.

// CompareRecords orders records by their identity: table, key, then
// write a and write b, each by hybrid timestamp, origin and vector;
// strings compare byte by byte. Sources yield records in this order.
func CompareRecords(x, y Record) int {
	a, _ := IdentityOf(x)
	b, _ := IdentityOf(y)
	return a.compare(b)
}

func (id Identity) compare(o Identity) int {
	return cmp.Or(cmp.Compare(id.Table, o.Table), cmp.Compare(id.Key, o.Key), id.A.compare(o.A), id.B.compare(o.B))
}

// read is a record and the index of the source it came from.
type read struct {
	Record
	src int
}

// detail is a detail row and the record that describes it: the first to
// log the conflict, whose row images the row shows.
type detail struct {
	row       Row
	desc      read
	remoteIsA bool
}

// setSides fills the row's two writes from the describing record.
func (d *detail) setSides() {
	r := d.desc
	local := side(r.LocalOrigin, r.LocalVersion, r.LocalHLC, r.LocalRow)
	remote := side(r.RemoteOrigin, r.RemoteVersion, r.RemoteHLC, r.RemoteRow)
	if d.remoteIsA {
		d.row.A, d.row.B = remote, local
	} else {
		d.row.A, d.row.B = local, remote
	}
}

// compareDetails orders detail rows as a report lists them: lost writes
// first, then newest first, then by table and key, then by the describing
// record (region, id, source).
func compareDetails(x, y *detail) int {
	return cmp.Or(cmp.Compare(outcomeRank(x.row.Outcome), outcomeRank(y.row.Outcome)),
		y.row.Time.Compare(x.row.Time), cmp.Compare(x.row.Table, y.row.Table), cmp.Compare(x.row.Key, y.row.Key),
		cmp.Compare(x.desc.Region, y.desc.Region), cmp.Compare(x.desc.ID, y.desc.ID), cmp.Compare(x.desc.src, y.desc.src))
}

// fold makes one conflict of the records that logged it. The first
// record (earliest logged, then region, then id) describes it; the others
// add their region to LoggedBy. The sides' row images are the record's as
// read (a source that leaves them out fills them in later: setSides).
func fold(group []read) *detail {
	slices.SortFunc(group, func(x, y read) int {
		return cmp.Or(x.LoggedAt.Compare(y.LoggedAt), cmp.Compare(x.Region, y.Region), cmp.Compare(x.ID, y.ID), cmp.Compare(x.src, y.src))
	})
	first := group[0]
	_, remoteIsA := IdentityOf(first.Record)
	row := Row{Time: first.LoggedAt.UTC(), Table: first.Table, Key: first.Key, Kind: canonicalKind(first.Kind, remoteIsA), Policy: first.Policy,
		Winner: winnerSide(first.Winner, remoteIsA), WinnerRegion: first.WinnerOrigin, Reason: first.Reason,
		LoggedBy: []string{first.Region}, Outcome: outcomeOf(first.Record)}
	for _, r := range group[1:] {
		_, ra := IdentityOf(r.Record)
		if !slices.Contains(row.LoggedBy, r.Region) {
			row.LoggedBy = append(row.LoggedBy, r.Region)
		}
		if winnerSide(r.Winner, ra) != row.Winner {
			row.Disputed = true
		}
		if outcomeOf(r.Record) == string(conflict.Overwritten) {
			row.Outcome = string(conflict.Overwritten)
		}
	}
	d := &detail{row: row, desc: first, remoteIsA: remoteIsA}
	d.setSides()
	return d
}

// builder folds records, in identity order, into a report.
type builder struct {
	f   Filters
	now time.Time
	sum Summary

	group   []read   // the records of the conflict being read
	groupID Identity // its identity

	byTable, byKind, byPolicy, byPair, byWinner, mergedBy map[string]int
	key                                                   [2]string // the row whose overwritten conflicts keyN counts
	keyN                                                  int
	hot                                                   []KeyCount

	perMinute      map[time.Time]int // overwritten conflicts per minute
	oldest, newest time.Time         // of the overwritten conflicts

	details detailHeap // the kept detail rows, the last to list on top
}

func newBuilder(f Filters, now time.Time) *builder {
	return &builder{f: f, now: now,
		byTable: map[string]int{}, byKind: map[string]int{}, byPolicy: map[string]int{}, byPair: map[string]int{},
		byWinner: map[string]int{}, mergedBy: map[string]int{}, perMinute: map[time.Time]int{}}
}

// add takes the next record; a record f does not select is skipped. A
// record whose identity orders before the one it follows is an error: its
// conflict would be counted twice.
func (b *builder) add(r read) error {
	if !b.f.Match(r.Record) {
		return nil
	}
	id, _ := IdentityOf(r.Record)
	if len(b.group) > 0 {
		switch c := id.compare(b.groupID); {
		case c < 0:
			return fmt.Errorf("conflict log records out of order (table %s): a source must yield them in identity order", r.Table)
		case c > 0:
			b.flush()
		}
	}
	if len(b.group) == 0 {
		b.groupID = id
	}
	b.group = append(b.group, r)
	b.sum.Logged++
	return nil
}

// flush counts the conflict read so far.
func (b *builder) flush() {
	d := fold(b.group)
	b.group = b.group[:0]
	s := &b.sum
	s.Total++
	if d.row.Disputed {
		s.Disputed++
	}
	if k := [2]string{d.row.Table, d.row.Key}; k != b.key {
		b.endKey()
		b.key = k
	}
	if d.row.Outcome == string(conflict.Merged) {
		s.Merged++
		b.mergedBy[d.row.Table]++
	} else {
		s.Overwritten++
		b.byTable[d.row.Table]++
		b.byKind[d.row.Kind]++
		b.byPolicy[d.row.Policy]++
		b.byPair[d.row.RegionPair()]++
		b.byWinner[d.row.WinnerRegion]++
		b.keyN++
		t := d.row.Time
		b.perMinute[t.Truncate(time.Minute)]++
		if b.oldest.IsZero() || t.Before(b.oldest) {
			b.oldest = t
		}
		if t.After(b.newest) {
			b.newest = t
		}
	}
	switch {
	case b.f.Limit == 0 || len(b.details) < b.f.Limit:
		heap.Push(&b.details, d)
	case compareDetails(d, b.details[0]) < 0:
		b.details[0] = d
		heap.Fix(&b.details, 0)
	}
}

// endKey ranks the row whose conflicts were just counted among the
// hottest keys.
func (b *builder) endKey() {
	if b.keyN == 0 {
		return
	}
	b.hot = append(b.hot, KeyCount{Table: b.key[0], Key: b.key[1], Count: b.keyN})
	slices.SortFunc(b.hot, func(x, y KeyCount) int {
		return cmp.Or(cmp.Compare(y.Count, x.Count), cmp.Compare(x.Table, y.Table), cmp.Compare(x.Key, y.Key))
	})
	if len(b.hot) > HotKeys {
		b.hot = b.hot[:HotKeys]
	}
	b.keyN = 0
}

// finish returns the report without its detail rows, and those rows in
// the order they are listed.
func (b *builder) finish() (Report, []*detail) {
	if len(b.group) > 0 {
		b.flush()
	}
	b.endKey()
	rep := Report{GeneratedAt: b.now.UTC(), Filters: b.f, Summary: b.sum, Rows: []Row{}}
	s := &rep.Summary
	s.ByTable, s.ByKind, s.ByPolicy, s.ByRegionPair, s.ByWinner = counts(b.byTable), counts(b.byKind), counts(b.byPolicy), counts(b.byPair), counts(b.byWinner)
	s.MergedBy = counts(b.mergedBy)
	s.HottestKeys = append([]KeyCount{}, b.hot...)
	s.Trend = b.trend()
	details := []*detail(b.details)
	slices.SortFunc(details, compareDetails)
	rep.RowsOmitted = s.Total - len(details)
	return rep, details
}

// trend counts overwritten conflicts per bucket over [since, until); an
// open start is closed by the oldest conflict, an open end by now (or a
// newer conflict). Buckets are aligned to their size and empty ones are
// kept. Every size is a whole number of minutes, so counts per minute fall
// in the buckets their conflicts would.
func (b *builder) trend() Trend {
	start, end := b.f.Since, b.f.Until
	if end.IsZero() {
		end = b.now
		if b.newest.After(end) {
			end = b.newest
		}
		end = end.Add(time.Nanosecond) // inclusive
	}
	if start.IsZero() {
		if b.sum.Overwritten == 0 {
			return Trend{Buckets: []Bucket{}}
		}
		start = b.oldest
	}
	if !end.After(start) {
		end = start.Add(time.Nanosecond)
	}
	size := BucketSize(end.Sub(start))
	first := start.UTC().Truncate(size)
	n := int((end.Sub(first) + size - 1) / size)
	t := Trend{BucketSeconds: int64(size / time.Second), Buckets: make([]Bucket, n)}
	for i := range t.Buckets {
		t.Buckets[i].Start = first.Add(time.Duration(i) * size)
	}
	for minute, count := range b.perMinute {
		i := int(minute.Sub(first) / size)
		if i >= 0 && i < n {
			t.Buckets[i].Count += count
		}
	}
	return t
}

// detailHeap keeps the detail rows a limited report lists: the one listed
// last on top, to be replaced by a row listed before it.
type detailHeap []*detail

func (h detailHeap) Len() int           { return len(h) }
func (h detailHeap) Less(i, j int) bool { return compareDetails(h[i], h[j]) > 0 }
func (h detailHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *detailHeap) Push(x any)        { *h = append(*h, x.(*detail)) }
func (h *detailHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// Dedup folds records into distinct conflicts, listed as a report lists
// them: lost writes first, then newest first.
func Dedup(records []Record) []Row {
	_, details := buildFrom(records, Filters{}, time.Time{})
	return rowsOf(details)
}

// Build makes the report of records under f. Records f does not match are
// ignored, so a source may filter loosely. now stamps the report and closes
// an open-ended range for the trend. Build is pure: the same records give
// the same report in any order.
func Build(records []Record, f Filters, now time.Time) Report {
	rep, details := buildFrom(records, f, now)
	rep.Rows = rowsOf(details)
	return rep
}

func buildFrom(records []Record, f Filters, now time.Time) (Report, []*detail) {
	sorted := slices.Clone(records)
	slices.SortStableFunc(sorted, CompareRecords)
	b := newBuilder(f, now)
	for _, r := range sorted {
		if err := b.add(read{Record: r}); err != nil {
			panic(err) // sorted above: cannot happen
		}
	}
	return b.finish()
}

// rowsOf fills in the sides of detail rows and returns the rows.
func rowsOf(details []*detail) []Row {
	rows := make([]Row, 0, len(details))
	for _, d := range details {
		d.setSides()
		rows = append(rows, d.row)
	}
	return rows
}
