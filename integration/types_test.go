package integration

import (
	"testing"
	"time"
)

// TestEveryColumnTypeAndUnchangedToast replicates rows with the column types
// applications use, NULLs included, and updates rows whose large TOASTed
// column is not touched: pgoutput sends that column as "unchanged", and it
// must keep its value in every region (never become NULL).
func TestEveryColumnTypeAndUnchangedToast(t *testing.T) {
	schema := []string{
		`CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy')`,
		`CREATE TABLE public.everything (
			id bigint PRIMARY KEY,
			n numeric(20,6), i4 integer, f8 double precision, r4 real, b boolean,
			t text, vc varchar(40), ch char(3),
			j json, jb jsonb, ia integer[], ta text[],
			by bytea, ts timestamptz, tsn timestamp, d date, tm time, iv interval,
			u uuid, m public.mood, inet_col inet,
			big text)`,
		`ALTER TABLE public.everything ALTER COLUMN big SET STORAGE EXTERNAL`,
		`CREATE TABLE public.composite (a text, b integer, c date, val text, PRIMARY KEY (a, b, c))`,
		// The same columns but the enum: inserting runs no code here, so
		// long runs of inserts are applied by COPY.
		`CREATE TABLE public.plain (LIKE public.everything INCLUDING ALL)`,
		`ALTER TABLE public.plain DROP COLUMN m`,
	}
	tables := []TableSpec{{Name: "public.everything"}, {Name: "public.composite"}, {Name: "public.plain"}}
	h := startRegions(t, Spec{SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]

	mustExec(t, ctx, us, `INSERT INTO public.everything VALUES
		(1, 12345678901234.123456, -42, 1.0000000000000002, 3.25, true,
		 E'tab\there "quotes" \\ backslash ünïcödé', 'varchar', 'abc',
		 '{"a": [1, 2, {"b": null}]}', '{"z": 1, "a": "x"}', '{1,NULL,3}', '{"a b","c,d",NULL}',
		 '\x00ff10', '2026-11-26 17:00:00.123456+05:30', '2026-01-02 03:04:05', '2026-02-28', '23:59:59.5', '1 year 2 mons 3 days 04:05:06',
		 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', '10.1.2.3/16',
		 (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 4000) g)),
		(2, NULL, NULL, 'NaN', '-Infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)`)
	mustExec(t, ctx, us, `INSERT INTO public.composite VALUES ('k1', 1, '2026-01-01', 'one'), ('k,2"', -7, '1999-12-31', 'two')`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	// 300 rows in one transaction: applied as one run of inserts, by COPY
	// into plain (see TestALongRunOfInsertsGoesInByCopy), every value read
	// back as the type's input reads its text. eu's server logs every
	// statement meanwhile (its sessions take the setting at the reload):
	// the COPY shows there.
	if err := eu.Cluster.Exec(ctx, "postgres", `ALTER SYSTEM SET log_statement = 'all'`, `SELECT pg_catalog.pg_reload_conf()`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	logFrom := logSize(t, eu)
	mustExec(t, ctx, us, `INSERT INTO public.plain SELECT e.id * 1000 + g, n, i4, f8, r4, b, t, vc, ch, j, jb, ia, ta, by, ts, tsn, d, tm, iv, u, inet_col,
		CASE WHEN g = 1 THEN big END FROM public.everything e CROSS JOIN pg_catalog.generate_series(1, 150) g`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	if n := copiesInto(logSince(t, eu, logFrom), "plain"); n != 1 {
		t.Fatalf("eu applied the 300 rows by %d COPY statements, want 1", n)
	}
	if err := eu.Cluster.Exec(ctx, "postgres", `ALTER SYSTEM RESET log_statement`, `SELECT pg_catalog.pg_reload_conf()`); err != nil {
		t.Fatal(err)
	}
	// Update other columns only: the big value is sent as unchanged.
	mustExec(t, ctx, us, `UPDATE public.everything SET i4 = 7, jb = jb || '{"new": true}' WHERE id = 1`)
	mustExec(t, ctx, eu, `UPDATE public.composite SET val = 'two, edited' WHERE a = 'k,2"'`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		if n := queryInt(t, ctx, r, `SELECT length(big) FROM public.everything WHERE id = 1`); n != 128000 {
			t.Errorf("region %s: TOASTed column has length %d after an update that did not touch it, want 128000", r.Name, n)
		}
		if got := queryString(t, ctx, r, `SELECT i4::text FROM public.everything WHERE id = 1`); got != "7" {
			t.Errorf("region %s: i4 = %s, want 7", r.Name, got)
		}
	}
	// The same row edited in two regions at once, with the TOASTed column
	// untouched on both sides: still identical everywhere.
	stopAll(t, h)
	mustExec(t, ctx, us, `UPDATE public.everything SET t = 'us edit' WHERE id = 1`)
	mustExec(t, ctx, eu, `UPDATE public.everything SET t = 'eu edit' WHERE id = 1`)
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		if n := queryInt(t, ctx, r, `SELECT length(big) FROM public.everything WHERE id = 1`); n != 128000 {
			t.Errorf("region %s: TOASTed column has length %d after a conflict, want 128000", r.Name, n)
		}
	}
}
