package audit

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
)

// Filters select the conflicts a report covers. Zero values select all.
type Filters struct {
	// Since and Until bound when a region logged the conflict: Since
	// inclusive, Until exclusive.
	Since time.Time `json:"since,omitzero"`
	Until time.Time `json:"until,omitzero"`
	// Table is a schema-qualified table name, e.g. "public.orders".
	Table string `json:"table,omitempty"`
	// Region selects conflicts in which either write was made in that
	// region (whichever region logged them).
	Region string `json:"region,omitempty"`
	// Pair selects conflicts between writes of exactly these two regions,
	// written "eu-us" (sorted; the same region twice is allowed).
	Pair string `json:"pair,omitempty"`
	// Limit caps the detail rows (lost writes first, then newest); 0: no cap. The summary
	// always counts every conflict.
	Limit int `json:"limit,omitempty"`
}

// Match reports whether f selects r.
func (f Filters) Match(r Record) bool {
	if !f.Since.IsZero() && r.LoggedAt.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !r.LoggedAt.Before(f.Until) {
		return false
	}
	if f.Table != "" && r.Table != f.Table {
		return false
	}
	if f.Region != "" && r.LocalOrigin != f.Region && r.RemoteOrigin != f.Region {
		return false
	}
	if f.Pair != "" {
		a, b, _ := strings.Cut(f.Pair, "-")
		if !(r.LocalOrigin == a && r.RemoteOrigin == b) && !(r.LocalOrigin == b && r.RemoteOrigin == a) {
			return false
		}
	}
	return true
}

// Validate reports the first problem with f, naming the filter.
func (f Filters) Validate() error {
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Since.Before(f.Until) {
		return fmt.Errorf("since (%s) must be before until (%s)", f.Since.Format(time.RFC3339), f.Until.Format(time.RFC3339))
	}
	if f.Table != "" {
		if err := regions.ValidateTableName(f.Table); err != nil {
			return err
		}
	}
	if f.Region != "" {
		if err := conflict.RegionID(f.Region).Validate(); err != nil {
			return fmt.Errorf("region: %w", err)
		}
	}
	if f.Pair != "" {
		a, b, ok := strings.Cut(f.Pair, "-")
		if !ok || a > b {
			return fmt.Errorf("pair %q: want two region ids, sorted and joined by '-', e.g. eu-us", f.Pair)
		}
		for _, r := range []string{a, b} {
			if err := conflict.RegionID(r).Validate(); err != nil {
				return fmt.Errorf("pair: %w", err)
			}
		}
	}
	if f.Limit < 0 {
		return fmt.Errorf("limit %d: must be 0 (no cap) or more", f.Limit)
	}
	return nil
}

// ParsePair reads a region pair written "a,b" or "a-b" (in any order) into
// the form Filters.Pair holds: "a-b" sorted.
func ParsePair(s string) (string, error) {
	a, b, ok := strings.Cut(s, ",")
	if !ok {
		a, b, ok = strings.Cut(s, "-")
	}
	a, b = strings.TrimSpace(a), strings.TrimSpace(b)
	if !ok || a == "" || b == "" {
		return "", fmt.Errorf("pair %q: want two region ids, e.g. eu,us", s)
	}
	if b < a {
		a, b = b, a
	}
	return a + "-" + b, nil
}

// ParseTime reads a time bound: RFC 3339 ("2026-11-26T17:00:00Z"), a date
// ("2026-11-26", UTC midnight), or a duration meaning that long before now
// ("90m", "24h", "7d").
func ParseTime(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil && n >= 0 {
			return now.Add(-time.Duration(n) * 24 * time.Hour), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time (2026-11-26T17:00:00Z), a date (2026-11-26) nor a duration ago (24h, 7d)", s)
}

// Formats a report renders to.
const (
	FormatTable = "table"
	FormatCSV   = "csv"
	FormatJSON  = "json"
	FormatHTML  = "html"
)

// Formats lists the formats in the order help texts name them.
var Formats = []string{FormatTable, FormatCSV, FormatJSON, FormatHTML}

// DefaultLimit is how many detail rows a report lists unless told
// otherwise (limit=0 lists them all).
const DefaultLimit = 100

// ParseQuery reads filters and a format from URL query parameters: since,
// until, table, region, pair, limit (default DefaultLimit), format
// (default json). Unknown
// parameters are refused, so a misspelt filter never silently widens a
// report.
func ParseQuery(q url.Values, now time.Time) (Filters, string, error) {
	f := Filters{Limit: DefaultLimit}
	format := FormatJSON
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(q)) {
		vals := q[name]
		v := vals[len(vals)-1]
		if len(vals) > 1 {
			errs = append(errs, fmt.Errorf("%s: given %d times", name, len(vals)))
			continue
		}
		var err error
		switch name {
		case "since":
			f.Since, err = ParseTime(v, now)
		case "until":
			f.Until, err = ParseTime(v, now)
		case "table":
			f.Table = v
		case "region":
			f.Region = v
		case "pair":
			f.Pair, err = ParsePair(v)
		case "limit":
			f.Limit, err = strconv.Atoi(v)
			if err != nil {
				err = fmt.Errorf("%q is not a whole number", v)
			}
		case "format":
			format, err = ParseFormat(v)
		default:
			err = fmt.Errorf("unknown parameter (want since, until, table, region, pair, limit, format)")
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return f, format, err
	}
	return f, format, f.Validate()
}

// ParseFormat checks a format name.
func ParseFormat(s string) (string, error) {
	for _, f := range Formats {
		if s == f {
			return s, nil
		}
	}
	return "", fmt.Errorf("format %q is not one of %s", s, strings.Join(Formats, ", "))
}
