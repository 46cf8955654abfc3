package postgres

import (
	"strings"
	"testing"
)

func TestReseedRefusalNamesEveryObstacle(t *testing.T) {
	clear := ReseedCheck{Shipped: 6, NotApplied: map[string]int64{}}
	if !clear.Ready() || clear.Refusal("ap") != "" {
		t.Fatalf("nothing in the way: ready %v, refusal %q", clear.Ready(), clear.Refusal("ap"))
	}
	c := ReseedCheck{Shipped: 6, NotApplied: map[string]int64{"us": 2, "eu": 1}, Unversioned: 3,
		Problems: []string{"the slot polyregion_ap is in use: stop region ap's replicator first"}}
	if c.Ready() {
		t.Fatal("obstacles, yet ready")
	}
	got := c.Refusal("ap")
	for _, want := range []string{"of the 6 transactions region ap shipped, eu has not confirmed 1, us has not confirmed 2",
		"3 local transactions in the WAL are not versioned", "stop region ap's replicator first"} {
		if !strings.Contains(got, want) {
			t.Errorf("refusal %q does not say %q", got, want)
		}
	}
	for _, one := range []ReseedCheck{
		{NotApplied: map[string]int64{"us": 1}}, {NotApplied: map[string]int64{}, Unversioned: 1},
		{NotApplied: map[string]int64{}, Problems: []string{"x"}},
	} {
		if one.Ready() {
			t.Errorf("%+v: ready", one)
		}
	}
}
