package integration

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestTruncateReplicatesAsDeletesOfWhatItSaw: a TRUNCATE in one region
// deletes, in every region, exactly the rows it removed there, each with a
// version like any delete. A row another region wrote concurrently (not seen
// by the TRUNCATE) survives everywhere: a new row because the TRUNCATE never
// saw it, an update because it wins its update/delete conflict under
// last-writer-wins (it is later), and that conflict is logged. The table is
// large enough that the capture spans several messages and the transaction
// is shipped in parts; the second table's key (timestamptz, boolean, inet)
// checks that captured keys are byte-identical to the change stream's even
// when the truncating session uses another time zone. A TRUNCATE at
// REPEATABLE READ (whose snapshot may miss rows it removes) is refused.
func TestTruncateReplicatesAsDeletesOfWhatItSaw(t *testing.T) {
	schema := []string{
		`CREATE TABLE public.docs (id integer PRIMARY KEY, body text)`,
		`CREATE TABLE public.events (at timestamptz, ok boolean, addr inet, note text, PRIMARY KEY (at, ok, addr))`,
	}
	tables := []TableSpec{{Name: "public.docs"}, {Name: "public.events"}}
	h := startRegions(t, Spec{SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	const rows = 25000
	mustExec(t, ctx, us, `INSERT INTO public.docs SELECT g, 'v1' FROM generate_series(1, $1) g`, rows)
	mustExec(t, ctx, eu, `INSERT INTO public.events SELECT timestamptz '2026-01-01 00:00:00.123456+00' + g * interval '1 hour', g % 2 = 0, inet '10.0.0.1', 'e'
		FROM generate_series(1, 50) g`)
	if err := h.WaitConverged(ctx, tableNames(tables), 2*time.Minute); err != nil {
		t.Fatal(err)
	}

	// ap goes away, so it cannot see the TRUNCATE before its own writes.
	if err := ap.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	conn, err := us.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, `BEGIN ISOLATION LEVEL REPEATABLE READ; TRUNCATE public.docs; COMMIT`)
	if err == nil || !strings.Contains(err.Error(), "READ COMMITTED") {
		t.Fatalf("TRUNCATE at REPEATABLE READ: got %v, want a refusal naming READ COMMITTED", err)
	}
	if _, err := conn.Exec(ctx, `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, ctx, us, `SELECT count(*) FROM public.docs`); n != rows {
		t.Fatalf("the refused TRUNCATE removed rows: %d left of %d", n, rows)
	}
	if _, err := conn.Exec(ctx, `SET TimeZone = 'America/New_York'; SET DateStyle = 'SQL, DMY'; TRUNCATE public.docs, public.events`); err != nil {
		t.Fatal(err)
	}
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.docs`, 0)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.events`, 0)
	for _, r := range []*Region{us, eu} {
		// Every version of the truncated rows turned into a tombstone: a key
		// captured in another text form would leave the old version live.
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.row_version WHERE tbl IN ('public.docs', 'public.events') AND NOT deleted`); n != 0 {
			t.Fatalf("region %s: %d live versions of truncated rows (captured keys differ from the stream's)", r.Name, n)
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.row_version WHERE tbl IN ('public.docs', 'public.events') AND deleted`); n != rows+50 {
			t.Fatalf("region %s: %d tombstones, want %d", r.Name, n, rows+50)
		}
	}

	// Meanwhile in ap: an update of a truncated row and a new row.
	mustExec(t, ctx, ap, `UPDATE public.docs SET body = 'ap, after the truncate' WHERE id = 7`)
	mustExec(t, ctx, ap, `INSERT INTO public.docs VALUES ($1, 'new in ap')`, rows+1)
	if err := ap.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		got := queryString(t, ctx, r, `SELECT string_agg(id || '=' || body, ',' ORDER BY id) FROM public.docs`)
		if want := "7=ap, after the truncate,25001=new in ap"; got != want {
			t.Errorf("region %s: docs %q, want %q", r.Name, got, want)
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.events`); n != 0 {
			t.Errorf("region %s: %d events rows after the TRUNCATE, want 0", r.Name, n)
		}
	}
	var logged int64
	for _, r := range h.Regions {
		logged += queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl = 'public.docs' AND key = '["7"]' AND kind = 'update_delete'`)
	}
	if logged == 0 {
		t.Error("the update of row 7 racing the TRUNCATE was not logged as an update/delete conflict in any region")
	}
}
