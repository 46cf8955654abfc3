package regions

import (
	"strings"
	"testing"

	"github.com/polyregion/polyregion/conflict"
)

func TestSequencePlanValidate(t *testing.T) {
	base := func(p *SequencePlan) Cluster {
		return Cluster{Regions: []conflict.RegionID{"us", "eu", "ap"}, Tables: []Table{{Name: "public.t"}}, Sequences: p}
	}
	ok := &SequencePlan{Stride: 16, Offsets: map[conflict.RegionID]int64{"us": 0, "eu": 1, "ap": 2}}
	if err := base(ok).Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		p    *SequencePlan
		want string
	}{
		{&SequencePlan{Stride: 1, Offsets: ok.Offsets}, "stride 1: must be 2 to 1024"},
		{&SequencePlan{Stride: 16, Offsets: map[conflict.RegionID]int64{"us": 0, "eu": 1}}, `region "ap" has no offset`},
		{&SequencePlan{Stride: 16, Offsets: map[conflict.RegionID]int64{"us": 0, "eu": 1, "ap": 16}}, `region "ap": offset 16 must be 0 to 15`},
		{&SequencePlan{Stride: 16, Offsets: map[conflict.RegionID]int64{"us": 3, "eu": 1, "ap": 3}}, `both have offset 3`},
		{&SequencePlan{Stride: 16, Offsets: map[conflict.RegionID]int64{"us": 0, "eu": 1, "ap": 2, "sa": 3}}, `sa not among the regions`},
	} {
		err := base(tt.p).Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("plan %+v: error %v, want one containing %q", tt.p, err, tt.want)
		}
	}
}

func TestSequencePlanFingerprint(t *testing.T) {
	c := Cluster{Regions: []conflict.RegionID{"us", "eu"}, Tables: []Table{{Name: "public.t"}}}
	before := c.Fingerprint()
	c.Sequences = &SequencePlan{Stride: 16, Offsets: map[conflict.RegionID]int64{"us": 0, "eu": 1}}
	with := c.Fingerprint()
	if with == before {
		t.Fatal("a plan does not change the fingerprint")
	}
	c.Sequences = &SequencePlan{Stride: 16, Offsets: map[conflict.RegionID]int64{"us": 1, "eu": 0}}
	if c.Fingerprint() == with {
		t.Fatal("swapped offsets give the same fingerprint")
	}
	c.Sequences = nil
	if c.Fingerprint() != before {
		t.Fatal("no plan must keep the fingerprint earlier versions computed")
	}
}

func TestNextInterleaved(t *testing.T) {
	for _, tt := range []struct{ floor, stride, offset, want int64 }{
		{0, 16, 0, 16},
		{0, 16, 1, 1},
		{1, 16, 1, 17},
		{100, 16, 3, 115},
		{115, 16, 3, 131},
		{-5, 4, 2, 2},
		{9, 10, 9, 19},
	} {
		got := NextInterleaved(tt.floor, tt.stride, tt.offset)
		if got != tt.want || got <= tt.floor || got%tt.stride != tt.offset {
			t.Errorf("NextInterleaved(%d, %d, %d) = %d, want %d", tt.floor, tt.stride, tt.offset, got, tt.want)
		}
	}
}
