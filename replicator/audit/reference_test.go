package audit

// The report as it was built before it streamed: every record in memory.
// Kept as the reference the streaming build must agree with.

import (
	"cmp"
	"slices"
	"time"

	"github.com/polyregion/polyregion/conflict"
)

// refDedup folds records into distinct conflicts, newest first. The first
// record of a conflict (earliest logged, then region, then id) describes it;
// the others add their region to LoggedBy.
func refDedup(records []Record) []Row {
	recs := slices.Clone(records)
	slices.SortFunc(recs, func(x, y Record) int {
		return cmp.Or(x.LoggedAt.Compare(y.LoggedAt), cmp.Compare(x.Region, y.Region), cmp.Compare(x.ID, y.ID))
	})
	index := map[Identity]int{}
	var rows []Row
	for _, r := range recs {
		id, remoteIsA := IdentityOf(r)
		win := winnerSide(r.Winner, remoteIsA)
		if i, ok := index[id]; ok {
			row := &rows[i]
			if !slices.Contains(row.LoggedBy, r.Region) {
				row.LoggedBy = append(row.LoggedBy, r.Region)
			}
			if win != row.Winner {
				row.Disputed = true
			}
			if outcomeOf(r) == string(conflict.Overwritten) {
				row.Outcome = string(conflict.Overwritten)
			}
			continue
		}
		row := Row{Time: r.LoggedAt.UTC(), Table: r.Table, Key: r.Key, Kind: canonicalKind(r.Kind, remoteIsA), Policy: r.Policy,
			Winner: win, WinnerRegion: r.WinnerOrigin, Reason: r.Reason, LoggedBy: []string{r.Region}, Outcome: outcomeOf(r)}
		local := side(r.LocalOrigin, r.LocalVersion, r.LocalHLC, r.LocalRow)
		remote := side(r.RemoteOrigin, r.RemoteVersion, r.RemoteHLC, r.RemoteRow)
		if remoteIsA {
			row.A, row.B = remote, local
		} else {
			row.A, row.B = local, remote
		}
		index[id] = len(rows)
		rows = append(rows, row)
	}
	// Lost writes first, then newest first.
	slices.SortStableFunc(rows, func(x, y Row) int {
		return cmp.Or(cmp.Compare(outcomeRank(x.Outcome), outcomeRank(y.Outcome)),
			y.Time.Compare(x.Time), cmp.Compare(x.Table, y.Table), cmp.Compare(x.Key, y.Key))
	})
	return rows
}

// refBuild makes the report of records under f. Records f does not match are
// ignored, so a source may filter loosely. now stamps the report and closes
// an open-ended range for the trend.
func refBuild(records []Record, f Filters, now time.Time) Report {
	var kept []Record
	for _, r := range records {
		if f.Match(r) {
			kept = append(kept, r)
		}
	}
	rows := refDedup(kept)
	rep := Report{GeneratedAt: now.UTC(), Filters: f, Rows: []Row{}}
	s := &rep.Summary
	s.Total, s.Logged = len(rows), len(kept)
	byTable, byKind, byPolicy, byPair, byWinner := map[string]int{}, map[string]int{}, map[string]int{}, map[string]int{}, map[string]int{}
	mergedBy := map[string]int{}
	keys := map[[2]string]int{}
	for _, r := range rows {
		if r.Disputed {
			s.Disputed++
		}
		if r.Outcome == string(conflict.Merged) {
			s.Merged++
			mergedBy[r.Table]++
			continue
		}
		s.Overwritten++
		byTable[r.Table]++
		byKind[r.Kind]++
		byPolicy[r.Policy]++
		byPair[r.RegionPair()]++
		byWinner[r.WinnerRegion]++
		keys[[2]string{r.Table, r.Key}]++
	}
	s.ByTable, s.ByKind, s.ByPolicy, s.ByRegionPair, s.ByWinner = counts(byTable), counts(byKind), counts(byPolicy), counts(byPair), counts(byWinner)
	s.MergedBy = counts(mergedBy)
	s.HottestKeys = []KeyCount{}
	for k, n := range keys {
		s.HottestKeys = append(s.HottestKeys, KeyCount{Table: k[0], Key: k[1], Count: n})
	}
	slices.SortFunc(s.HottestKeys, func(x, y KeyCount) int {
		return cmp.Or(cmp.Compare(y.Count, x.Count), cmp.Compare(x.Table, y.Table), cmp.Compare(x.Key, y.Key))
	})
	if len(s.HottestKeys) > HotKeys {
		s.HottestKeys = s.HottestKeys[:HotKeys]
	}
	var lost []Row
	for _, r := range rows {
		if r.Outcome != string(conflict.Merged) {
			lost = append(lost, r)
		}
	}
	s.Trend = refTrend(lost, f, now)
	if f.Limit > 0 && len(rows) > f.Limit {
		rep.RowsOmitted = len(rows) - f.Limit
		rows = rows[:f.Limit]
	}
	if rows != nil {
		rep.Rows = rows
	}
	return rep
}

// refTrend counts rows per bucket over [since, until); an open start is closed
// by the oldest conflict, an open end by now (or a newer conflict). Buckets
// are aligned to their size (in UTC since the epoch) and empty ones are
// kept.
func refTrend(rows []Row, f Filters, now time.Time) Trend {
	start, end := f.Since, f.Until
	if end.IsZero() {
		end = now
		for _, r := range rows {
			if r.Time.After(end) {
				end = r.Time
			}
		}
		end = end.Add(time.Nanosecond) // inclusive
	}
	if start.IsZero() {
		if len(rows) == 0 {
			return Trend{Buckets: []Bucket{}}
		}
		start = rows[len(rows)-1].Time // rows are newest first
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
	for _, r := range rows {
		i := int(r.Time.Sub(first) / size)
		if i >= 0 && i < n {
			t.Buckets[i].Count++
		}
	}
	return t
}
