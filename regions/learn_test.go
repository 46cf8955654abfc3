package regions

import (
	"strings"
	"testing"

	"github.com/polyregion/polyregion/conflict"
)

// learnCluster is a region running the founding policies of epochTables,
// knowing the changes given.
func learnCluster(changes ...Epoch) Cluster {
	return Cluster{Regions: []conflict.RegionID{"us", "eu", "ap"},
		Tables:  []Table{{Name: "public.accounts", Policy: epochTables["public.accounts"]}, {Name: "public.hits", Policy: epochTables["public.hits"]}},
		Changes: changes}
}

// TestARegionLearnsTheNextEpochFromAPeer: a peer's offer brings the
// epochs after the region's latest, in order; what the region knows
// already changes nothing; an offer it could not run with is refused,
// naming the epoch and what is wrong.
func TestARegionLearnsTheNextEpochFromAPeer(t *testing.T) {
	two := Epoch{Number: 2, Fingerprint: policiesFingerprint(priorityTables()), Policies: priorityTables(), Effective: 7, Index: 3,
		Fences: map[conflict.RegionID]uint64{"us": 4}}
	peer := learnCluster(two)
	offer := peer.Offer()
	if len(offer) != 1 || offer[0].Number != 2 || offer[0].Fences != nil || offer[0].Effective != 0 || offer[0].Fingerprint != two.Fingerprint {
		t.Fatalf("offer: %+v (want number, fingerprint and policies only)", offer)
	}

	got, err := learnCluster().Learn(offer)
	if err != nil || len(got) != 1 || got[0].Number != 2 || got[0].Policies["public.accounts"].Kind != conflict.RegionPriority || got[0].Effective != 0 || got[0].Fingerprint != two.Fingerprint {
		t.Fatalf("learn epoch 2: %+v, %v", got, err)
	}
	here := learnCluster(got...)
	if here.KnownEpoch() != 2 {
		t.Fatalf("known after learning: %d", here.KnownEpoch())
	}
	if e, err := here.TableEpochs("public.accounts"); err != nil || e.Policies[1].Kind != conflict.RegionPriority {
		t.Fatalf("epochs of public.accounts after learning: %+v, %v", e, err)
	}
	if got, err := here.Learn(offer); err != nil || len(got) != 0 {
		t.Fatalf("an epoch known already: %+v, %v", got, err)
	}
	if got, err := learnCluster().Learn(nil); err != nil || len(got) != 0 {
		t.Fatalf("no offer: %+v, %v", got, err)
	}

	three := Epoch{Number: 3, Policies: epochTables}
	if got, err := learnCluster().Learn([]Epoch{two, three}); err != nil || len(got) != 2 || got[1].Number != 3 || got[1].Fingerprint != policiesFingerprint(epochTables) {
		t.Fatalf("two epochs at once: %+v, %v", got, err)
	}

	added := map[string]conflict.Policy{"public.accounts": {}, "public.hits": epochTables["public.hits"], "public.new": {Kind: conflict.RegionPriority, Priority: []conflict.RegionID{"eu", "us"}}}
	if got, err := learnCluster().Learn([]Epoch{{Number: 2, Policies: added}}); err != nil || len(got) != 1 {
		t.Fatalf("an epoch adding a table: %+v, %v", got, err)
	} else if tb, ok := learnCluster(got...).WithTableChanges().Table("public.new"); !ok || tb.Added != 2 || tb.Policy.Kind != conflict.RegionPriority {
		t.Fatalf("the added table: %+v (%v)", tb, ok)
	}

	if got, err := learnCluster().Learn([]Epoch{{Number: 2, Policies: added}, {Number: 3, Policies: map[string]conflict.Policy{"public.new": added["public.new"]}}}); err != nil || len(got) != 2 {
		t.Fatalf("an epoch adding a table, the next dropping the others: %+v, %v", got, err)
	} else if c := learnCluster(got...).WithTableChanges(); len(c.Tables) != 1 || c.Tables[0].Name != "public.new" || !c.IsDropped("public.hits") || c.IsDropped("public.new") {
		t.Fatalf("tables after both: %+v, dropped %+v", c.Tables, c.Dropped)
	}

	other := map[string]conflict.Policy{"public.accounts": {Kind: conflict.RegionPriority, Priority: []conflict.RegionID{"eu", "us"}}, "public.hits": epochTables["public.hits"]}
	for _, c := range []struct {
		name  string
		here  Cluster
		offer []Epoch
		want  string
	}{
		{"a gap", learnCluster(), []Epoch{three}, "epoch 3: this region knows epoch 1 and the peer gave no epoch 2"},
		{"another epoch 2", here, []Epoch{{Number: 2, Policies: other}}, "epoch 2: the peer's policies differ from this region's (table public.accounts"},
		{"no policies", learnCluster(), []Epoch{{Number: 2}}, "epoch 2: no policies"},
		{"a bad table name", learnCluster(), []Epoch{{Number: 2, Policies: map[string]conflict.Policy{"public.accounts": {}, "public.hits": epochTables["public.hits"], "New": {}}}}, "epoch 2: table \"New\""},
		{"the counters changed", learnCluster(), []Epoch{{Number: 2, Policies: map[string]conflict.Policy{"public.accounts": {}, "public.hits": {}}}}, "epoch 2: table public.hits:"},
		{"an invalid policy", learnCluster(), []Epoch{{Number: 2, Policies: map[string]conflict.Policy{"public.accounts": {Kind: "nonsense"}, "public.hits": epochTables["public.hits"]}}}, "epoch 2: table public.accounts:"},
	} {
		got, err := c.here.Learn(c.offer)
		if err == nil || !strings.Contains(err.Error(), c.want) || got != nil {
			t.Errorf("%s: %+v, %v; want the error %q", c.name, got, err, c.want)
		}
	}
}
