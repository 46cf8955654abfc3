package indexer

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/polyregion/polyregion/replicator"
)

// pgoutput messages, as the slot sends them (protocol version 1).

func msgBegin(final pglogrepl.LSN) []byte {
	b := append([]byte{'B'}, binary.BigEndian.AppendUint64(nil, uint64(final))...)
	b = binary.BigEndian.AppendUint64(b, 0) // commit time
	return binary.BigEndian.AppendUint32(b, 1)
}

func msgInsert(rel uint32, cols ...string) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'I'}, rel)
	b = binary.BigEndian.AppendUint16(append(b, 'N'), uint16(len(cols)))
	for _, c := range cols {
		b = binary.BigEndian.AppendUint32(append(b, 't'), uint32(len(c)))
		b = append(b, c...)
	}
	return b
}

func msgCommit(commit, end pglogrepl.LSN) []byte {
	b := binary.BigEndian.AppendUint64([]byte{'C', 0}, uint64(commit))
	b = binary.BigEndian.AppendUint64(b, uint64(end))
	return binary.BigEndian.AppendUint64(b, 0)
}

// A row whose document cannot be rendered (a timestamptz before the common
// era or past year 9999) is refused like an oversize one: its older
// document leaves the index, the dead letter is recorded and the
// transaction confirmed by the timed flush, with no later change needed to
// set it off. In the second case a row before it fills the batch up to the
// refused row's delete, which writes the batch at once: only the dead
// letter is left waiting.
func TestStreamRefusesUnrenderableRowAndConfirms(t *testing.T) {
	for _, c := range []struct {
		at     string
		filler bool
	}{{"0044-03-15 12:00:00+00 BC", false}, {"10000-01-01 00:00:00+00", true}} {
		be := &recorder{}
		f, err := New(Config{Region: "us", Database: "x", Indices: []IndexSpec{{Table: "public.t", Index: "t"}},
			BatchBytes: 1024, FlushInterval: time.Hour}, be)
		if err != nil {
			t.Fatal(err)
		}
		shape := replicator.Shape{Table: "public.t", Columns: []string{"id", "at", "body"},
			Types: []string{"bigint", "timestamp with time zone", "text"}, Key: []int{0}}
		tm, err := newTableMap(f.cfg.Indices[0], shape)
		if err != nil {
			t.Fatal(err)
		}
		var recorded []deadLetter
		s := &streamer{f: f, acked: 10, rels: map[uint32]*relState{1: {name: "public.t", targets: []indexTarget{{tm: tm, spec: f.cfg.Indices[0], phys: "t-1"}}}},
			record: func(_ context.Context, dls []deadLetter) error { recorded = append(recorded, dls...); return nil }}
		msgs := [][]byte{msgBegin(100)}
		if c.filler {
			// 3 bytes short of BatchBytes (the document, its id and key).
			const at = "2024-03-01 10:20:30+00"
			doc, err := tm.doc([]replicator.Value{{Text: "1"}, {Text: at}, {Text: ""}})
			if err != nil {
				t.Fatal(err)
			}
			body := strings.Repeat("x", 1024-3-len(doc)-len(`1["1"]`))
			msgs = append(msgs, msgInsert(1, "1", at, body))
		}
		msgs = append(msgs, msgInsert(1, "7", c.at, "words"), msgCommit(100, 120))
		ctx := context.Background()
		for _, m := range msgs {
			if err := s.handle(ctx, m); err != nil {
				t.Fatalf("%s: %v", c.at, err)
			}
		}
		if c.filler && (len(s.ops) != 0 || len(s.dls) != 1) {
			t.Errorf("%s: %d operations, %d dead letters pending; want the dead letter alone", c.at, len(s.ops), len(s.dls))
		}
		// The table stays quiet: only the flush interval passes.
		if err := s.flushIfDue(ctx, time.Now().Add(time.Hour+time.Second)); err != nil {
			t.Fatal(err)
		}
		if len(recorded) != 1 || recorded[0].id != "7" || recorded[0].version != 100 || !strings.Contains(recorded[0].reason, "timestamp") {
			t.Errorf("%s: dead letters %+v", c.at, recorded)
		}
		var deleted bool
		for _, b := range be.batches {
			for _, op := range b {
				deleted = deleted || (op.Delete && op.ID == "7" && op.Index == "t-1" && op.Version == 100)
			}
		}
		if !deleted {
			t.Errorf("%s: the row's older document was not deleted (%d batches written)", c.at, len(be.batches))
		}
		if s.acked != 120 || len(s.dls) != 0 || len(s.ops) != 0 {
			t.Errorf("%s: acknowledged %s (want 0/78), %d dead letters and %d operations pending", c.at, s.acked, len(s.dls), len(s.ops))
		}
	}
}
