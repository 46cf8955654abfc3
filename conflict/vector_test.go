package conflict

import (
	"maps"
	"math"
	"strings"
	"testing"
)

func TestRegionIDValidate(t *testing.T) {
	tests := []struct {
		id      RegionID
		wantErr string // "" = valid
	}{
		{"eu", ""},
		{"a", ""},
		{"us-east-1", ""},
		{"ap_south_2", ""},
		{RegionID("a" + strings.Repeat("z", 31)), ""},
		{"", "empty"},
		{RegionID("a" + strings.Repeat("z", 32)), "33 bytes long, at most 32"},
		{"1eu", "must start with a lowercase letter"},
		{"_eu", "must start with a lowercase letter"},
		{"-eu", "must start with a lowercase letter"},
		{"Eu", "must start with a lowercase letter"},
		{"eU", "byte 1 ('U') is not allowed"},
		{"eu west", "byte 2 (' ') is not allowed"},
		{"eu:1", "byte 2 (':') is not allowed"},
		{"eu,us", "byte 2 (',') is not allowed"},
		{"eu.x", "byte 2 ('.') is not allowed"},
		{"é", "must start with a lowercase letter"},
	}
	for _, tt := range tests {
		err := tt.id.Validate()
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("RegionID(%q).Validate() = %v, want nil", tt.id, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("RegionID(%q).Validate() = %v, want error containing %q", tt.id, err, tt.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), "invalid region id") {
			t.Errorf("RegionID(%q).Validate() = %v, want it to say \"invalid region id\"", tt.id, err)
		}
	}
}

func TestVectorGetCloneTick(t *testing.T) {
	var nilVec Vector
	if got := nilVec.Get("eu"); got != 0 {
		t.Errorf("nil.Get = %d, want 0", got)
	}
	c := nilVec.Clone()
	if c == nil || len(c) != 0 {
		t.Errorf("nil.Clone() = %#v, want empty non-nil map", c)
	}

	v := Vector{"eu": 3, "us": 1}
	c = v.Clone()
	c["eu"] = 99
	if v["eu"] != 3 {
		t.Errorf("Clone shares memory with original")
	}

	tk := v.Tick("eu")
	if tk["eu"] != 4 || tk["us"] != 1 || len(tk) != 2 {
		t.Errorf("Tick(eu) = %v, want eu:4,us:1", tk)
	}
	if v["eu"] != 3 {
		t.Errorf("Tick modified its receiver: %v", v)
	}
	tk = v.Tick("ap")
	if tk.String() != "ap:1,eu:3,us:1" {
		t.Errorf("Tick(ap) = %v", tk)
	}
	if got := nilVec.Tick("eu"); got.String() != "eu:1" {
		t.Errorf("nil.Tick(eu) = %v, want eu:1", got)
	}
	if Compare(v, v.Tick("eu")) != Before {
		t.Errorf("Compare(v, v.Tick) != Before")
	}

	defer func() {
		if recover() == nil {
			t.Errorf("Tick at MaxUint64 did not panic")
		}
	}()
	Vector{"eu": math.MaxUint64}.Tick("eu")
}

func TestMerge(t *testing.T) {
	tests := []struct {
		a, b Vector
		want string
	}{
		{nil, nil, ""},
		{Vector{}, nil, ""},
		{Vector{"eu": 1}, nil, "eu:1"},
		{nil, Vector{"eu": 1}, "eu:1"},
		{Vector{"eu": 1, "us": 5}, Vector{"eu": 3, "us": 2}, "eu:3,us:5"},
		{Vector{"eu": 1}, Vector{"us": 2}, "eu:1,us:2"},
		{Vector{"eu": 0, "us": 0}, Vector{"ap": 0}, ""},
		{Vector{"eu": math.MaxUint64}, Vector{"eu": 7}, "eu:18446744073709551615"},
	}
	for _, tt := range tests {
		got := Merge(tt.a, tt.b)
		if got == nil {
			t.Errorf("Merge(%v, %v) = nil", tt.a, tt.b)
		}
		if got.String() != tt.want {
			t.Errorf("Merge(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
		for r, n := range got {
			if n == 0 {
				t.Errorf("Merge(%v, %v) kept zero entry %q", tt.a, tt.b, r)
			}
		}
	}
	// Result shares nothing with the inputs.
	a := Vector{"eu": 1}
	m := Merge(a, nil)
	m["eu"] = 5
	if a["eu"] != 1 {
		t.Errorf("Merge result aliases its argument")
	}
}

func TestCompare(t *testing.T) {
	tests := []struct {
		a, b Vector
		want Order
	}{
		{nil, nil, Equal},
		{Vector{}, nil, Equal},
		{Vector{"eu": 0}, nil, Equal},
		{nil, Vector{"eu": 0}, Equal},
		{Vector{"eu": 1}, Vector{"eu": 1}, Equal},
		{Vector{"eu": 1, "us": 0}, Vector{"eu": 1}, Equal},
		{nil, Vector{"eu": 1}, Before},
		{Vector{"eu": 1}, nil, After},
		{Vector{"eu": 1}, Vector{"eu": 2}, Before},
		{Vector{"eu": 1}, Vector{"eu": 1, "us": 1}, Before},
		{Vector{"eu": 1, "us": 1}, Vector{"eu": 1}, After},
		{Vector{"eu": 2, "us": 1}, Vector{"eu": 1, "us": 1}, After},
		{Vector{"eu": 1}, Vector{"us": 1}, Concurrent},
		{Vector{"eu": 2, "us": 1}, Vector{"eu": 1, "us": 2}, Concurrent},
		{Vector{"eu": 2}, Vector{"eu": 1, "us": 1}, Concurrent},
		{Vector{"eu": 1, "us": 1}, Vector{"eu": 2}, Concurrent},
		{Vector{"eu": 0, "us": 1}, Vector{"eu": 1}, Concurrent},
	}
	for _, tt := range tests {
		if got := Compare(tt.a, tt.b); got != tt.want {
			t.Errorf("Compare(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
		if got := Compare(tt.b, tt.a); got != tt.want.reverse() {
			t.Errorf("Compare(%v, %v) = %v, want %v", tt.b, tt.a, got, tt.want.reverse())
		}
	}
}

func TestOrderString(t *testing.T) {
	for o, want := range map[Order]string{Equal: "equal", Before: "before", After: "after", Concurrent: "concurrent", Order(9): "Order(9)"} {
		if got := o.String(); got != want {
			t.Errorf("Order(%d).String() = %q, want %q", int(o), got, want)
		}
	}
}

func TestVectorStringParse(t *testing.T) {
	tests := []struct {
		v    Vector
		want string
	}{
		{nil, ""},
		{Vector{}, ""},
		{Vector{"eu": 0}, ""},
		{Vector{"eu": 3}, "eu:3"},
		{Vector{"us": 1, "eu": 3}, "eu:3,us:1"},
		{Vector{"us": 1, "eu": 3, "ap": 0}, "eu:3,us:1"},
		{Vector{"us-east": 1, "us": 2, "us_west": 3}, "us:2,us-east:1,us_west:3"},
		{Vector{"eu": math.MaxUint64}, "eu:18446744073709551615"},
	}
	for _, tt := range tests {
		s := tt.v.String()
		if s != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.v, s, tt.want)
		}
		p, err := ParseVector(s)
		if err != nil {
			t.Errorf("ParseVector(%q) error: %v", s, err)
			continue
		}
		if p == nil {
			t.Errorf("ParseVector(%q) = nil map", s)
		}
		if Compare(p, tt.v) != Equal || p.String() != s {
			t.Errorf("ParseVector(%q) = %v, want %v", s, p, tt.v)
		}
	}

	// Entries may come in any order.
	p, err := ParseVector("us:1,eu:3")
	if err != nil || !maps.Equal(p, Vector{"eu": 3, "us": 1}) {
		t.Errorf("ParseVector(unsorted) = %v, %v", p, err)
	}
}

func TestParseVectorErrors(t *testing.T) {
	tests := []struct {
		in   string
		want []string // all must appear in the error
	}{
		{",", []string{`entry 1 ""`, "empty entry"}},
		{"eu:1,", []string{`entry 2 ""`, "empty entry"}},
		{"eu:1,,us:2", []string{`entry 2 ""`, "empty entry"}},
		{"eu", []string{`entry 1 "eu"`, "missing ':'"}},
		{"eu:1,us", []string{`entry 2 "us"`, "missing ':'"}},
		{":1", []string{`region ""`, "empty"}},
		{"EU:1", []string{`entry 1 "EU:1"`, `region "EU"`, "lowercase letter"}},
		{"eu:1,u s:2", []string{`entry 2 "u s:2"`, "byte 1"}},
		{"eu:", []string{"count is missing"}},
		{"eu:x", []string{`count "x" is not a decimal integer`}},
		{"eu:-1", []string{`count "-1" is not a decimal integer`}},
		{"eu:+1", []string{`count "+1" is not a decimal integer`}},
		{"eu: 1", []string{`count " 1" is not a decimal integer`}},
		{"eu:1 ", []string{`count "1 " is not a decimal integer`}},
		{"eu:1:2", []string{`count "1:2"`}},
		{"eu:0", []string{"count 0 is not allowed"}},
		{"eu:01", []string{`count "01" has leading zeros`}},
		{"eu:18446744073709551616", []string{"does not fit in 64 bits"}},
		{"eu:1,eu:2", []string{`entry 2 "eu:2"`, `region "eu" appears more than once`}},
		{" eu:1", []string{`region " eu"`}},
	}
	for _, tt := range tests {
		v, err := ParseVector(tt.in)
		if err == nil {
			t.Errorf("ParseVector(%q) = %v, want error", tt.in, v)
			continue
		}
		if v == nil {
			t.Errorf("ParseVector(%q) returned a nil map with its error", tt.in)
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("ParseVector(%q) error %q does not mention %q", tt.in, err, w)
			}
		}
		if !strings.HasPrefix(err.Error(), "parse vector: ") {
			t.Errorf("ParseVector(%q) error %q lacks prefix", tt.in, err)
		}
	}
}
