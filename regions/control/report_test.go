package control

import (
	"testing"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
)

// A report is skipped only when the record holds everything it would
// say: its positions, and what the region's release takes.
func TestAReportIsSkippedOnlyWhenTheRecordHoldsIt(t *testing.T) {
	old := regions.Progress{Shipped: 5, Applied: map[conflict.RegionID]uint64{"eu": 3}, Takes: 1}
	for _, tc := range []struct {
		name string
		p    regions.Progress
		want bool
	}{
		{"the same", regions.Progress{Shipped: 5, Applied: map[conflict.RegionID]uint64{"eu": 3}, Takes: 1}, true},
		{"older positions", regions.Progress{Shipped: 4, Applied: map[conflict.RegionID]uint64{"eu": 2}, Takes: 1}, true},
		{"shipped more", regions.Progress{Shipped: 6, Applied: map[conflict.RegionID]uint64{"eu": 3}, Takes: 1}, false},
		{"applied more", regions.Progress{Shipped: 5, Applied: map[conflict.RegionID]uint64{"eu": 4}, Takes: 1}, false},
		{"applied from a new region", regions.Progress{Shipped: 5, Applied: map[conflict.RegionID]uint64{"eu": 3, "ap": 1}, Takes: 1}, false},
		{"a release that takes more, positions still", regions.Progress{Shipped: 5, Applied: map[conflict.RegionID]uint64{"eu": 3}, Takes: 3}, false},
		{"a release that takes less, positions still", regions.Progress{Shipped: 5, Applied: map[conflict.RegionID]uint64{"eu": 3}, Takes: 0}, false},
	} {
		if got := covers(old, tc.p); got != tc.want {
			t.Errorf("%s: covers %v, want %v", tc.name, got, tc.want)
		}
	}
}
