package postgres

import (
	"maps"
	"testing"

	"github.com/polyregion/polyregion/conflict"
)

func TestStampsRoundTrip(t *testing.T) {
	st := map[string]conflict.Stamp{"email": {HLC: conflict.MaxTimestamp, Origin: "eu"}, "bio": {}}
	got, err := parseStamps([]byte(*encodeStamps(st)))
	if err != nil || !maps.Equal(got, st) {
		t.Fatalf("round trip: %v, %v; want %v", got, err, st)
	}
	if encodeStamps(nil) != nil {
		t.Fatal("no stamps are stored as a value")
	}
	if _, err := parseStamps([]byte(`{"email": 3}`)); err == nil {
		t.Fatal("malformed stamps accepted")
	}
}
