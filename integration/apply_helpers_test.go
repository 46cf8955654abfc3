package integration

import (
	"context"
	"testing"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// applierBench is one region, ap, of a cluster us, eu, ap whose tables are
// prepared for replication, with no replicator running: a test drives
// appliers of the other regions' transactions itself.
type applierBench struct {
	ctx    context.Context
	ap     *Region
	url    string
	shapes map[string]replicator.Shape
	// cluster holds tables as given (their policies).
	cluster regions.Cluster
}

// startApplierBench starts ap with schema and prepares tables.
func startApplierBench(t *testing.T, schema []string, tables ...regions.Table) *applierBench {
	t.Helper()
	h := startClusters(t, Spec{Regions: []string{"ap"}, SchemaSQL: schema})
	b := &applierBench{ctx: ctxFor(t, 2*time.Minute), ap: h.Regions[0], shapes: map[string]replicator.Shape{},
		cluster: regions.Cluster{Regions: []conflict.RegionID{"us", "eu", "ap"}, Tables: tables}}
	b.url = b.ap.Cluster.URL("polyregion", AppDB)
	conn, err := postgres.Connect(b.ctx, b.url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var names []string
	for _, tb := range tables {
		names = append(names, tb.Name)
	}
	if _, err := postgres.Prepare(b.ctx, conn, "ap", names, nil, []string{"us", "eu"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if b.shapes[n], err = postgres.LoadShape(b.ctx, conn, n); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// applier applies src's transactions here (closed when the test ends).
func (b *applierBench) applier(t *testing.T, src conflict.RegionID, cfg postgres.ApplierConfig) *postgres.Applier {
	t.Helper()
	cfg.Region, cfg.Source, cfg.ConnString, cfg.Cluster = "ap", src, b.url, b.cluster
	if cfg.BarrierTimeout == 0 {
		cfg.BarrierTimeout = 5 * time.Second
	}
	a, err := postgres.NewApplier(b.ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// reader runs ap's local reader until the test ends (appliers given it as
// their Versioner wait for it as in a running replicator).
func (b *applierBench) reader(t *testing.T) *postgres.Reader {
	t.Helper()
	reader := postgres.NewReader(postgres.ReaderConfig{Region: "ap", ConnString: b.url, Tables: b.cluster.Tables})
	ctx, stop := context.WithCancel(b.ctx)
	done := make(chan error, 1)
	go func() { done <- reader.Run(ctx) }()
	t.Cleanup(func() { stop(); <-done })
	return reader
}
