package postgres

import (
	"bytes"
	"strings"
	"testing"

	"github.com/polyregion/polyregion/replicator"
)

// A row goes into COPY's text format with NULL as \N and the four
// characters COPY reads as escapes or separators escaped.
func TestCopyRowsEscapeWhatCopyReads(t *testing.T) {
	var buf bytes.Buffer
	appendCopyRow(&buf, []replicator.Value{{Text: "1"}, {Null: true}, {Text: ""}, {Text: "a\tb\nc\rd\\e"}, {Text: `\N`}, {Text: "ünï ✓"}})
	appendCopyRow(&buf, []replicator.Value{{Text: "2"}, {Text: `\x00ff`}})
	want := "1\t\\N\t\ta\\tb\\nc\\rd\\\\e\t\\\\N\tünï ✓\n2\t\\\\x00ff\n"
	if got := buf.String(); got != want {
		t.Fatalf("copy text\n%q, want\n%q", got, want)
	}
}

// Only a long run of inserts, each with its whole row, is copied.
func TestOnlyLongRunsOfWholeInsertsAreCopied(t *testing.T) {
	sh := &replicator.Shape{Table: "public.t", Columns: []string{"id", "v"}, Types: []string{"bigint", "text"}, Key: []int{0}}
	run := func(kind opKind, n int, unchanged bool) *group {
		g := &group{kind: kind, sh: sh}
		for i := range n {
			o := op{kind: kind, sh: sh, row: []replicator.Value{{Text: strings.Repeat("1", i%5+1)}, {Text: "x", Unchanged: unchanged && i == n-1}}}
			g.ops = append(g.ops, o)
		}
		return g
	}
	for _, c := range []struct {
		g    *group
		want bool
	}{
		{run(opInsert, copyInsertMin, false), true},
		{run(opInsert, copyInsertMin-1, false), false},
		{run(opUpdate, copyInsertMin, false), false},
		{run(opInsert, copyInsertMin, true), false},
	} {
		if got := c.g.copyable(); got != c.want {
			t.Errorf("%d ops of kind %d: copyable %v, want %v", len(c.g.ops), c.g.kind, got, c.want)
		}
	}
}
