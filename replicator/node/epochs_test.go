package node

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
)

func epochNumbers(es []regions.Epoch) string {
	var parts []string
	for _, e := range es {
		from := "control"
		if e.Index == 0 {
			from = "peer"
		}
		parts = append(parts, fmt.Sprintf("%d:%s", e.Number, from))
	}
	return strings.Join(parts, " ")
}

// TestAnEpochLearnedFromAPeerRunsUntilTheControlPlaneBringsIt: the data
// plane runs with the control plane's epochs followed by those learned
// from peers that come after them; once the control plane holds an
// epoch, its own is used; only the learned ones have their policies
// recorded by the reader.
func TestAnEpochLearnedFromAPeerRunsUntilTheControlPlaneBringsIt(t *testing.T) {
	priority := map[string]conflict.Policy{"public.kv": {Kind: conflict.RegionPriority, Priority: []conflict.RegionID{"ap", "us"}}}
	running := regions.Cluster{Regions: []conflict.RegionID{"us", "eu", "ap"}, Tables: []regions.Table{{Name: "public.kv"}}}
	var logs bytes.Buffer
	rt := &runtime{log: slog.New(slog.NewTextHandler(&logs, nil))}

	rt.learnEpochs(running, "eu", []regions.Epoch{{Number: 2, Policies: priority}})
	rt.learnEpochs(running, "us", []regions.Epoch{{Number: 2, Policies: priority}}) // the same, from another peer
	learned := rt.learnedSoFar()
	if epochNumbers(learned) != "2:peer" || !strings.Contains(logs.String(), "learned a policy change from a peer") || strings.Count(logs.String(), "learned a policy") != 1 {
		t.Fatalf("learned %s; log:\n%s", epochNumbers(learned), logs.String())
	}
	rt.learnEpochs(running, "us", []regions.Epoch{{Number: 2, Policies: map[string]conflict.Policy{"public.kv": {Counters: []string{"val"}}}}})
	if !strings.Contains(logs.String(), "cannot be taken here") || epochNumbers(rt.learnedSoFar()) != "2:peer" {
		t.Fatalf("an offer that differs: learned %s; log:\n%s", epochNumbers(rt.learnedSoFar()), logs.String())
	}

	for _, c := range []struct {
		control  []regions.Epoch
		learned  []regions.Epoch
		want     string
		recorded string // the epochs whose policies the reader records
	}{
		{nil, learned, "2:peer", "2"},
		{[]regions.Epoch{{Number: 2, Index: 9, Policies: priority}}, learned, "2:control", ""},
		{[]regions.Epoch{{Number: 2, Index: 9, Policies: priority}}, append(learned, regions.Epoch{Number: 3, Policies: priority}), "2:control 3:peer", "3"},
		{nil, []regions.Epoch{{Number: 3, Policies: priority}}, "", ""},
	} {
		got := withLearned(c.control, c.learned)
		if epochNumbers(got) != c.want {
			t.Errorf("control %s, learned %s: runs with %q, want %q", epochNumbers(c.control), epochNumbers(c.learned), epochNumbers(got), c.want)
		}
		var recorded []string
		for _, e := range learnedIn(got) {
			recorded = append(recorded, fmt.Sprint(e.Number))
		}
		if strings.Join(recorded, " ") != c.recorded {
			t.Errorf("control %s, learned %s: policies recorded for %q, want %q", epochNumbers(c.control), epochNumbers(c.learned), recorded, c.recorded)
		}
	}
}

// TestTheClusterNotTheConfigurationSaysWhichTablesReplicate: a table in a
// region's configuration that the cluster did not found with is not
// replicated (its fingerprint would differ from its peers') until a change
// adds it; in a cluster founded by an earlier release, the founding
// description says which tables it founded with.
func TestTheClusterNotTheConfigurationSaysWhichTablesReplicate(t *testing.T) {
	file := []regions.Table{{Name: "public.kv"}, {Name: "public.notes", Policy: conflict.Policy{Counters: []string{"n"}}}}
	kvOnly := regions.Cluster{Tables: []regions.Table{{Name: "public.kv"}}}
	names := func(ts []regions.Table) string {
		var out []string
		for _, t := range ts {
			out = append(out, fmt.Sprintf("%s@%d", t.Name, t.Added))
		}
		return strings.Join(out, " ")
	}
	adds := regions.Epoch{Number: 2, Index: 7, Policies: map[string]conflict.Policy{"public.kv": {}, "public.notes": {Kind: conflict.RegionPriority, Priority: []conflict.RegionID{"us"}}}}
	for _, c := range []struct {
		name     string
		founding regions.Epoch
		want     string
	}{
		{"founded with policies", regions.Epoch{Number: 1, Policies: kvOnly.Policies()}, "public.kv@0"},
		{"founded by an earlier release", regions.Epoch{Number: 1, Describe: kvOnly.Describe()}, "public.kv@0"},
		{"no record of the founding tables", regions.Epoch{Number: 1}, "public.kv@0 public.notes@0"},
	} {
		tables, changes := agreedPolicies(file, []regions.Epoch{c.founding})
		if got := names(tables); got != c.want || len(changes) != 0 {
			t.Errorf("%s: replicates %q (changes %d), want %q", c.name, got, len(changes), c.want)
		}
		tables, changes = agreedPolicies(file, []regions.Epoch{c.founding, adds})
		with := regions.Cluster{Tables: tables, Changes: changes}.WithTableChanges()
		want := "public.kv@0 public.notes@2"
		if c.want == "public.kv@0 public.notes@0" {
			want = c.want // the configuration's own, founding
		}
		if got := names(with.Tables); got != want {
			t.Errorf("%s, once a change adds public.notes: replicates %q, want %q", c.name, got, want)
		}
	}
}
