package integration

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

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
