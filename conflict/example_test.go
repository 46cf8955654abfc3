package conflict_test

import (
	"fmt"
	"time"

	"github.com/polyregion/polyregion/conflict"
)

func Example() {
	policy := conflict.Policy{Counters: []string{"hits"}}
	if err := policy.Validate(); err != nil {
		panic(err)
	}
	wall := time.Date(2026, 11, 26, 17, 42, 3, 0, time.UTC)

	// eu and us both update a row they each know as version "eu:1".
	var euClock, usClock conflict.Clock
	base := conflict.Vector{"eu": 1}
	eu := conflict.Version{Vector: base.Tick("eu"), HLC: euClock.Now(wall), Origin: "eu"}
	us := conflict.Version{Vector: base.Tick("us"), HLC: usClock.Now(wall.Add(time.Millisecond)), Origin: "us"}

	// Each region decides on the other's write; both end with the same version.
	atEU := conflict.Decide(policy, eu, true, us, conflict.OpUpdate)
	atUS := conflict.Decide(policy, us, true, eu, conflict.OpUpdate)
	fmt.Println(atEU.Kind, atEU.Action, atEU.Winner, atEU.Result.Origin, atEU.Result.Vector)
	fmt.Println(atUS.Kind, atUS.Action, atUS.Winner, atUS.Result.Origin, atUS.Result.Vector)
	fmt.Println(atEU.Reason)

	// Counter columns keep both increments whoever wins.
	euDelta, _ := conflict.CounterDelta("10", "12")   // eu: 10 -> 12
	usDelta, _ := conflict.CounterDelta("10", "10.5") // us: 10 -> 10.5
	atEUHits, _ := conflict.MergeCounter("12", usDelta)
	atUSHits, _ := conflict.MergeCounter("10.5", euDelta)
	fmt.Println(atEUHits, atUSHits)

	// Output:
	// update_update apply_remote remote us eu:2,us:1
	// update_update keep_local local us eu:2,us:1
	// last_writer_wins: remote hlc 2026-11-26T17:42:03.001Z/0 > local hlc 2026-11-26T17:42:03.000Z/0
	// 12.5 12.5
}

func ExampleParseVector() {
	v, err := conflict.ParseVector("us:1,eu:3")
	fmt.Println(v, err)
	_, err = conflict.ParseVector("eu:3,US:1")
	fmt.Println(err)
	// Output:
	// eu:3,us:1 <nil>
	// parse vector: entry 2 "US:1": region "US": must start with a lowercase letter a-z
}

func ExampleClock() {
	var c conflict.Clock
	t0 := time.Date(2026, 11, 26, 17, 42, 3, 123e6, time.UTC)
	fmt.Println(c.Now(t0))
	fmt.Println(c.Now(t0))                       // same millisecond: logical +1
	fmt.Println(c.Now(t0.Add(-time.Second)))     // wall clock went back: still increases
	fmt.Println(c.Observe(c.Last()+100, t0))     // a peer ahead of us
	fmt.Println(c.Now(t0.Add(time.Millisecond))) // wall clock catches up
	// Output:
	// 2026-11-26T17:42:03.123Z/0
	// 2026-11-26T17:42:03.123Z/1
	// 2026-11-26T17:42:03.123Z/2
	// 2026-11-26T17:42:03.123Z/103
	// 2026-11-26T17:42:03.124Z/0
}
