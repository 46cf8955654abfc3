package postgres

import (
	"fmt"
	"testing"

	"github.com/polyregion/polyregion/replicator"
)

// benchBulk adds n writes, cycling over tables (none stands alone), as one
// batch: tables=1 is a backlog's one long group, tables=4 a hot-row batch
// whose writes alternate and form a group each.
func benchBulk(b *testing.B, n, tables int) {
	shapes := make([]*replicator.Shape, tables)
	for i := range shapes {
		shapes[i] = &replicator.Shape{Table: fmt.Sprintf("public.t%d", i), Columns: []string{"id", "v"}, Types: []string{"bigint", "text"}, Key: []int{0}}
	}
	ops := make([]op, n)
	for i := range ops {
		ops[i] = op{kind: opInsert, sh: shapes[i%tables], key: fmt.Sprintf(`["%d"]`, i), row: []replicator.Value{{Text: fmt.Sprint(i)}, {Text: "x"}}}
	}
	alone := func(string) commuting { return commuting{} }
	b.ReportAllocs()
	for b.Loop() {
		bl := bulk{hint: n}
		for _, o := range ops {
			bl.add(o, alone)
		}
	}
}

func BenchmarkBulkBacklog(b *testing.B)     { benchBulk(b, 20000, 1) }
func BenchmarkBulkAlternating(b *testing.B) { benchBulk(b, 600, 4) }
