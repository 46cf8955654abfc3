package integration

import (
	"context"
	"testing"
	"time"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestWhichTablesWritesCommute: an apply batch runs a table's writes out of
// the source's order only as far as the table allows. Writes of a table
// with no foreign key to or from another table, no trigger of the
// application's and no rule commute with other such tables' writes; its
// writes of different rows commute with one another only when, on top of
// that, no other unique index (expression or partial ones included), no
// exclusion constraint, no foreign key to itself and no row-level
// security ties two rows. The
// replicator's own triggers on a prepared table count for neither.
func TestWhichTablesWritesCommute(t *testing.T) {
	tables := []string{"public.plain", "public.uniq", "public.uniq_index", "public.tree", "public.booking", "public.parent", "public.child", "public.audited", "public.guarded"}
	h := startClusters(t, Spec{Regions: []string{"ap"}, SchemaSQL: []string{
		`CREATE TABLE public.plain (id integer PRIMARY KEY, v text, n bigint)`,
		`CREATE INDEX ON public.plain (v)`,
		`CREATE TABLE public.uniq (id integer PRIMARY KEY, email text UNIQUE)`,
		`CREATE TABLE public.uniq_index (id integer PRIMARY KEY, email text)`,
		`CREATE UNIQUE INDEX ON public.uniq_index (pg_catalog.lower(email)) WHERE email IS NOT NULL`,
		`CREATE TABLE public.tree (id integer PRIMARY KEY, parent integer REFERENCES public.tree)`,
		`CREATE TABLE public.booking (id integer PRIMARY KEY, span tsrange, EXCLUDE USING gist (span WITH &&))`,
		`CREATE TABLE public.parent (id integer PRIMARY KEY)`,
		`CREATE TABLE public.child (id integer PRIMARY KEY, parent integer REFERENCES public.parent)`,
		`CREATE TABLE public.audited (id integer PRIMARY KEY, v text)`,
		`CREATE FUNCTION public.keep() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$`,
		`CREATE TRIGGER keep BEFORE UPDATE ON public.audited FOR EACH ROW EXECUTE FUNCTION public.keep()`,
		`CREATE TABLE public.guarded (id integer PRIMARY KEY, owner_name text)`,
		`ALTER TABLE public.guarded ENABLE ROW LEVEL SECURITY`,
	}})
	ctx := ctxFor(t, 2*time.Minute)
	conn, err := postgres.Connect(ctx, h.Regions[0].Cluster.URL("polyregion", AppDB))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := postgres.Prepare(ctx, conn, "ap", tables, nil, []string{"us"}); err != nil {
		t.Fatal(err)
	}
	want := map[string][2]bool{ // table -> {with other tables, among its rows}
		"public.plain":      {true, true},
		"public.uniq":       {true, false},
		"public.uniq_index": {true, false},
		"public.tree":       {true, false},
		"public.booking":    {true, false},
		"public.parent":     {false, false},
		"public.child":      {false, false},
		"public.audited":    {false, false},
		"public.guarded":    {true, false},
	}
	for _, tbl := range tables {
		withTables, amongRows, err := postgres.WritesCommute(ctx, conn, tbl)
		if err != nil {
			t.Fatal(err)
		}
		if got := [2]bool{withTables, amongRows}; got != want[tbl] {
			t.Errorf("%s: writes commute with other tables' %v, among its rows %v; want %v, %v", tbl, got[0], got[1], want[tbl][0], want[tbl][1])
		}
	}
}
