package integration

import (
	"testing"
	"time"
)

// A region whose replicator role defaults to another time zone must render
// timestamptz values exactly as the change stream does: a custom resolver
// compares row images as text, and a local image rendered in local time
// against a remote one in UTC picks a different winner in each region.
func TestRowImagesReadTheSameWhateverTheTimeZone(t *testing.T) {
	schema := []string{
		`CREATE TABLE public.slot (id integer PRIMARY KEY, at timestamptz)`,
		// Deterministic only if both images render "at" the same way.
		`CREATE FUNCTION public.pick_later_text(tbl text, key text, l jsonb, r jsonb, lv jsonb, rv jsonb) RETURNS text
			LANGUAGE sql IMMUTABLE AS $$ SELECT CASE WHEN coalesce(l->>'at', '') >= coalesce(r->>'at', '') THEN 'local' ELSE 'remote' END $$`,
	}
	tables := []TableSpec{{Name: "public.slot", Policy: "custom_sql", Resolver: "public.pick_later_text"}}
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, us, `INSERT INTO public.slot VALUES (1, '2026-01-01 00:00:00+00')`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	stopAll(t, h)
	// us's replicator sessions now default to +05:30: 00:00 UTC would read
	// "2026-01-01 05:30:00+05:30", after eu's "2026-01-01 03:00:00+00".
	if err := us.Cluster.Exec(ctx, AppDB, `ALTER ROLE polyregion IN DATABASE app SET timezone = 'Asia/Kolkata'`); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, us, `UPDATE public.slot SET at = timestamptz '2026-01-01 00:00:00+00' + interval '1 second' WHERE id = 1`)
	mustExec(t, ctx, eu, `UPDATE public.slot SET at = '2026-01-01 03:00:00+00' WHERE id = 1`)
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		if got := queryString(t, ctx, r, `SELECT (SELECT extract(epoch FROM at)::bigint::text FROM public.slot WHERE id = 1)`); got != "1767236400" {
			t.Errorf("region %s: at = %s (epoch), want 1767236400 (2026-01-01 03:00 UTC, the later instant)", r.Name, got)
		}
		// Both images of every logged conflict carry UTC text.
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl = 'public.slot'`); n == 0 {
			t.Errorf("region %s: no conflict logged for public.slot", r.Name)
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl = 'public.slot'
			AND (local_row->>'at' NOT LIKE '%+00' OR remote_row->>'at' NOT LIKE '%+00')`); n != 0 {
			t.Errorf("region %s: %d conflict records hold an image not in UTC", r.Name, n)
		}
	}
}
