package integration

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// rowVersionKeyCollations returns the collations of row_version's key
// columns and of its indexes' columns, as "column:collation" and
// "index:collation,collation".
func rowVersionKeyCollations(t *testing.T, ctx context.Context, conn *pgx.Conn) []string {
	t.Helper()
	rows, err := conn.Query(ctx, `SELECT a.attname || ':' || a.attcollation::pg_catalog.regcollation::text
		FROM pg_catalog.pg_attribute a
		WHERE a.attrelid = 'polyregion.row_version'::pg_catalog.regclass AND a.attname IN ('tbl', 'key')
		UNION ALL
		SELECT c.relname || ':' || (SELECT pg_catalog.string_agg(x::pg_catalog.regcollation::text, ',') FROM pg_catalog.unnest(i.indcollation) x)
		FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
		WHERE i.indrelid = 'polyregion.row_version'::pg_catalog.regclass AND i.indisvalid
		ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

var rowVersionKeysInC = []string{
	`key:"C"`, `row_version_pkey:"C","C"`, `row_version_siblings:"C","C"`, `row_version_tombstones:"C","C"`, `tbl:"C"`,
}

// installedSchema connects to r's application database as the replicator's
// role and installs the replicator's schema there; the connection closes
// with the test.
func installedSchema(t *testing.T, ctx context.Context, r *Region) *pgx.Conn {
	t.Helper()
	conn, err := postgres.Connect(ctx, r.Cluster.URL("polyregion", AppDB))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if err := postgres.Install(ctx, conn); err != nil {
		t.Fatal(err)
	}
	return conn
}

// Row versions' keys compare in C whatever the database's collation: a new
// schema has them so, and an install over a schema of an earlier release
// (keys in the database's default collation) converts them in place,
// keeping every version, the table's storage settings and lookups by key.
func TestRowVersionKeysCompareInC(t *testing.T) {
	h := startClusters(t, Spec{Regions: []string{"us"}, SchemaSQL: kvSchema, Tables: []TableSpec{{Name: "public.kv"}}})
	ctx := ctxFor(t, 2*time.Minute)
	conn := installedSchema(t, ctx, h.Regions[0])
	if got := rowVersionKeyCollations(t, ctx, conn); !slices.Equal(got, rowVersionKeysInC) {
		t.Fatalf("a new schema's row_version keys: %q, want %q", got, rowVersionKeysInC)
	}

	// The schema as earlier releases made it, holding versions.
	for _, q := range []string{
		`ALTER TABLE polyregion.row_version ALTER COLUMN tbl TYPE text COLLATE pg_catalog."default", ALTER COLUMN key TYPE text COLLATE pg_catalog."default"`,
		`INSERT INTO polyregion.row_version (tbl, key, vv, hlc, origin, deleted)
			SELECT 'public.kv', '["' || g || '"]', '{"us":' || g || '}', g, 'us', g % 10 = 0 FROM pg_catalog.generate_series(1, 5000) g`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	old := []string{`key:"default"`, `row_version_pkey:"default","default"`, `row_version_siblings:"default","default"`, `row_version_tombstones:"default","default"`, `tbl:"default"`}
	if got := rowVersionKeyCollations(t, ctx, conn); !slices.Equal(got, old) {
		t.Fatalf("row_version keys made as before: %q, want %q", got, old)
	}

	if convert, _, err := postgres.RowVersionKeysToConvert(ctx, conn); err != nil || !convert {
		t.Fatalf("RowVersionKeysToConvert over the old schema: %v, %v; want true", convert, err)
	}
	if err := postgres.Install(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if got := rowVersionKeyCollations(t, ctx, conn); !slices.Equal(got, rowVersionKeysInC) {
		t.Fatalf("row_version keys after the install: %q, want %q", got, rowVersionKeysInC)
	}
	if convert, _, err := postgres.RowVersionKeysToConvert(ctx, conn); err != nil || convert {
		t.Fatalf("RowVersionKeysToConvert after the conversion: %v, %v; want false", convert, err)
	}
	var n, tombs, hlc int64
	var opts string
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM polyregion.row_version),
			(SELECT count(*) FROM polyregion.row_version WHERE deleted),
			(SELECT hlc FROM polyregion.row_version WHERE tbl = 'public.kv' AND key = '["4242"]'),
			(SELECT pg_catalog.array_to_string(c.reloptions, ',') FROM pg_catalog.pg_class c WHERE c.oid = 'polyregion.row_version'::pg_catalog.regclass)`).
		Scan(&n, &tombs, &hlc, &opts); err != nil {
		t.Fatal(err)
	}
	if n != 5000 || tombs != 500 || hlc != 4242 || opts != "fillfactor=80" {
		t.Fatalf("after the conversion: %d versions (want 5000), %d tombstones (want 500), key 4242 at hlc %d, options %q (want fillfactor=80)", n, tombs, hlc, opts)
	}
	// A second install finds nothing to convert: the indexes are not
	// rebuilt again.
	var before, after int64
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_relation_filenode('polyregion.row_version_pkey')::int8`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	if err := postgres.Install(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_relation_filenode('polyregion.row_version_pkey')::int8`).Scan(&after); err != nil {
		t.Fatal(err)
	}
	if before != after {
		t.Fatalf("an install over a converted schema rebuilt the key index (file %d, then %d)", before, after)
	}
}
