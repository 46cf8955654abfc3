package integration

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestACutLoadFinishedFromASourceThatSendsNoUnits: a region whose load in
// units was cut after its first chunk asks again, and the source is of a
// release that sends its snapshot whole (no units). The region removes
// what it had loaded, loads the whole snapshot in one transaction, records
// that snapshot's positions and no replay bound, and then streams like any
// joined region: at the end both regions hold the same rows.
func TestACutLoadFinishedFromASourceThatSendsNoUnits(t *testing.T) {
	const rows = 450_000
	schema := []string{`CREATE TABLE public.items (id bigint PRIMARY KEY, v text NOT NULL)`}
	tables := []TableSpec{{Name: "public.items"}}
	h := startClusters(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 6*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, us, `INSERT INTO public.items SELECT g, md5(g::text) FROM pg_catalog.generate_series(1, $1::int) g`, rows)
	names := []string{"public.items"}
	conn, usDSN, euDSN := startJoinInProcess(t, ctx, us, eu, names)
	load := func(resume *postgres.SnapshotResume, cutAfterUnits int64) error {
		return loadInProcess(ctx, conn, usDSN, euDSN, names, resume, cutAfterUnits)
	}
	err := load(&postgres.SnapshotResume{}, 1)
	if err == nil {
		t.Fatal("a load cut after its first chunk succeeded")
	}
	t.Logf("the load in units ended: %v", err)
	kept := queryInt(t, ctx, eu, `SELECT count(*) FROM public.items`)
	if units := queryInt(t, ctx, eu, `SELECT count(*) FROM polyregion.join_units`); units < 1 || kept != int64(units)*200_000 || kept >= rows {
		t.Fatalf("the cut load kept %d rows in %d chunks", kept, units)
	}
	if n := queryInt(t, ctx, eu, `SELECT count(*) FROM polyregion.applied`); n != 0 {
		t.Fatalf("the cut load recorded %d positions", n)
	}

	// The source sends it whole.
	if err := load(nil, 0); err != nil {
		t.Fatal(err)
	}
	for q, want := range map[string]int64{
		`SELECT count(*) FROM public.items`:                          rows,
		`SELECT count(*) FROM polyregion.join_units`:                 0,
		`SELECT count(*) FROM polyregion.join_replay`:                0,
		`SELECT rows FROM polyregion.joined`:                         rows,
		`SELECT count(*) FROM polyregion.applied`:                    1,
		`SELECT count(DISTINCT id) FROM public.items`:                rows,
		`SELECT count(*) FROM public.items WHERE v <> md5(id::text)`: 0,
	} {
		if got := queryInt(t, ctx, eu, q); got != want {
			t.Errorf("eu: %s = %d, want %d", q, got, want)
		}
	}
	t.Logf("the cut load kept %d rows; the whole snapshot replaced them", kept)

	// eu then streams like any joined region.
	if err := eu.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, us, `UPDATE public.items SET v = 'changed in us' WHERE id % 1000 = 0`)
	mustExec(t, ctx, eu, `INSERT INTO public.items VALUES (0, 'written in eu')`)
	if err := h.WaitConverged(ctx, names, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
}

// startJoinInProcess starts us's replicator and prepares eu as its
// replicator does before it loads (its schema, slot, origins and the
// functions it applies rows through as their owner), for a load run in
// the test's process. It returns a session of the replicator's role in
// eu, closed when the test ends, and both regions' connection strings.
func startJoinInProcess(t *testing.T, ctx context.Context, us, eu *Region, names []string) (conn *pgx.Conn, usDSN, euDSN string) {
	t.Helper()
	startReady(t, ctx, us)
	usDSN, euDSN = us.Cluster.URL("polyregion", AppDB), eu.Cluster.URL("polyregion", AppDB)
	conn, err := postgres.Connect(ctx, euDSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := postgres.Prepare(ctx, conn, "eu", names, nil, []string{"us"}); err != nil {
		t.Fatal(err)
	}
	return conn, usDSN, euDSN
}

// loadInProcess loads eu (through conn, euDSN) from a snapshot of us
// taken here (us's replicator must run), asking with resume (nil: a whole
// snapshot, as a source of an earlier release sends it); with
// cutAfterUnits > 0 the stream is broken once eu has committed that many
// units.
func loadInProcess(ctx context.Context, conn *pgx.Conn, usDSN, euDSN string, names []string, resume *postgres.SnapshotResume, cutAfterUnits int64) error {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	return loadFromSource(ctx, conn, euDSN, postgres.SnapshotConfig{Region: "us", ConnString: usDSN, Tables: names, Resume: resume, Logger: quiet}, cutAfterUnits)
}

// loadFromSource is loadInProcess with the source's configuration; it
// returns once the source's session has ended.
func loadFromSource(ctx context.Context, conn *pgx.Conn, euDSN string, source postgres.SnapshotConfig, cutAfterUnits int64) error {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	names := source.Tables
	pr, pw := io.Pipe()
	lctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Go(func() {
		_, err := postgres.WriteSnapshot(lctx, source, pw)
		pw.CloseWithError(err)
	})
	if cutAfterUnits > 0 {
		wg.Go(func() {
			for lctx.Err() == nil {
				var n int64
				if err := conn.QueryRow(lctx, `SELECT count(*) FROM polyregion.join_units`).Scan(&n); err == nil && n >= cutAfterUnits {
					pw.CloseWithError(errors.New("link broken by the test"))
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	_, _, err := postgres.LoadSnapshot(ctx, postgres.LoadConfig{Region: "eu", From: "us", ConnString: euDSN, Tables: names, Logger: quiet}, pr)
	pr.Close()
	return err
}

// TestALoadInUnitsSendsTiedAndParkedTablesWhole: tables a foreign key ties
// together, and a table with a change parked at the source, go in one
// unit with the parked change (which the joining region then holds, to
// retry as the source does); a table that stands alone goes in a unit of
// its own.
func TestALoadInUnitsSendsTiedAndParkedTablesWhole(t *testing.T) {
	schema := []string{
		`CREATE TABLE public.parent (id bigint PRIMARY KEY)`,
		`CREATE TABLE public.child (id bigint PRIMARY KEY, parent_id bigint NOT NULL REFERENCES public.parent)`,
		`CREATE TABLE public.items (id bigint PRIMARY KEY, v text NOT NULL)`,
		`CREATE TABLE public.logs (id bigint PRIMARY KEY, v text NOT NULL)`,
	}
	names := []string{"public.child", "public.items", "public.logs", "public.parent"}
	var tables []TableSpec
	for _, n := range names {
		tables = append(tables, TableSpec{Name: n})
	}
	h := startClusters(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, us, `INSERT INTO public.parent SELECT g FROM pg_catalog.generate_series(1, 10) g`)
	mustExec(t, ctx, us, `INSERT INTO public.child SELECT g, g % 10 + 1 FROM pg_catalog.generate_series(1, 100) g`)
	mustExec(t, ctx, us, `INSERT INTO public.items SELECT g, 'item' FROM pg_catalog.generate_series(1, 5000) g`)
	mustExec(t, ctx, us, `INSERT INTO public.logs SELECT g, 'log' FROM pg_catalog.generate_series(1, 10) g`)
	conn, usDSN, euDSN := startJoinInProcess(t, ctx, us, eu, names)
	// A change us parked (from a region that is not there), not due for a
	// retry while the test runs.
	usConn, err := postgres.Connect(ctx, usDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer usConn.Close(context.Background())
	if _, err := usConn.Exec(ctx, `INSERT INTO polyregion.parked (source, seq, tbl, key, change, shape, reason, next_retry_at)
		VALUES ('ap', 7, 'public.logs', '["3"]', '{}', '{}', 'parked by the test', pg_catalog.now() + interval '1 day')`); err != nil {
		t.Fatal(err)
	}
	if err := loadInProcess(ctx, conn, usDSN, euDSN, names, &postgres.SnapshotResume{}, 0); err != nil {
		t.Fatal(err)
	}
	var units []string
	rows, err := conn.Query(ctx, `SELECT pg_catalog.array_to_string(ARRAY(SELECT x FROM pg_catalog.unnest(tables) x ORDER BY 1), ',') || CASE WHEN after IS NULL THEN '' ELSE ' (part)' END
		FROM polyregion.join_units ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var u string
		if err := rows.Scan(&u); err != nil {
			t.Fatal(err)
		}
		units = append(units, u)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(units, "; "), "public.child,public.logs,public.parent; public.items"; got != want {
		t.Errorf("units %q, want %q (the tied and the parked tables in one, the one that stands alone in its own)", got, want)
	}
	if n := queryInt(t, ctx, eu, `SELECT count(*) FROM polyregion.parked WHERE source = 'ap' AND seq = 7 AND tbl = 'public.logs' AND key = '["3"]' AND resolved_at IS NULL`); n != 1 {
		t.Errorf("eu holds %d copies of the change us parked, want 1", n)
	}
	for _, n := range names {
		if a, b := queryInt(t, ctx, us, `SELECT count(*) FROM `+n), queryInt(t, ctx, eu, `SELECT count(*) FROM `+n); a != b {
			t.Errorf("%s: us holds %d rows, eu %d", n, a, b)
		}
	}
}
