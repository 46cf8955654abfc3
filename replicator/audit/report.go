// Package audit builds conflict audit reports from the regions' conflict
// logs (polyregion.conflict_log).
//
// Every region logs the conflicts it resolves from its own point of view
// (local and remote), so one pair of concurrent writes is usually logged by
// several regions: the two that wrote and any third region that received
// both. A report reads any number of regions' logs and counts each pair of
// writes once. Its identity is the table, the key and the unordered pair of
// the two writes, each write named by its origin region, version vector and
// hybrid timestamp — values every region logs identically for the same
// write. Inside a report the two writes of a pair are ordered (a is the one
// with the lower hybrid timestamp), so a row reads the same whichever region
// logged it.
//
// Build is pure: records and the time come in as arguments, and the same
// records give the same report in any order.
package audit

import (
	"cmp"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/polyregion/polyregion/conflict"
)

// Record is one row of a region's polyregion.conflict_log, as logged: local
// is the logging region's row, remote the incoming write.
type Record struct {
	ID            int64
	LoggedAt      time.Time
	Region        string // the region that logged it
	Table         string
	Key           string
	Kind          string // conflict.Kind from the logging region's view
	Policy        string
	Winner        string // "local" or "remote"
	WinnerOrigin  string
	LocalOrigin   string
	RemoteOrigin  string
	LocalVersion  string
	RemoteVersion string
	LocalHLC      int64
	RemoteHLC     int64
	LocalRow      json.RawMessage // nil: no live row (deleted or never seen)
	RemoteRow     json.RawMessage // nil: the remote write is a delete
	SourceSeq     int64
	Reason        string
	// Outcome is what the conflict cost the write that lost it:
	// "overwritten" or "merged" (conflict.Outcome); "" in records logged
	// before outcomes were recorded, which count as overwritten.
	Outcome string
}

// Side is one of the two writes of a conflict.
type Side struct {
	Origin  string `json:"origin"`   // region that made the write
	Version string `json:"version"`  // its version vector, e.g. "eu:3,us:5"
	HLC     int64  `json:"hlc"`      // its hybrid timestamp (raw)
	HLCTime string `json:"hlc_time"` // the same, readable: "2026-11-26T17:42:03.123Z/5"
	// Row is the row image the write left (column name to text form); null
	// for a delete.
	Row json.RawMessage `json:"row"`
}

// Row is one distinct conflict: a pair of concurrent writes to one row.
type Row struct {
	// Time is when a region first logged the pair (within the filters).
	Time   time.Time `json:"time"`
	Table  string    `json:"table"`
	Key    string    `json:"key"`
	Kind   string    `json:"kind"`   // "<a>_<b>": what a and b did, e.g. delete_update
	Policy string    `json:"policy"` // the table's policy, e.g. last_writer_wins+delete_wins
	// Winner is "a" or "b"; WinnerRegion the region whose write won.
	Winner       string `json:"winner"`
	WinnerRegion string `json:"winner_region"`
	A            Side   `json:"a"` // the write with the lower hybrid timestamp
	B            Side   `json:"b"`
	Reason       string `json:"reason"` // as logged by LoggedBy[0] (in its local/remote terms)
	// LoggedBy lists the regions that logged the pair, first logger first.
	LoggedBy []string `json:"logged_by"`
	// Disputed is true when the logging regions named different winners:
	// a determinism bug worth reporting.
	Disputed bool `json:"disputed"`
	// Outcome is "overwritten" when the losing write's data is gone (so
	// any logging region said, or an older record did not say), "merged"
	// when nothing of it is.
	Outcome string `json:"outcome"`
}

// Count is one group of a summary breakdown.
type Count struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

// KeyCount counts the conflicts of one row.
type KeyCount struct {
	Table string `json:"table"`
	Key   string `json:"key"`
	Count int    `json:"count"`
}

// Bucket is one interval of the trend.
type Bucket struct {
	Start time.Time `json:"start"`
	Count int       `json:"count"`
}

// Trend counts conflicts per interval over the report's range.
type Trend struct {
	BucketSeconds int64    `json:"bucket_seconds"`
	Buckets       []Bucket `json:"buckets"`
}

// Summary aggregates the distinct conflicts of a report (all of them,
// whatever the detail limit). It leads with the writes that were lost:
// the breakdowns and hottest keys count overwritten conflicts only;
// merged ones (nothing lost) are counted apart.
type Summary struct {
	Overwritten int     `json:"overwritten"`     // distinct conflicts whose losing write's data is gone
	Merged      int     `json:"merged"`          // distinct conflicts that lost nothing
	MergedBy    []Count `json:"merged_by_table"` // merged conflicts per table
	Total       int     `json:"total"`           // distinct conflicts, both outcomes
	Logged      int     `json:"logged"`          // conflict log records read (each region's view counts)
	Disputed    int     `json:"disputed"`        // conflicts whose loggers named different winners
	// Breakdowns of the overwritten conflicts, each sorted by count
	// (descending), then name.
	ByTable      []Count    `json:"by_table"`
	ByKind       []Count    `json:"by_kind"`
	ByPolicy     []Count    `json:"by_policy"`
	ByRegionPair []Count    `json:"by_region_pair"` // "eu-us": the two writes' origins, sorted
	ByWinner     []Count    `json:"by_winner_region"`
	HottestKeys  []KeyCount `json:"hottest_keys"` // the HotKeys rows with most conflicts
	Trend        Trend      `json:"trend"`        // overwritten conflicts per interval
}

// Report is a conflict audit report.
type Report struct {
	GeneratedAt time.Time `json:"generated_at"`
	Filters     Filters   `json:"filters"`
	Summary     Summary   `json:"summary"`
	// Rows are the distinct conflicts, newest first, at most Filters.Limit.
	Rows []Row `json:"rows"`
	// RowsOmitted is how many conflicts the limit left out of Rows.
	RowsOmitted int `json:"rows_omitted"`
}

// HotKeys is how many rows HottestKeys lists.
const HotKeys = 10

// Write names one write of a pair as every region logs it.
type Write struct {
	Origin  string // region that made the write
	Version string // its version vector's text form
	HLC     int64  // its hybrid timestamp
}

// compare orders writes by hybrid timestamp, then origin, then vector.
func (w Write) compare(o Write) int {
	return cmp.Or(cmp.Compare(w.HLC, o.HLC), cmp.Compare(w.Origin, o.Origin), cmp.Compare(w.Version, o.Version))
}

// Identity is what makes two conflict log records the same conflict: the
// table, the key and the unordered pair of writes.
type Identity struct {
	Table, Key string
	A, B       Write // A before B in hybrid timestamp, then origin, then vector

}

// String is a stable text form of the identity.
func (id Identity) String() string {
	return strings.Join([]string{id.Table, id.Key,
		id.A.Origin, id.A.Version, strconv.FormatInt(id.A.HLC, 10),
		id.B.Origin, id.B.Version, strconv.FormatInt(id.B.HLC, 10)}, "\x1f")
}

// IdentityOf returns r's identity and whether the remote write is side a.
func IdentityOf(r Record) (id Identity, remoteIsA bool) {
	l := Write{r.LocalOrigin, r.LocalVersion, r.LocalHLC}
	m := Write{r.RemoteOrigin, r.RemoteVersion, r.RemoteHLC}
	if m.compare(l) < 0 {
		return Identity{Table: r.Table, Key: r.Key, A: m, B: l}, true
	}
	return Identity{Table: r.Table, Key: r.Key, A: l, B: m}, false
}

// canonicalKind turns a logged kind (remote op first, local state second)
// into "<a>_<b>".
func canonicalKind(kind string, remoteIsA bool) string {
	if remoteIsA {
		return kind
	}
	first, second, ok := strings.Cut(kind, "_")
	if !ok {
		return kind
	}
	return second + "_" + first
}

// winnerSide maps a logged winner ("local"/"remote") to "a" or "b".
func winnerSide(winner string, remoteIsA bool) string {
	if (winner == conflict.Remote.String()) == remoteIsA {
		return "a"
	}
	return "b"
}

func side(origin, version string, hlc int64, row json.RawMessage) Side {
	if len(row) == 0 || string(row) == "null" {
		row = json.RawMessage("null")
	}
	return Side{Origin: origin, Version: version, HLC: hlc, HLCTime: conflict.Timestamp(hlc).String(), Row: row}
}

// outcomeOf is a record's outcome; older records, which do not say, count
// as overwritten.
func outcomeOf(r Record) string {
	if r.Outcome == string(conflict.Merged) {
		return r.Outcome
	}
	return string(conflict.Overwritten)
}

func outcomeRank(o string) int {
	if o == string(conflict.Merged) {
		return 1
	}
	return 0
}

// RegionPair names the unordered pair of a conflict's origins: "eu-us".
// Region ids cannot contain '-'.
func (r Row) RegionPair() string {
	a, b := r.A.Origin, r.B.Origin
	if b < a {
		a, b = b, a
	}
	return a + "-" + b
}

func counts(m map[string]int) []Count {
	out := make([]Count, 0, len(m))
	for k, n := range m {
		out = append(out, Count{Name: k, Count: n})
	}
	slices.SortFunc(out, func(x, y Count) int { return cmp.Or(cmp.Compare(y.Count, x.Count), cmp.Compare(x.Name, y.Name)) })
	return out
}

// bucketSizes are the trend's possible intervals; the smallest giving at
// most maxBuckets over the range is used.
var bucketSizes = []time.Duration{
	time.Minute, 5 * time.Minute, 15 * time.Minute, 30 * time.Minute,
	time.Hour, 3 * time.Hour, 6 * time.Hour, 12 * time.Hour,
	24 * time.Hour, 7 * 24 * time.Hour, 28 * 24 * time.Hour,
}

const maxBuckets = 60

// BucketSize picks the trend interval for a range.
func BucketSize(span time.Duration) time.Duration {
	for _, b := range bucketSizes {
		if span/b < maxBuckets {
			return b
		}
	}
	return bucketSizes[len(bucketSizes)-1]
}
