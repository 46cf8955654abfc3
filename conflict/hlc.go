package conflict

import (
	"math"
	"strconv"
	"time"
)

// Timestamp is a hybrid logical clock timestamp: the high 48 bits hold wall
// milliseconds since the Unix epoch, the low 16 bits a logical counter.
// Ordering timestamps as integers orders them as (wall, logical) pairs.
type Timestamp uint64

const (
	logicalBits = 16

	// MaxWallMillis is the largest wall-clock part a Timestamp can hold
	// (2^48-1 ms after the epoch, in the year 10889).
	MaxWallMillis int64 = 1<<(64-logicalBits) - 1

	// MaxTimestamp is the largest Timestamp. Clocks saturate there instead
	// of wrapping.
	MaxTimestamp Timestamp = math.MaxUint64
)

// MakeTimestamp builds a timestamp from wall milliseconds since the Unix
// epoch and a logical counter. Wall times outside [0, MaxWallMillis] are
// clamped into that range.
func MakeTimestamp(wallMillis int64, logical uint16) Timestamp {
	wallMillis = min(max(wallMillis, 0), MaxWallMillis)
	return Timestamp(uint64(wallMillis)<<logicalBits | uint64(logical))
}

// WallMillis returns the wall-clock part, milliseconds since the Unix epoch.
func (t Timestamp) WallMillis() int64 { return int64(t >> logicalBits) }

// Logical returns the logical counter.
func (t Timestamp) Logical() uint16 { return uint16(t) }

// Time returns the wall-clock part as a UTC time.
func (t Timestamp) Time() time.Time { return time.UnixMilli(t.WallMillis()).UTC() }

// String formats t as RFC 3339 UTC with milliseconds, a slash and the
// logical counter, e.g. "2026-11-26T17:42:03.123Z/5".
func (t Timestamp) String() string {
	return t.Time().Format("2006-01-02T15:04:05.000Z") + "/" + strconv.FormatUint(uint64(t.Logical()), 10)
}

// succ returns t+1 (a logical overflow carries into the milliseconds),
// saturating at MaxTimestamp.
func (t Timestamp) succ() Timestamp {
	if t == MaxTimestamp {
		return t
	}
	return t + 1
}

// wallTimestamp converts a wall time to a timestamp with logical 0, clamped
// like MakeTimestamp (also for times whose milliseconds overflow int64).
func wallTimestamp(wall time.Time) Timestamp {
	sec := wall.Unix()
	switch {
	case sec < 0:
		return 0
	case sec > MaxWallMillis/1000:
		return MakeTimestamp(MaxWallMillis, 0)
	}
	return MakeTimestamp(wall.UnixMilli(), 0)
}

// Next returns the timestamp of a write committed at wall time wall on a
// row whose previous version had timestamp prev: max(wall as a timestamp
// with logical 0, prev+1). It is a pure function, for use where a per-row
// floor is needed. prev+1 carries a logical overflow into the milliseconds
// and saturates at MaxTimestamp.
func Next(wall time.Time, prev Timestamp) Timestamp {
	return max(wallTimestamp(wall), prev.succ())
}

// Clock is a hybrid logical clock. It is not safe for concurrent use
// (callers lock). The zero value is ready to use. To resume from a persisted
// timestamp, Observe it.
type Clock struct {
	last Timestamp
}

// Last returns the latest timestamp returned by Now or Observe (0 at first).
func (c *Clock) Last() Timestamp { return c.last }

// Now returns the timestamp for a local or send event at wall time wall. It
// is strictly greater than every timestamp returned or observed before,
// even if wall goes backwards (until MaxTimestamp, where it saturates).
func (c *Clock) Now(wall time.Time) Timestamp {
	c.last = Next(wall, c.last)
	return c.last
}

// Observe handles a receive event carrying the remote timestamp remote at
// local wall time wall, following the standard HLC rules. The result is
// strictly greater than both remote and every timestamp returned or
// observed before (until MaxTimestamp, where it saturates). Observe does not
// bound clock skew: callers that want to reject timestamps too far ahead of
// their wall clock must check before calling it.
func (c *Clock) Observe(remote Timestamp, wall time.Time) Timestamp {
	c.last = Next(wall, max(c.last, remote))
	return c.last
}
