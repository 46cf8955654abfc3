package postgres

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/polyregion/polyregion/replicator"
)

func TestJoinPositionsResumeEveryStreamWhereTheSourceWas(t *testing.T) {
	cases := []struct {
		name    string
		h       SnapshotHeader
		joining string
		own     int64
		floor   map[string]int64
		want    []SnapshotPosition
		err     string
	}{
		{name: "source alone", h: SnapshotHeader{Source: "us", SourceSeq: 7}, joining: "eu",
			want: []SnapshotPosition{{Region: "us", Seq: 7}}},
		{name: "source and what it applied of others", joining: "ap",
			h:    SnapshotHeader{Source: "eu", SourceSeq: 3, Applied: []SnapshotPosition{{Region: "us", Seq: 40, LSN: "0/16B3748", HLC: 9}}},
			want: []SnapshotPosition{{Region: "eu", Seq: 3}, {Region: "us", Seq: 40, LSN: "0/16B3748", HLC: 9}}},
		{name: "an empty entry for the joining region is dropped", joining: "ap",
			h:    SnapshotHeader{Source: "eu", Applied: []SnapshotPosition{{Region: "ap", Seq: 0}, {Region: "us", Seq: 2}}},
			want: []SnapshotPosition{{Region: "eu", Seq: 0}, {Region: "us", Seq: 2}}},
		{name: "the source applied writes of a region that never wrote", joining: "ap",
			h: SnapshotHeader{Source: "eu", Applied: []SnapshotPosition{{Region: "ap", Seq: 5}}}, err: "is another region running as ap"},
		{name: "re-seeded: the source has all the region shipped", joining: "ap", own: 5,
			h:    SnapshotHeader{Source: "eu", SourceSeq: 9, Applied: []SnapshotPosition{{Region: "ap", Seq: 5}, {Region: "us", Seq: 2}}},
			want: []SnapshotPosition{{Region: "eu", Seq: 9}, {Region: "us", Seq: 2}}},
		{name: "re-seeded: the source has more than the region shipped", joining: "ap", own: 5,
			h: SnapshotHeader{Source: "eu", Applied: []SnapshotPosition{{Region: "ap", Seq: 6}}}, err: "older backup"},
		{name: "re-seeded: the source lacks some the region shipped", joining: "ap", own: 5,
			h: SnapshotHeader{Source: "eu", Applied: []SnapshotPosition{{Region: "ap", Seq: 4}}}, err: "join from a region that has them all"},
		{name: "the joining region twice", joining: "ap", own: 5,
			h: SnapshotHeader{Source: "eu", Applied: []SnapshotPosition{{Region: "ap", Seq: 5}, {Region: "ap", Seq: 5}}}, err: "lists region ap twice"},
		{name: "from itself", joining: "eu", h: SnapshotHeader{Source: "eu"}, err: "cannot join from itself"},
		{name: "no source", joining: "eu", h: SnapshotHeader{}, err: "cannot join from itself or from nowhere"},
		{name: "a region twice", joining: "ap",
			h: SnapshotHeader{Source: "eu", Applied: []SnapshotPosition{{Region: "us", Seq: 1}, {Region: "us", Seq: 2}}}, err: "lists region us twice"},
		{name: "negative", joining: "ap", h: SnapshotHeader{Source: "eu", SourceSeq: -1}, err: "negative position"},
	}
	// Behind where the re-seeded region was: tried again later.
	behind := SnapshotHeader{Source: "eu", SourceSeq: 9, Applied: []SnapshotPosition{{Region: "ap", Seq: 5}, {Region: "us", Seq: 40}}}
	for _, floor := range []map[string]int64{{"us": 41}, {"eu": 10}, {"ap": 1, "us": 41}} {
		if _, err := JoinPositions(behind, "ap", 5, floor); !errors.Is(err, ErrSourceBehind) || errors.Is(err, ErrCannotJoin) {
			t.Errorf("floor %v: %v, want ErrSourceBehind, to be tried again", floor, err)
		}
	}
	if got, err := JoinPositions(behind, "ap", 5, map[string]int64{"us": 40, "eu": 9}); err != nil || len(got) != 2 {
		t.Errorf("at the floor: %v %v", got, err)
	}
	for _, tc := range cases {
		got, err := JoinPositions(tc.h, tc.joining, tc.own, tc.floor)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrCannotJoin) {
				t.Errorf("%s: err %v, want one saying %q that cannot be retried", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if len(got) != len(tc.want) {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
			}
		}
	}
}

func TestColumnDifferencesNameEachMismatch(t *testing.T) {
	src := []SnapshotColumn{{"id", "bigint"}, {"name", "text"}, {"n", "integer"}}
	if d := columnDifferences(src, []SnapshotColumn{{"n", "integer"}, {"id", "bigint"}, {"name", "text"}}); len(d) != 0 {
		t.Fatalf("same columns in another order: %v", d)
	}
	d := columnDifferences(src, []SnapshotColumn{{"id", "integer"}, {"n", "integer"}, {"extra", "text"}})
	want := []string{"column id is bigint there and integer here", "column name (text) is missing here", "column extra (text) exists only here"}
	if strings.Join(d, "; ") != strings.Join(want, "; ") {
		t.Fatalf("differences %q, want %q", d, want)
	}
}

// A part's data, cut into frames, reads back whole and stops at the part's
// end; the frames after it are left for the next part.
func TestSnapshotPartsReadBackWhole(t *testing.T) {
	var buf bytes.Buffer
	data := bytes.Repeat([]byte("0123456789abcdef"), 200_000) // 3.2 MB: several frames
	if err := writeSnapshotJSON(&buf, frameTable, snapshotPart{Name: "public.t"}); err != nil {
		t.Fatal(err)
	}
	fw := &frameWriter{w: &buf}
	// A row at a time, as a COPY writes.
	for rest := data; len(rest) > 0; {
		row := rest[:min(len(rest), 45)]
		if n, err := fw.Write(row); err != nil || n != len(row) {
			t.Fatalf("write: %d %v", n, err)
		}
		rest = rest[len(row):]
	}
	if err := fw.Flush(); err != nil {
		t.Fatal(err)
	}
	frames := 0
	for r := bufio.NewReader(bytes.NewReader(buf.Bytes())); ; frames++ {
		if typ, _, err := readSnapshotFrame(r); err != nil || typ != frameData && frames > 0 {
			break
		}
	}
	if frames-1 > len(data)/dataFrameSize+1 {
		t.Fatalf("%d bytes written a row at a time went out in %d data frames, not gathered", len(data), frames-1)
	}
	if err := writeSnapshotJSON(&buf, frameEnd, snapshotPart{Name: "public.t", Rows: 42}); err != nil {
		t.Fatal(err)
	}
	if err := writeSnapshotJSON(&buf, frameDone, SnapshotSummary{}); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(&buf)
	if typ, _, err := readSnapshotFrame(br); err != nil || typ != frameTable {
		t.Fatalf("first frame %q %v, want a table's", typ, err)
	}
	pr := &partReader{br: br, progress: func() {}}
	got, err := io.ReadAll(pr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) || pr.end == nil || pr.end.Rows != 42 {
		t.Fatalf("read %d bytes (want %d), end %+v", len(got), len(data), pr.end)
	}
	if typ, _, err := readSnapshotFrame(br); err != nil || typ != frameDone {
		t.Fatalf("next frame %q %v, want the end", typ, err)
	}
}

// Frames that have arrived are handed to the COPY together, not one per
// Read: a source that sends a frame per row (as earlier versions did) must
// not make the load send the server a message per row.
func TestSnapshotPartReadsWhatHasArrivedAtOnce(t *testing.T) {
	var buf bytes.Buffer
	row := []byte("42\tsome payload of a row\n")
	for i := 0; i < 1000; i++ {
		if err := replicator.WriteFrame(&buf, frameData, row); err != nil {
			t.Fatal(err)
		}
	}
	_ = writeSnapshotJSON(&buf, frameEnd, snapshotPart{Name: "public.t", Rows: 1000})
	pr := &partReader{br: bufio.NewReaderSize(&buf, 1<<20), progress: func() {}}
	b := make([]byte, 64<<10)
	n, err := pr.Read(b)
	if err != nil || n != 1000*len(row) {
		t.Fatalf("one Read took %d bytes (%v), want all %d that had arrived", n, err, 1000*len(row))
	}
	if n, err := pr.Read(b); n != 0 || err != io.EOF || pr.end == nil || pr.end.Rows != 1000 {
		t.Fatalf("after the data: %d %v, end %+v", n, err, pr.end)
	}
}

// A stream cut anywhere is an error, never a short part taken for whole.
func TestSnapshotCutShortIsAnError(t *testing.T) {
	var buf bytes.Buffer
	_ = writeSnapshotJSON(&buf, frameTable, snapshotPart{Name: "public.t"})
	fw := &frameWriter{w: &buf}
	_, _ = fw.Write(bytes.Repeat([]byte{7}, 5000))
	_ = fw.Flush()
	_ = writeSnapshotJSON(&buf, frameEnd, snapshotPart{Name: "public.t", Rows: 1})
	whole := buf.Bytes()
	for cut := 1; cut < len(whole); cut += 97 {
		br := bufio.NewReader(bytes.NewReader(whole[:cut]))
		if _, _, err := readSnapshotFrame(br); err != nil {
			continue // cut inside the opening frame: an error already
		}
		pr := &partReader{br: br, progress: func() {}}
		_, err := io.ReadAll(pr)
		if err == nil && pr.end != nil {
			t.Fatalf("cut at %d of %d read as a whole part", cut, len(whole))
		}
		if err == nil {
			t.Fatalf("cut at %d of %d: no error", cut, len(whole))
		}
	}
	if _, _, err := readSnapshotFrame(bufio.NewReader(bytes.NewReader(nil))); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("empty stream: %v, want unexpected EOF", err)
	}
}

func TestPermanentLoadErrorsAreTheDatasOwn(t *testing.T) {
	for code, want := range map[string]bool{
		"23505": true, "23503": true, "22P02": true, "42703": true, "42501": true, "0A000": true,
		"40001": false, "40P01": false, "55P03": false, "57P01": false, "08006": false, "53100": false, "XX000": false, "": false,
	} {
		if got := permanentLoadError(code); got != want {
			t.Errorf("SQLSTATE %q: permanent %v, want %v", code, got, want)
		}
	}
}
