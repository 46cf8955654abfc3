package indexer

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func BenchmarkEmbeddedBulk(b *testing.B) {
	ctx := context.Background()
	e, err := OpenEmbedded(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	m := map[string]any{"properties": map[string]any{"title": map[string]any{"type": "text"}, "n": map[string]any{"type": "long"}}}
	if err := e.CreateIndex(ctx, "d-1", m); err != nil {
		b.Fatal(err)
	}
	id := 0
	start := time.Now()
	for i := 0; i < b.N; i++ {
		ops := make([]Op, 2000)
		for j := range ops {
			id++
			ops[j] = Op{Index: "d-1", ID: fmt.Sprint(id), Version: 1, Doc: []byte(fmt.Sprintf(`{"title":"title %d word%d","n":%d}`, id, id%100, id%1000))}
		}
		if _, err := e.Bulk(ctx, ops); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(id)/time.Since(start).Seconds(), "docs/s")
}
