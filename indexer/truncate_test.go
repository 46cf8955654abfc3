package indexer

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/polyregion/polyregion/replicator"
)

func msgTruncate(rels ...uint32) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'T'}, uint32(len(rels)))
	b = append(b, 0) // options: no CASCADE, no RESTART IDENTITY
	for _, r := range rels {
		b = binary.BigEndian.AppendUint32(b, r)
	}
	return b
}

// A TRUNCATE deletes its index's documents at its transaction's version,
// like every other write: a document a later transaction wrote (in the
// first pass of a replayed stretch of the stream) stays, and the rows the
// truncating transaction writes after it are in the index, however often
// the transaction is replayed. The deletes go out in batches of BatchDocs
// while the index is scanned.
func TestStreamTruncateIsAVersionedDelete(t *testing.T) {
	ctx := context.Background()
	be, err := OpenEmbedded(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	const phys = "t-1"
	if err := be.CreateIndex(ctx, phys, map[string]any{"properties": map[string]any{"body": map[string]any{"type": "text"}}}); err != nil {
		t.Fatal(err)
	}
	f, err := New(Config{Region: "us", Database: "x", Indices: []IndexSpec{{Table: "public.t", Index: "t"}},
		BatchDocs: 2, FlushInterval: time.Hour}, be)
	if err != nil {
		t.Fatal(err)
	}
	shape := replicator.Shape{Table: "public.t", Columns: []string{"id", "body"}, Types: []string{"bigint", "text"}, Key: []int{0}}
	tm, err := newTableMap(f.cfg.Indices[0], shape)
	if err != nil {
		t.Fatal(err)
	}
	doc := func(body string) []byte { return fmt.Appendf(nil, `{"body":%q}`, body) }
	put := func(id string, version int64, body string) Op {
		return Op{Index: phys, ID: id, Version: version, Doc: doc(body), Table: "public.t", Key: id}
	}
	// Before the truncating transaction (version 100): rows of older
	// transactions, and one a later transaction (version 200) wrote.
	var ops []Op
	for i := range 5 {
		ops = append(ops, put(fmt.Sprint("old", i), 50, "old"))
	}
	ops = append(ops, put("later", 200, "later"))
	if rej, err := be.Bulk(ctx, ops); err != nil || len(rej) > 0 {
		t.Fatal(rej, err)
	}

	// The transaction: inserts "gone", truncates, inserts "kept"; then
	// the same again (a replay).
	for pass := range 2 {
		s := &streamer{f: f, acked: 10, rels: map[uint32]*relState{1: {name: "public.t", targets: []indexTarget{{tm: tm, spec: f.cfg.Indices[0], phys: phys}}}},
			record: func(context.Context, []deadLetter) error { return nil }}
		if err := s.handle(ctx, msgBegin(100)); err != nil {
			t.Fatal(err)
		}
		if err := s.add(ctx, put("gone", 100, "gone")); err != nil {
			t.Fatal(err)
		}
		if err := s.handle(ctx, msgTruncate(1)); err != nil {
			t.Fatal(err)
		}
		if err := s.add(ctx, put("kept", 100, "kept")); err != nil {
			t.Fatal(err)
		}
		if err := s.handle(ctx, msgCommit(100, 101)); err != nil {
			t.Fatal(err)
		}
		if err := s.flush(ctx); err != nil {
			t.Fatal(err)
		}
		if s.acked != 101 {
			t.Fatalf("pass %d: acknowledged %s, want %s", pass, s.acked, pglogrepl.LSN(101))
		}
		got := map[string]string{}
		if err := be.Scan(ctx, phys, func(id string, src []byte) error { got[id] = string(src); return nil }); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"kept": string(doc("kept")), "later": string(doc("later"))}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("pass %d: index holds %v, want %v", pass, got, want)
		}
	}
	// The deleted documents keep the TRUNCATE's version: an older write
	// replayed does not bring one back.
	if rej, err := be.Bulk(ctx, []Op{put("old0", 99, "stale")}); err != nil || len(rej) > 0 {
		t.Fatal(rej, err)
	}
	if src, err := be.Source(phys, "old0"); err != nil || src != nil {
		t.Fatalf("a write older than the TRUNCATE came back: %s %v", src, err)
	}
}
