package integration

import (
	"strings"
	"testing"
	"time"
)

// TestTheRolesTimeoutsCutNoJoinAndNoLargeApply: timeouts an operator sets
// on the replicator's role (or the database) for applications cut none of
// the replicator's long work. With them at 100 ms a join's chunk (its COPY
// in the joining region; the source's transaction, idle while that region
// loads) and the apply of a transaction of many rows each outlast them;
// cut, each began again and was cut again, so the join never ended.
func TestTheRolesTimeoutsCutNoJoinAndNoLargeApply(t *testing.T) {
	const rows = 300_000
	schema := []string{`CREATE TABLE public.wide (id bigint PRIMARY KEY, payload text NOT NULL)`}
	h := startClusters(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: []TableSpec{{Name: "public.wide"}}})
	ctx := ctxFor(t, 8*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, us, `INSERT INTO public.wide SELECT g, pg_catalog.repeat(pg_catalog.md5(g::text), 4) FROM pg_catalog.generate_series(1, $1::int) g`, rows)
	for _, r := range h.Regions {
		set := []string{
			`ALTER ROLE polyregion SET statement_timeout = '100ms'`,
			`ALTER ROLE polyregion SET idle_in_transaction_session_timeout = '100ms'`,
			`ALTER ROLE polyregion SET idle_session_timeout = '1s'`,
		}
		if queryInt(t, ctx, r, `SELECT pg_catalog.current_setting('server_version_num')::int`) >= 170000 {
			set = append(set, `ALTER ROLE polyregion SET transaction_timeout = '1s'`)
		}
		if err := r.Cluster.Exec(ctx, AppDB, set...); err != nil {
			t.Fatal(err)
		}
	}
	startReady(t, ctx, us)
	joinFrom(t, ctx, eu, "us", 4*time.Minute)
	if n := queryInt(t, ctx, eu, `SELECT count(*) FROM public.wide`); n != rows {
		t.Fatalf("eu joined with %d rows, want %d", n, rows)
	}

	// One transaction of 100,000 rows, applied in eu as one.
	const changed = 100_000
	mustExec(t, ctx, us, `UPDATE public.wide SET payload = pg_catalog.upper(payload) WHERE id <= $1`, changed)
	if err := h.WaitConverged(ctx, []string{"public.wide"}, 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, ctx, eu, `SELECT count(*) FROM public.wide WHERE payload = pg_catalog.upper(payload)`); n != changed {
		t.Fatalf("eu holds %d rows of the large transaction, want %d", n, changed)
	}
	// No session of either replicator was cut meanwhile: statement,
	// idle-in-transaction, idle-session and transaction timeouts.
	for _, r := range h.Regions {
		if !r.Running() {
			t.Fatalf("%s's replicator exited:\n%s", r.Name, r.Logs(4000))
		}
		logs := r.Logs(1 << 24)
		// The server's words (SQLSTATE 57014 is also a cancel the
		// replicator asks for itself).
		for _, cut := range []string{"due to statement timeout", "due to idle-in-transaction timeout", "due to idle-session timeout", "due to transaction timeout"} {
			if strings.Contains(logs, cut) {
				t.Fatalf("%s's replicator logged a session cut %s:\n%s", r.Name, cut, r.Logs(4000))
			}
		}
	}
}
