package postgres

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

func TestAKeyIsOutOfDiskOrderByItsStatistics(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	for _, c := range []struct {
		keys int
		corr *float64
		want bool
	}{
		{1, f(0.003), true},  // random keys: UUIDs
		{1, f(-0.4), true},   // partly ordered
		{1, nil, true},       // never analyzed: one pass is linear anyway
		{1, f(1), false},     // a sequence's keys, inserted in order
		{1, f(-0.95), false}, // in reverse order: a range is still a run of pages
		{1, f(0.9), false},
		{2, f(0), false}, // width_bucket routes one value
		{2, nil, false},
	} {
		if got := keyOutOfDiskOrder(c.keys, c.corr); got != c.want {
			t.Errorf("keyOutOfDiskOrder(%d, %v) = %v, want %v", c.keys, c.corr, got, c.want)
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
		{1 << 62, 1, 1 << 16},
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

func TestAChunksSizeIsEstimatedWithOrWithoutStatistics(t *testing.T) {
	for _, c := range []struct {
		size   int64
		tuples float64
		chunks int
		want   int64
	}{
		{1 << 30, 10_000_000, 50, 21474836}, // 107 bytes a row
		{1 << 30, -1, 50, 21474836},         // never analyzed: 50 chunks of rows
		{1 << 30, 0, 5, 214748364},          // analyzed empty, rows since
		{0, -1, 0, 0},
	} {
		if got := estimateChunkBytes(c.size, c.tuples, c.chunks); got != c.want {
			t.Errorf("estimateChunkBytes(%d, %v, %d) = %d, want %d", c.size, c.tuples, c.chunks, got, c.want)
		}
	}
}
