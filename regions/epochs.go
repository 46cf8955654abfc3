package regions

// Policy changes at numbered epochs (see conflict/epochs.go for why this
// converges). A change is one command, configure, carrying every table's
// policy; it becomes the next epoch, announced. Each region that
// replicates then reports its fence (fence): the last transaction it
// shipped before it learned of the epoch, after which everything it ships
// is stamped as known under it. Once every such region has a fence and
// every one of them reported applying every other one's transactions up
// to that one's fence, the epoch is in effect (Epoch.Effective, the log
// index where that became true): from then on a region ranks its new
// writes under the epoch. A region that is down holds a change until it
// is back or removed; until the epoch is in effect another change is
// refused, so that at most two policies are ever in play for a table.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/polyregion/polyregion/conflict"
)

// OpConfigure and OpFence are the policy-change commands.
const (
	// OpConfigure announces the next epoch with Command.Policies.
	OpConfigure = "configure"
	// OpFence reports Command.Region's fence for epoch Command.Epoch:
	// Command.Fence is the last transaction it shipped before it learned
	// of that epoch.
	OpFence = "fence"
)

// What a region's release takes (Progress.Takes): a change made at an
// epoch ships transactions in a format releases before it refuse, and a
// table it adds is seeded only by a release that knows how.
const (
	// TakesPolicyChanges: epochs, and transactions stamped with them.
	TakesPolicyChanges = 1
	// TakesTableChanges: a change may add or drop a table
	// (regions/tables.go).
	TakesTableChanges = 2
	// TakesMembershipRules: the membership's later rules (a joining
	// region drained on removal gets no vote; only an active region
	// counts as the one that stays; a region another loads its snapshot
	// from is not re-seeded). The control plane applies them once every
	// region that replicates runs a release that has them (rules), so
	// that a rolling upgrade never has two releases decide one command
	// differently.
	TakesMembershipRules = 3
	// Takes is what this release takes.
	Takes = TakesMembershipRules
)

// rules reports whether the control plane applies the membership rules
// of TakesMembershipRules: every region that replicates reported running
// a release that has them. Witnesses report nothing: upgrade them before
// the last region (README, Upgrading).
func (m *Membership) rules() bool { return len(m.notTaking(TakesMembershipRules)) == 0 }

// Pending reports whether the epoch was announced and is not in effect
// yet (epoch 1, the founding configuration, is in effect from init).
func (e Epoch) Pending() bool { return e.Number > 1 && e.Effective == 0 }

// configure announces the next epoch with c.Policies.
func (m *Membership) configure(index uint64, c Command) error {
	if len(c.Policies) == 0 {
		return invalid("configure: the tables' policies are required")
	}
	var problems []string
	for _, name := range slices.Sorted(maps.Keys(c.Policies)) {
		if err := ValidateTableName(name); err != nil {
			problems = append(problems, err.Error())
		} else if err := c.Policies[name].Validate(); err != nil {
			problems = append(problems, fmt.Sprintf("table %s: %v", name, err))
		}
	}
	if len(problems) > 0 {
		return invalid("configure: %s", strings.Join(problems, "; "))
	}
	cur := m.Epoch()
	if cur.Policies != nil && policiesFingerprint(cur.Policies) == policiesFingerprint(c.Policies) {
		return nil // the same change again (a retry whose answer was lost), or no change
	}
	if cur.Pending() {
		return refuse("epoch %d is not in effect yet (%s); one policy change at a time", cur.Number, strings.Join(m.awaiting(cur), "; "))
	}
	need, what := TakesPolicyChanges, "policy changes"
	if cur.Policies != nil && (len(addedTables(cur.Policies, c.Policies)) > 0 || len(addedTables(c.Policies, cur.Policies)) > 0) {
		need, what = TakesTableChanges, "tables added or dropped at an epoch"
	}
	if behind := m.notTaking(need); len(behind) > 0 {
		return refuse("%s %s not reported running a release that takes %s: upgrade every region first (each reports what it runs every report_interval)",
			strings.Join(behind, ", "), map[bool]string{true: "has", false: "have"}[len(behind) == 1], what)
	}
	if cur.Policies != nil {
		for _, name := range slices.Sorted(maps.Keys(cur.Policies)) {
			next, ok := c.Policies[name]
			if !ok {
				continue // dropped
			}
			if _, err := conflict.NewEpochs(cur.Number, cur.Policies[name], next); err != nil {
				return refuse("table %s: %v", name, err)
			}
		}
	}
	next := Epoch{Number: cur.Number + 1, Fingerprint: policiesFingerprint(c.Policies), Index: index,
		Policies: maps.Clone(c.Policies), Fences: map[conflict.RegionID]uint64{}, Describe: map[string]string{}}
	for name, p := range c.Policies {
		next.Describe["table "+name] = p.Fingerprint()
	}
	m.Epochs = append(m.Epochs, next)
	m.settle(index)
	return nil
}

// notTaking names the regions that replicate and have not reported taking
// need.
func (m *Membership) notTaking(need int) []string {
	var out []string
	for _, mem := range m.fenced() {
		if p := m.Progress[mem.ID]; p == nil || p.Takes < need {
			out = append(out, string(mem.ID))
		}
	}
	return out
}

// addedTables names the tables of next that cur does not have.
func addedTables(cur, next map[string]conflict.Policy) []string {
	var out []string
	for name := range next {
		if _, ok := cur[name]; !ok {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// policiesFingerprint is a stable digest of a set of tables' policies.
func policiesFingerprint(ps map[string]conflict.Policy) string {
	tabs := make([]string, 0, len(ps))
	for name, p := range ps {
		tabs = append(tabs, name+"="+p.Fingerprint())
	}
	slices.Sort(tabs)
	h := sha256.Sum256([]byte("tables:" + strings.Join(tabs, "\n")))
	return hex.EncodeToString(h[:12])
}

// fence records a region's fence for the latest epoch.
func (m *Membership) fence(index uint64, c Command) error {
	cur := m.Members[c.Region]
	if cur == nil || cur.Witness || cur.State == Removed {
		return refuse("region %q is not a member that replicates", c.Region)
	}
	e := m.latest()
	switch {
	case e == nil || c.Epoch != e.Number:
		return refuse("epoch %d is not the latest (%d)", c.Epoch, m.Epoch().Number)
	case !e.Pending():
		return nil // in effect already: a late or repeated report
	}
	if f, ok := e.Fences[c.Region]; ok {
		if f != c.Fence {
			return refuse("region %s reported fence %d for epoch %d already, not %d", c.Region, f, e.Number, c.Fence)
		}
		return nil
	}
	e.Fences[c.Region] = c.Fence
	m.settle(index)
	return nil
}

func (m *Membership) latest() *Epoch {
	if len(m.Epochs) == 0 {
		return nil
	}
	return &m.Epochs[len(m.Epochs)-1]
}

// fenced are the members whose fences a pending epoch needs: every one
// that replicates.
func (m *Membership) fenced() []Member {
	var out []Member
	for _, mem := range m.Sorted() {
		if !mem.Witness && mem.State != Removed {
			out = append(out, mem)
		}
	}
	return out
}

// awaiting names what a pending epoch waits for, nil when nothing.
func (m *Membership) awaiting(e Epoch) []string {
	var out []string
	mems := m.fenced()
	for _, r := range mems {
		if _, ok := e.Fences[r.ID]; !ok {
			out = append(out, fmt.Sprintf("%s has not reported its fence", r.ID))
		}
	}
	if len(out) > 0 {
		return out
	}
	for _, r := range mems {
		var applied map[conflict.RegionID]uint64
		if p := m.Progress[r.ID]; p != nil {
			applied = p.Applied
		}
		for _, q := range mems {
			if q.ID != r.ID && applied[q.ID] < e.Fences[q.ID] {
				out = append(out, fmt.Sprintf("%s has applied %d of %s's transactions, %d are from before %s learned of epoch %d", r.ID, applied[q.ID], q.ID, e.Fences[q.ID], q.ID, e.Number))
			}
		}
	}
	return out
}

// settle puts a pending epoch in effect at index once nothing is awaited.
func (m *Membership) settle(index uint64) {
	if e := m.latest(); e != nil && e.Pending() && len(m.awaiting(*e)) == 0 {
		e.Effective = index
	}
}

// EpochWaits names what the latest epoch waits for before it is in
// effect (nil when it is).
func (m Membership) EpochWaits() []string {
	if e := m.Epoch(); e.Pending() {
		return m.awaiting(e)
	}
	return nil
}
