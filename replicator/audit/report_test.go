package audit

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/polyregion/polyregion/conflict"
)

var t0 = time.Date(2026, 11, 26, 17, 0, 0, 0, time.UTC)

func hlc(at time.Time, logical uint16) int64 {
	return at.UnixMilli()<<16 | int64(logical)
}

// write is one side of a pair, as the regions log it.
type write struct {
	origin, version string
	hlc             int64
	row             string // "" for a delete
}

// logged is the record region logs when it holds local and receives remote.
func logged(id int64, region string, at time.Time, tbl, key, kind string, local, remote write, winner string) Record {
	w := local
	if winner == "remote" {
		w = remote
	}
	raw := func(s string) json.RawMessage {
		if s == "" {
			return nil
		}
		return json.RawMessage(s)
	}
	return Record{ID: id, LoggedAt: at, Region: region, Table: tbl, Key: key, Kind: kind, Policy: "last_writer_wins",
		Winner: winner, WinnerOrigin: w.origin, LocalOrigin: local.origin, RemoteOrigin: remote.origin,
		LocalVersion: local.version, RemoteVersion: remote.version, LocalHLC: local.hlc, RemoteHLC: remote.hlc,
		LocalRow: raw(local.row), RemoteRow: raw(remote.row), Reason: "last_writer_wins: " + winner + " is later"}
}

// onePairThreeLoggers: us deleted key 1 and eu updated it later; us, eu and
// ap each logged the pair from their own side.
func onePairThreeLoggers() (usW, euW write, recs []Record) {
	usW = write{"us", "us:4", hlc(t0, 0), ""}
	euW = write{"eu", "eu:7,us:3", hlc(t0.Add(20*time.Millisecond), 0), `{"id": "1", "val": "eu"}`}
	recs = []Record{
		logged(10, "us", t0.Add(1*time.Second), "public.kv", `["1"]`, "update_delete", usW, euW, "remote"),
		logged(20, "eu", t0.Add(2*time.Second), "public.kv", `["1"]`, "delete_update", euW, usW, "local"),
		logged(30, "ap", t0.Add(3*time.Second), "public.kv", `["1"]`, "update_delete", usW, euW, "remote"),
	}
	return usW, euW, recs
}

func TestIdentityIsTheUnorderedPairOfWrites(t *testing.T) {
	_, _, recs := onePairThreeLoggers()
	want, _ := IdentityOf(recs[0])
	for _, r := range recs[1:] {
		if got, _ := IdentityOf(r); got != want {
			t.Errorf("record of %s: identity %v, want %v", r.Region, got, want)
		}
	}
	// Anything that names a different write, row or table is another conflict.
	for name, change := range map[string]func(*Record){
		"table":          func(r *Record) { r.Table = "public.other" },
		"key":            func(r *Record) { r.Key = `["2"]` },
		"local hlc":      func(r *Record) { r.LocalHLC++ },
		"remote version": func(r *Record) { r.RemoteVersion = "eu:8,us:3" },
		"remote origin":  func(r *Record) { r.RemoteOrigin = "ap" },
	} {
		r := recs[0]
		change(&r)
		if got, _ := IdentityOf(r); got == want {
			t.Errorf("changing the %s kept the identity %v", name, got)
		}
	}
	// What the logging region saw on its own side does not matter.
	r := recs[0]
	r.Region, r.ID, r.LoggedAt, r.Kind, r.Reason, r.SourceSeq = "zz", 99, t0.Add(time.Hour), "x", "y", 42
	if got, _ := IdentityOf(r); got != want {
		t.Errorf("logging details changed the identity: %v", got)
	}
	if want.A.Origin != "us" || want.B.Origin != "eu" {
		t.Errorf("side a should be the earlier write (us), got a=%s b=%s", want.A.Origin, want.B.Origin)
	}
}

func TestDedupCountsAPairOnceWhoeverLoggedIt(t *testing.T) {
	usW, euW, recs := onePairThreeLoggers()
	// A second, later pair on the same row: ap against eu's write.
	apW := write{"ap", "ap:2,eu:7,us:4", hlc(t0.Add(time.Minute), 3), `{"id": "1", "val": "ap"}`}
	euW2 := write{"eu", "eu:8,us:4", hlc(t0.Add(time.Minute), 1), `{"id": "1", "val": "eu2"}`}
	recs = append(recs,
		logged(40, "ap", t0.Add(61*time.Second), "public.kv", `["1"]`, "update_update", apW, euW2, "local"),
		logged(50, "eu", t0.Add(62*time.Second), "public.kv", `["1"]`, "update_update", euW2, apW, "remote"))
	// Any order of records gives the same rows.
	var first []Row
	for i := 0; i < 20; i++ {
		shuffled := append([]Record(nil), recs...)
		rand.New(rand.NewSource(int64(i))).Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
		rows := Dedup(shuffled)
		if first == nil {
			first = rows
		} else if !reflect.DeepEqual(rows, first) {
			t.Fatalf("order %d gave different rows:\n%+v\nvs\n%+v", i, rows, first)
		}
	}
	if len(first) != 2 {
		t.Fatalf("got %d conflicts, want 2: %+v", len(first), first)
	}
	newer, older := first[0], first[1]
	if got := strings.Join(older.LoggedBy, ","); got != "us,eu,ap" {
		t.Errorf("logged by %q, want us,eu,ap (first logger first)", got)
	}
	if older.Kind != "delete_update" {
		t.Errorf("kind %q, want delete_update (a=us deleted, b=eu updated)", older.Kind)
	}
	if older.Winner != "b" || older.WinnerRegion != "eu" || older.Disputed {
		t.Errorf("winner %s/%s disputed=%v, want b/eu undisputed", older.Winner, older.WinnerRegion, older.Disputed)
	}
	if older.A.Origin != usW.origin || string(older.A.Row) != "null" || older.B.Origin != euW.origin || !strings.Contains(string(older.B.Row), `"eu"`) {
		t.Errorf("sides a=%+v b=%+v", older.A, older.B)
	}
	if !older.Time.Equal(t0.Add(time.Second)) {
		t.Errorf("time %v, want the first logging %v", older.Time, t0.Add(time.Second))
	}
	if older.A.HLCTime != conflict.Timestamp(usW.hlc).String() {
		t.Errorf("hlc time %q", older.A.HLCTime)
	}
	if newer.A.Origin != "eu" || newer.Winner != "b" || newer.WinnerRegion != "ap" || newer.RegionPair() != "ap-eu" {
		t.Errorf("second pair: %+v", newer)
	}
}

func TestDedupFlagsRegionsThatDisagreeOnTheWinner(t *testing.T) {
	_, _, recs := onePairThreeLoggers()
	recs[2].Winner = "local" // ap kept us's delete: a determinism bug
	rows := Dedup(recs)
	if len(rows) != 1 || !rows[0].Disputed {
		t.Fatalf("want one disputed conflict, got %+v", rows)
	}
	rep := Build(recs, Filters{}, t0.Add(time.Hour))
	if rep.Summary.Disputed != 1 {
		t.Errorf("summary disputed = %d, want 1", rep.Summary.Disputed)
	}
}

// many makes n conflicts, each logged by both writers, spread over a span.
func many(n int, span time.Duration) []Record {
	var recs []Record
	tables := []string{"public.orders", "public.kv", "public.kv", "public.profiles"}
	regs := [][2]string{{"us", "eu"}, {"eu", "ap"}, {"us", "ap"}}
	for i := 0; i < n; i++ {
		at := t0.Add(span * time.Duration(i) / time.Duration(n))
		p := regs[i%len(regs)]
		x := write{p[0], fmt.Sprintf("%s:%d", p[0], i+1), hlc(at, 0), fmt.Sprintf(`{"n": "%d"}`, i)}
		y := write{p[1], fmt.Sprintf("%s:%d", p[1], i+1), hlc(at, 1), fmt.Sprintf(`{"n": "%d"}`, -i)}
		key := fmt.Sprintf(`["%d"]`, i%7)
		tbl := tables[i%len(tables)]
		recs = append(recs,
			logged(int64(2*i), p[0], at.Add(time.Second), tbl, key, "update_update", x, y, "remote"),
			logged(int64(2*i+1), p[1], at.Add(2*time.Second), tbl, key, "update_update", y, x, "local"))
	}
	return recs
}

func TestBuildSummary(t *testing.T) {
	recs := many(60, 6*time.Hour)
	rep := Build(recs, Filters{Limit: 5}, t0.Add(7*time.Hour))
	s := rep.Summary
	if s.Total != 60 || s.Logged != 120 || s.Disputed != 0 {
		t.Fatalf("total %d logged %d disputed %d, want 60 120 0", s.Total, s.Logged, s.Disputed)
	}
	sum := func(cs []Count) (n int) {
		for _, c := range cs {
			n += c.Count
		}
		return n
	}
	for name, cs := range map[string][]Count{"table": s.ByTable, "kind": s.ByKind, "policy": s.ByPolicy, "pair": s.ByRegionPair, "winner": s.ByWinner} {
		if sum(cs) != 60 {
			t.Errorf("by %s sums to %d, want 60: %+v", name, sum(cs), cs)
		}
	}
	if want := []Count{{"public.kv", 30}, {"public.orders", 15}, {"public.profiles", 15}}; !reflect.DeepEqual(s.ByTable, want) {
		t.Errorf("by table %+v, want %+v", s.ByTable, want)
	}
	if want := []Count{{"ap-eu", 20}, {"ap-us", 20}, {"eu-us", 20}}; !reflect.DeepEqual(s.ByRegionPair, want) {
		t.Errorf("by pair %+v, want %+v", s.ByRegionPair, want)
	}
	if len(s.HottestKeys) != HotKeys {
		t.Errorf("%d hottest keys, want %d", len(s.HottestKeys), HotKeys)
	}
	for i := 1; i < len(s.HottestKeys); i++ {
		if s.HottestKeys[i].Count > s.HottestKeys[i-1].Count {
			t.Errorf("hottest keys not sorted: %+v", s.HottestKeys)
		}
	}
	// public.kv keys come from i ≡ 1, 2 (mod 4); key i%7: 30 rows over 7 keys.
	if top := s.HottestKeys[0]; top.Table != "public.kv" || top.Count != 5 {
		t.Errorf("hottest %+v", top)
	}
	if len(rep.Rows) != 5 || rep.RowsOmitted != 55 {
		t.Errorf("rows %d omitted %d, want 5 and 55", len(rep.Rows), rep.RowsOmitted)
	}
	for i := 1; i < len(rep.Rows); i++ {
		if rep.Rows[i].Time.After(rep.Rows[i-1].Time) {
			t.Errorf("rows not newest first")
		}
	}
	// Trend: 6h of data (open range): 15-minute buckets, all conflicts counted.
	tr := s.Trend
	if tr.BucketSeconds != 15*60 {
		t.Errorf("bucket %ds, want 900", tr.BucketSeconds)
	}
	n := 0
	for i, b := range tr.Buckets {
		n += b.Count
		if i > 0 && !b.Start.Equal(tr.Buckets[i-1].Start.Add(15*time.Minute)) {
			t.Errorf("bucket %d starts %v", i, b.Start)
		}
	}
	if n != 60 {
		t.Errorf("trend counts %d, want 60", n)
	}
}

func TestBucketSizeFollowsTheRange(t *testing.T) {
	for _, c := range []struct{ span, want time.Duration }{
		{0, time.Minute}, {30 * time.Minute, time.Minute}, {2 * time.Hour, 5 * time.Minute},
		{24 * time.Hour, 30 * time.Minute}, {7 * 24 * time.Hour, 3 * time.Hour}, {90 * 24 * time.Hour, 7 * 24 * time.Hour},
		{5000 * 24 * time.Hour, 28 * 24 * time.Hour},
	} {
		if got := BucketSize(c.span); got != c.want {
			t.Errorf("BucketSize(%v) = %v, want %v", c.span, got, c.want)
		}
	}
	// A closed range sets the buckets even where there is no data.
	rep := Build(nil, Filters{Since: t0, Until: t0.Add(24 * time.Hour)}, t0.Add(48*time.Hour))
	if got := len(rep.Summary.Trend.Buckets); got != 48 {
		t.Errorf("24h range gave %d buckets, want 48 (30m each)", got)
	}
	if rep.Rows == nil || rep.Summary.ByTable == nil || rep.Summary.HottestKeys == nil {
		t.Errorf("an empty report should hold empty lists, not nulls: %+v", rep)
	}
}

func TestFilters(t *testing.T) {
	recs := many(60, 6*time.Hour)
	cases := []struct {
		f    Filters
		want func(r Row) bool
	}{
		{Filters{Table: "public.orders"}, func(r Row) bool { return r.Table == "public.orders" }},
		{Filters{Region: "ap"}, func(r Row) bool { return r.A.Origin == "ap" || r.B.Origin == "ap" }},
		{Filters{Pair: "eu-us"}, func(r Row) bool { return r.RegionPair() == "eu-us" }},
		{Filters{Since: t0.Add(time.Hour), Until: t0.Add(2 * time.Hour)}, func(r Row) bool {
			return !r.Time.Before(t0.Add(time.Hour)) && r.Time.Before(t0.Add(2*time.Hour))
		}},
	}
	all := Dedup(recs)
	for _, c := range cases {
		rep := Build(recs, c.f, t0.Add(7*time.Hour))
		want := 0
		for _, r := range all {
			if c.want(r) {
				want++
			}
		}
		if rep.Summary.Total != want || want == 0 {
			t.Errorf("%s: %d conflicts, want %d", c.f.Describe(), rep.Summary.Total, want)
		}
		for _, r := range rep.Rows {
			if !c.want(r) {
				t.Errorf("%s: row %+v does not match", c.f.Describe(), r)
			}
		}
	}
}

func TestParseTimeAndQuery(t *testing.T) {
	now := t0
	for in, want := range map[string]time.Time{
		"2026-11-25T10:00:00Z":      time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC),
		"2026-11-25T10:00:00+01:00": time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC),
		"2026-11-25":                time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC),
		"24h":                       now.Add(-24 * time.Hour),
		"90m":                       now.Add(-90 * time.Minute),
		"7d":                        now.Add(-7 * 24 * time.Hour),
	} {
		got, err := ParseTime(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "yesterday", "-5h", "2026-13-01", "1w"} {
		if _, err := ParseTime(bad, now); err == nil {
			t.Errorf("ParseTime(%q) accepted", bad)
		}
	}
	for _, c := range []struct{ query, wantErr string }{
		{"since=tomorrow", "since:"},
		{"since=1h&until=2h", "must be before until"},
		{"format=pdf", `format "pdf" is not one of`},
		{"table=orders", "want schema.table"},
		{"region=EU", "region"},
		{"pair=us", "pair"},
		{"limit=-1", "limit"},
		{"limit=ten", "whole number"},
		{"regoin=us", "regoin: unknown parameter"},
		{"table=public.a&table=public.b", "given 2 times"},
	} {
		q, _ := url.ParseQuery(c.query)
		if _, _, err := ParseQuery(q, now); err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("ParseQuery(%s) = %v, want an error containing %q", c.query, err, c.wantErr)
		}
	}
	q, _ := url.ParseQuery("since=24h&table=public.kv&pair=us,eu&region=eu&limit=3&format=html")
	f, format, err := ParseQuery(q, now)
	if err != nil || format != "html" || f.Pair != "eu-us" || f.Table != "public.kv" || f.Region != "eu" || f.Limit != 3 || !f.Since.Equal(now.Add(-24*time.Hour)) {
		t.Errorf("ParseQuery = %+v %q %v", f, format, err)
	}
}

// Lost writes lead: the breakdowns count overwritten conflicts only, merged
// ones are counted apart, and the rows list lost writes first. A conflict
// one region logged as merged and another as overwritten was overwritten;
// records from before outcomes were logged count as overwritten.
func TestReportLeadsWithLostWrites(t *testing.T) {
	a := write{"us", "us:1", hlc(t0, 0), `{"id": "1", "n": "1"}`}
	b := write{"eu", "eu:1", hlc(t0, 1), `{"id": "1", "n": "1"}`}
	c := write{"ap", "ap:1", hlc(t0, 2), `{"id": "2", "n": "2"}`}
	d := write{"eu", "eu:2", hlc(t0, 3), `{"id": "2", "n": "3"}`}
	merged := func(r Record) Record { r.Outcome = string(conflict.Merged); return r }
	lost := func(r Record) Record { r.Outcome = string(conflict.Overwritten); return r }
	recs := []Record{
		merged(logged(1, "us", t0.Add(3*time.Second), "public.kv", `["1"]`, "update_update", a, b, "remote")),
		merged(logged(2, "eu", t0.Add(3*time.Second), "public.kv", `["1"]`, "update_update", b, a, "local")),
		merged(logged(3, "ap", t0.Add(1*time.Second), "public.kv", `["2"]`, "update_update", c, d, "remote")),
		lost(logged(4, "eu", t0.Add(2*time.Second), "public.kv", `["2"]`, "update_update", d, c, "local")),
		logged(5, "us", t0, "public.other", `["9"]`, "update_update", a, c, "remote"),
	}
	rep := Build(recs, Filters{}, t0.Add(time.Minute))
	s := rep.Summary
	if s.Total != 3 || s.Overwritten != 2 || s.Merged != 1 {
		t.Fatalf("total %d, overwritten %d, merged %d; want 3, 2, 1", s.Total, s.Overwritten, s.Merged)
	}
	if !reflect.DeepEqual(s.MergedBy, []Count{{Name: "public.kv", Count: 1}}) {
		t.Errorf("merged by table %+v", s.MergedBy)
	}
	if !reflect.DeepEqual(s.ByTable, []Count{{Name: "public.kv", Count: 1}, {Name: "public.other", Count: 1}}) {
		t.Errorf("lost writes by table %+v", s.ByTable)
	}
	var got []string
	for _, r := range rep.Rows {
		got = append(got, r.Key+" "+r.Outcome)
	}
	want := []string{`["2"] overwritten`, `["9"] overwritten`, `["1"] merged`}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rows %v, want %v", got, want)
	}
}
