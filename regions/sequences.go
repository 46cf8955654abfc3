package regions

import (
	"fmt"
	"sort"
	"strings"

	"github.com/polyregion/polyregion/conflict"
)

// MaxSequenceStride is the largest stride a SequencePlan may have.
const MaxSequenceStride = 1024

// SequencePlan interleaves the numbers the regions' sequences hand out.
// Applications fill keys from serial or identity columns; every region's
// sequence would hand out the same numbers, and two rows inserted under one
// key in two regions are an insert/insert conflict in which one row is
// lost. Under a plan every such sequence steps by Stride, and a region's
// numbers are those equal to its Offset modulo Stride: no two regions ever
// hand out the same key. Offsets are part of the agreed configuration (the
// same in every region, distinct per region); a region added later takes an
// offset still free, which Stride leaves room for.
type SequencePlan struct {
	Stride  int64
	Offsets map[conflict.RegionID]int64
}

// Offset is region r's offset (false when the plan has none for it).
func (p *SequencePlan) Offset(r conflict.RegionID) (int64, bool) {
	if p == nil {
		return 0, false
	}
	off, ok := p.Offsets[r]
	return off, ok
}

// String is the plan's canonical text ("stride=16;ap=2,eu=1,us=0").
func (p *SequencePlan) String() string { return p.describe() }

// describe is the plan's canonical text: "stride=16;ap=2,eu=1,us=0".
func (p *SequencePlan) describe() string {
	regs := make([]string, 0, len(p.Offsets))
	for r := range p.Offsets {
		regs = append(regs, string(r))
	}
	sort.Strings(regs)
	parts := make([]string, len(regs))
	for i, r := range regs {
		parts[i] = fmt.Sprintf("%s=%d", r, p.Offsets[conflict.RegionID(r)])
	}
	return fmt.Sprintf("stride=%d;%s", p.Stride, strings.Join(parts, ","))
}

// NextInterleaved is the first number above floor that is equal to offset
// modulo stride (and positive): where a region's sequence resumes so that
// it hands out only its own numbers, above every key already in use.
func NextInterleaved(floor, stride, offset int64) int64 {
	if floor < 0 {
		floor = 0
	}
	n := floor + 1
	if r := ((n-offset)%stride + stride) % stride; r != 0 {
		n += stride - r
	}
	return n
}
