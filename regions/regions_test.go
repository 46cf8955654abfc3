package regions

import (
	"strings"
	"testing"

	"github.com/polyregion/polyregion/conflict"
)

func base() Cluster {
	return Cluster{
		Regions: []conflict.RegionID{"us", "eu", "ap"},
		Tables: []Table{
			{Name: "public.a", Policy: conflict.Policy{Counters: []string{"x", "y"}}},
			{Name: "public.b", Policy: conflict.Policy{Kind: conflict.RegionPriority, Priority: []conflict.RegionID{"eu", "us"}}},
		},
	}
}

func TestFingerprintIgnoresListingOrderButNotPolicy(t *testing.T) {
	a := base()
	b := base()
	b.Regions = []conflict.RegionID{"ap", "us", "eu"}
	b.Tables = []Table{b.Tables[1], {Name: "public.a", Policy: conflict.Policy{Counters: []string{"y", "x"}}}}
	if a.Fingerprint() != b.Fingerprint() {
		t.Fatal("listing order changed the fingerprint")
	}
	c := base()
	c.Tables[1].Policy.Priority = []conflict.RegionID{"us", "eu"}
	if a.Fingerprint() == c.Fingerprint() {
		t.Fatal("a different priority order gave the same fingerprint")
	}
	d := Diff(a.Describe(), c.Describe())
	if len(d) != 1 || !strings.Contains(d[0], "table public.b") {
		t.Fatalf("Diff = %v", d)
	}
}

func TestValidateNamesTheProblem(t *testing.T) {
	cases := []struct {
		mod  func(*Cluster)
		want string
	}{
		{func(c *Cluster) {}, ""},
		{func(c *Cluster) { c.Regions = append(c.Regions, "us") }, `"us" listed twice`},
		{func(c *Cluster) { c.Tables[0].Name = "a" }, "want schema.table"},
		{func(c *Cluster) { c.Tables[0].Name = "public.B" }, "lower-case"},
		{func(c *Cluster) { c.Tables[1].Name = "public.a" }, "public.a listed twice"},
		{func(c *Cluster) { c.Tables[1].Policy.Priority = []conflict.RegionID{"mars"} }, `unknown region "mars"`},
		{func(c *Cluster) { c.Tables = nil }, "at least one replicated table"},
	}
	for i, tc := range cases {
		c := base()
		tc.mod(&c)
		err := c.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("case %d: unexpected error %v", i, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("case %d: error %v, want it to mention %q", i, err, tc.want)
		}
	}
}

func TestAgreedRegionsLeaveTheFingerprintToThePolicies(t *testing.T) {
	a, b := base(), base()
	a.Agreed, b.Agreed = true, true
	b.Regions = append(b.Regions, "sa")
	if a.Fingerprint() != b.Fingerprint() {
		t.Fatal("with the region set agreed by the control plane, a region still applying a membership change must keep the same fingerprint")
	}
	if a.Fingerprint() == base().Fingerprint() {
		t.Fatal("a cluster whose regions are agreed must not exchange changes with one whose are configured")
	}
	c := base()
	c.Agreed = true
	c.Tables[0].Policy.Counters = []string{"x"}
	if a.Fingerprint() == c.Fingerprint() {
		t.Fatal("a policy difference must still change the fingerprint")
	}
	if d := Diff(a.Describe(), b.Describe()); len(d) != 0 {
		t.Fatalf("agreed regions still described: %v", d)
	}
}
