package integration

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/replicator/audit"
)

// TestConflictReportMemoryIsBoundedByWhatItLists: a region's report over a
// large conflict log reads its records in the database's order one
// conflict at a time, and the row images (most of a record) only of the
// rows it lists. Before, every selected record was read into the
// replicator's memory with its images: the report below (40,000 records,
// 240 MB of images) raised the replicator's peak memory by hundreds of
// megabytes, and a month of a busy region's conflicts could exhaust it.
// Without a limit a request lists audit.DefaultLimit rows.
func TestConflictReportMemoryIsBoundedByWhatItLists(t *testing.T) {
	h := startRegions(t, Spec{Regions: []string{"us"}, SchemaSQL: kvSchema, Tables: []TableSpec{{Name: "public.kv"}}})
	ctx := ctxFor(t, 3*time.Minute)
	us := h.Regions[0]
	conn, err := us.Conn(ctx) // the superuser: the application may not write there
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	const records = 40000
	// Each record has two 3 KB images (compressed in the table, sent whole);
	// one conflict per record, its two writes' clocks apart.
	_, err = conn.Exec(ctx, `INSERT INTO polyregion.conflict_log (logged_at, region, tbl, key, kind, policy, winner, winner_origin,
		local_origin, remote_origin, local_version, remote_version, local_hlc, remote_hlc, local_row, remote_row, source_seq, reason, outcome)
		SELECT now() - (g || ' ms')::interval, 'us', 'public.kv', '["' || (g % 500) || '"]', 'update_update', 'last_writer_wins', 'remote', 'eu',
			'us', 'eu', 'us:' || g, 'eu:' || g, 2 * g, 2 * g + 1,
			jsonb_build_object('id', g, 'val', repeat(md5(g::text), 96)), jsonb_build_object('id', g, 'val', repeat(md5((-g)::text), 96)),
			g, 'last_writer_wins: remote is later', 'overwritten'
		FROM generate_series(1, $1) g`, records)
	if err != nil {
		t.Fatal(err)
	}
	before, err := us.PeakRSS()
	if err != nil {
		t.Fatal(err)
	}
	get := func(query string) audit.Report {
		t.Helper()
		resp, body := opsFetch(t, us, "GET", "/conflicts/report?since=1h"+query)
		if resp.StatusCode != 200 {
			t.Fatalf("report%s: %d\n%.500s", query, resp.StatusCode, body)
		}
		var rep audit.Report
		if err := json.Unmarshal([]byte(body), &rep); err != nil {
			t.Fatal(err)
		}
		return rep
	}
	rep := get("&limit=20")
	after, err := us.PeakRSS()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the replicator's peak memory: %d MB before the report, %d MB after", before>>20, after>>20)
	if grew := after - before; grew > 80<<20 {
		t.Errorf("a report listing 20 rows raised the replicator's peak memory by %d MB (the log's images are 240 MB)", grew>>20)
	}
	if rep.Summary.Total != records || rep.Summary.Logged != records || len(rep.Rows) != 20 || rep.RowsOmitted != records-20 {
		t.Fatalf("report: %d conflicts from %d records, %d rows listed, %d omitted; want %d, %d, 20, %d",
			rep.Summary.Total, rep.Summary.Logged, len(rep.Rows), rep.RowsOmitted, records, records, records-20)
	}
	if len(rep.Summary.HottestKeys) != audit.HotKeys || rep.Summary.HottestKeys[0].Count != records/500 {
		t.Errorf("hottest keys %+v, want %d keys of %d conflicts", rep.Summary.HottestKeys, audit.HotKeys, records/500)
	}
	// The newest first, with their row images.
	for i, row := range rep.Rows {
		g := i + 1
		if row.Key != `["`+strconv.Itoa(g%500)+`"]` || row.A.Version != "us:"+strconv.Itoa(g) || len(row.A.Row) < 3000 || len(row.B.Row) < 3000 {
			t.Fatalf("row %d: key %s, a %s with a %d-byte image, b %d bytes; want key %d, us:%d, 3 KB images",
				i, row.Key, row.A.Version, len(row.A.Row), len(row.B.Row), g%500, g)
		}
	}
	if rep := get(""); len(rep.Rows) != audit.DefaultLimit || rep.RowsOmitted != records-audit.DefaultLimit {
		t.Errorf("without a limit: %d rows listed, %d omitted; want %d", len(rep.Rows), rep.RowsOmitted, audit.DefaultLimit)
	}
}

// TestConflictReportInANonUTF8Database: the database sorts the records as
// the report compares them, by the bytes the client receives. In a
// WIN1252 database "€" (0x80) sorts before "é" (0xE9) by the database's
// own bytes, and after it in UTF-8: read by a client whose encoding is
// UTF8, sorting by the database's bytes gave records out of order and the
// report failed. A client in the database's encoding receives its bytes
// as they are.
func TestConflictReportInANonUTF8Database(t *testing.T) {
	h := startClusters(t, Spec{Regions: []string{"us"}, SchemaSQL: kvSchema, Tables: []TableSpec{{Name: "public.kv"}}})
	ctx := ctxFor(t, 2*time.Minute)
	us := h.Regions[0]
	admin, err := us.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, `CREATE DATABASE win1252 ENCODING 'WIN1252' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`); err != nil {
		t.Fatal(err)
	}
	connect := func(clientEncoding string) *pgx.Conn {
		t.Helper()
		conn, err := pgx.Connect(ctx, us.Cluster.URL("postgres", "win1252")+"&client_encoding="+clientEncoding)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return conn
	}
	utf8 := connect("UTF8")
	for _, sql := range []string{
		`CREATE SCHEMA polyregion`,
		`CREATE TABLE polyregion.conflict_log (id bigserial PRIMARY KEY, logged_at timestamptz NOT NULL DEFAULT now(),
			region text NOT NULL, tbl text NOT NULL, key text NOT NULL, kind text NOT NULL, policy text NOT NULL,
			winner text NOT NULL, winner_origin text NOT NULL, local_origin text NOT NULL, remote_origin text NOT NULL,
			local_version text NOT NULL, remote_version text NOT NULL, local_hlc bigint NOT NULL, remote_hlc bigint NOT NULL,
			local_row jsonb, remote_row jsonb, source_seq bigint NOT NULL, reason text NOT NULL, outcome text)`,
		// Two conflicts on each of two rows, each conflict logged twice
		// (by both its writers).
		`INSERT INTO polyregion.conflict_log (region, tbl, key, kind, policy, winner, winner_origin, local_origin, remote_origin,
			local_version, remote_version, local_hlc, remote_hlc, source_seq, reason)
		SELECT r.region, 'public.kv', k.key, 'update_update', 'last_writer_wins', r.winner, 'eu',
			r.local_origin, r.remote_origin, r.local_origin || ':' || n, r.remote_origin || ':' || n,
			CASE WHEN r.local_origin = 'us' THEN 2 * n ELSE 2 * n + 1 END, CASE WHEN r.local_origin = 'us' THEN 2 * n + 1 ELSE 2 * n END,
			n, 'test'
		FROM generate_series(1, 2) n, (VALUES ('["€"]'), ('["é"]')) k(key),
			(VALUES ('us', 'us', 'eu', 'remote'), ('eu', 'eu', 'us', 'local')) r(region, local_origin, remote_origin, winner)`,
	} {
		if _, err := utf8.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		enc  string
		conn *pgx.Conn
	}{{"UTF8", utf8}, {"WIN1252", connect("WIN1252")}} {
		rep, err := audit.Read(ctx, audit.DB{Name: "win1252", Q: c.conn}, audit.Filters{}, time.Now())
		if err != nil {
			t.Fatalf("client encoding %s: %v", c.enc, err)
		}
		if s := rep.Summary; s.Total != 4 || s.Logged != 8 || s.Disputed != 0 || len(s.HottestKeys) != 2 || s.HottestKeys[0].Count != 2 || s.HottestKeys[1].Count != 2 {
			t.Fatalf("client encoding %s: %d conflicts from %d records, %d disputed, hottest keys %+v; want 4 from 8, none disputed, two keys of 2",
				c.enc, s.Total, s.Logged, s.Disputed, s.HottestKeys)
		}
	}
}
