package integration

import (
	"testing"
	"time"
)

// A region whose replicator role defaults to bytea_output = escape must
// still name a bytea key as every other region does: keys are text in the
// row versions and on the link, and a key read "\001\002" in one region
// and "\x0102" in another is two keys, so each region would keep a
// version of its own for the same row and decide its updates against
// nothing.
func TestByteaKeysReadTheSameWhateverTheByteaOutput(t *testing.T) {
	schema := []string{`CREATE TABLE public.blob (id bytea PRIMARY KEY, n integer NOT NULL)`}
	tables := []TableSpec{{Name: "public.blob"}}
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	stopAll(t, h)
	if err := us.Cluster.Exec(ctx, AppDB, `ALTER ROLE polyregion IN DATABASE app SET bytea_output = 'escape'`); err != nil {
		t.Fatal(err)
	}
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, us, `INSERT INTO public.blob VALUES ('\x0102'::bytea, 1)`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	// Each region updates the row it received from the other's key.
	mustExec(t, ctx, eu, `UPDATE public.blob SET n = 2 WHERE id = '\x0102'::bytea`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, us, `UPDATE public.blob SET n = 3 WHERE id = '\x0102'::bytea`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		if got := queryString(t, ctx, r, `SELECT string_agg(key, ',' ORDER BY key) FROM polyregion.row_version WHERE tbl = 'public.blob'`); got != `["\\x0102"]` {
			t.Errorf("region %s: row versions recorded under keys %s, want one, [\"\\\\x0102\"]", r.Name, got)
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl = 'public.blob'`); n != 0 {
			t.Errorf("region %s: %d conflicts logged for updates that saw each other", r.Name, n)
		}
		if got := queryInt(t, ctx, r, `SELECT n FROM public.blob WHERE id = '\x0102'::bytea`); got != 3 {
			t.Errorf("region %s: n = %d, want 3 (the last update)", r.Name, got)
		}
	}
}
