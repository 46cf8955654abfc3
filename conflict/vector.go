package conflict

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
)

// RegionID names a region. Valid: 1-32 chars of [a-z0-9_-], starting with a letter.
type RegionID string

// MaxRegionIDLen is the longest valid RegionID, in bytes.
const MaxRegionIDLen = 32

// Validate reports why r is not a valid region name, or nil.
func (r RegionID) Validate() error {
	if msg := regionProblem(r); msg != "" {
		return fmt.Errorf("invalid region id %q: %s", clip(string(r)), msg)
	}
	return nil
}

// regionProblem describes what is wrong with r ("" when valid).
func regionProblem(r RegionID) string {
	switch {
	case len(r) == 0:
		return "empty"
	case len(r) > MaxRegionIDLen:
		return fmt.Sprintf("%d bytes long, at most %d allowed", len(r), MaxRegionIDLen)
	case r[0] < 'a' || r[0] > 'z':
		return "must start with a lowercase letter a-z"
	}
	for i := 1; i < len(r); i++ {
		c := r[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' && c != '-' {
			return fmt.Sprintf("byte %d (%q) is not allowed; use only a-z, 0-9, '_' and '-'", i, c)
		}
	}
	return ""
}

// Vector is a version vector: per region, the number of writes from that
// region in a row's history. A missing entry and a zero entry mean the same.
type Vector map[RegionID]uint64

// Get returns v's count for r (0 when absent). Safe on a nil Vector.
func (v Vector) Get(r RegionID) uint64 { return v[r] }

// Clone returns a copy of v. It is safe on a nil Vector and always returns a
// non-nil map.
func (v Vector) Clone() Vector {
	out := make(Vector, len(v))
	maps.Copy(out, v)
	return out
}

// Tick returns a copy of v with r's count incremented by one; v is unchanged.
// It panics if the count is already math.MaxUint64: wrapping to zero would
// silently erase the region's history, and that many writes cannot happen,
// so only corrupt data can get there.
func (v Vector) Tick(r RegionID) Vector {
	n := v[r]
	if n == math.MaxUint64 {
		panic(fmt.Sprintf("conflict: Vector.Tick: count for region %q would overflow", string(r)))
	}
	out := v.Clone()
	out[r] = n + 1
	return out
}

// Merge returns the pointwise maximum of a and b as a new map, leaving out
// zero entries. Either argument may be nil; the result is never nil.
func Merge(a, b Vector) Vector {
	out := make(Vector, max(len(a), len(b)))
	for r, n := range a {
		if n != 0 {
			out[r] = n
		}
	}
	for r, n := range b {
		if n > out[r] {
			out[r] = n
		}
	}
	return out
}

// Order is how two version vectors relate.
type Order int

// Orders returned by Compare(a, b).
const (
	Equal      Order = iota // same history
	Before                  // a happened-before b (a < b): b dominates
	After                   // b happened-before a (a > b): a dominates
	Concurrent              // neither includes the other
)

// String returns "equal", "before", "after" or "concurrent".
func (o Order) String() string {
	switch o {
	case Equal:
		return "equal"
	case Before:
		return "before"
	case After:
		return "after"
	case Concurrent:
		return "concurrent"
	}
	return "Order(" + strconv.Itoa(int(o)) + ")"
}

// reverse returns the order of (b, a) given the order of (a, b).
func (o Order) reverse() Order {
	switch o {
	case Before:
		return After
	case After:
		return Before
	}
	return o
}

// Compare returns how a relates to b. Missing entries count as 0.
func Compare(a, b Vector) Order {
	less, greater := false, false // some entry of a is less / greater than b's
	for r, n := range a {
		m := b[r]
		if n < m {
			less = true
		} else if n > m {
			greater = true
		}
		if less && greater {
			return Concurrent
		}
	}
	if !less {
		for r, m := range b {
			if _, ok := a[r]; !ok && m != 0 {
				less = true
				break
			}
		}
	}
	switch {
	case less && greater:
		return Concurrent
	case less:
		return Before
	case greater:
		return After
	}
	return Equal
}

// String returns the canonical text of v, "region:count" entries sorted by
// region and joined by commas, e.g. "eu:3,us:1". Zero entries are left
// out; an empty vector gives "". ParseVector reverses it for valid region
// names.
func (v Vector) String() string {
	keys := make([]RegionID, 0, len(v))
	for r, n := range v {
		if n != 0 {
			keys = append(keys, r)
		}
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, r := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(string(r))
		b.WriteByte(':')
		b.WriteString(strconv.FormatUint(v[r], 10))
	}
	return b.String()
}

// ParseVector parses the text made by Vector.String. "" is the empty vector.
// Entries may come in any order. The following are rejected, with an error
// that names the entry at fault: an empty entry, a missing ':', an invalid
// region, a repeated region, and a count that is not a positive decimal
// uint64 written without sign, spaces or leading zeros. The result is never
// nil, even on error.
func ParseVector(s string) (Vector, error) {
	v := Vector{}
	if s == "" {
		return v, nil
	}
	for i, part := range strings.Split(s, ",") {
		fail := func(msg string) (Vector, error) {
			return Vector{}, fmt.Errorf("parse vector: entry %d %q: %s", i+1, clip(part), msg)
		}
		if part == "" {
			return fail("empty entry")
		}
		name, count, ok := strings.Cut(part, ":")
		if !ok {
			return fail("missing ':' between region and count")
		}
		r := RegionID(name)
		if msg := regionProblem(r); msg != "" {
			return fail(fmt.Sprintf("region %q: %s", clip(name), msg))
		}
		n, err := parseCount(count)
		if err != nil {
			return fail(err.Error())
		}
		if _, dup := v[r]; dup {
			return fail(fmt.Sprintf("region %q appears more than once", name))
		}
		v[r] = n
	}
	return v, nil
}

func parseCount(s string) (uint64, error) {
	if s == "" {
		return 0, errors.New("count is missing")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("count %q is not a decimal integer", clip(s))
		}
	}
	if s[0] == '0' {
		if len(s) == 1 {
			return 0, errors.New("count 0 is not allowed (zero entries are left out)")
		}
		return 0, fmt.Errorf("count %q has leading zeros", clip(s))
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("count %q does not fit in 64 bits", clip(s))
	}
	return n, nil
}

// clip shortens s for an error message.
func clip(s string) string {
	const n = 64
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
