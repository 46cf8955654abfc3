package integration

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/polyregion/polyregion/indexer"
)

// TestTwoIndicesOfOneTableBothFollowIt: a table indexed twice (a public
// index that leaves a column out and a full one) keeps both indices equal
// to it. Rows there before the feed started are backfilled into both;
// inserts, updates, deletes and a TRUNCATE written once the feed streams
// reach both too, not only the index named last.
func TestTwoIndicesOfOneTableBothFollowIt(t *testing.T) {
	dir := testDir(t)
	schema := []string{`CREATE TABLE public.notes (id bigint PRIMARY KEY, title text NOT NULL, secret text)`}
	tables := []TableSpec{{Name: "public.notes"}}
	specs := []indexer.IndexSpec{
		{Table: "public.notes", Index: "notes_public", Exclude: []string{"secret"}},
		{Table: "public.notes", Index: "notes_all"},
	}
	h := startClusters(t, Spec{Regions: []string{"us"}, SchemaSQL: schema, Tables: tables,
		Configure: func(region string, c *RegionConfig) {
			c.Search = searchSection("embedded", "", filepath.Join(dir, region+"-index"), specs)
		}})
	ctx := ctxFor(t, 3*time.Minute)
	us := h.Regions[0]
	mustExec(t, ctx, us, `INSERT INTO public.notes SELECT g, 'before ' || g, 'hidden' FROM generate_series(1, 20) g`)
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	api := searchAPI{"http://" + us.HTTPListen}
	waitIndexed(ctx, t, us, api, specs, time.Minute)

	// One transaction (statements sent together run as one), so that no
	// state between the writes can pass for the end.
	conn, err := us.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `INSERT INTO public.notes SELECT g, 'streamed ' || g, 'hidden' FROM generate_series(21, 40) g;
		UPDATE public.notes SET title = 'changed' WHERE id IN (3, 25);
		DELETE FROM public.notes WHERE id IN (4, 26)`); err != nil {
		t.Fatal(err)
	}
	for _, d := range waitIndexed(ctx, t, us, api, specs, time.Minute) {
		if d.Rows != 38 {
			t.Fatalf("index %s: compared %d rows, want 38: %v", d.Index, d.Rows, d)
		}
	}
	if _, err := conn.Exec(ctx, `TRUNCATE public.notes; INSERT INTO public.notes VALUES (100, 'after the truncate', 'hidden')`); err != nil {
		t.Fatal(err)
	}
	for _, d := range waitIndexed(ctx, t, us, api, specs, time.Minute) {
		if d.Rows != 1 {
			t.Fatalf("index %s: compared %d rows, want 1: %v", d.Index, d.Rows, d)
		}
	}
}
