package integration

import (
	"testing"
	"time"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// Outbox payloads are never compressed by pglz: lz4 where the server has
// it, stored as they are where it has not (pglz made the reader's writes
// of a backlog several times slower). A schema of an earlier release on a
// server without lz4 is set so at the next install.
func TestOutboxPayloadsAreNotCompressedByPglz(t *testing.T) {
	h := startClusters(t, Spec{Regions: []string{"us"}, SchemaSQL: kvSchema, Tables: []TableSpec{{Name: "public.kv"}}})
	ctx := ctxFor(t, 2*time.Minute)
	conn := installedSchema(t, ctx, h.Regions[0])
	// A large, compressible payload, as a backlog's entry is.
	written := func() (method string) {
		t.Helper()
		var m *string
		if _, err := conn.Exec(ctx, `INSERT INTO polyregion.outbox (seq, part, more, lsn, commit_ts, rows, payload)
			VALUES (1, 0, false, '0/1', pg_catalog.now(), 1000, pg_catalog.convert_to(pg_catalog.repeat('a row of the backlog ', 10000), 'UTF8'))`); err != nil {
			t.Fatal(err)
		}
		// As stored (what RETURNING gives is the value before it was).
		if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_column_compression(payload) FROM polyregion.outbox`).Scan(&m); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `DELETE FROM polyregion.outbox`); err != nil {
			t.Fatal(err)
		}
		if m == nil {
			return "none"
		}
		return *m
	}
	// What the server can do: lz4, or nothing but pglz.
	want := "lz4"
	if _, err := conn.Exec(ctx, `SET default_toast_compression = 'lz4'`); err != nil {
		want = "none"
	}
	if _, err := conn.Exec(ctx, `RESET default_toast_compression`); err != nil {
		t.Fatal(err)
	}
	if m := written(); m != want {
		t.Fatalf("a new schema's outbox payload was compressed by %s, want %s", m, want)
	}

	// The settings an earlier release left: compressed by the server's
	// default; or stored uncompressed on a server without lz4 that has it
	// since (a new build of the same release).
	for _, earlier := range []string{"SET STORAGE EXTENDED, ALTER COLUMN payload SET COMPRESSION pglz", "SET STORAGE EXTERNAL, ALTER COLUMN payload SET COMPRESSION pglz"} {
		if _, err := conn.Exec(ctx, `ALTER TABLE polyregion.outbox ALTER COLUMN payload `+earlier); err != nil {
			t.Fatal(err)
		}
		before := written()
		var set string
		for i := range 2 {
			if err := postgres.Install(ctx, conn); err != nil {
				t.Fatal(err)
			}
			if m := written(); m != want {
				t.Fatalf("after an install over an outbox set with %q (payloads compressed by %s) the payload was compressed by %s, want %s", earlier, before, m, want)
			}
			// The second install alters nothing (an ALTER locks the table
			// and writes the column's catalog row again).
			var xmin string
			if err := conn.QueryRow(ctx, `SELECT a.xmin::text FROM pg_catalog.pg_attribute a
				WHERE a.attrelid = 'polyregion.outbox'::pg_catalog.regclass AND a.attname = 'payload'`).Scan(&xmin); err != nil {
				t.Fatal(err)
			}
			if i == 1 && xmin != set {
				t.Fatalf("a second install altered the outbox's payload column again (its catalog row went from xmin %s to %s)", set, xmin)
			}
			set = xmin
		}
	}
	var compression, storage string
	if err := conn.QueryRow(ctx, `SELECT a.attcompression::text, a.attstorage::text FROM pg_catalog.pg_attribute a
		WHERE a.attrelid = 'polyregion.outbox'::pg_catalog.regclass AND a.attname = 'payload'`).Scan(&compression, &storage); err != nil {
		t.Fatal(err)
	}
	t.Logf("outbox payload: compression %q, storage %q, payloads written %s", compression, storage, want)
}
