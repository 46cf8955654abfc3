package postgres

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAKeyIsOutOfDiskOrderByItsStatistics(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	for _, c := range []struct {
		keys int
		typ  string
		corr *float64
		want bool
	}{
		{1, "uuid", f(0.003), true}, // random keys
		{1, "text", f(-0.4), true},  // partly ordered
		{1, "uuid", nil, false},     // never analyzed: chunk by chunk, as an ordered key needs
		{1, "bigint", f(1), false},  // a sequence's keys, inserted in order
		{1, "bigint", f(-0.95), false},
		{1, "bigint", f(0.9), false},
		{1, "integer[]", f(0), false},            // width_bucket would take the array apart
		{1, "character varying(20)", f(0), true}, // a type modifier is not an array
		{2, "text", f(0), false},                 // width_bucket routes one value
	} {
		if got := keyOutOfDiskOrder(c.keys, c.typ, c.corr); got != c.want {
			t.Errorf("keyOutOfDiskOrder(%d, %q, %v) = %v, want %v", c.keys, c.typ, c.corr, got, c.want)
		}
	}
}

func TestChunksPerPassStayWithinTheSpool(t *testing.T) {
	for _, c := range []struct {
		budget, chunk int64
		want          int
	}{
		{1 << 30, 20 << 20, 51},
		{1 << 30, 2 << 30, 1}, // a chunk larger than the budget still goes, alone
		{1, 20 << 20, 1},
		{1 << 30, 0, 1}, // an empty table's estimate
		{1 << 62, 1, maxChunksPerPass},
	} {
		if got := chunksPerPass(c.budget, c.chunk); got != c.want {
			t.Errorf("chunksPerPass(%d, %d) = %d, want %d", c.budget, c.chunk, got, c.want)
		}
	}
}

func TestChunkRouterSendsEachRowToItsChunk(t *testing.T) {
	var bufs [3]bytes.Buffer
	r := &chunkRouter{rows: make([]int64, 3)}
	for i := range bufs {
		r.out = append(r.out, bufio.NewWriter(&bufs[i]))
	}
	in := "0\ta\t1\n2\tc\\tx\t3\n0\tb\t\\N\n1\tlong " + strings.Repeat("v", 100) + "\n"
	// The COPY's data arrives in pieces that end anywhere.
	for _, piece := range []string{in[:3], in[3:9], in[9:10], in[10:40], in[40:]} {
		if n, err := r.Write([]byte(piece)); err != nil || n != len(piece) {
			t.Fatalf("Write(%q) = %d, %v", piece, n, err)
		}
	}
	if err := r.finish(); err != nil {
		t.Fatal(err)
	}
	want := []string{"a\t1\nb\t\\N\n", "long " + strings.Repeat("v", 100) + "\n", "c\\tx\t3\n"}
	for i := range want {
		if bufs[i].String() != want[i] {
			t.Errorf("chunk %d: %q, want %q", i, bufs[i].String(), want[i])
		}
	}
	if r.rows[0] != 2 || r.rows[1] != 1 || r.rows[2] != 1 {
		t.Errorf("rows per chunk %v, want [2 1 1]", r.rows)
	}
	for _, bad := range []string{"3\tx\n", "x\tx\n", "no chunk\n"} {
		r := &chunkRouter{out: r.out, rows: make([]int64, 3)}
		if _, err := r.Write([]byte(bad)); err == nil {
			t.Errorf("Write(%q) routed a row it cannot place", bad)
		}
	}
	cut := &chunkRouter{out: r.out, rows: make([]int64, 3)}
	if _, err := cut.Write([]byte("1\tcut sh")); err != nil {
		t.Fatal(err)
	}
	if err := cut.finish(); err == nil {
		t.Error("finish kept quiet about a row without its end")
	}
}

func TestAPassKeepsTheStreamAliveInItsPart(t *testing.T) {
	defer func(d time.Duration) { spoolKeepalive = d }(spoolKeepalive)
	spoolKeepalive = 5 * time.Millisecond
	var buf bytes.Buffer
	if err := writeSnapshotJSON(&buf, frameTable, snapshotPart{Name: "public.t"}); err != nil {
		t.Fatal(err)
	}
	opened := buf.Len()
	w := &signalingWriter{w: &buf, wrote: make(chan struct{}, 100)}
	stop := keepAlive(w)
	for range 4 { // two frames: a header and an empty payload each
		select {
		case <-w.wrote:
		case <-time.After(10 * time.Second):
			t.Fatal("no empty frame within 10 s")
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	alive := buf.Len()
	if _, err := continueFramed(&buf, snapshotPart{Name: "public.t"}, "public.t", func(w io.Writer) (int64, error) {
		_, err := io.WriteString(w, "1\ta\n")
		return 1, err
	}); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(&buf)
	if typ, _, err := readSnapshotFrame(br); err != nil || typ != frameTable {
		t.Fatalf("first frame %q, %v", typ, err)
	}
	if alive < opened+2*5 || (alive-opened)%5 != 0 {
		t.Fatalf("%d bytes before the data: no empty frames kept the stream alive", alive)
	}
	// A loading region of any release reads the empty frames as no data.
	pr := &partReader{br: br, progress: func() {}}
	got, err := io.ReadAll(pr)
	if err != nil || string(got) != "1\ta\n" || pr.end == nil || pr.end.Rows != 1 {
		t.Fatalf("the part read %q, %v, end %+v", got, err, pr.end)
	}
}

func TestSpoolsOfProcessesThatAreGoneAreRemoved(t *testing.T) {
	dir := t.TempDir()
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Skip("no process to outlive:", err)
	}
	me := os.Getpid()
	dead := filepath.Join(dir, fmt.Sprintf("%s%d-%d-123", spoolPrefix, gone.Process.Pid, 1))
	live := filepath.Join(dir, fmt.Sprintf("%s%d-%d-456", spoolPrefix, me, processStart(me)))
	// The same id started again (a container's first process restarted).
	again := filepath.Join(dir, fmt.Sprintf("%s%d-%d-789", spoolPrefix, me, processStart(me)-1))
	other := filepath.Join(dir, "polyregion-other-1-2-3")
	for _, d := range []string{dead, live, again, other} {
		if err := os.MkdirAll(filepath.Join(d, "x"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	removeStaleSpools(dir)
	for d, want := range map[string]bool{dead: false, live: true, again: false, other: true} {
		if _, err := os.Stat(d); (err == nil) != want {
			t.Errorf("%s kept: %v, want %v", filepath.Base(d), err == nil, want)
		}
	}
	if processStart(me) <= 0 {
		t.Errorf("this process's start: %d", processStart(me))
	}
}

// signalingWriter tells of each write to w, which it makes while nothing
// else uses w.
type signalingWriter struct {
	w     io.Writer
	wrote chan struct{}
}

func (s *signalingWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	select {
	case s.wrote <- struct{}{}:
	default: // the test has seen enough
	}
	return n, err
}

func TestAChunksSizeIsEstimatedFromASampleOrTheSizeOnDisk(t *testing.T) {
	for _, c := range []struct {
		sampled, text, size, rows int64
		want                      int64
	}{
		{2000, 150_000, 1 << 30, 10_000_000, 75 * snapshotChunkRows}, // the rows' text
		{99, 7_425, 1 << 30, 10_000_000, 107 * snapshotChunkRows},    // too few sampled: the size on disk
		{0, 0, 0, 0, 0},
	} {
		if got := estimateChunkBytes(c.sampled, c.text, c.size, c.rows); got != c.want {
			t.Errorf("estimateChunkBytes(%d, %d, %d, %d) = %d, want %d", c.sampled, c.text, c.size, c.rows, got, c.want)
		}
	}
}
