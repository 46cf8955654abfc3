package regions

import (
	"errors"
	"strings"
	"testing"

	"github.com/polyregion/polyregion/conflict"
)

func founded(t *testing.T, ids ...conflict.RegionID) *Membership {
	t.Helper()
	return foundedAs(t, nil, ids...)
}

// foundedAs is founded with the founding policies recorded.
func foundedAs(t *testing.T, policies map[string]conflict.Policy, ids ...conflict.RegionID) *Membership {
	t.Helper()
	m := &Membership{}
	var mems []Member
	for _, id := range ids {
		mems = append(mems, Member{ID: id, URL: "https://" + string(id) + ":7480"})
	}
	if _, err := m.Apply(1, Command{Op: OpInit, Members: mems, Fingerprint: "fp1", Policies: policies}); err != nil {
		t.Fatal(err)
	}
	return m
}

func mustApply(t *testing.T, m *Membership, index uint64, c Command) Result {
	t.Helper()
	res, err := m.Apply(index, c)
	if err != nil {
		t.Fatalf("%s %s: %v", c.Op, c.Region, err)
	}
	return res
}

func refusedWith(t *testing.T, m *Membership, c Command, want string) {
	t.Helper()
	before := m.Describe()
	_, err := m.Apply(99, c)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), want) {
		t.Fatalf("%s %s: got %v, want a refusal naming %q", c.Op, c.Region, err, want)
	}
	if m.Describe() != before {
		t.Fatalf("a refused %s changed the membership: %s -> %s", c.Op, before, m.Describe())
	}
}

// takeTheRules has every region named report running a release that has
// the membership rules of TakesMembershipRules.
func takeTheRules(t *testing.T, m *Membership, index uint64, ids ...conflict.RegionID) {
	t.Helper()
	for _, id := range ids {
		mustApply(t, m, index, Command{Op: OpReport, Region: id, Progress: &Progress{Takes: TakesMembershipRules}})
	}
}

func TestNothingButInitBeforeTheClusterIsInitialised(t *testing.T) {
	m := &Membership{}
	refusedWith(t, m, Command{Op: OpAdd, Region: "eu", URL: "u", From: "us"}, "not initialised")
	m = founded(t, "us")
	refusedWith(t, m, Command{Op: OpInit, Members: []Member{{ID: "eu"}}, Fingerprint: "x"}, "already initialised")
	if e := m.Epoch(); e.Number != 1 || e.Fingerprint != "fp1" || e.Index != 1 {
		t.Fatalf("epoch after init: %+v", e)
	}
}

func TestAJoiningRegionDoesNotVoteUntilItIsActive(t *testing.T) {
	m := founded(t, "us")
	mustApply(t, m, 2, Command{Op: OpAdd, Region: "eu", URL: "https://eu:7480", From: "us"})
	eu := m.Members["eu"]
	if eu.State != Joining || eu.Voter() || eu.From != "us" {
		t.Fatalf("added region: %+v", eu)
	}
	refusedWith(t, m, Command{Op: OpAdd, Region: "ap", URL: "u", From: "eu"}, "eu is joining")
	refusedWith(t, m, Command{Op: OpAdd, Region: "eu", URL: "u", From: "us"}, "already a member")
	mustApply(t, m, 3, Command{Op: OpActivate, Region: "eu"})
	if !m.Members["eu"].Voter() || m.Members["eu"].Since != 3 {
		t.Fatalf("activated region: %+v", m.Members["eu"])
	}
	mustApply(t, m, 4, Command{Op: OpActivate, Region: "eu"}) // repeated: no change
	if m.Members["eu"].Since != 3 {
		t.Fatal("a repeated activate changed the member")
	}
}

func TestRemovalWaitsUntilEveryRegionAppliedAllItShipped(t *testing.T) {
	m := founded(t, "us", "eu", "ap")
	mustApply(t, m, 2, Command{Op: OpReport, Region: "eu", Progress: &Progress{Shipped: 130}})
	mustApply(t, m, 3, Command{Op: OpReport, Region: "us", Progress: &Progress{Applied: map[conflict.RegionID]uint64{"eu": 130}}})
	mustApply(t, m, 4, Command{Op: OpReport, Region: "ap", Progress: &Progress{Applied: map[conflict.RegionID]uint64{"eu": 120}}})

	res := mustApply(t, m, 5, Command{Op: OpRemove, Region: "eu"})
	if m.State("eu") != Leaving || strings.Join(res.Waiting, "; ") != "eu has not reported its positions since it began leaving; ap has applied 120 of eu's 130 transactions" {
		t.Fatalf("remove before drained: state %s, result %+v", m.State("eu"), res)
	}
	// Its last writes, reported once it is leaving.
	mustApply(t, m, 6, Command{Op: OpReport, Region: "eu", Progress: &Progress{Shipped: 131}})
	res = mustApply(t, m, 7, Command{Op: OpRemove, Region: "eu"})
	if strings.Join(res.Waiting, "; ") != "ap has applied 120 of eu's 131 transactions; us has applied 130 of eu's 131 transactions" {
		t.Fatalf("remove while leaving: result %+v", res)
	}
	if !m.Members["eu"].Voter() {
		t.Fatal("a leaving region must keep its vote until removed")
	}
	// An older report cannot move a position back.
	mustApply(t, m, 8, Command{Op: OpReport, Region: "ap", Progress: &Progress{Applied: map[conflict.RegionID]uint64{"eu": 90}}})
	if got := m.Progress["ap"].Applied["eu"]; got != 120 {
		t.Fatalf("ap's applied position of eu moved back to %d", got)
	}
	mustApply(t, m, 9, Command{Op: OpReport, Region: "ap", Progress: &Progress{Applied: map[conflict.RegionID]uint64{"eu": 131}}})
	mustApply(t, m, 10, Command{Op: OpReport, Region: "us", Progress: &Progress{Applied: map[conflict.RegionID]uint64{"eu": 131}}})
	res = mustApply(t, m, 11, Command{Op: OpRemove, Region: "eu"})
	if m.State("eu") != Removed || len(res.Waiting) != 0 || res.Lost != 0 {
		t.Fatalf("remove once drained: state %s, result %+v", m.State("eu"), res)
	}
	refusedWith(t, m, Command{Op: OpAdd, Region: "eu", URL: "u", From: "us"}, "cannot come back under the same id")
	refusedWith(t, m, Command{Op: OpReport, Region: "eu", Progress: &Progress{}}, "not a member that replicates")
}

func TestForcedRemovalCountsWhatNoSurvivorReceived(t *testing.T) {
	m := founded(t, "us", "eu", "ap")
	mustApply(t, m, 2, Command{Op: OpReport, Region: "eu", Progress: &Progress{Shipped: 130}})
	mustApply(t, m, 3, Command{Op: OpReport, Region: "us", Progress: &Progress{Applied: map[conflict.RegionID]uint64{"eu": 100}}})
	mustApply(t, m, 4, Command{Op: OpReport, Region: "ap", Progress: &Progress{Applied: map[conflict.RegionID]uint64{"eu": 112}}})
	res := mustApply(t, m, 5, Command{Op: OpRemove, Region: "eu", Force: true})
	if m.State("eu") != Removed || res.Lost != 18 || m.Members["eu"].Lost != 18 {
		t.Fatalf("forced remove: state %s, result %+v, member %+v", m.State("eu"), res, m.Members["eu"])
	}
	if strings.Join(res.Uneven, "; ") != "us applied 100 of eu's transactions, ap 112: rows of eu's transactions 101 to 112 are in some regions only (region reseed us --from ap gives us those rows)" {
		t.Fatalf("forced remove: uneven survivors %q", res.Uneven)
	}
}

func TestTheLastActiveRegionCannotBeRemoved(t *testing.T) {
	m := founded(t, "us")
	mustApply(t, m, 2, Command{Op: OpAdd, Region: "w", URL: "https://w:7480", Witness: true})
	refusedWith(t, m, Command{Op: OpRemove, Region: "us", Force: true}, "last active region")
	mustApply(t, m, 3, Command{Op: OpAdd, Region: "eu", URL: "https://eu:7480", From: "us"})
	refusedWith(t, m, Command{Op: OpRemove, Region: "us", Force: true}, "eu is loading its snapshot from us")
	mustApply(t, m, 4, Command{Op: OpRemove, Region: "eu"})
	refusedWith(t, m, Command{Op: OpRemove, Region: "us", Force: true}, "last active region")
	if m.State("eu") != Removed {
		t.Fatalf("a joining region is removed at once, got %s", m.State("eu"))
	}
	mustApply(t, m, 5, Command{Op: OpRemove, Region: "w"})
	if m.State("w") != Removed {
		t.Fatalf("a witness is removed at once, got %s", m.State("w"))
	}
}

func TestAddNamesWhatIsMissing(t *testing.T) {
	m := founded(t, "us")
	for _, tc := range []struct {
		c    Command
		want string
	}{
		{Command{Op: OpAdd, Region: "EU", URL: "u", From: "us"}, "region"},
		{Command{Op: OpAdd, Region: "eu", From: "us"}, "link URL is required"},
		{Command{Op: OpAdd, Region: "eu", URL: "u"}, "load the snapshot from is required"},
		{Command{Op: OpAdd, Region: "eu", URL: "u", From: "xx"}, `source "xx" is not a region`},
		{Command{Op: "rename", Region: "eu"}, `unknown control command "rename"`},
	} {
		_, err := m.Apply(2, tc.c)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an error naming %q", tc.c, err, tc.want)
		}
	}
	if len(m.Members) != 1 {
		t.Fatalf("refused adds changed the membership: %s", m.Describe())
	}
}

func TestAddedRegionsTakeTheLowestSequenceOffsetNeverGiven(t *testing.T) {
	m := &Membership{}
	mustApply(t, m, 1, Command{Op: OpInit, Members: []Member{{ID: "us"}}, Fingerprint: "fp",
		Sequences: &SequencePlan{Stride: 3, Offsets: map[conflict.RegionID]int64{"us": 1}}})
	mustApply(t, m, 2, Command{Op: OpAdd, Region: "eu", URL: "u", From: "us"})
	mustApply(t, m, 3, Command{Op: OpAdd, Region: "w", URL: "u", Witness: true})
	mustApply(t, m, 4, Command{Op: OpAdd, Region: "ap", URL: "u", From: "us"})
	if got := m.Sequences.describe(); got != "stride=3;ap=2,eu=0,us=1" {
		t.Fatalf("offsets %s, want eu the lowest free (0), ap the next (2), none for the witness", got)
	}
	// A removed region's numbers are in the tables: its offset is never
	// given again, and with none left an add is refused.
	mustApply(t, m, 5, Command{Op: OpRemove, Region: "ap"})
	refusedWith(t, m, Command{Op: OpAdd, Region: "sa", URL: "u", From: "us"}, "no sequence offset is free")
}

func TestInitNeedsAnOffsetForEveryFounderAndNoOther(t *testing.T) {
	for _, tc := range []struct {
		plan *SequencePlan
		want string
	}{
		{&SequencePlan{Stride: 4, Offsets: map[conflict.RegionID]int64{"us": 1}}, `founder "eu" needs an offset`},
		{&SequencePlan{Stride: 4, Offsets: map[conflict.RegionID]int64{"us": 1, "eu": 1}}, "both have offset 1"},
		{&SequencePlan{Stride: 4, Offsets: map[conflict.RegionID]int64{"us": 1, "eu": 2, "ap": 3}}, "for the founders only"},
		{&SequencePlan{Stride: 1, Offsets: map[conflict.RegionID]int64{"us": 0, "eu": 0}}, "stride 1 must be 2 to"},
	} {
		m := &Membership{}
		_, err := m.Apply(1, Command{Op: OpInit, Members: []Member{{ID: "us"}, {ID: "eu"}}, Fingerprint: "fp", Sequences: tc.plan})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an invalid init naming %q", tc.plan, err, tc.want)
		}
		if len(m.Epochs) != 0 {
			t.Errorf("%+v: a refused init founded the cluster", tc.plan)
		}
	}
}

func TestRetriedCommandsGetTheFirstAnswer(t *testing.T) {
	m := founded(t, "us", "eu", "ap")
	mustApply(t, m, 2, Command{Op: OpAdd, Region: "sa", URL: "https://sa", From: "eu"})
	mustApply(t, m, 3, Command{Op: OpAdd, Region: "sa", URL: "https://sa", From: "eu"})
	if m.Members["sa"].Since != 2 {
		t.Fatal("a repeated add changed the member")
	}
	refusedWith(t, m, Command{Op: OpAdd, Region: "sa", URL: "https://other", From: "eu"}, "already a member")
	mustApply(t, m, 4, Command{Op: OpReport, Region: "ap", Progress: &Progress{Shipped: 10}})
	first := mustApply(t, m, 5, Command{Op: OpRemove, Region: "ap", Force: true})
	again := mustApply(t, m, 6, Command{Op: OpRemove, Region: "ap", Force: true})
	if first.Lost != 10 || again.Lost != 10 {
		t.Fatalf("forced removal answered lost %d, then %d on a retry; want 10 both times", first.Lost, again.Lost)
	}
}

func TestAJoiningRegionThatShippedIsDrainedAndAWitnessVotesOnceItRuns(t *testing.T) {
	m := founded(t, "us")
	mustApply(t, m, 2, Command{Op: OpAdd, Region: "w", URL: "https://w", Witness: true})
	if m.Members["w"].Voter() {
		t.Fatal("a witness added votes before it runs: adding it could cost the majority")
	}
	mustApply(t, m, 3, Command{Op: OpActivate, Region: "w"})
	if !m.Members["w"].Voter() {
		t.Fatal("an activated witness does not vote")
	}
	mustApply(t, m, 4, Command{Op: OpAdd, Region: "eu", URL: "https://eu", From: "us"})
	takeTheRules(t, m, 4, "us")
	mustApply(t, m, 5, Command{Op: OpReport, Region: "eu", Progress: &Progress{Shipped: 3, Takes: TakesMembershipRules}})
	res := mustApply(t, m, 6, Command{Op: OpRemove, Region: "eu"})
	if m.State("eu") != Leaving || len(res.Waiting) == 0 {
		t.Fatalf("a joining region that shipped transactions was removed without a drain: %s %+v", m.State("eu"), res)
	}
	// It never voted, and its drain must not give it a vote: its host is
	// typically gone, and a voter added then would cost the majority.
	if m.Members["eu"].Voter() {
		t.Fatal("a joining region that began leaving votes")
	}
	mustApply(t, m, 7, Command{Op: OpRemove, Region: "eu"}) // asked again: still waiting, still no vote
	if m.State("eu") != Leaving || m.Members["eu"].Voter() {
		t.Fatalf("a second remove of a draining joining region: %s, voter %v", m.State("eu"), m.Members["eu"].Voter())
	}
}

func TestALeavingRegionDoesNotCountAsTheActiveOneThatStays(t *testing.T) {
	m := founded(t, "us", "eu")
	mustApply(t, m, 2, Command{Op: OpAdd, Region: "w", URL: "https://w", Witness: true})
	mustApply(t, m, 3, Command{Op: OpActivate, Region: "w"})
	takeTheRules(t, m, 3, "us")
	mustApply(t, m, 4, Command{Op: OpReport, Region: "eu", Progress: &Progress{Shipped: 3, Takes: TakesMembershipRules}})
	mustApply(t, m, 5, Command{Op: OpRemove, Region: "eu"})
	if m.State("eu") != Leaving || !m.Members["eu"].Voter() {
		t.Fatalf("an active region being drained: %s, voter %v", m.State("eu"), m.Members["eu"].Voter())
	}
	// eu can never be active again: removing us would leave no region
	// to add or re-seed one from, for good.
	refusedWith(t, m, Command{Op: OpRemove, Region: "us", Force: true}, "last active region")
	refusedWith(t, m, Command{Op: OpRemove, Region: "us"}, "last active region")
	mustApply(t, m, 6, Command{Op: OpRemove, Region: "eu", Force: true})
	if m.State("eu") != Removed || m.State("us") != Active {
		t.Fatalf("after eu's forced removal: %s", m.Describe())
	}
}

func TestUnfollowedNamesMembersARunningDataPlaneDoesNotWaitFor(t *testing.T) {
	m := founded(t, "us", "eu")
	mustApply(t, m, 2, Command{Op: OpAdd, Region: "w", URL: "https://w", Witness: true})
	mustApply(t, m, 3, Command{Op: OpAdd, Region: "ap", URL: "https://ap", From: "eu"})
	if got := strings.Join(m.Unfollowed([]conflict.RegionID{"eu", "us"}), ","); got != "ap" {
		t.Fatalf("Unfollowed = %q, want ap (joining; the witness replicates nothing)", got)
	}
	if got := m.Unfollowed([]conflict.RegionID{"ap", "eu", "us"}); len(got) != 0 {
		t.Fatalf("Unfollowed = %v with every member running", got)
	}
	mustApply(t, m, 4, Command{Op: OpRemove, Region: "ap", Force: true})
	if got := m.Unfollowed([]conflict.RegionID{"eu", "us"}); len(got) != 0 {
		t.Fatalf("Unfollowed = %v: a removed region is waited for by no one", got)
	}
	if got := strings.Join(m.Unfollowed([]conflict.RegionID{"us"}), ","); got != "eu" {
		t.Fatalf("Unfollowed = %q, want eu", got)
	}
}

func TestAppliedIsTheLastCommandsIndexRefusedOrNot(t *testing.T) {
	m := founded(t, "us")
	mustApply(t, m, 5, Command{Op: OpNoop})
	if m.Applied != 5 {
		t.Fatalf("Applied = %d after a no-op at 5", m.Applied)
	}
	if _, err := m.Apply(6, Command{Op: OpActivate, Region: "nobody"}); err == nil {
		t.Fatal("activating a region that is not a member was not refused")
	}
	if m.Applied != 6 {
		t.Fatalf("Applied = %d after a refused command at 6", m.Applied)
	}
}

func TestAReseededRegionKeepsItsVoteAndIsActiveAgainOnceItCaughtUp(t *testing.T) {
	m := founded(t, "us", "eu", "ap")
	mustApply(t, m, 2, Command{Op: OpAdd, Region: "sa", URL: "https://sa:7480", From: "us"})
	refusedWith(t, m, Command{Op: OpReseed, Region: "ap", From: "sa"}, "source sa is joining")
	refusedWith(t, m, Command{Op: OpReseed, Region: "sa", From: "us"}, "sa is joining; only an active region")
	refusedWith(t, m, Command{Op: OpReseed, Region: "ap", From: "ap"}, "cannot load a snapshot of itself")
	refusedWith(t, m, Command{Op: OpReseed, Region: "ap", From: "xx"}, `source "xx" is not a region`)
	refusedWith(t, m, Command{Op: OpReseed, Region: "xx", From: "us"}, `region "xx" is not a region`)
	if _, err := m.Apply(3, Command{Op: OpReseed, Region: "ap"}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "--from") {
		t.Fatalf("reseed without a source: %v", err)
	}

	takeTheRules(t, m, 3, "us", "eu", "ap", "sa")
	mustApply(t, m, 4, Command{Op: OpReseed, Region: "ap", From: "eu"})
	ap := m.Members["ap"]
	if ap.State != Reseeding || ap.From != "eu" || ap.Since != 4 || !ap.Voter() || !ap.Loading() {
		t.Fatalf("region being re-seeded: %+v (voter %v, loading %v)", ap, ap.Voter(), ap.Loading())
	}
	mustApply(t, m, 5, Command{Op: OpReseed, Region: "ap", From: "eu"}) // a retry: no change
	if m.Members["ap"].Since != 4 {
		t.Fatal("a repeated reseed changed the member")
	}
	refusedWith(t, m, Command{Op: OpReseed, Region: "ap", From: "us"}, "already being re-seeded from eu")
	refusedWith(t, m, Command{Op: OpReseed, Region: "us", From: "ap"}, "source ap is reseeding")
	refusedWith(t, m, Command{Op: OpRemove, Region: "eu"}, "ap is loading its snapshot from eu")
	refusedWith(t, m, Command{Op: OpAdd, Region: "me", URL: "u", From: "ap"}, "source ap is reseeding")
	// eu serves ap's snapshot: emptying eu would leave ap resuming from a
	// region whose rows are gone. So would re-seeding us while sa loads
	// from it.
	refusedWith(t, m, Command{Op: OpReseed, Region: "eu", From: "us"}, "ap is loading its snapshot from eu")
	refusedWith(t, m, Command{Op: OpReseed, Region: "us", From: "eu"}, "sa is loading its snapshot from us")

	mustApply(t, m, 6, Command{Op: OpActivate, Region: "ap"})
	if ap := m.Members["ap"]; ap.State != Active || ap.Since != 6 || ap.Loading() {
		t.Fatalf("re-seeded region after catching up: %+v", ap)
	}
	mustApply(t, m, 7, Command{Op: OpReseed, Region: "ap", From: "us"}) // again, from another source
	if ap := m.Members["ap"]; ap.State != Reseeding || ap.From != "us" || ap.Since != 7 {
		t.Fatalf("second reseed: %+v", ap)
	}
}

// Until every region that replicates reports a release that has them, the
// membership's later rules do not apply: a release before them decides
// the same commands the old way, and two releases must never decide one
// command differently.
func TestTheLaterMembershipRulesWaitForEveryRegionsRelease(t *testing.T) {
	// A region another loads its snapshot from is re-seeded.
	m := founded(t, "us", "eu", "ap")
	takeTheRules(t, m, 2, "us", "eu") // ap runs an older release
	mustApply(t, m, 3, Command{Op: OpAdd, Region: "sa", URL: "https://sa", From: "us"})
	mustApply(t, m, 4, Command{Op: OpReseed, Region: "us", From: "eu"})
	if m.State("us") != Reseeding {
		t.Fatalf("under the old rules us is re-seeded while sa loads from it: %s", m.Describe())
	}

	// A joining region drained on removal votes.
	m = founded(t, "us", "eu")
	takeTheRules(t, m, 2, "us")
	mustApply(t, m, 3, Command{Op: OpAdd, Region: "me", URL: "https://me", From: "us"})
	mustApply(t, m, 4, Command{Op: OpReport, Region: "me", Progress: &Progress{Shipped: 2}})
	mustApply(t, m, 5, Command{Op: OpRemove, Region: "me"})
	if m.State("me") != Leaving || !m.Members["me"].Voter() {
		t.Fatalf("under the old rules a joining region drained on removal votes: %s, voter %v", m.State("me"), m.Members["me"].Voter())
	}

	// A leaving region counts as one that stays.
	m = founded(t, "us", "eu")
	takeTheRules(t, m, 2, "us")
	mustApply(t, m, 3, Command{Op: OpReport, Region: "eu", Progress: &Progress{Shipped: 3}})
	mustApply(t, m, 4, Command{Op: OpRemove, Region: "eu"})
	mustApply(t, m, 5, Command{Op: OpRemove, Region: "us", Force: true})
	if m.State("us") != Removed {
		t.Fatalf("under the old rules us is removed while eu leaves: %s", m.Describe())
	}
}
