package integration

import (
	"syscall"
	"testing"
	"time"
)

// TestTombstonesKeptUntilEveryRegionSawTheDelete: while one region is away,
// the others keep the tombstones of rows deleted meanwhile, so a late
// concurrent update from the away region is still recognised as concurrent
// (here delete_wins: the row stays deleted everywhere). Once every region has
// seen the deletes, the tombstones are collected everywhere; tables with
// counters keep theirs.
func TestTombstonesKeptUntilEveryRegionSawTheDelete(t *testing.T) {
	schema := []string{
		`CREATE TABLE public.docs (id integer PRIMARY KEY, body text)`,
		`CREATE TABLE public.hits (id integer PRIMARY KEY, n bigint NOT NULL DEFAULT 0)`,
	}
	tables := []TableSpec{{Name: "public.docs", Deletes: "delete_wins"}, {Name: "public.hits", Counters: []string{"n"}}}
	h := startRegions(t, Spec{SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	mustExec(t, ctx, us, `INSERT INTO public.docs SELECT g, 'v1' FROM generate_series(1, 10) g`)
	mustExec(t, ctx, us, `INSERT INTO public.hits SELECT g, 1 FROM generate_series(1, 3) g`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := ap.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, us, `DELETE FROM public.docs WHERE id <= 5`)
	mustExec(t, ctx, us, `DELETE FROM public.hits WHERE id = 1`)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.docs`, 5)
	time.Sleep(8 * time.Second) // several collection rounds
	for _, r := range []*Region{us, eu} {
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.row_version WHERE tbl = 'public.docs' AND deleted`); n != 5 {
			t.Fatalf("region %s holds %d docs tombstones while ap has not seen the deletes, want 5", r.Name, n)
		}
	}
	// ap, unaware of the delete, updates a deleted row.
	mustExec(t, ctx, ap, `UPDATE public.docs SET body = 'late update from ap' WHERE id = 3`)
	if err := ap.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.docs WHERE id = 3`); n != 0 {
			t.Errorf("region %s: the late concurrent update resurrected a row deleted under delete_wins", r.Name)
		}
	}
	for _, r := range h.Regions {
		waitRow(t, ctx, r, `SELECT count(*) FROM polyregion.row_version WHERE tbl = 'public.docs' AND deleted`, 0)
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.row_version WHERE tbl = 'public.hits' AND deleted`); n != 1 {
			t.Errorf("region %s: %d tombstones for the counter table, want 1 kept", r.Name, n)
		}
	}
}

// TestParkedInsertDoesNotComeBackAfterItsDelete: an insert from us is parked
// in eu (us had added a column eu does not have yet; us drops it again
// before it deletes the row), while the delete, in the table's own shape,
// is applied in eu as a tombstone. The tombstone must outlive the parked
// insert: once eu adds the column and the insert is applied, it is older
// than the delete and skipped. Collected early (only the other regions'
// positions were consulted, and with two regions there are none), the
// insert brought the row back in eu alone.
func TestParkedInsertDoesNotComeBackAfterItsDelete(t *testing.T) {
	schema := []string{`CREATE TABLE public.users (id integer PRIMARY KEY, email text NOT NULL)`}
	tables := []TableSpec{{Name: "public.users"}}
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]

	mustExec(t, ctx, us, `ALTER TABLE public.users ADD COLUMN nick text`)
	mustExec(t, ctx, us, `INSERT INTO public.users VALUES (1, 'one@example.com', 'one')`)
	mustExec(t, ctx, us, `ALTER TABLE public.users DROP COLUMN nick`)
	mustExec(t, ctx, us, `DELETE FROM public.users WHERE id = 1`)
	waitRow(t, ctx, eu, `SELECT count(*) FROM polyregion.parked WHERE tbl = 'public.users' AND resolved_at IS NULL`, 1)
	waitRow(t, ctx, eu, `SELECT count(*) FROM polyregion.row_version WHERE tbl = 'public.users' AND key = '["1"]' AND deleted`, 1)
	// Several tombstone rounds pass while the insert stays parked.
	time.Sleep(10 * time.Second)
	if n := queryInt(t, ctx, eu, `SELECT count(*) FROM polyregion.row_version WHERE tbl = 'public.users' AND key = '["1"]' AND deleted`); n != 1 {
		t.Errorf("eu collected the tombstone of the delete while the insert before it is still parked")
	}
	// eu catches up with the column: the parked insert is applied, older
	// than the delete, so skipped.
	mustExec(t, ctx, eu, `ALTER TABLE public.users ADD COLUMN nick text`)
	deadline := time.Now().Add(90 * time.Second)
	for queryInt(t, ctx, eu, `SELECT count(*) FROM polyregion.parked WHERE resolved_at IS NULL`) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the parked insert was not resolved: %s", queryString(t, ctx, eu, `SELECT coalesce(string_agg(reason, '; '), '') FROM polyregion.parked WHERE resolved_at IS NULL`))
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, r := range h.Regions {
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.users`); n != 0 {
			t.Errorf("%s holds %d users, want none (the only one was deleted)", r.Name, n)
		}
	}
}
