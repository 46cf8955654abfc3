package integration

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestATypeMadeWithItsRowsReplicates: one transaction in us creates an
// enum type, adds a column of it to a replicated table and writes rows
// that use it (as a schema migration does). eu got the same schema change
// first. The transaction's commit waits for a synchronous standby that
// never answers, so us's reader decodes the transaction while no other
// session sees it yet: what the reader reads about the table from the
// catalog must wait until it can. Before, it read the new column's type as
// "???", and eu could not apply the rows.
func TestATypeMadeWithItsRowsReplicates(t *testing.T) {
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: []string{
		`CREATE TABLE public.docs (id integer PRIMARY KEY, title text)`,
		`INSERT INTO public.docs SELECT g, 'doc ' || g FROM generate_series(1, 3) g`,
	}, Tables: []TableSpec{{Name: "public.docs"}}})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu := h.Region("us"), h.Region("eu")
	tables := []string{"public.docs"}
	if err := h.WaitConverged(ctx, tables, time.Minute); err != nil {
		t.Fatal(err)
	}
	migration := []string{
		`CREATE TYPE public.mood AS ENUM ('sad', 'happy')`,
		`ALTER TABLE public.docs ADD COLUMN mood public.mood`,
	}
	if err := eu.Cluster.Exec(ctx, AppDB, migration...); err != nil {
		t.Fatal(err)
	}

	// Commits in us wait for a standby named nobody from here on.
	if err := us.Cluster.Exec(ctx, "postgres", `ALTER SYSTEM SET synchronous_standby_names = 'nobody'`, `SELECT pg_catalog.pg_reload_conf()`); err != nil {
		t.Fatal(err)
	}
	released := false
	release := func() {
		if released {
			return
		}
		released = true
		if err := us.Cluster.Exec(context.Background(), "postgres", `ALTER SYSTEM RESET synchronous_standby_names`, `SELECT pg_catalog.pg_reload_conf()`); err != nil {
			t.Error(err)
		}
	}
	defer release()
	app, err := pgx.Connect(ctx, us.Cluster.URL("app", AppDB))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(context.Background())
	var pid int
	if err := app.QueryRow(ctx, `SELECT pg_catalog.pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	awaitSetting(t, ctx, app, "synchronous_standby_names", "nobody")
	committed := make(chan error, 1)
	go func() {
		tx, err := app.Begin(ctx)
		if err == nil {
			for _, s := range append(migration,
				`UPDATE public.docs SET mood = 'happy', title = 'glad' WHERE id = 2`,
				`INSERT INTO public.docs (id, title, mood) VALUES (4, 'new', 'sad')`) {
				if _, err = tx.Exec(ctx, s); err != nil {
					break
				}
			}
			if err == nil {
				err = tx.Commit(ctx)
			}
		}
		committed <- err
	}()
	// The commit record is written and flushed (the walsender sends it);
	// the session waits for the standby before others may see it.
	waiting := `SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep'`
	deadline := time.Now().Add(time.Minute)
	for {
		if queryInt(t, ctx, us, waiting, pid) == 1 {
			break
		}
		select {
		case err := <-committed:
			t.Fatalf("the migration ended without waiting for the standby: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the migration's commit never waited for the standby")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Long enough for the reader to decode the transaction (it is sent
	// at once) and look the table up.
	time.Sleep(2 * time.Second)
	release()
	if err := <-committed; err != nil {
		t.Fatalf("migration in us: %v", err)
	}
	if err := h.WaitConverged(ctx, tables, time.Minute); err != nil {
		t.Fatal(err)
	}
	moods := queryString(t, ctx, eu, `SELECT string_agg(id || '=' || coalesce(mood::text, '-'), ',' ORDER BY id) FROM public.docs`)
	if want := "1=-,2=happy,3=-,4=sad"; moods != want {
		t.Fatalf("eu's moods: %s, want %s", moods, want)
	}
}

// TestWhichTransactionsAreVisible: the reader's check that a decoded
// transaction is visible, on a real server. A transaction still open, or
// one whose commit waits for a synchronous standby, is not visible; it is
// once it ends. An old one is; an id not handed out yet is not. (A
// transaction still finishing has an id at or past the snapshot's xmax,
// which follows the latest completed one.)
func TestWhichTransactionsAreVisible(t *testing.T) {
	h := startClusters(t, Spec{Regions: []string{"us"}, SchemaSQL: []string{`CREATE TABLE public.t (id integer PRIMARY KEY)`}})
	ctx := ctxFor(t, 2*time.Minute)
	us := h.Regions[0]
	check, err := us.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer check.Close(context.Background())
	visible := func(xid uint32) bool {
		t.Helper()
		v, err := postgres.TransactionVisible(ctx, check, xid)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	open, err := us.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close(context.Background())
	xidOf := func() uint32 {
		t.Helper()
		var x int64
		if err := open.QueryRow(ctx, `SELECT pg_catalog.pg_current_xact_id()::text::bigint`).Scan(&x); err != nil {
			t.Fatal(err)
		}
		return uint32(x)
	}
	if _, err := open.Exec(ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	first := xidOf()
	if visible(first) {
		t.Fatalf("open transaction %d is visible", first)
	}
	if visible(first + 1000) {
		t.Fatalf("id %d, not handed out yet, is visible", first+1000)
	}
	if _, err := open.Exec(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	if !visible(first) || !visible(3) {
		t.Fatalf("committed transaction %d (or an old one) is not visible", first)
	}

	// A commit waiting for a synchronous standby: written, not yet visible.
	if err := us.Cluster.Exec(ctx, "postgres", `ALTER SYSTEM SET synchronous_standby_names = 'nobody'`, `SELECT pg_catalog.pg_reload_conf()`); err != nil {
		t.Fatal(err)
	}
	defer us.Cluster.Exec(context.Background(), "postgres", `ALTER SYSTEM RESET synchronous_standby_names`, `SELECT pg_catalog.pg_reload_conf()`)
	awaitSetting(t, ctx, open, "synchronous_standby_names", "nobody")
	// The session takes the setting before the server's checkpointer
	// marks standbys as defined, and until then a commit does not wait:
	// commit rows until one waits.
	waiting := func() bool {
		return queryInt(t, ctx, us, `SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE wait_event = 'SyncRep'`) > 0
	}
	var second uint32
	var done chan error
	for row := 1; second == 0; row++ {
		if row > 200 {
			t.Fatal("no commit waited for the standby in 200 tries")
		}
		if _, err := open.Exec(ctx, `BEGIN`); err != nil {
			t.Fatal(err)
		}
		xid := xidOf()
		if _, err := open.Exec(ctx, `INSERT INTO public.t VALUES ($1)`, row); err != nil {
			t.Fatal(err)
		}
		done = make(chan error, 1)
		go func() {
			_, err := open.Exec(ctx, `COMMIT`)
			done <- err
		}()
		committed := false
		for !committed && !waiting() {
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
				committed = true // without waiting: try another row
			case <-time.After(10 * time.Millisecond):
			}
		}
		if !committed {
			second = xid
		}
	}
	if visible(second) {
		t.Fatalf("transaction %d, its commit waiting for the standby, is visible", second)
	}
	if err := us.Cluster.Exec(ctx, "postgres", `ALTER SYSTEM RESET synchronous_standby_names`, `SELECT pg_catalog.pg_reload_conf()`); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !visible(second) {
		t.Fatalf("transaction %d is not visible after its commit", second)
	}
}

// awaitSetting waits until conn's session has taken a configuration
// reload that set name to want (each session takes it between commands,
// once the server has passed the reload on to it).
func awaitSetting(t *testing.T, ctx context.Context, conn *pgx.Conn, name, want string) {
	t.Helper()
	for {
		var got string
		if err := conn.QueryRow(ctx, `SELECT pg_catalog.current_setting($1)`, name).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got == want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the session's %s is still %q, want %q", name, got, want)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
