package integration

import (
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/polyregion/polyregion/replicator/audit"
)

// opsFetch fetches a path from a region's operations server.
func opsFetch(t *testing.T, r *Region, method, path string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+r.HTTPListen+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s %s: %v", r.Name, method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// TestOpsRoutesServeConflictReport checks the conflict report each
// replicator serves on its operations server (GET /conflicts/report) beside
// the embedded index's /search/: it reads that region's own conflict log
// (JSON by default, HTML on request, the filters applied) and answers a bad
// parameter with 400 naming it.
func TestOpsRoutesServeConflictReport(t *testing.T) {
	dir := testDir(t)
	schema := []string{`CREATE TABLE public.kv (id integer PRIMARY KEY, val text)`}
	tables := []TableSpec{{Name: "public.kv"}}
	h := startRegions(t, Spec{Dir: dir, Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: tables,
		Configure: func(region string, c *RegionConfig) {
			c.Search = &SearchSection{Dir: filepath.Join(dir, region+"-index"), FlushInterval: "100ms",
				Indices: []SearchIndex{{Table: "public.kv"}}}
		}})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]

	// No conflict yet: an empty report, not an error.
	resp, body := opsFetch(t, us, "GET", "/conflicts/report")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("empty report: %d %s\n%s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}

	// Two concurrent updates of one row: each region logs the conflict.
	mustExec(t, ctx, us, `INSERT INTO public.kv VALUES (1, 'base'), (2, 'base')`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	stopAll(t, h)
	mustExec(t, ctx, us, `UPDATE public.kv SET val = 'us <i>wrote</i>' WHERE id = 1`)
	time.Sleep(20 * time.Millisecond)
	mustExec(t, ctx, eu, `UPDATE public.kv SET val = 'eu' WHERE id = 1`)
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), 2*time.Minute); err != nil {
		t.Fatal(err)
	}

	for _, r := range h.Regions {
		logged := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log`)
		resp, body := opsFetch(t, r, "GET", "/conflicts/report?since=1h&table=public.kv")
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
			t.Fatalf("%s: JSON report: %d %s\n%s", r.Name, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		var rep audit.Report
		if err := json.Unmarshal([]byte(body), &rep); err != nil {
			t.Fatalf("%s: JSON report: %v\n%s", r.Name, err, body)
		}
		if logged != 1 || rep.Summary.Total != 1 || rep.Summary.Logged != 1 || len(rep.Rows) != 1 {
			t.Fatalf("%s: %d records in its log; report: %d conflicts from %d records, %d rows; want 1 each (its own log only)\n%s",
				r.Name, logged, rep.Summary.Total, rep.Summary.Logged, len(rep.Rows), body)
		}
		row := rep.Rows[0]
		if row.Table != "public.kv" || row.Key != `["1"]` || row.Kind != "update_update" || row.WinnerRegion != "eu" ||
			len(row.LoggedBy) != 1 || row.LoggedBy[0] != r.Name || rep.Filters.Table != "public.kv" || rep.Filters.Since.IsZero() {
			t.Fatalf("%s: report row %+v, filters %+v", r.Name, row, rep.Filters)
		}

		// A filter that selects nothing.
		_, body = opsFetch(t, r, "GET", "/conflicts/report?pair=ap,us")
		if err := json.Unmarshal([]byte(body), &rep); err != nil || rep.Summary.Total != 0 {
			t.Fatalf("%s: pair=ap,us: %v\n%s", r.Name, err, body)
		}

		resp, body = opsFetch(t, r, "GET", "/conflicts/report?format=html")
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
			resp.Header.Get("Content-Security-Policy") == "" {
			t.Fatalf("%s: HTML report: %d %v\n%s", r.Name, resp.StatusCode, resp.Header, body)
		}
		for _, want := range []string{"<html", "public.kv", "update_update", "us &lt;i&gt;wrote&lt;/i&gt;"} {
			if !strings.Contains(body, want) {
				t.Fatalf("%s: HTML report lacks %q:\n%s", r.Name, want, body)
			}
		}
		if strings.Contains(body, "<i>wrote</i>") {
			t.Fatalf("%s: HTML report carries a row image unescaped", r.Name)
		}

		for _, bad := range []struct{ query, names string }{
			{"since=yesterdayish", "since"},
			{"format=xml", "format"},
			{"limit=-1", "limit"},
			{"colour=red", "colour"},
		} {
			resp, body := opsFetch(t, r, "GET", "/conflicts/report?"+bad.query)
			if resp.StatusCode != 400 || !strings.Contains(body, bad.names) {
				t.Fatalf("%s: ?%s: %d, want 400 naming %s:\n%s", r.Name, bad.query, resp.StatusCode, bad.names, body)
			}
		}
		if resp, body := opsFetch(t, r, "POST", "/conflicts/report"); resp.StatusCode != 405 {
			t.Fatalf("%s: POST: %d, want 405\n%s", r.Name, resp.StatusCode, body)
		}

		// The embedded index is still served beside it.
		waitFor(ctx, t, time.Minute, r.Name+" index of public.kv", func() bool {
			resp, body := opsFetch(t, r, "GET", "/search/kv?q=val:eu")
			return resp.StatusCode == 200 && strings.Contains(body, `"total":1`)
		})
	}
}
