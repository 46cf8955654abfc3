package regions

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/polyregion/polyregion/conflict"
)

var epochTables = map[string]conflict.Policy{
	"public.accounts": {},
	"public.hits":     {Counters: []string{"n"}},
}

func foundedWithPolicies(t *testing.T, ids ...conflict.RegionID) *Membership {
	t.Helper()
	m := foundedAs(t, epochTables, ids...)
	for _, id := range ids {
		report(t, m, 1, id, 0, nil) // each runs this release
	}
	return m
}

func priorityTables() map[string]conflict.Policy {
	return map[string]conflict.Policy{
		"public.accounts": {Kind: conflict.RegionPriority, Priority: []conflict.RegionID{"us", "eu"}},
		"public.hits":     {Counters: []string{"n"}, Deletes: conflict.DeleteWins},
	}
}

// refusedUnchanged is refusedWith comparing the whole membership, epochs
// included.
func refusedUnchanged(t *testing.T, m *Membership, c Command, want string) {
	t.Helper()
	before, _ := json.Marshal(m)
	applied := m.Applied
	_, err := m.Apply(applied, c) // a refused command still counts as applied
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), want) {
		t.Fatalf("%s %s: got %v, want a refusal naming %q", c.Op, c.Region, err, want)
	}
	after, _ := json.Marshal(m)
	if string(after) != string(before) {
		t.Fatalf("a refused %s changed the membership:\n%s\n%s", c.Op, before, after)
	}
}

func report(t *testing.T, m *Membership, index uint64, r conflict.RegionID, shipped uint64, applied map[conflict.RegionID]uint64) {
	t.Helper()
	mustApply(t, m, index, Command{Op: OpReport, Region: r, Progress: &Progress{Shipped: shipped, Applied: applied, Takes: Takes}})
}

// TestAPolicyChangeIsInEffectOnceEveryRegionAppliedWhatCameBeforeIt: the
// announced epoch waits for every region's fence, then for every region to
// have applied every other's transactions up to that one's fence; another
// change waits until then.
func TestAPolicyChangeIsInEffectOnceEveryRegionAppliedWhatCameBeforeIt(t *testing.T) {
	m := foundedWithPolicies(t, "us", "eu", "ap")
	if e := m.Epoch(); e.Number != 1 || e.Pending() || len(e.Policies) != 2 {
		t.Fatalf("founding epoch: %+v", e)
	}
	mustApply(t, m, 2, Command{Op: OpConfigure, Policies: priorityTables()})
	e := m.Epoch()
	if e.Number != 2 || !e.Pending() || e.Index != 2 || e.Policies["public.accounts"].Kind != conflict.RegionPriority || e.Fingerprint == "" {
		t.Fatalf("announced epoch: %+v", e)
	}
	mustApply(t, m, 3, Command{Op: OpConfigure, Policies: priorityTables()}) // a retry
	if m.Epoch().Number != 2 {
		t.Fatalf("a repeated change announced epoch %d", m.Epoch().Number)
	}
	refusedUnchanged(t, m, Command{Op: OpConfigure, Policies: epochTables}, "epoch 2 is not in effect yet (ap has not reported its fence; eu has not reported its fence; us has not reported its fence)")

	mustApply(t, m, 4, Command{Op: OpFence, Region: "us", Epoch: 2, Fence: 10})
	mustApply(t, m, 5, Command{Op: OpFence, Region: "us", Epoch: 2, Fence: 10}) // a retry
	refusedUnchanged(t, m, Command{Op: OpFence, Region: "us", Epoch: 2, Fence: 11}, "reported fence 10 for epoch 2 already")
	refusedUnchanged(t, m, Command{Op: OpFence, Region: "eu", Epoch: 3, Fence: 1}, "epoch 3 is not the latest")
	refusedUnchanged(t, m, Command{Op: OpFence, Region: "sa", Epoch: 2, Fence: 1}, "not a member that replicates")
	mustApply(t, m, 6, Command{Op: OpFence, Region: "eu", Epoch: 2, Fence: 5})
	mustApply(t, m, 7, Command{Op: OpFence, Region: "ap", Epoch: 2, Fence: 0})
	if w := m.EpochWaits(); len(w) != 4 || w[0] != "ap has applied 0 of eu's transactions, 5 are from before eu learned of epoch 2" {
		t.Fatalf("waits with every fence in and nothing applied: %q", w)
	}
	report(t, m, 8, "us", 12, map[conflict.RegionID]uint64{"eu": 5})
	report(t, m, 9, "eu", 6, map[conflict.RegionID]uint64{"us": 9})
	report(t, m, 10, "ap", 0, map[conflict.RegionID]uint64{"us": 12, "eu": 6})
	if w := m.EpochWaits(); len(w) != 1 || !strings.Contains(w[0], "eu has applied 9 of us's transactions, 10 are from before") || !m.Epoch().Pending() {
		t.Fatalf("waits with eu one short: %q", w)
	}
	report(t, m, 11, "eu", 6, map[conflict.RegionID]uint64{"us": 10})
	if e := m.Epoch(); e.Pending() || e.Effective != 11 || m.EpochWaits() != nil {
		t.Fatalf("epoch 2 after every region applied up to every fence: %+v waits %q", e, m.EpochWaits())
	}
	// Late fences and reports change nothing; the next change may come.
	mustApply(t, m, 12, Command{Op: OpFence, Region: "ap", Epoch: 2, Fence: 0})
	mustApply(t, m, 13, Command{Op: OpConfigure, Policies: epochTables})
	if e := m.Epoch(); e.Number != 3 || !e.Pending() || e.Policies["public.accounts"].Kind != "" {
		t.Fatalf("epoch 3: %+v", e)
	}
	if len(m.Epochs) != 3 || m.Epochs[1].Effective != 11 {
		t.Fatalf("earlier epochs are kept as they were: %+v", m.Epochs)
	}
}

// TestAPolicyChangeDoesNotWaitForARemovedRegion: a region that is down
// holds a change until it is removed; a region added meanwhile ships
// nothing from before it learned of the epoch.
func TestAPolicyChangeDoesNotWaitForARemovedRegion(t *testing.T) {
	m := foundedWithPolicies(t, "us", "eu", "ap")
	mustApply(t, m, 2, Command{Op: OpConfigure, Policies: priorityTables()})
	mustApply(t, m, 3, Command{Op: OpFence, Region: "us", Epoch: 2, Fence: 4})
	mustApply(t, m, 4, Command{Op: OpFence, Region: "eu", Epoch: 2, Fence: 2})
	report(t, m, 5, "us", 4, map[conflict.RegionID]uint64{"eu": 2})
	report(t, m, 6, "eu", 2, map[conflict.RegionID]uint64{"us": 4})
	if w := m.EpochWaits(); len(w) != 1 || w[0] != "ap has not reported its fence" {
		t.Fatalf("waits with ap down: %q", w)
	}
	mustApply(t, m, 7, Command{Op: OpAdd, Region: "sa", URL: "https://sa:7480", From: "us"})
	if f, ok := m.Epoch().Fences["sa"]; !ok || f != 0 {
		t.Fatalf("a region added during the change: fence %d (%v), want 0", f, ok)
	}
	mustApply(t, m, 8, Command{Op: OpAdd, Region: "w1", URL: "https://w1:7480", Witness: true})
	mustApply(t, m, 9, Command{Op: OpRemove, Region: "ap", Force: true})
	if w := m.EpochWaits(); len(w) != 2 || !strings.HasPrefix(w[0], "sa has applied 0 of eu's transactions, 2 are from before") {
		t.Fatalf("waits after ap's removal: %q", w)
	}
	report(t, m, 10, "sa", 0, map[conflict.RegionID]uint64{"us": 4, "eu": 2})
	if e := m.Epoch(); e.Pending() || e.Effective != 10 {
		t.Fatalf("epoch 2 once sa loaded what came before: %+v", e)
	}
}

// TestAPolicyChangeKeepsWhatMerges: refused, naming the difference, with
// nothing changed.
func TestAPolicyChangeKeepsWhatMerges(t *testing.T) {
	m := foundedWithPolicies(t, "us", "eu")
	counters := priorityTables()
	counters["public.accounts"] = conflict.Policy{Counters: []string{"balance"}}
	refusedUnchanged(t, m, Command{Op: OpConfigure, Policies: counters}, "table public.accounts: epoch 2 changes which columns merge")
	bad := priorityTables()
	bad["public.accounts"] = conflict.Policy{Kind: "fastest"}
	if _, err := m.Apply(2, Command{Op: OpConfigure, Policies: bad}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "table public.accounts") {
		t.Fatalf("an invalid policy: %v", err)
	}
	if _, err := m.Apply(2, Command{Op: OpConfigure}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("no policies: %v", err)
	}
	if e := m.Epoch(); e.Number != 1 {
		t.Fatalf("refused changes announced epoch %d", e.Number)
	}
	fresh := &Membership{}
	if _, err := fresh.Apply(1, Command{Op: OpInit, Members: []Member{{ID: "us"}}, Fingerprint: "f", Policies: bad}); !errors.Is(err, ErrInvalid) || len(fresh.Epochs) != 0 {
		t.Fatalf("init with an invalid policy: %v", err)
	}
}

// bringIntoEffect makes epoch, announced to us and eu (neither having
// shipped anything), come into effect: both report their fence, then
// their progress, from log index first on.
func bringIntoEffect(t *testing.T, m *Membership, first, epoch uint64) {
	t.Helper()
	for n, r := range []conflict.RegionID{"us", "eu"} {
		mustApply(t, m, first+uint64(n), Command{Op: OpFence, Region: r, Epoch: epoch})
	}
	report(t, m, first+2, "us", 0, map[conflict.RegionID]uint64{"eu": 0})
	report(t, m, first+3, "eu", 0, map[conflict.RegionID]uint64{"us": 0})
	if m.Epoch().Pending() {
		t.Fatalf("epoch %d still pending: %v", epoch, m.EpochWaits())
	}
}

// TestAChangeMayAddAndDropTables: a change naming a table the cluster does
// not replicate adds it at its epoch, and one leaving a table out drops
// it; the fingerprint stays the founding tables' throughout.
func TestAChangeMayAddAndDropTables(t *testing.T) {
	m := foundedWithPolicies(t, "us", "eu")
	more := priorityTables()
	more["public.extra"] = conflict.Policy{Counters: []string{"n"}}
	mustApply(t, m, 2, Command{Op: OpConfigure, Policies: more})
	if e := m.Epoch(); e.Number != 2 || e.Policies["public.extra"].Counters[0] != "n" {
		t.Fatalf("epoch 2: %+v", e)
	}
	c := Cluster{Regions: []conflict.RegionID{"us", "eu"}, Tables: []Table{{Name: "public.accounts"}, {Name: "public.hits", Policy: epochTables["public.hits"]}},
		Changes: m.Epochs[1:]}
	before := c.Fingerprint()
	c = c.WithTableChanges()
	if tb, ok := c.Table("public.extra"); !ok || tb.Added != 2 || len(c.Tables) != 3 {
		t.Fatalf("tables with the change: %+v", c.Tables)
	}
	if c.Fingerprint() != before || c.Describe()["table public.extra"] != "" {
		t.Fatalf("an added table changed the fingerprint or the description: %v", c.Describe())
	}
	if e, err := c.TableEpochs("public.extra"); err != nil || len(e.Policies) != 2 || e.Policies[0].Counters[0] != "n" {
		t.Fatalf("the added table's epochs: %+v, %v", e, err)
	}
	bringIntoEffect(t, m, 3, 2)
	less := map[string]conflict.Policy{"public.extra": more["public.extra"], "public.hits": epochTables["public.hits"]}
	mustApply(t, m, 7, Command{Op: OpConfigure, Policies: less})
	c.Changes = m.Epochs[1:]
	c = c.WithTableChanges()
	if len(c.Tables) != 2 || !c.IsDropped("public.accounts") || c.IsDropped("public.extra") || c.IsDropped("public.hits") || c.Fingerprint() != before {
		t.Fatalf("after dropping public.accounts: tables %+v, dropped %+v, fingerprint %s (was %s)", c.Tables, c.Dropped, c.Fingerprint(), before)
	}
	if _, ok := c.Table("public.accounts"); ok {
		t.Fatal("a dropped table is still replicated")
	}
	// Its versions may go once the change is in effect: no region ships
	// its changes any more.
	if s := c.DroppedSettled(); len(s) != 0 {
		t.Fatalf("settled while the drop is pending: %v", s)
	}
	bringIntoEffect(t, m, 8, 3)
	c.Changes = m.Epochs[1:]
	c = c.WithTableChanges()
	if s := c.DroppedSettled(); !slices.Equal(s, []string{"public.accounts"}) {
		t.Fatalf("settled once the drop is in effect: %v", s)
	}
	// Added again later, it is replicated again (and seeded again).
	c.Changes = append(c.Changes, Epoch{Number: 4, Policies: more})
	if again := c.WithTableChanges(); again.IsDropped("public.accounts") || again.Fingerprint() != before {
		t.Fatalf("added again: tables %+v, dropped %+v", again.Tables, again.Dropped)
	} else if tb, _ := again.Table("public.accounts"); tb.Added != 4 {
		t.Fatalf("added again at epoch %d, want 4", tb.Added)
	}
}

// TestAChangeWaitsForEveryRegionToRunAReleaseThatTakesIt: until every
// region that replicates reported running a release that takes policy
// changes (tables added at an epoch, for a change adding one), a change is
// refused, naming them; a witness is not waited for.
func TestAChangeWaitsForEveryRegionToRunAReleaseThatTakesIt(t *testing.T) {
	m := foundedAs(t, epochTables, "us", "eu", "ap")
	mustApply(t, m, 2, Command{Op: OpAdd, Region: "w1", URL: "https://w1:7480", Witness: true})
	refusedUnchanged(t, m, Command{Op: OpConfigure, Policies: priorityTables()}, "ap, eu, us have not reported running a release that takes policy changes: upgrade every region first")
	mustApply(t, m, 3, Command{Op: OpReport, Region: "us", Progress: &Progress{Takes: Takes}})
	mustApply(t, m, 4, Command{Op: OpReport, Region: "eu", Progress: &Progress{Takes: TakesPolicyChanges}})
	refusedUnchanged(t, m, Command{Op: OpConfigure, Policies: priorityTables()}, "ap has not reported running a release that takes policy changes")
	mustApply(t, m, 5, Command{Op: OpReport, Region: "ap", Progress: &Progress{Takes: Takes}})
	more := priorityTables()
	more["public.extra"] = conflict.Policy{}
	refusedUnchanged(t, m, Command{Op: OpConfigure, Policies: more}, "eu has not reported running a release that takes tables added or dropped at an epoch")
	mustApply(t, m, 6, Command{Op: OpConfigure, Policies: priorityTables()})
	if m.Epoch().Number != 2 {
		t.Fatalf("a change every region takes: epoch %d", m.Epoch().Number)
	}
	mustApply(t, m, 7, Command{Op: OpReport, Region: "us", Progress: &Progress{Takes: 0}})
	if m.Progress["us"].Takes != 0 {
		t.Fatal("a region that runs an earlier release again still counts as taking changes")
	}
}

// TestAMembershipRestoredFromASnapshotTakesFences: the control plane's
// snapshot is the membership's JSON, in which an announced epoch's empty
// fences (and an empty sequence plan) are left out. A region restored from
// a snapshot taken right after an announcement (as after a kill -9 during
// a change) applies the fences that follow it in the log, and a join, as
// the regions that never restarted do.
func TestAMembershipRestoredFromASnapshotTakesFences(t *testing.T) {
	m := foundedWithPolicies(t, "us", "eu", "ap")
	mustApply(t, m, 2, Command{Op: OpConfigure, Policies: priorityTables()})
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var restored Membership
	if err := json.Unmarshal(b, &restored); err != nil {
		t.Fatal(err)
	}
	for _, mm := range []*Membership{m, &restored} {
		mustApply(t, mm, 3, Command{Op: OpFence, Region: "us", Epoch: 2, Fence: 10})
		mustApply(t, mm, 4, Command{Op: OpAdd, Region: "sa", URL: "https://sa.example:7000", From: "us"})
	}
	if f := restored.Epoch().Fences; f["us"] != 10 || len(f) != 2 {
		t.Fatalf("restored: fences %v, want us's 10 and the joining sa's 0", f)
	}
	a, _ := json.Marshal(m)
	r, _ := json.Marshal(&restored)
	if string(a) != string(r) {
		t.Fatalf("the restored membership went another way:\n%s\n%s", a, r)
	}
}
