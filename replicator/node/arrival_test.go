package node

import (
	"testing"
	"time"
)

func TestArrivalRateGathersOnlyWhileBusy(t *testing.T) {
	var r arrivalRate
	t0 := time.Unix(1_800_000_000, 0)
	if r.busy(t0) {
		t.Fatal("busy before anything arrived")
	}
	// 100 transactions a second (one every 10 ms): applied as they come.
	for i := 0; i < 300; i++ {
		r.add(t0.Add(time.Duration(i)*10*time.Millisecond), 1)
	}
	if r.busy(t0.Add(3 * time.Second)) {
		t.Fatal("busy at 100 transactions/s")
	}
	// 700 a second: gathered.
	t1 := t0.Add(3 * time.Second)
	for i := 0; i < 1400; i++ {
		r.add(t1.Add(time.Duration(i)*time.Second/700), 1)
	}
	if !r.busy(t1.Add(2 * time.Second)) {
		t.Fatal("not busy at 700 transactions/s")
	}
	// A pause of seconds: not busy any more.
	if r.busy(t1.Add(6 * time.Second)) {
		t.Fatal("still busy after a long pause")
	}
}
