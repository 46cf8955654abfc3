package integration

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestACutLoadGoesOnWithoutATableNoLongerReplicated: a region's load is
// cut with one table done and another loaded in part, and the second is
// then no longer replicated (the configuration changed between two
// attempts). The source refuses a request that still names it, before it
// pauses any writer, as a refusal asking again cannot change; the region
// forgets the part it loaded of it (its units and versions; its rows stay)
// and its next load, of the tables still replicated, ends.
func TestACutLoadGoesOnWithoutATableNoLongerReplicated(t *testing.T) {
	const items = 250_000
	schema := []string{
		`CREATE TABLE public.a_kept (id bigint PRIMARY KEY, v text NOT NULL)`,
		`CREATE TABLE public.b_items (id bigint PRIMARY KEY, v text NOT NULL)`,
		`CREATE TABLE public.c_logs (id bigint PRIMARY KEY, v text NOT NULL)`,
	}
	names := []string{"public.a_kept", "public.b_items", "public.c_logs"}
	var tables []TableSpec
	for _, n := range names {
		tables = append(tables, TableSpec{Name: n})
	}
	h := startClusters(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, us, `INSERT INTO public.a_kept SELECT g, 'kept' FROM pg_catalog.generate_series(1, 1000) g`)
	mustExec(t, ctx, us, `INSERT INTO public.b_items SELECT g, md5(g::text) FROM pg_catalog.generate_series(1, $1::int) g`, items)
	mustExec(t, ctx, us, `INSERT INTO public.c_logs SELECT g, 'log' FROM pg_catalog.generate_series(1, 500) g`)
	conn, usDSN, euDSN := startJoinInProcess(t, ctx, us, eu, names)
	if err := loadInProcess(ctx, conn, usDSN, euDSN, names, &postgres.SnapshotResume{}, 2); err == nil {
		t.Fatal("a load cut after two units succeeded")
	}
	source, resume, _, err := postgres.ReadJoinResume(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if _, inPart := resume.After["public.b_items"]; source != "us" || !reflect.DeepEqual(resume.Done, []string{"public.a_kept"}) || !inPart {
		t.Fatalf("the cut load holds %+v from %q, want public.a_kept done and public.b_items in part from us", resume, source)
	}
	kept := queryInt(t, ctx, eu, `SELECT count(*) FROM public.b_items`)

	// public.b_items is no longer replicated.
	names = []string{"public.a_kept", "public.c_logs"}
	stale := postgres.SnapshotConfig{Region: "us", ConnString: usDSN, Tables: names, Resume: &resume}
	// An application transaction holds a write lock on a table the
	// snapshot would pause: a request that got as far as the pause would
	// wait for it until its deadline.
	app, err := us.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(context.Background())
	appTx, err := app.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := appTx.Exec(ctx, `UPDATE public.a_kept SET v = v WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	var sent bytes.Buffer
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	_, err = postgres.WriteSnapshot(rctx, stale, &sent)
	cancel()
	if !errors.Is(err, postgres.ErrCannotJoin) || sent.Len() != 0 {
		t.Fatalf("a request naming a table no longer replicated: %v, %d bytes sent", err, sent.Len())
	}
	t.Logf("refused: %v", err)
	if err := appTx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	forgotten, err := postgres.ForgetJoinParts(ctx, conn, names)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(forgotten, []string{"public.b_items"}) {
		t.Fatalf("forgot %v, want public.b_items", forgotten)
	}
	if _, resume, _, err = postgres.ReadJoinResume(ctx, conn); err != nil || !reflect.DeepEqual(resume, postgres.SnapshotResume{Done: []string{"public.a_kept"}}) {
		t.Fatalf("after forgetting: %+v, %v", resume, err)
	}
	if err := loadInProcess(ctx, conn, usDSN, euDSN, names, &resume, 0); err != nil {
		t.Fatal(err)
	}
	for q, want := range map[string]int64{
		`SELECT count(*) FROM public.a_kept`:                                               1000,
		`SELECT count(*) FROM public.c_logs`:                                               500,
		`SELECT count(*) FROM public.b_items`:                                              kept,
		`SELECT count(*) FROM polyregion.row_version WHERE tbl = 'public.b_items'`:         0,
		`SELECT count(*) FROM polyregion.join_units WHERE 'public.b_items' = ANY (tables)`: 0,
		`SELECT rows FROM polyregion.joined`:                                               1500,
		`SELECT count(*) FROM polyregion.applied WHERE source = 'us'`:                      1,
	} {
		if got := queryInt(t, ctx, eu, q); got != want {
			t.Errorf("eu: %s = %d, want %d", q, got, want)
		}
	}
	t.Logf("the cut load had %d rows of public.b_items; they stay, not replicated, and the load ended without them", kept)
}
