package integration

import (
	"testing"
	"time"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestALoadEndsWithTheChunkThatHoldsTheLastRow: a table of exactly one
// chunk's rows (200,000) loads in one part, which runs to the table's end.
// A chunk that ended at the table's last row used to be followed by an
// empty one (one commit more, and one more part to go on after).
func TestALoadEndsWithTheChunkThatHoldsTheLastRow(t *testing.T) {
	const rows = 200_000
	schema := []string{`CREATE TABLE public.ids (id bigint PRIMARY KEY)`}
	h := startClusters(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: []TableSpec{{Name: "public.ids"}}})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, us, `INSERT INTO public.ids SELECT g FROM pg_catalog.generate_series(1, $1::int) g`, rows)
	names := []string{"public.ids"}
	conn, usDSN, euDSN := startJoinInProcess(t, ctx, us, eu, names)
	if err := loadInProcess(ctx, conn, usDSN, euDSN, names, &postgres.SnapshotResume{}, 0); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, ctx, eu, `SELECT count(*) FROM public.ids`); n != rows {
		t.Fatalf("eu loaded %d rows, want %d", n, rows)
	}
	units := queryInt(t, ctx, eu, `SELECT count(*) FROM polyregion.join_units WHERE 'public.ids' = ANY (tables)`)
	open := queryInt(t, ctx, eu, `SELECT count(*) FROM polyregion.join_units WHERE 'public.ids' = ANY (tables) AND after IS NULL AND rows = $1`, rows)
	if units != 1 || open != 1 {
		t.Fatalf("eu's load of %d rows went in %d parts (%d of them all the rows, to the table's end), want one", rows, units, open)
	}
}
