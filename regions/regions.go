// Package regions says who the regions are and holds the configuration that
// must be identical in every region: the replicated tables and their conflict
// policies. Two replicators refuse to exchange changes unless their
// Fingerprints are equal, so a policy can never be applied differently in two
// places. Later this package hosts the control plane (membership and config
// epochs agreed through raft).
package regions

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/polyregion/polyregion/conflict"
)

// Table is one replicated table and the policy that resolves its conflicts.
type Table struct {
	// Name is the schema-qualified table name, e.g. "public.accounts".
	Name   string
	Policy conflict.Policy
	// Added is the configuration epoch that added the table (0: a
	// founding table; see tables.go).
	Added uint64
}

// Schema returns the schema part of Name.
func (t Table) Schema() string { s, _, _ := strings.Cut(t.Name, "."); return s }

// Relation returns the table part of Name.
func (t Table) Relation() string { _, r, _ := strings.Cut(t.Name, "."); return r }

// Peer is another region this region exchanges changes with.
type Peer struct {
	ID conflict.RegionID
	// URL of the peer's link endpoint, e.g. "https://eu.example.net:7480".
	URL string
}

// Cluster is the agreed configuration: every region's view of it must have
// the same Fingerprint.
type Cluster struct {
	Regions []conflict.RegionID
	Tables  []Table
	// Sequences, when set, gives each region its own numbers from the
	// sequences that fill the replicated tables' keys (see SequencePlan).
	Sequences *SequencePlan
	// Agreed: the region set is agreed by the control plane (Regions is
	// its membership, Sequences its offsets), not by each region's
	// configuration; Fingerprint and Describe leave both out, so that
	// regions still applying a membership change keep exchanging changes.
	Agreed bool
	// Changes are the policy changes agreed by the control plane: the
	// epochs after the founding one (whose policies are Tables'), as far
	// as this region knows them (see epochs.go). Fingerprint and Describe
	// leave them out: regions learn of a change at different moments and
	// keep exchanging changes meanwhile.
	Changes []Epoch
	// Dropped are the founding tables a change dropped (see tables.go):
	// not replicated, still in Fingerprint and Describe.
	Dropped []Table
}

// KnownEpoch is the latest configuration epoch c knows (1: the founding
// one).
func (c Cluster) KnownEpoch() uint64 {
	if len(c.Changes) == 0 {
		return 1
	}
	return c.Changes[len(c.Changes)-1].Number
}

// Policies are the tables' policies by table name.
func (c Cluster) Policies() map[string]conflict.Policy {
	out := make(map[string]conflict.Policy, len(c.Tables))
	for _, t := range c.Tables {
		out[t.Name] = t.Policy
	}
	return out
}

// InEffect are the numbers of the changes in effect.
func (c Cluster) InEffect() []uint64 {
	var out []uint64
	for _, e := range c.Changes {
		if e.Effective > 0 {
			out = append(out, e.Number)
		}
	}
	return out
}

// TableEpochs returns the policies of table name by epoch, from the
// founding one (Tables') on. A change that does not name the table keeps
// its policy.
func (c Cluster) TableEpochs(name string) (conflict.Epochs, error) {
	t, ok := c.Table(name)
	if !ok {
		return conflict.Epochs{}, fmt.Errorf("table %s is not replicated", name)
	}
	ps := []conflict.Policy{t.Policy}
	for _, e := range c.Changes {
		p, ok := e.Policies[name]
		if !ok {
			p = ps[len(ps)-1]
		}
		ps = append(ps, p)
	}
	e, err := conflict.NewEpochs(1, ps...)
	if err != nil {
		return conflict.Epochs{}, fmt.Errorf("table %s: %w", name, err)
	}
	return e, nil
}

var identRe = regexp.MustCompile(`^[a-z_][a-z0-9_$]{0,62}$`)

// ValidateTableName checks a "schema.table" name made of plain lower-case
// identifiers (names needing quotes are refused rather than guessed at).
func ValidateTableName(name string) error {
	s, r, ok := strings.Cut(name, ".")
	if !ok {
		return fmt.Errorf("table %q: want schema.table", name)
	}
	if !identRe.MatchString(s) || !identRe.MatchString(r) {
		return fmt.Errorf("table %q: schema and table must be lower-case identifiers ([a-z_][a-z0-9_$]*)", name)
	}
	return nil
}

// Validate reports the first problem with the agreed configuration.
func (c Cluster) Validate() error {
	if len(c.Regions) == 0 {
		return fmt.Errorf("regions: at least one region is required")
	}
	seen := map[conflict.RegionID]bool{}
	for _, r := range c.Regions {
		if err := r.Validate(); err != nil {
			return fmt.Errorf("regions: %w", err)
		}
		if seen[r] {
			return fmt.Errorf("regions: %q listed twice", r)
		}
		seen[r] = true
	}
	if len(c.Tables) == 0 {
		return fmt.Errorf("tables: at least one replicated table is required")
	}
	names := map[string]bool{}
	for i, t := range c.Tables {
		if err := ValidateTableName(t.Name); err != nil {
			return fmt.Errorf("tables[%d]: %w", i, err)
		}
		if names[t.Name] {
			return fmt.Errorf("tables[%d]: %s listed twice", i, t.Name)
		}
		names[t.Name] = true
		if err := t.Policy.Validate(); err != nil {
			return fmt.Errorf("tables[%d] (%s): policy: %w", i, t.Name, err)
		}
		for _, p := range t.Policy.Priority {
			if !seen[p] {
				return fmt.Errorf("tables[%d] (%s): policy priority names unknown region %q", i, t.Name, p)
			}
		}
	}
	return c.validateSequences()
}

// validateSequences checks c.Sequences against the region set.
func (c Cluster) validateSequences() error {
	p := c.Sequences
	if p == nil {
		return nil
	}
	if p.Stride < 2 || p.Stride > MaxSequenceStride {
		return fmt.Errorf("sequences: stride %d: must be 2 to %d (the most regions the numbers leave room for)", p.Stride, MaxSequenceStride)
	}
	owner := map[int64]conflict.RegionID{}
	for _, r := range c.Regions {
		off, ok := p.Offsets[r]
		if !ok {
			return fmt.Errorf("sequences: offsets: region %q has no offset (every region needs its own, 0 to %d)", r, p.Stride-1)
		}
		if off < 0 || off >= p.Stride {
			return fmt.Errorf("sequences: offsets: region %q: offset %d must be 0 to %d (below the stride)", r, off, p.Stride-1)
		}
		if o, dup := owner[off]; dup {
			return fmt.Errorf("sequences: offsets: regions %q and %q both have offset %d (their numbers would collide)", o, r, off)
		}
		owner[off] = r
	}
	known := map[conflict.RegionID]bool{}
	for _, r := range c.Regions {
		known[r] = true
	}
	var unknown []string
	for r := range p.Offsets {
		if !known[r] {
			unknown = append(unknown, string(r))
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("sequences: offsets: %s not among the regions", strings.Join(unknown, ", "))
	}
	return nil
}

// Table returns the configuration of the named table.
func (c Cluster) Table(name string) (Table, bool) {
	for _, t := range c.Tables {
		if t.Name == name {
			return t, true
		}
	}
	return Table{}, false
}

// Fingerprint is a stable digest of everything that must agree between
// regions: the region set and each table's policy. Order of listing does not
// matter.
func (c Cluster) Fingerprint() string {
	regs := make([]string, len(c.Regions))
	for i, r := range c.Regions {
		regs[i] = string(r)
	}
	sort.Strings(regs)
	tabs := make([]string, 0, len(c.Tables))
	for _, t := range c.founding() {
		tabs = append(tabs, t.Name+"="+t.Policy.Fingerprint())
	}
	sort.Strings(tabs)
	text := "regions:" + strings.Join(regs, ",") + "\ntables:" + strings.Join(tabs, "\n")
	if c.Agreed {
		text = "regions agreed by the control plane\ntables:" + strings.Join(tabs, "\n")
	}
	if c.Sequences != nil && !c.Agreed {
		// Only when set, so that clusters without it keep the fingerprint
		// earlier versions computed. With the regions agreed by the
		// control plane, so are their offsets.
		text += "\nsequences:" + c.Sequences.describe()
	}
	h := sha256.Sum256([]byte(text))
	return hex.EncodeToString(h[:12])
}

// founding are the tables c was founded with, dropped ones included:
// regions learn of a change of the tables at different moments and keep
// exchanging changes meanwhile (see tables.go).
func (c Cluster) founding() []Table {
	var out []Table
	for _, t := range c.Tables {
		if t.Added == 0 {
			out = append(out, t)
		}
	}
	for _, t := range c.Dropped {
		if t.Added == 0 && !slices.ContainsFunc(out, func(o Table) bool { return o.Name == t.Name }) {
			out = append(out, t)
		}
	}
	return out
}

// Describe is the human-readable form of what Fingerprint digests, used in
// error messages that explain a disagreement.
func (c Cluster) Describe() map[string]string {
	out := map[string]string{}
	regs := make([]string, len(c.Regions))
	for i, r := range c.Regions {
		regs[i] = string(r)
	}
	sort.Strings(regs)
	out["regions"] = strings.Join(regs, ",")
	if c.Agreed {
		out["regions"] = "agreed by the control plane"
	}
	for _, t := range c.founding() {
		out["table "+t.Name] = t.Policy.Fingerprint()
	}
	if c.Sequences != nil && !c.Agreed {
		out["sequences"] = c.Sequences.describe()
	}
	return out
}

// Diff names the differences between two descriptions, sorted.
func Diff(local, remote map[string]string) []string {
	var out []string
	for k, v := range local {
		rv, ok := remote[k]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("%s: only here (%s)", k, v))
		case rv != v:
			out = append(out, fmt.Sprintf("%s: here %q, peer %q", k, v, rv))
		}
	}
	for k, v := range remote {
		if _, ok := local[k]; !ok {
			out = append(out, fmt.Sprintf("%s: only at peer (%s)", k, v))
		}
	}
	sort.Strings(out)
	return out
}
