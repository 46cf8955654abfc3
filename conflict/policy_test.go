package conflict

import (
	"strings"
	"testing"
)

func TestPolicyValidateOK(t *testing.T) {
	ok := []Policy{
		{},
		{Kind: LastWriterWins},
		{Kind: LastWriterWins, Deletes: DeleteWins},
		{Deletes: UpdateWins, Counters: []string{"hits", "Balance", "with space"}},
		{Kind: RegionPriority, Priority: []RegionID{"eu", "us"}},
		{Kind: RegionPriority, Priority: []RegionID{"eu"}, Deletes: DeleteWins},
		{Kind: CustomSQL, Resolver: "public.resolve"},
		{Kind: CustomSQL, Resolver: "_s1.f_2", Counters: []string{"n"}},
		{Kind: CustomSQL, Resolver: strings.Repeat("s", 63) + "." + strings.Repeat("f", 63)},
	}
	for _, p := range ok {
		if err := p.Validate(); err != nil {
			t.Errorf("%+v.Validate() = %v, want nil", p, err)
		}
	}
}

func TestPolicyValidateErrors(t *testing.T) {
	tests := []struct {
		name string
		p    Policy
		want []string
	}{
		{"unknown kind", Policy{Kind: "lww"}, []string{`unknown kind "lww"`, "last_writer_wins"}},
		{"unknown delete rule", Policy{Deletes: "deletes_win"}, []string{`unknown delete rule "deletes_win"`}},
		{"priority empty", Policy{Kind: RegionPriority}, []string{"region_priority needs a non-empty priority list"}},
		{"priority for lww", Policy{Priority: []RegionID{"eu"}}, []string{"priority is only used by region_priority, not by last_writer_wins"}},
		{"duplicate region", Policy{Kind: RegionPriority, Priority: []RegionID{"eu", "us", "eu"}}, []string{`priority[2]: duplicate region "eu" (already at priority[0])`}},
		{"invalid region", Policy{Kind: RegionPriority, Priority: []RegionID{"EU"}}, []string{`priority[0]: invalid region id "EU"`}},
		{"missing resolver", Policy{Kind: CustomSQL}, []string{`resolver ""`, "custom_sql needs a resolver"}},
		{"unqualified resolver", Policy{Kind: CustomSQL, Resolver: "resolve"}, []string{`resolver "resolve"`, "schema-qualified"}},
		{"three-part resolver", Policy{Kind: CustomSQL, Resolver: "a.b.c"}, []string{"schema-qualified"}},
		{"uppercase schema", Policy{Kind: CustomSQL, Resolver: "Public.f"}, []string{`schema "Public" is not a plain lower-case identifier`}},
		{"digit-led function", Policy{Kind: CustomSQL, Resolver: "public.1f"}, []string{`function name "1f" is not`}},
		{"empty function", Policy{Kind: CustomSQL, Resolver: "public."}, []string{"function name is empty"}},
		{"empty schema", Policy{Kind: CustomSQL, Resolver: ".f"}, []string{"schema is empty"}},
		{"quote in resolver", Policy{Kind: CustomSQL, Resolver: `public.f"; drop`}, []string{"function name"}},
		{"overlong identifier", Policy{Kind: CustomSQL, Resolver: "public." + strings.Repeat("f", 64)}, []string{"longer than 63 bytes"}},
		{"resolver for lww", Policy{Resolver: "public.f"}, []string{"resolver is only used by custom_sql"}},
		{"duplicate counter", Policy{Counters: []string{"a", "b", "a"}}, []string{`counters[2]: duplicate counter column "a" (already at counters[0])`}},
		{"empty counter", Policy{Counters: []string{""}}, []string{"counters[0]: empty column name"}},
		{"overlong counter", Policy{Counters: []string{strings.Repeat("c", 64)}}, []string{"longer than 63 bytes"}},
		{"NUL counter", Policy{Counters: []string{"a\x00b"}}, []string{"NUL"}},
		{"duplicate max", Policy{Deletes: DeleteWins, Max: []string{"t", "t"}}, []string{`max[1]: duplicate max column "t" (already at max[0])`}},
		{"empty min", Policy{Deletes: DeleteWins, Min: []string{""}}, []string{"min[0]: empty column name"}},
		{"counter also max", Policy{Deletes: DeleteWins, Counters: []string{"n"}, Max: []string{"n"}}, []string{`max[0]: column "n" is already merged as counters[0]`}},
		{"max also min", Policy{Deletes: DeleteWins, Max: []string{"t"}, Min: []string{"t"}}, []string{`min[0]: column "t" is already merged as max[0]`}},
		{"max without delete_wins", Policy{Max: []string{"t"}}, []string{"max and min columns need deletes: delete_wins"}},
		{"min with update_wins", Policy{Deletes: UpdateWins, Min: []string{"t"}}, []string{"need deletes: delete_wins"}},
		{"several problems reported together", Policy{Kind: RegionPriority, Deletes: "x", Counters: []string{"a", "a"}},
			[]string{"non-empty priority list", `unknown delete rule "x"`, `duplicate counter column "a"`}},
	}
	for _, tt := range tests {
		err := tt.p.Validate()
		if err == nil {
			t.Errorf("%s: Validate() = nil, want error", tt.name)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: Validate() = %q, want it to mention %q", tt.name, err, w)
			}
		}
	}
}

func TestPolicyIsCounter(t *testing.T) {
	p := Policy{Counters: []string{"hits", "Balance"}}
	for col, want := range map[string]bool{"hits": true, "Balance": true, "balance": false, "": false, "other": false} {
		if got := p.IsCounter(col); got != want {
			t.Errorf("IsCounter(%q) = %v, want %v", col, got, want)
		}
	}
	if (Policy{}).IsCounter("hits") {
		t.Errorf("empty policy has counters")
	}
}

func TestPolicyFingerprint(t *testing.T) {
	base := Policy{Kind: RegionPriority, Priority: []RegionID{"eu", "us"}, Deletes: DeleteWins, Counters: []string{"b", "a", "c"}}
	fp := base.Fingerprint()
	if fp != base.Fingerprint() {
		t.Fatalf("Fingerprint not stable")
	}
	want := `kind="region_priority";priority=["eu","us"];deletes="delete_wins";counters=["a","b","c"];resolver=""`
	if fp != want {
		t.Errorf("Fingerprint = %s\nwant          %s", fp, want)
	}

	same := []Policy{
		{Kind: RegionPriority, Priority: []RegionID{"eu", "us"}, Deletes: DeleteWins, Counters: []string{"c", "b", "a"}},
		{Kind: RegionPriority, Priority: []RegionID{"eu", "us"}, Deletes: DeleteWins, Counters: []string{"a", "b", "c"}},
		{Kind: RegionPriority, Priority: []RegionID{"eu", "us"}, Deletes: DeleteWins, Counters: []string{"a", "c", "b", "a"}},
	}
	for _, p := range same {
		if got := p.Fingerprint(); got != fp {
			t.Errorf("%+v: Fingerprint = %s, want %s", p, got, fp)
		}
	}
	// Counters order must not be changed in the caller's slice.
	if base.Counters[0] != "b" {
		t.Errorf("Fingerprint sorted the caller's Counters slice")
	}

	different := []Policy{
		{Kind: RegionPriority, Priority: []RegionID{"us", "eu"}, Deletes: DeleteWins, Counters: []string{"a", "b", "c"}},
		{Kind: RegionPriority, Priority: []RegionID{"eu", "us"}, Deletes: UpdateWins, Counters: []string{"a", "b", "c"}},
		{Kind: RegionPriority, Priority: []RegionID{"eu", "us"}, Counters: []string{"a", "b", "c"}},
		{Kind: RegionPriority, Priority: []RegionID{"eu", "us"}, Deletes: DeleteWins, Counters: []string{"a", "b"}},
		{Kind: RegionPriority, Priority: []RegionID{"eu", "us"}, Deletes: DeleteWins, Counters: []string{"a,b", "c"}},
		{Kind: RegionPriority, Priority: []RegionID{"eu"}, Deletes: DeleteWins, Counters: []string{"a", "b", "c"}},
		{Kind: LastWriterWins, Deletes: DeleteWins, Counters: []string{"a", "b", "c"}},
	}
	seen := map[string]int{fp: -1}
	for i, p := range different {
		got := p.Fingerprint()
		if j, dup := seen[got]; dup {
			t.Errorf("policies %d and %d share fingerprint %s", i, j, got)
		}
		seen[got] = i
	}

	// Kind "" is last_writer_wins.
	if (Policy{}).Fingerprint() != (Policy{Kind: LastWriterWins}).Fingerprint() {
		t.Errorf("empty kind and last_writer_wins fingerprint differently")
	}
	if (Policy{Kind: CustomSQL, Resolver: "a.b"}).Fingerprint() == (Policy{Kind: CustomSQL, Resolver: "a.c"}).Fingerprint() {
		t.Errorf("resolver not in fingerprint")
	}
}

func TestPolicyLabel(t *testing.T) {
	for _, c := range []struct {
		p    Policy
		want string
	}{
		{Policy{}, "last_writer_wins"},
		{Policy{Kind: RegionPriority, Deletes: DeleteWins}, "region_priority+delete_wins"},
	} {
		if got := c.p.Label(); got != c.want {
			t.Errorf("%+v.Label() = %q, want %q", c.p, got, c.want)
		}
	}
}

func TestPolicyMergeAndFingerprintOfMergedColumns(t *testing.T) {
	p := Policy{Deletes: DeleteWins, Counters: []string{"hits"}, Max: []string{"updated_at", "last_seen"}, Min: []string{"first_seen"}}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	for col, want := range map[string]string{"hits": "counter", "updated_at": "max", "last_seen": "max", "first_seen": "min", "name": ""} {
		if got := p.Merge(col); got != want {
			t.Errorf("Merge(%q) = %q, want %q", col, got, want)
		}
	}
	// Without max or min the fingerprint is the one earlier versions
	// computed (regions running either version agree).
	plain := Policy{Counters: []string{"hits"}}
	if got, want := plain.Fingerprint(), `kind="last_writer_wins";priority=[];deletes="";counters=["hits"];resolver=""`; got != want {
		t.Errorf("Fingerprint() = %s, want %s", got, want)
	}
	if p.Fingerprint() == plain.Fingerprint() {
		t.Error("max and min columns do not change the fingerprint")
	}
	q := Policy{Deletes: DeleteWins, Counters: []string{"hits"}, Max: []string{"last_seen", "updated_at"}, Min: []string{"first_seen"}}
	if p.Fingerprint() != q.Fingerprint() {
		t.Errorf("the order of max columns changes the fingerprint: %s vs %s", p.Fingerprint(), q.Fingerprint())
	}
	if r := (Policy{Deletes: DeleteWins, Counters: []string{"hits"}, Min: []string{"updated_at", "last_seen"}, Max: []string{"first_seen"}}); r.Fingerprint() == p.Fingerprint() {
		t.Error("swapping max and min keeps the fingerprint")
	}
}
