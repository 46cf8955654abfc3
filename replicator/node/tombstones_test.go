package node

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

// fakeOutbox records what a round asked of the outbox.
type fakeOutbox struct {
	floor   replicator.Seq
	trimmed []replicator.Seq
}

func (f *fakeOutbox) Cap(context.Context) error { return nil }
func (f *fakeOutbox) AckFloor(context.Context) (replicator.Seq, error) {
	return f.floor, nil
}
func (f *fakeOutbox) Trim(_ context.Context, floor replicator.Seq) error {
	f.trimmed = append(f.trimmed, floor)
	return nil
}

// The outbox is trimmed, and tombstones weighed, only by what the peers
// said before the membership was confirmed current: an acknowledgement or
// watermark that arrives while the confirmation is under way may come from
// after a new region's snapshot was taken, and the data plane does not wait
// for that region yet. Without a confirmation nothing is trimmed.
func TestOutboxIsTrimmedOnlyByWhatWasReadBeforeTheMembershipWasConfirmed(t *testing.T) {
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, confirmed := range []bool{true, false} {
		ob := &fakeOutbox{floor: 5}
		g := newTombstones(Config{Region: "us"}, nil, ob, discard)
		var told []bool
		g.onConfirm = func(ok bool) { told = append(told, ok) }
		g.heard("eu", []byte(`{"applied":{"us":5},"versioned":7}`))
		g.confirm = func(context.Context) error {
			// Said while the confirmation is under way.
			ob.floor = 9
			g.heard("eu", []byte(`{"applied":{"us":9},"versioned":12}`))
			if !confirmed {
				return errors.New("no leader")
			}
			return nil
		}
		adverts, current, err := g.keepOutbox(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if current != confirmed || len(told) != 1 || told[0] != confirmed {
			t.Fatalf("confirmed %v: keepOutbox says current %v, the gauge was told %v", confirmed, current, told)
		}
		if w := adverts[conflict.RegionID("eu")]; w.Applied["us"] != 5 || w.Versioned != 7 {
			t.Fatalf("confirmed %v: the watermark weighed is %+v, want the one heard before the confirmation", confirmed, w)
		}
		switch {
		case confirmed && (len(ob.trimmed) != 1 || ob.trimmed[0] != 5):
			t.Fatalf("trimmed %v, want up to 5 (acknowledged before the confirmation) once", ob.trimmed)
		case !confirmed && len(ob.trimmed) != 0:
			t.Fatalf("trimmed %v without a confirmed membership", ob.trimmed)
		}
	}
	// Without a control plane there is nothing to confirm.
	ob := &fakeOutbox{floor: 3}
	if _, current, err := newTombstones(Config{Region: "us"}, nil, ob, discard).keepOutbox(context.Background()); err != nil || !current || len(ob.trimmed) != 1 || ob.trimmed[0] != 3 {
		t.Fatalf("without a control plane: current %v, err %v, trimmed %v", current, err, ob.trimmed)
	}
}
