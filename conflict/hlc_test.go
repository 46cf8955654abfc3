package conflict

import (
	"math/rand/v2"
	"testing"
	"time"
)

func ms(n int64) time.Time { return time.UnixMilli(n) }

func TestTimestampParts(t *testing.T) {
	tests := []struct {
		wall     int64
		logical  uint16
		wantWall int64
	}{
		{0, 0, 0},
		{1, 2, 1},
		{1_700_000_000_123, 65535, 1_700_000_000_123},
		{MaxWallMillis, 65535, MaxWallMillis},
		{-5, 3, 0},                            // clamped
		{MaxWallMillis + 1, 0, MaxWallMillis}, // clamped
	}
	for _, tt := range tests {
		ts := MakeTimestamp(tt.wall, tt.logical)
		if ts.WallMillis() != tt.wantWall || ts.Logical() != tt.logical {
			t.Errorf("MakeTimestamp(%d, %d) = (%d, %d), want (%d, %d)", tt.wall, tt.logical, ts.WallMillis(), ts.Logical(), tt.wantWall, tt.logical)
		}
	}
	if MakeTimestamp(MaxWallMillis, 65535) != MaxTimestamp {
		t.Errorf("MakeTimestamp(max, 65535) != MaxTimestamp")
	}
	// Integer order is (wall, logical) order.
	if !(MakeTimestamp(5, 65535) < MakeTimestamp(6, 0)) || !(MakeTimestamp(5, 1) < MakeTimestamp(5, 2)) {
		t.Errorf("timestamp ordering broken")
	}
}

func TestTimestampTimeString(t *testing.T) {
	wall := time.Date(2026, 11, 26, 17, 42, 3, 123_456_789, time.UTC)
	ts := MakeTimestamp(wall.UnixMilli(), 5)
	if got, want := ts.String(), "2026-11-26T17:42:03.123Z/5"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got, want := ts.Time(), wall.Truncate(time.Millisecond); !got.Equal(want) || got.Location() != time.UTC {
		t.Errorf("Time() = %v, want %v UTC", got, want)
	}
	if got, want := Timestamp(0).String(), "1970-01-01T00:00:00.000Z/0"; got != want {
		t.Errorf("zero String() = %q, want %q", got, want)
	}
	local := time.Date(2026, 1, 2, 3, 4, 5, 6_000_000, time.FixedZone("X", 3600))
	if got, want := MakeTimestamp(local.UnixMilli(), 0).String(), "2026-01-02T02:04:05.006Z/0"; got != want {
		t.Errorf("String() of non-UTC wall = %q, want %q", got, want)
	}
}

func TestNext(t *testing.T) {
	tests := []struct {
		name string
		wall time.Time
		prev Timestamp
		want Timestamp
	}{
		{"wall ahead", ms(1000), MakeTimestamp(900, 7), MakeTimestamp(1000, 0)},
		{"same ms", ms(1000), MakeTimestamp(1000, 7), MakeTimestamp(1000, 8)},
		{"wall behind", ms(500), MakeTimestamp(1000, 7), MakeTimestamp(1000, 8)},
		{"logical overflow carries", ms(500), MakeTimestamp(1000, 65535), MakeTimestamp(1001, 0)},
		{"zero prev", ms(0), 0, 1},
		{"zero wall time", time.Time{}, 0, 1},
		{"pre-epoch wall", ms(-10_000), MakeTimestamp(3, 3), MakeTimestamp(3, 4)},
		{"far-future wall clamps", time.Date(20000, 1, 1, 0, 0, 0, 0, time.UTC), 0, MakeTimestamp(MaxWallMillis, 0)},
		{"saturates", ms(1), MaxTimestamp, MaxTimestamp},
	}
	for _, tt := range tests {
		if got := Next(tt.wall, tt.prev); got != tt.want {
			t.Errorf("%s: Next(%v, %v) = %v, want %v", tt.name, tt.wall, tt.prev, got, tt.want)
		}
	}
}

func TestClockNow(t *testing.T) {
	var c Clock
	if c.Last() != 0 {
		t.Fatalf("zero Clock Last = %v", c.Last())
	}
	steps := []struct {
		wall int64
		want Timestamp
	}{
		{1000, MakeTimestamp(1000, 0)},
		{1000, MakeTimestamp(1000, 1)},
		{1000, MakeTimestamp(1000, 2)},
		{1001, MakeTimestamp(1001, 0)},
		{900, MakeTimestamp(1001, 1)}, // wall clock went backwards
		{900, MakeTimestamp(1001, 2)},
		{1002, MakeTimestamp(1002, 0)},
	}
	for i, s := range steps {
		got := c.Now(ms(s.wall))
		if got != s.want {
			t.Errorf("step %d: Now(%d) = %v, want %v", i, s.wall, got, s.want)
		}
		if c.Last() != got {
			t.Errorf("step %d: Last = %v, want %v", i, c.Last(), got)
		}
	}
}

func TestClockLogicalOverflow(t *testing.T) {
	var c Clock
	c.Observe(MakeTimestamp(1000, 65534), ms(1000)) // -> 1000/65535
	if got, want := c.Last(), MakeTimestamp(1000, 65535); got != want {
		t.Fatalf("Last = %v, want %v", got, want)
	}
	if got, want := c.Now(ms(1000)), MakeTimestamp(1001, 0); got != want {
		t.Errorf("Now after logical 65535 = %v, want %v (carry, not wrap)", got, want)
	}
	// Many events within one millisecond: strictly increasing, carrying.
	prev := c.Last()
	for i := range 200_000 {
		ts := c.Now(ms(1000))
		if ts <= prev {
			t.Fatalf("event %d: %v <= %v", i, ts, prev)
		}
		prev = ts
	}
	if c.Last().WallMillis() < 1003 {
		t.Errorf("after 200000 events in one ms, wall part = %d, want carried to >= 1003", c.Last().WallMillis())
	}

	var d Clock
	if got, want := d.Observe(MakeTimestamp(50, 65535), ms(10)), MakeTimestamp(51, 0); got != want {
		t.Errorf("Observe(remote logical 65535) = %v, want %v", got, want)
	}
}

func TestClockObserve(t *testing.T) {
	tests := []struct {
		name   string
		last   Timestamp
		remote Timestamp
		wall   int64
		want   Timestamp
	}{
		{"wall ahead of both", MakeTimestamp(10, 3), MakeTimestamp(20, 4), 30, MakeTimestamp(30, 0)},
		{"remote ahead", MakeTimestamp(10, 3), MakeTimestamp(20, 4), 15, MakeTimestamp(20, 5)},
		{"local ahead", MakeTimestamp(20, 3), MakeTimestamp(10, 9), 15, MakeTimestamp(20, 4)},
		{"same ms, remote logical higher", MakeTimestamp(20, 3), MakeTimestamp(20, 9), 15, MakeTimestamp(20, 10)},
		{"same ms, local logical higher", MakeTimestamp(20, 9), MakeTimestamp(20, 3), 15, MakeTimestamp(20, 10)},
		{"all same ms", MakeTimestamp(20, 9), MakeTimestamp(20, 3), 20, MakeTimestamp(20, 10)},
		{"wall equals remote ms", MakeTimestamp(10, 0), MakeTimestamp(20, 4), 20, MakeTimestamp(20, 5)},
		{"zero clock", 0, MakeTimestamp(5, 0), 1, MakeTimestamp(5, 1)},
		{"remote at max saturates", 0, MaxTimestamp, 1, MaxTimestamp},
	}
	for _, tt := range tests {
		c := Clock{last: tt.last}
		got := c.Observe(tt.remote, ms(tt.wall))
		if got != tt.want {
			t.Errorf("%s: Observe = %v, want %v", tt.name, got, tt.want)
		}
		if c.Last() != got {
			t.Errorf("%s: Last = %v, want %v", tt.name, c.Last(), got)
		}
	}
}

// TestClockMonotonicRandom drives a clock with a jittery, sometimes
// backwards wall clock and random remote timestamps.
func TestClockMonotonicRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var c Clock
	wall := int64(1_700_000_000_000)
	var prev Timestamp
	var maxSeen Timestamp
	for i := range 100_000 {
		wall += rng.Int64N(7) - 3 // may go backwards
		var got Timestamp
		if rng.IntN(3) == 0 {
			remote := MakeTimestamp(wall+rng.Int64N(200)-100, uint16(rng.IntN(1<<16)))
			got = c.Observe(remote, ms(wall))
			if got <= remote {
				t.Fatalf("step %d: Observe(%v) = %v, not > remote", i, remote, got)
			}
			maxSeen = max(maxSeen, remote)
		} else {
			got = c.Now(ms(wall))
		}
		if got <= prev || got <= maxSeen {
			t.Fatalf("step %d: %v not > previous %v / observed %v", i, got, prev, maxSeen)
		}
		if got.WallMillis() < wall && got < MakeTimestamp(wall, 0) {
			t.Fatalf("step %d: %v behind wall %d", i, got, wall)
		}
		prev = got
		maxSeen = max(maxSeen, got)
	}
}
