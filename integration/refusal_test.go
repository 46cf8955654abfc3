package integration

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCheckRefusesWithEveryProblemNamed: a database that cannot be
// replicated is refused by `polyregion check` (and by `run`) with every
// problem named, and nothing is created. Among them: a replica identity
// that leaves the primary key out of the WAL (before, the reader stopped
// at the first delete of such a table, at every restart again).
func TestCheckRefusesWithEveryProblemNamed(t *testing.T) {
	h := startClusters(t, Spec{
		Regions: []string{"us"},
		SchemaSQL: []string{`CREATE TABLE public.nopk (a integer, b text)`, `CREATE TABLE public.ok (id integer PRIMARY KEY)`,
			// Keys the database compares otherwise than by their bytes.
			`CREATE COLLATION public.caseless (provider = icu, locale = 'und-u-ks-level2', deterministic = false)`,
			`CREATE TABLE public.users_ci (email text COLLATE public.caseless PRIMARY KEY)`,
			`CREATE EXTENSION citext`,
			`CREATE DOMAIN public.email AS public.citext`,
			`CREATE TABLE public.users_citext (tenant integer, email public.citext, PRIMARY KEY (tenant, email))`,
			`CREATE TABLE public.users_domain (email public.email PRIMARY KEY)`,
			// Keys that compare by their bytes: not refused.
			`CREATE TABLE public.codes (code varchar(20) PRIMARY KEY, label text COLLATE public.caseless)`,
			`CREATE TABLE public.fixed (code char(3), tag text COLLATE "C", PRIMARY KEY (code, tag))`,
			// Replica identities that leave the key out of the WAL, and one that keeps it.
			`CREATE TABLE public.ri_email (id integer PRIMARY KEY, email text NOT NULL UNIQUE)`,
			`ALTER TABLE public.ri_email REPLICA IDENTITY USING INDEX ri_email_email_key`,
			`CREATE TABLE public.ri_nothing (id integer PRIMARY KEY)`,
			`ALTER TABLE public.ri_nothing REPLICA IDENTITY NOTHING`,
			`CREATE TABLE public.ri_covering (id integer PRIMARY KEY, tag text NOT NULL, UNIQUE (tag, id))`,
			`ALTER TABLE public.ri_covering REPLICA IDENTITY USING INDEX ri_covering_tag_id_key`,
			// The key only among the index's INCLUDE columns: not logged.
			`CREATE TABLE public.ri_include (id integer PRIMARY KEY, email text NOT NULL)`,
			`CREATE UNIQUE INDEX ri_include_email ON public.ri_include (email) INCLUDE (id)`,
			`ALTER TABLE public.ri_include REPLICA IDENTITY USING INDEX ri_include_email`,
			// A partitioned table is refused; its partitions are not.
			`CREATE TABLE public.parted (id integer PRIMARY KEY) PARTITION BY RANGE (id)`,
			`CREATE TABLE public.parted_low PARTITION OF public.parted FOR VALUES FROM (0) TO (100)`},
		Tables: []TableSpec{{Name: "public.nopk"}, {Name: "public.ok"}, {Name: "public.missing"},
			{Name: "public.users_ci"}, {Name: "public.users_citext"}, {Name: "public.users_domain"}, {Name: "public.codes"}, {Name: "public.fixed"},
			{Name: "public.ri_email"}, {Name: "public.ri_nothing"}, {Name: "public.ri_covering"}, {Name: "public.ri_include"},
			{Name: "public.parted"}, {Name: "public.parted_low"}},
		ClusterOptions: ClusterOptions{WalLevel: "replica", Settings: map[string]string{"track_commit_timestamp": "off"}},
	})
	ctx := ctxFor(t, time.Minute)
	us := h.Regions[0]
	if err := us.Cluster.Exec(ctx, "postgres", `ALTER ROLE polyregion NOREPLICATION`); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"check", "run"} {
		cmd := exec.CommandContext(ctx, binary, sub, "--config", us.ConfigPath)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("%s: exit %v, want exit code 3; output:\n%s", sub, err, out.String())
		}
		t.Logf("%s refused:\n%s", sub, out.String())
		for _, want := range []string{"wal_level", "track_commit_timestamp", "lacks REPLICATION", "public.nopk: table has no primary key", "public.missing: table does not exist",
			`public.users_ci: primary key column "email" is in the nondeterministic collation public.caseless`,
			`public.users_citext: primary key column "email" is of type public.citext, which compares 'A' and 'a' as equal`,
			`public.users_domain: primary key column "email" is of type public.citext`,
			`public.ri_email: its REPLICA IDENTITY index public.ri_email_email_key does not hold every primary key column`,
			`public.ri_include: its REPLICA IDENTITY index public.ri_include_email does not hold every primary key column`,
			`public.ri_nothing: REPLICA IDENTITY NOTHING`,
			`public.parted: table is partitioned`} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("%s output does not mention %q:\n%s", sub, want, out.String())
			}
		}
		for _, clean := range []string{"public.ok", "public.codes", "public.fixed", "public.ri_covering", "public.parted_low"} {
			if strings.Contains(out.String(), clean) {
				t.Errorf("%s output names %s, whose key compares by its bytes:\n%s", sub, clean, out.String())
			}
		}
	}
	if n := queryInt(t, ctx, us, `SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname = 'polyregion'`); n != 0 {
		t.Errorf("a refused run created the polyregion schema")
	}
	if n := queryInt(t, ctx, us, `SELECT count(*) FROM pg_catalog.pg_replication_slots`); n != 0 {
		t.Errorf("a refused run created %d replication slots", n)
	}
}

func TestConfigErrorsNameTheKey(t *testing.T) {
	if testing.Short() {
		t.Skip("needs the built binary")
	}
	dir := t.TempDir()
	cases := []struct{ yaml, want string }{
		{"region: us\nlisten: 127.0.0.1:1\nregions: [us]\ntables: [{name: public.t}]\n", "database"},
		{"region: us\ndatabase: x\nlisten: 127.0.0.1:1\nregions: [us, eu]\ntables: [{name: public.t}]\n", `region "eu" is listed in regions but has no peer entry`},
		{"region: us\ndatabase: x\nlisten: 127.0.0.1:1\nregions: [us]\ntables: [{name: public.t, policy: newest}]\n", "tables[0] (public.t): policy"},
		{"region: us\ndatabase: ${POLYREGION_TEST_UNSET_VAR}\nlisten: 127.0.0.1:1\nregions: [us]\ntables: [{name: public.t}]\n", "POLYREGION_TEST_UNSET_VAR"},
		{"region: us\ndatabase: x\nlisten: 127.0.0.1:1\nregions: [us]\ntables: [{name: public.t}]\nbogus: 1\n", "field bogus not found"},
		{"region: us\ndatabase: x\nlisten: 127.0.0.1:1\nregions: [us, eu]\npeers: [{id: eu, url: 'http://x', token: short}]\ntables: [{name: public.t}]\n", "token is too short"},
		{"region: us\ndatabase: 'postgres://app:pa@ss@127.0.0.1:1/app'\nlisten: 127.0.0.1:1\nregions: [us]\ntables: [{name: public.t}]\n", "percent-encode '@'"},
	}
	for i, c := range cases {
		path := dir + "/c.yaml"
		if err := os.WriteFile(path, []byte(c.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(binary, "check", "--config", path).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("case %d: exit %v, want 2; output: %s", i, err, out)
			continue
		}
		if !strings.Contains(string(out), c.want) {
			t.Errorf("case %d: output %q does not name %q", i, out, c.want)
		}
	}
}

// TestPolicyDisagreementIsRefused: a region whose policy config differs is
// refused by its peers with the difference named; the others replicate on.
func TestPolicyDisagreementIsRefused(t *testing.T) {
	tables := []TableSpec{{Name: "public.kv"}}
	spec := Spec{SchemaSQL: kvSchema, Tables: tables, Configure: func(region string, c *RegionConfig) {
		if region == "ap" {
			c.Tables = []TableSpec{{Name: "public.kv", Deletes: "delete_wins"}}
		}
	}}
	h := startClusters(t, spec)
	ctx := ctxFor(t, 2*time.Minute)
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitReady(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES (1, 'from us')`)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv`, 1)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(ap.Logs(1<<20), "configuration differs") || !strings.Contains(us.Logs(1<<20), "configuration differs") {
		if time.Now().After(deadline) {
			t.Fatalf("no refusal logged; ap log:\n%s\nus log:\n%s", ap.Logs(3000), us.Logs(3000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(ap.Logs(1<<20), "table public.kv") {
		t.Errorf("ap's refusal does not name the table whose policy differs:\n%s", ap.Logs(3000))
	}
	if n := queryInt(t, ctx, ap, `SELECT count(*) FROM public.kv`); n != 0 {
		t.Errorf("ap applied %d rows from peers that disagree on policy", n)
	}
}

// TestShapeMismatchPausesOnlyThatTable: a table whose columns differ
// between regions is paused (its changes parked, naming the difference);
// other tables keep flowing; fixing the shape lets the parked changes in.
func TestShapeMismatchPausesOnlyThatTable(t *testing.T) {
	tables := []TableSpec{{Name: "public.kv"}, {Name: "public.items"}}
	h := startClusters(t, Spec{SchemaSQL: append([]string{`CREATE TABLE public.items (id integer PRIMARY KEY, name text)`}, kvSchema...), Tables: tables})
	ctx := ctxFor(t, 2*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	if err := eu.Cluster.Exec(ctx, AppDB, `ALTER TABLE public.items ADD COLUMN color text`); err != nil {
		t.Fatal(err)
	}
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitReady(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, us, `INSERT INTO public.items VALUES (1, 'chair')`)
	mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES (1, 'after the item')`)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv`, 1)
	waitRow(t, ctx, eu, `SELECT count(*) FROM polyregion.parked WHERE tbl = 'public.items' AND resolved_at IS NULL`, 1)
	reason := queryString(t, ctx, eu, `SELECT reason FROM polyregion.parked WHERE tbl = 'public.items'`)
	if !strings.Contains(reason, `"color"`) {
		t.Errorf("parked reason %q does not name the differing column", reason)
	}
	if n := queryInt(t, ctx, eu, `SELECT count(*) FROM public.items`); n != 0 {
		t.Errorf("eu applied a row into a table whose shape differs")
	}
	// The operator aligns the shape; the parked change goes in.
	if err := eu.Cluster.Exec(ctx, AppDB, `ALTER TABLE public.items DROP COLUMN color`); err != nil {
		t.Fatal(err)
	}
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.items`, 1)
}

// TestHostileSearchPathObjectsAreInert: objects an attacker (or an
// application) puts in public — an equality operator, functions shadowing
// the catalog's — are never picked up by the replicator's sessions.
func TestHostileSearchPathObjectsAreInert(t *testing.T) {
	schema := append([]string{
		`CREATE FUNCTION public.evil_eq(integer, integer) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked: public.= was called'; END $$`,
		`CREATE OPERATOR public.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = public.evil_eq)`,
		`CREATE FUNCTION public.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked: public.unnest was called'; END $$`,
		`CREATE FUNCTION public.to_jsonb(anyelement) RETURNS jsonb LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked: public.to_jsonb was called'; END $$`,
	}, kvSchema...)
	h := startClusters(t, Spec{SchemaSQL: schema, Tables: []TableSpec{{Name: "public.kv"}}})
	ctx := ctxFor(t, 2*time.Minute)
	// The role's default puts public before pg_catalog, so an unpinned
	// session would resolve "=" and unqualified functions to the hostile ones.
	for _, r := range h.Regions {
		if err := r.Cluster.Exec(ctx, "postgres", `ALTER ROLE polyregion SET search_path = public, pg_catalog`); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, []string{"public.kv"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	stopAll(t, h)
	mustExec(t, ctx, h.Regions[0], `INSERT INTO public.kv (id, val) VALUES (1, 'us'), (2, 'us')`)
	mustExec(t, ctx, h.Regions[1], `INSERT INTO public.kv (id, val) VALUES (1, 'eu')`)
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, []string{"public.kv"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		if strings.Contains(r.Logs(1<<20), "hijacked") {
			t.Errorf("region %s: a hostile object on the search path was called:\n%s", r.Name, r.Logs(2000))
		}
	}
}

// TestOutboxCapBoundsAnAbsentPeer: a peer that is away only makes the
// outbox grow up to its cap; when it returns too far behind it is told, in
// a clear error, that it must be re-seeded, and the other peers go on.
func TestOutboxCapBoundsAnAbsentPeer(t *testing.T) {
	spec := Spec{SchemaSQL: kvSchema, Tables: []TableSpec{{Name: "public.kv"}}, Configure: func(region string, c *RegionConfig) {
		c.OutboxMaxTransactions = 20
	}}
	h := startRegions(t, spec)
	ctx := ctxFor(t, 2*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	if err := ap.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 100; i++ {
		mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES ($1, 'us')`, i)
	}
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv`, 100)
	waitRow(t, ctx, us, `SELECT (count(*) <= 20)::int FROM polyregion.outbox`, 1)
	st := regionStatus(t, ctx, us)
	if st.Backlog["ap"] < 100 || st.OutboxRows > 20 {
		t.Errorf("status: backlog for ap %d (want >= 100), outbox rows %d (want <= 20)", st.Backlog["ap"], st.OutboxRows)
	}
	if err := ap.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(ap.Logs(1<<20), "re-seed ap") {
		if time.Now().After(deadline) {
			t.Fatalf("ap was not told it must be re-seeded:\n%s", ap.Logs(3000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := queryInt(t, ctx, ap, `SELECT count(*) FROM public.kv`); n != 0 {
		t.Errorf("ap applied %d rows from a stream with a gap", n)
	}
	// eu still replicates with us.
	mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES (1000, 'after the cap')`)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv WHERE id = 1000`, 1)
}

// TestColumnDroppedWhileChangesInFlight: a region drops a column while its
// reader still has transactions from before the drop to decode. The reader
// ships each transaction with the columns it had; peers that still have the
// column apply the old ones and pause the table (parking) for the new shape
// until they drop it too; then everything converges.
func TestColumnDroppedWhileChangesInFlight(t *testing.T) {
	schema := []string{`CREATE TABLE public.items (id integer PRIMARY KEY, name text, color text)`}
	tables := []TableSpec{{Name: "public.items"}}
	h := startRegions(t, Spec{SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	if err := us.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, us, `INSERT INTO public.items VALUES (1, 'chair', 'red')`)
	if err := us.Cluster.Exec(ctx, AppDB, `ALTER TABLE public.items DROP COLUMN color`); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, us, `INSERT INTO public.items VALUES (2, 'table')`)
	if err := us.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	// Both peers apply the old-shape transaction and pause the new one
	// before they drop the column too (a region dropping it first would
	// receive the old shape after its own DDL and keep it parked).
	for _, r := range []*Region{eu, ap} {
		waitRow(t, ctx, r, `SELECT count(*) FROM public.items WHERE id = 1 AND color = 'red'`, 1)
		waitRow(t, ctx, r, `SELECT count(*) FROM polyregion.parked WHERE tbl = 'public.items' AND resolved_at IS NULL`, 1)
	}
	if !us.Running() {
		t.Fatalf("us's replicator exited decoding transactions from before the DDL:\n%s", us.Logs(3000))
	}
	for _, r := range []*Region{eu, ap} {
		if err := r.Cluster.Exec(ctx, AppDB, `ALTER TABLE public.items DROP COLUMN color`); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.items`, 2)
}

// TestAReplicaIdentitySwitchedWhileRunningStopsTheReader: a table switched,
// while its replicator runs, to an identity index without the primary key
// stops the reader at its next update, with the table and the fix named:
// an update that moved the key without touching the index's columns has
// no old row in the WAL, and shipped as it was it would have left the old
// key in every other region.
func TestAReplicaIdentitySwitchedWhileRunningStopsTheReader(t *testing.T) {
	schema := []string{`CREATE TABLE public.accounts (id integer PRIMARY KEY, email text NOT NULL UNIQUE)`}
	tables := []TableSpec{{Name: "public.accounts"}}
	h := startClusters(t, Spec{Regions: []string{"us"}, SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, time.Minute)
	us := h.Regions[0]
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), 30*time.Second); err != nil {
		t.Fatalf("replicator did not come up: %v", err)
	}
	mustExec(t, ctx, us, `INSERT INTO public.accounts VALUES (1, 'a@example.com')`)
	mustExec(t, ctx, us, `ALTER TABLE public.accounts REPLICA IDENTITY USING INDEX accounts_email_key`)
	mustExec(t, ctx, us, `UPDATE public.accounts SET id = 2 WHERE id = 1`)
	waitLog(t, us, 30*time.Second, "update of public.accounts: its replica identity does not log the primary key")
}
