package integration

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"html"
	"image"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/polyregion/polyregion/replicator/audit"
)

// TestConflictReportAcrossRegions produces conflicts between pairs of
// regions in three regions (each pair also received, and so logged, by the
// third region), reports over all three conflict logs, and checks: each
// pair counted once, the JSON numbers, the filters, the HTTP handler, the
// CLI (csv and json), and the HTML page rendered in headless Chromium, whose
// numbers must equal the JSON report's.
func TestConflictReportAcrossRegions(t *testing.T) {
	schema := []string{
		`CREATE TABLE public.kv (id integer PRIMARY KEY, val text)`,
		`CREATE TABLE public.orders (id integer PRIMARY KEY, status text)`,
	}
	tables := []TableSpec{{Name: "public.kv"}, {Name: "public.orders", Deletes: "delete_wins"}}
	h := startRegions(t, Spec{SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 5*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	start := time.Now().Add(-time.Minute).UTC().Truncate(time.Second)

	mustExec(t, ctx, us, `INSERT INTO public.kv SELECT g, 'base' FROM generate_series(1, 5) g`)
	mustExec(t, ctx, us, `INSERT INTO public.orders SELECT g, 'new' FROM generate_series(1, 5) g`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	stopAll(t, h)
	step := func() { time.Sleep(20 * time.Millisecond) } // orders the hybrid clocks
	// Four pairs of concurrent writes, each made in two regions; the third
	// region receives both writes and resolves the pair too.
	mustExec(t, ctx, us, `UPDATE public.kv SET val = 'us <b>&</b>' WHERE id = 1`) // escaped on the page
	step()
	mustExec(t, ctx, eu, `UPDATE public.kv SET val = 'eu' WHERE id = 1`)
	mustExec(t, ctx, eu, `UPDATE public.kv SET val = 'eu' WHERE id = 2`)
	step()
	mustExec(t, ctx, ap, `UPDATE public.kv SET val = 'ap' WHERE id = 2`)
	mustExec(t, ctx, us, `DELETE FROM public.kv WHERE id = 3`)
	step()
	mustExec(t, ctx, ap, `UPDATE public.kv SET val = 'ap-after-delete' WHERE id = 3`)
	mustExec(t, ctx, us, `UPDATE public.orders SET status = 'paid' WHERE id = 1`)
	step()
	mustExec(t, ctx, eu, `DELETE FROM public.orders WHERE id = 1`)
	if err := h.StartReplicators(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	until := time.Now().Add(time.Minute).UTC().Truncate(time.Second)
	window := "since=" + start.Format(time.RFC3339) + "&until=" + until.Format(time.RFC3339)

	var logged int64
	var src audit.Sources
	for _, r := range h.Regions {
		logged += queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.conflict_log`)
		pool, err := pgxpool.New(ctx, r.Cluster.URL("polyregion", AppDB))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		src = append(src, audit.DB{Name: r.Name, Q: pool})
	}

	// The report over all three logs: each pair once, logged by all three.
	rep, err := audit.Read(ctx, src, audit.Filters{Since: start, Until: until}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	s := rep.Summary
	if s.Total != 4 || int64(s.Logged) != logged || logged != 12 || s.Disputed != 0 {
		t.Fatalf("report: %d conflicts from %d records (%d in the logs), %d disputed; want 4 from 12, none disputed\n%s",
			s.Total, s.Logged, logged, s.Disputed, mustJSON(t, rep))
	}
	type want struct{ kind, policy, winner, winnerRegion, pair string }
	wants := map[string]want{
		`public.kv ["1"]`:     {"update_update", "last_writer_wins", "b", "eu", "eu-us"},
		`public.kv ["2"]`:     {"update_update", "last_writer_wins", "b", "ap", "ap-eu"},
		`public.kv ["3"]`:     {"delete_update", "last_writer_wins", "b", "ap", "ap-us"},
		`public.orders ["1"]`: {"update_delete", "last_writer_wins+delete_wins", "b", "eu", "eu-us"},
	}
	for _, row := range rep.Rows {
		id := row.Table + " " + row.Key
		w, ok := wants[id]
		if !ok {
			t.Errorf("unexpected conflict %s", id)
			continue
		}
		got := want{row.Kind, row.Policy, row.Winner, row.WinnerRegion, row.RegionPair()}
		if got != w {
			t.Errorf("%s: got %+v, want %+v", id, got, w)
		}
		if len(row.LoggedBy) != 3 {
			t.Errorf("%s: logged by %v, want all three regions (one row for the pair)", id, row.LoggedBy)
		}
		if row.A.HLC >= row.B.HLC || row.A.Version == "" || row.B.Version == "" {
			t.Errorf("%s: sides a=%+v b=%+v", id, row.A, row.B)
		}
		// The row images, read for the listed rows from the log that
		// logged each first.
		if id == `public.kv ["1"]` && (!strings.Contains(string(row.A.Row), `us <b>&</b>`) || !strings.Contains(string(row.B.Row), `"eu"`)) {
			t.Errorf("%s: row images a=%s b=%s, want us's and eu's values", id, row.A.Row, row.B.Row)
		}
		if id == `public.kv ["3"]` && (string(row.A.Row) != "null" || !strings.Contains(string(row.B.Row), `ap-after-delete`)) {
			t.Errorf("%s: row images a=%s b=%s, want us's delete (null) and ap's update", id, row.A.Row, row.B.Row)
		}
	}
	if len(rep.Rows) != 4 {
		t.Errorf("%d detail rows, want 4", len(rep.Rows))
	}
	// Reading one region's log alone gives the same conflicts (each region
	// saw every pair here), so reading more logs only adds loggers.
	one, err := audit.Read(ctx, src[2], audit.Filters{}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if one.Summary.Total != 4 || one.Summary.Logged != 4 {
		t.Errorf("ap's log alone: %d conflicts from %d records, want 4 from 4", one.Summary.Total, one.Summary.Logged)
	}

	// The HTTP handler over the same logs.
	srv := httptest.NewServer(audit.Handler(src))
	defer srv.Close()
	get := func(query string) (int, string, []byte) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/conflicts/report?" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, resp.Header.Get("Content-Type"), b
	}
	code, ctype, body := get(window + "&format=json")
	var viaHTTP audit.Report
	if code != 200 || ctype != "application/json" {
		t.Fatalf("GET json: %d %s: %s", code, ctype, body)
	}
	if err := json.Unmarshal(body, &viaHTTP); err != nil {
		t.Fatal(err)
	}
	if !sameSummary(viaHTTP.Summary, rep.Summary) {
		t.Errorf("HTTP summary differs:\n%s\nvs\n%s", mustJSON(t, viaHTTP.Summary), mustJSON(t, rep.Summary))
	}
	for query, wantTotal := range map[string]int{
		"region=ap": 2, "pair=us,eu": 2, "table=public.orders": 1, "table=public.kv&pair=eu-us": 1,
		"since=" + until.Format(time.RFC3339): 0,
	} {
		code, _, body := get(query + "&format=json")
		var r audit.Report
		if code != 200 || json.Unmarshal(body, &r) != nil || r.Summary.Total != wantTotal {
			t.Errorf("GET %s: %d, %d conflicts, want %d: %s", query, code, r.Summary.Total, wantTotal, body)
		}
	}
	for _, bad := range []string{"since=soon", "format=xml", "table=kv", "pair=us", "limit=-2", "colour=red"} {
		code, ctype, body := get(bad)
		if code != 400 || !strings.HasPrefix(ctype, "text/plain") || !strings.Contains(string(body), "bad parameters") {
			t.Errorf("GET %s: %d %s %q, want 400 naming the problem", bad, code, ctype, body)
		}
	}
	code, ctype, page := get(window + "&format=html")
	if code != 200 || ctype != "text/html; charset=utf-8" {
		t.Fatalf("GET html: %d %s", code, ctype)
	}

	// The CLI over the three configs: csv and json.
	dir := h.Spec.Dir
	report := func(args ...string) []byte {
		t.Helper()
		full := []string{"conflicts", "report", "--config", us.ConfigPath, "--config", eu.ConfigPath + "," + ap.ConfigPath,
			"--since", start.Format(time.RFC3339), "--until", until.Format(time.RFC3339)}
		return cli(t, ctx, "", append(full, args...)...)
	}
	var viaCLI audit.Report
	if err := json.Unmarshal(report("--format", "json"), &viaCLI); err != nil {
		t.Fatal(err)
	}
	if !sameSummary(viaCLI.Summary, rep.Summary) || len(viaCLI.Rows) != 4 {
		t.Errorf("CLI json differs:\n%s", mustJSON(t, viaCLI.Summary))
	}
	csvPath := filepath.Join(dir, "report.csv")
	report("--format", "csv", "--limit", "0", "--output", csvPath)
	f, err := os.Open(csvPath)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := csv.NewReader(f).ReadAll()
	f.Close()
	if err != nil || len(lines) != 5 || strings.Join(lines[0], ",") != strings.Join(audit.CSVHeader, ",") {
		t.Errorf("CLI csv: %v, %d lines (want a header and 4 rows): %v", err, len(lines), lines)
	}
	if out := report("--format", "table", "--table", "public.orders"); !regexp.MustCompile(`(?m)^writes lost \(overwritten\)\s+1$`).Match(out) ||
		!regexp.MustCompile(`(?m)^distinct conflicts\s+1$`).Match(out) {
		t.Errorf("CLI table output:\n%s", out)
	}

	// The HTML page's numbers equal the JSON report's, checked both in the
	// page as served and in the DOM Chromium renders from it.
	htmlPath := filepath.Join(dir, "report.html")
	if err := os.WriteFile(htmlPath, page, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := pageMatchesReport(string(page), viaHTTP); err != nil {
		t.Errorf("served page: %v", err)
	}
	if strings.Contains(string(page), "<b>&") {
		t.Errorf("row image text reached the page unescaped")
	}
	t.Run("rendered in headless Chromium", func(t *testing.T) {
		browser := findChromium()
		if browser == "" {
			if os.Getenv("CI") == "true" {
				t.Fatal("chromium is not installed (.ci/setup-chromium installs it); the HTML report must be checked in CI")
			}
			t.Skip("chromium not installed (run .ci/setup-chromium); HTML report not rendered")
		}
		dom := runChromium(t, ctx, browser, dir, "--dump-dom", "file://"+htmlPath)
		if err := pageMatchesReport(string(dom), viaHTTP); err != nil {
			t.Errorf("DOM rendered by chromium: %v", err)
		}
		shot := filepath.Join(dir, "report.png")
		runChromium(t, ctx, browser, dir, "--screenshot="+shot, "--window-size=1280,2000", "--hide-scrollbars", "file://"+htmlPath)
		checkScreenshot(t, shot, 1280, 2000)
		if keep := os.Getenv("POLYREGION_REPORT_SCREENSHOT"); keep != "" {
			b, _ := os.ReadFile(shot)
			_ = os.WriteFile(keep, b, 0o644)
		}
	})
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func sameSummary(a, b audit.Summary) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

var (
	reCard    = regexp.MustCompile(`id="(total|logged|disputed)" data-value="(\d+)"`)
	reTable   = regexp.MustCompile(`(?s)<table id="(by_[a-z_]+)">(.*?)</table>`)
	reGroup   = regexp.MustCompile(`<tr data-name="([^"]*)" data-count="(\d+)">`)
	reHot     = regexp.MustCompile(`<tr data-table="([^"]*)" data-key="([^"]*)" data-count="(\d+)">`)
	reBucket  = regexp.MustCompile(`<rect class="bucket"[^>]* data-start="([^"]+)" data-count="(\d+)"`)
	reShown   = regexp.MustCompile(`id="shown" data-shown="(\d+)" data-of="(\d+)"`)
	reHTMLRow = regexp.MustCompile(`<tr class="conflict" data-table="([^"]*)" data-key="([^"]*)" data-kind="([^"]*)" data-winner="([ab])" data-winner-region="([^"]*)"`)
)

// pageMatchesReport reads the numbers an HTML report carries in its ids and
// data attributes and compares them with rep.
func pageMatchesReport(page string, rep audit.Report) error {
	var problems []string
	bad := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf(format, args...))
	}
	cards := map[string]int{}
	for _, m := range reCard.FindAllStringSubmatch(page, -1) {
		cards[m[1]] = atoi(m[2])
	}
	s := rep.Summary
	if len(cards) != 3 || cards["total"] != s.Total || cards["logged"] != s.Logged || cards["disputed"] != s.Disputed {
		bad("cards %v, json total=%d logged=%d disputed=%d", cards, s.Total, s.Logged, s.Disputed)
	}
	want := map[string][]audit.Count{"by_table": s.ByTable, "by_kind": s.ByKind, "by_policy": s.ByPolicy,
		"by_region_pair": s.ByRegionPair, "by_winner_region": s.ByWinner}
	seen := 0
	for _, m := range reTable.FindAllStringSubmatch(page, -1) {
		w, ok := want[m[1]]
		if !ok {
			continue
		}
		seen++
		var got []audit.Count
		for _, g := range reGroup.FindAllStringSubmatch(m[2], -1) {
			got = append(got, audit.Count{Name: unescape(g[1]), Count: atoi(g[2])})
		}
		if fmt.Sprintf("%v", got) != fmt.Sprintf("%v", w) {
			bad("%s: page %v, json %v", m[1], got, w)
		}
	}
	if seen != len(want) {
		bad("%d of %d breakdown tables found", seen, len(want))
	}
	var hot []audit.KeyCount
	for _, m := range reHot.FindAllStringSubmatch(page, -1) {
		hot = append(hot, audit.KeyCount{Table: unescape(m[1]), Key: unescape(m[2]), Count: atoi(m[3])})
	}
	if fmt.Sprintf("%v", hot) != fmt.Sprintf("%v", s.HottestKeys) {
		bad("hottest keys: page %v, json %v", hot, s.HottestKeys)
	}
	buckets := reBucket.FindAllStringSubmatch(page, -1)
	if len(buckets) != len(s.Trend.Buckets) {
		bad("%d trend bars, json %d buckets", len(buckets), len(s.Trend.Buckets))
	} else {
		for i, m := range buckets {
			b := s.Trend.Buckets[i]
			if m[1] != b.Start.UTC().Format(time.RFC3339) || atoi(m[2]) != b.Count {
				bad("trend bar %d: %s=%s, json %s=%d", i, m[1], m[2], b.Start.Format(time.RFC3339), b.Count)
			}
		}
	}
	if m := reShown.FindStringSubmatch(page); m == nil || atoi(m[1]) != len(rep.Rows) || atoi(m[2]) != len(rep.Rows)+rep.RowsOmitted {
		bad("shown %v, json %d rows of %d", m, len(rep.Rows), len(rep.Rows)+rep.RowsOmitted)
	}
	rows := reHTMLRow.FindAllStringSubmatch(page, -1)
	if len(rows) != len(rep.Rows) {
		bad("%d detail rows on the page, json %d", len(rows), len(rep.Rows))
	} else {
		for i, m := range rows {
			r := rep.Rows[i]
			got := []string{unescape(m[1]), unescape(m[2]), m[3], m[4], m[5]}
			if strings.Join(got, "|") != strings.Join([]string{r.Table, r.Key, r.Kind, r.Winner, r.WinnerRegion}, "|") {
				bad("detail row %d: page %v, json %s %s %s %s %s", i, got, r.Table, r.Key, r.Kind, r.Winner, r.WinnerRegion)
			}
		}
	}
	if len(problems) > 0 {
		return &pageError{problems}
	}
	return nil
}

type pageError struct{ problems []string }

func (e *pageError) Error() string {
	return "page and JSON differ:\n  " + strings.Join(e.problems, "\n  ")
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

// unescape undoes the HTML escaping of an attribute value.
func unescape(s string) string { return html.UnescapeString(s) }

func findChromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// runChromium runs headless Chromium with its own profile directory and
// returns its standard output.
func runChromium(t *testing.T, ctx context.Context, browser, dir string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	profile, err := os.MkdirTemp(dir, "chromium-profile-")
	if err != nil {
		t.Fatal(err)
	}
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--user-data-dir=" + profile}
	cmd := exec.CommandContext(ctx, browser, append(base, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", browser, strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// checkScreenshot decodes the PNG and checks its size, its dimensions and
// that it is not blank.
func checkScreenshot(t *testing.T, path string, width, height int) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	if st.Size() < 20<<10 {
		t.Errorf("screenshot is only %d bytes", st.Size())
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != width || b.Dy() != height {
		t.Errorf("screenshot is %dx%d, want %dx%d", b.Dx(), b.Dy(), width, height)
	}
	if ink := inked(img); ink < 0.01 {
		t.Errorf("screenshot is nearly blank (%.2f%% of pixels not white)", 100*ink)
	}
	t.Logf("screenshot %s: %d bytes, %dx%d, %.1f%% inked", path, st.Size(), img.Bounds().Dx(), img.Bounds().Dy(), 100*inked(img))
}

// inked is the share of pixels that are not (near) white.
func inked(img image.Image) float64 {
	b := img.Bounds()
	n := 0
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			r, g, bl, _ := img.At(x, y).RGBA()
			if r < 0xf000 || g < 0xf000 || bl < 0xf000 {
				n++
			}
		}
	}
	return float64(n) / float64((b.Dx()/2)*(b.Dy()/2))
}
