package conflict

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// PolicyKind selects how concurrent writes to a row are resolved.
type PolicyKind string

// Policy kinds.
const (
	// LastWriterWins is the default: the higher HLC wins, and for equal HLCs
	// the higher Origin (byte order) wins.
	LastWriterWins PolicyKind = "last_writer_wins"
	// RegionPriority: the Origin listed earlier in Policy.Priority wins.
	// Regions not listed rank after all listed ones. Ties go to
	// last_writer_wins.
	RegionPriority PolicyKind = "region_priority"
	// CustomSQL: resolved outside this package by the SQL function named in
	// Policy.Resolver (see External and ResolveExternal).
	CustomSQL PolicyKind = "custom_sql"
)

// DeleteRule says how an update (or insert) that is concurrent with a delete
// is resolved.
type DeleteRule string

// Delete rules.
const (
	// DeleteByPolicy decides update against delete like any other pair, by
	// the policy kind.
	DeleteByPolicy DeleteRule = ""
	// DeleteWins: the deleting side always wins.
	DeleteWins DeleteRule = "delete_wins"
	// UpdateWins: the live side always wins (the row is resurrected).
	UpdateWins DeleteRule = "update_wins"
)

// maxIdentLen is PostgreSQL's identifier limit (NAMEDATALEN-1).
const maxIdentLen = 63

// Policy is a table's conflict policy. It must be identical in all regions
// (compare Fingerprints).
type Policy struct {
	Kind     PolicyKind // "" means LastWriterWins
	Priority []RegionID // for RegionPriority: highest priority first
	Deletes  DeleteRule
	Counters []string // column names merged by adding deltas (see MergeCounter)
	// Max and Min name columns that only grow (or only shrink) in every
	// region: concurrent writes merge to the greatest (least) value, and a
	// write that would lower (raise) one keeps the value it had.
	Max, Min []string
	Resolver string // for CustomSQL: schema-qualified function name "schema.func"
	// Columns is ColumnLWW to resolve concurrent updates column by column
	// (see columns.go), "" to resolve them row by row.
	Columns string
}

// kind returns the effective kind ("" means LastWriterWins).
func (p Policy) kind() PolicyKind {
	if p.Kind == "" {
		return LastWriterWins
	}
	return p.Kind
}

// Validate reports every problem with p in one error, or nil. Problems: an
// unknown kind or delete rule; an empty, invalid or repeated region in
// Priority, or Priority set for a kind other than region_priority; a
// Resolver missing or not of the form schema.name (identifiers
// [a-z_][a-z0-9_]*, at most 63 bytes) for custom_sql, or set for another
// kind; an empty, overlong or repeated counter, max or min column, or one
// named in two of those lists; and max or min columns without
// deletes: delete_wins.
func (p Policy) Validate() error {
	var problems []string
	add := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	kind := p.kind()
	switch kind {
	case LastWriterWins, RegionPriority, CustomSQL:
	default:
		add("unknown kind %q (want %s, %s or %s)", string(p.Kind), LastWriterWins, RegionPriority, CustomSQL)
	}

	switch p.Deletes {
	case DeleteByPolicy, DeleteWins, UpdateWins:
	default:
		add("unknown delete rule %q (want %s, %s or empty to decide by the policy kind)", string(p.Deletes), DeleteWins, UpdateWins)
	}

	switch {
	case kind == RegionPriority && len(p.Priority) == 0:
		add("%s needs a non-empty priority list", RegionPriority)
	case kind != RegionPriority && len(p.Priority) > 0:
		add("priority is only used by %s, not by %s", RegionPriority, kind)
	}
	firstAt := map[RegionID]int{}
	for i, r := range p.Priority {
		if msg := regionProblem(r); msg != "" {
			add("priority[%d]: invalid region id %q: %s", i, string(r), msg)
			continue
		}
		if j, dup := firstAt[r]; dup {
			add("priority[%d]: duplicate region %q (already at priority[%d])", i, string(r), j)
			continue
		}
		firstAt[r] = i
	}

	switch {
	case kind == CustomSQL:
		if msg := resolverProblem(p.Resolver); msg != "" {
			add("resolver %q: %s", clip(p.Resolver), msg)
		}
	case p.Resolver != "":
		add("resolver is only used by %s, not by %s", CustomSQL, kind)
	}

	seen := map[string]string{} // column -> where it was first named
	for _, list := range p.mergeLists() {
		for i, c := range list.cols {
			at := fmt.Sprintf("%s[%d]", list.name, i)
			switch {
			case c == "":
				add("%s: empty column name", at)
			case len(c) > maxIdentLen:
				add("%s: column name %q is longer than %d bytes", at, clip(c), maxIdentLen)
			case strings.IndexByte(c, 0) >= 0:
				add("%s: column name %q contains a NUL byte", at, c)
			default:
				if first, dup := seen[c]; dup && strings.HasPrefix(first, list.name+"[") {
					add("%s: duplicate %s column %q (already at %s)", at, strings.TrimSuffix(list.name, "s"), c, first)
				} else if dup {
					add("%s: column %q is already merged as %s", at, c, first)
				} else {
					seen[c] = at
				}
			}
		}
	}

	switch {
	case p.Columns == "":
	case p.Columns != ColumnLWW:
		add("unknown columns rule %q (want %s, or empty to resolve whole rows)", clip(p.Columns), ColumnLWW)
	case kind != LastWriterWins || p.Deletes != DeleteWins:
		// A joined row cannot be taken apart again, and a ranking apart
		// from timestamps would not let a later write replace a column it
		// saw (see columns.go).
		add("columns: %s needs policy %s with deletes: %s (have policy %s, deletes %q)", ColumnLWW, LastWriterWins, DeleteWins, kind, string(p.Deletes))
	}

	if len(p.Max)+len(p.Min) > 0 && p.Deletes != DeleteWins {
		// An update that won over a concurrent delete would bring the row
		// back, in the deleting region, without the values the deleted row
		// had merged from other regions: the regions would differ.
		add("max and min columns need deletes: %s (an update winning over a concurrent delete would bring the row back without the values it had merged)", DeleteWins)
	}

	if len(problems) == 0 {
		return nil
	}
	return errors.New(strings.Join(problems, "; "))
}

// resolverProblem describes what is wrong with a resolver name ("" when fine).
func resolverProblem(name string) string {
	if name == "" {
		return fmt.Sprintf("%s needs a resolver function named schema.name", CustomSQL)
	}
	schema, fn, ok := strings.Cut(name, ".")
	if !ok || strings.Contains(fn, ".") {
		return "must be a schema-qualified function name schema.name"
	}
	if msg := identProblem(schema); msg != "" {
		return "schema " + msg
	}
	if msg := identProblem(fn); msg != "" {
		return "function name " + msg
	}
	return ""
}

// identProblem checks a plain lower-case SQL identifier [a-z_][a-z0-9_]*.
func identProblem(s string) string {
	if s == "" {
		return "is empty"
	}
	if len(s) > maxIdentLen {
		return fmt.Sprintf("%q is longer than %d bytes", clip(s), maxIdentLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c == '_' || (c >= 'a' && c <= 'z') || (i > 0 && c >= '0' && c <= '9')
		if !ok {
			return fmt.Sprintf("%q is not a plain lower-case identifier [a-z_][a-z0-9_]*", s)
		}
	}
	return ""
}

// IsCounter reports whether col is one of p's counter columns (exact,
// case-sensitive match).
func (p Policy) IsCounter(col string) bool { return slices.Contains(p.Counters, col) }

// mergeList is one of a policy's lists of merging columns.
type mergeList struct {
	name string
	cols []string
}

// mergeLists are the policy's merging columns: counters, max, min.
func (p Policy) mergeLists() []mergeList {
	return []mergeList{{"counters", p.Counters}, {"max", p.Max}, {"min", p.Min}}
}

// Merge names how a column merges concurrent writes: "counter", "max",
// "min", or "" when it follows the policy's decision.
func (p Policy) Merge(col string) string {
	switch {
	case slices.Contains(p.Counters, col):
		return "counter"
	case slices.Contains(p.Max, col):
		return "max"
	case slices.Contains(p.Min, col):
		return "min"
	}
	return ""
}

// Fingerprint returns a stable canonical string of the policy. Regions
// compare it to check that they agree. Kind "" is written as
// last_writer_wins. Counters are a set, so they are sorted and deduplicated;
// Priority order matters and is kept. Every string is quoted, so different
// policies give different fingerprints.
func (p Policy) Fingerprint() string {
	var b strings.Builder
	b.WriteString("kind=")
	b.WriteString(strconv.Quote(string(p.kind())))
	b.WriteString(";priority=[")
	for i, r := range p.Priority {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Quote(string(r)))
	}
	b.WriteString("];deletes=")
	b.WriteString(strconv.Quote(string(p.Deletes)))
	b.WriteString(";counters=[")
	counters := slices.Clone(p.Counters)
	slices.Sort(counters)
	counters = slices.Compact(counters)
	for i, c := range counters {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Quote(c))
	}
	b.WriteString("]")
	// Written only when set, so that a policy without them keeps the
	// fingerprint earlier versions computed.
	for _, l := range p.mergeLists()[1:] { // counters are written above
		if len(l.cols) == 0 {
			continue
		}
		cols := slices.Clone(l.cols)
		slices.Sort(cols)
		cols = slices.Compact(cols)
		b.WriteString(";" + l.name + "=[")
		for i, c := range cols {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.Quote(c))
		}
		b.WriteString("]")
	}
	b.WriteString(";resolver=")
	b.WriteString(strconv.Quote(p.Resolver))
	if p.Columns != "" {
		b.WriteString(";columns=")
		b.WriteString(strconv.Quote(p.Columns))
	}
	return b.String()
}

// priorityRank returns r's position in p.Priority, or len(p.Priority) when
// r is not listed (all unlisted regions tie, after every listed one).
func (p Policy) priorityRank(r RegionID) int {
	if i := slices.Index(p.Priority, r); i >= 0 {
		return i
	}
	return len(p.Priority)
}

func (p Policy) rankText(r RegionID) string {
	if i := slices.Index(p.Priority, r); i >= 0 {
		return "priority " + strconv.Itoa(i+1)
	}
	return "unlisted"
}

// Label names the policy as conflict logs and metrics record it: the kind
// (last_writer_wins when unset), then "+" and the delete rule if any.
func (p Policy) Label() string {
	kind := string(p.kind())
	if p.Deletes != "" {
		kind += "+" + string(p.Deletes)
	}
	if p.Columns != "" {
		kind += "+" + p.Columns
	}
	return kind
}
