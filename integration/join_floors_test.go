package integration

import (
	"context"
	"testing"
	"time"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestALoadingRegionStartsWithTheSourcesTombstoneFloors: a region that
// loads a snapshot takes the source's tombstone floors with its rows, as
// they were in the snapshot, and keeps none of its own from before. A
// joined region that started with no floors would hold every tombstone
// collection up until it had settled the deletes itself; one that kept a
// floor its rows do not match could take a first write for one that
// supersedes a tombstone it never settled.
func TestALoadingRegionStartsWithTheSourcesTombstoneFloors(t *testing.T) {
	schema := []string{`CREATE TABLE public.items (id bigint PRIMARY KEY, v text NOT NULL)`}
	h := startClusters(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: []TableSpec{{Name: "public.items"}}})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, us, `INSERT INTO public.items SELECT g, md5(g::text) FROM pg_catalog.generate_series(1, 1000) g`)
	names := []string{"public.items"}
	conn, usDSN, euDSN := startJoinInProcess(t, ctx, us, eu, names)
	// us settled its own deletes up to 40 and a third region's up to 7 (a
	// floor only rises: us's rounds may raise its own meanwhile, never
	// lower it); eu holds a floor from before its load.
	usConn, err := postgres.Connect(ctx, usDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer usConn.Close(context.Background())
	if _, err := usConn.Exec(ctx, `INSERT INTO polyregion.tombstone_floor (origin, seq) VALUES ('us', 40), ('ap', 7)
		ON CONFLICT (origin) DO UPDATE SET seq = GREATEST(polyregion.tombstone_floor.seq, excluded.seq)`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO polyregion.tombstone_floor (origin, seq) VALUES ('sa', 99)`); err != nil {
		t.Fatal(err)
	}
	if err := loadInProcess(ctx, conn, usDSN, euDSN, names, &postgres.SnapshotResume{}, 0); err != nil {
		t.Fatal(err)
	}
	floors, err := postgres.TombstoneFloors(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if floors["ap"] != 7 || floors["us"] < 40 || len(floors) != 2 {
		t.Fatalf("eu's floors after its load: %v, want us's (ap 7, us at least 40) and no other", floors)
	}
	if n := queryInt(t, ctx, eu, `SELECT count(*) FROM public.items`); n != 1000 {
		t.Fatalf("eu loaded %d rows, want 1000", n)
	}
	t.Logf("eu's floors after its load: %v", floors)
}
