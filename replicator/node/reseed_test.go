package node

import (
	"testing"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator/postgres"
)

func TestAReseedIsCarriedOutOncePerCommand(t *testing.T) {
	m := regions.Membership{Members: map[conflict.RegionID]*regions.Member{
		"us": {ID: "us", State: regions.Active},
		"ap": {ID: "ap", State: regions.Reseeding, From: "eu", Since: 40},
		"sa": {ID: "sa", State: regions.Joining, From: "us", Since: 12},
	}}
	for _, c := range []struct {
		name   string
		region conflict.RegionID
		st     postgres.JoinState
		want   reseedStep
		active bool // may be marked active once caught up
	}{
		{"active region", "us", postgres.JoinState{Joined: true}, reseedNone, true},
		{"joining region", "sa", postgres.JoinState{}, reseedNone, true},
		{"asked, never re-seeded", "ap", postgres.JoinState{Joined: true}, reseedDrain, false},
		{"asked, re-seeded for an earlier command", "ap", postgres.JoinState{Joined: true, ReseedIndex: 39}, reseedDrain, false},
		{"emptied for it, not loaded", "ap", postgres.JoinState{Reseeding: true, ReseedIndex: 40}, reseedLoad, true},
		{"loaded for it, catching up", "ap", postgres.JoinState{Joined: true, CatchingUp: "eu", ReseedIndex: 40}, reseedLoad, true},
		{"loaded and caught up, not active yet", "ap", postgres.JoinState{Joined: true, ReseedIndex: 40}, reseedLoad, true},
		{"not a member", "me", postgres.JoinState{}, reseedNone, true},
	} {
		got, mem := reseedPhase(m, c.region, c.st)
		if got != c.want {
			t.Errorf("%s: step %d, want %d", c.name, got, c.want)
		}
		if got != reseedNone && mem.From != "eu" {
			t.Errorf("%s: source %q, want eu", c.name, mem.From)
		}
		if a := reseedCarriedOut(m, c.region, c.st); a != c.active {
			t.Errorf("%s: may be marked active: %v, want %v", c.name, a, c.active)
		}
	}
}
