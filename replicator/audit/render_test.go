package audit

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func sampleReport(t *testing.T) Report {
	t.Helper()
	recs := many(12, 3*time.Hour)
	_, _, pair := onePairThreeLoggers()
	// A hostile key and row image: everything must come out escaped.
	evil := write{"ap", "ap:1", hlc(t0.Add(time.Hour), 0), `{"id": "<script>alert(1)</script>", "val": "a&b"}`}
	other := write{"us", "us:9", hlc(t0.Add(time.Hour), 2), `{"id": "x", "val": "\"quoted\""}`}
	recs = append(recs, pair...)
	recs = append(recs, logged(99, "ap", t0.Add(time.Hour+time.Second), "public.kv", `["<img src=x onerror=alert(1)>"]`, "insert_insert", evil, other, "remote"))
	return Build(recs, Filters{}, t0.Add(4*time.Hour))
}

func render(t *testing.T, rep Report, format string) string {
	t.Helper()
	var b bytes.Buffer
	if err := Render(&b, rep, format); err != nil {
		t.Fatalf("render %s: %v", format, err)
	}
	return b.String()
}

func TestRenderJSONFieldNamesAreStable(t *testing.T) {
	rep := sampleReport(t)
	out := render(t, rep, FormatJSON)
	var back Report
	if err := json.Unmarshal([]byte(out), &back); err != nil {
		t.Fatal(err)
	}
	if back.Summary.Total != rep.Summary.Total || len(back.Rows) != len(rep.Rows) || back.Rows[0].Key != rep.Rows[0].Key {
		t.Errorf("JSON does not round-trip")
	}
	var generic map[string]any
	_ = json.Unmarshal([]byte(out), &generic)
	keys := func(m any) []string {
		var out []string
		for k := range m.(map[string]any) {
			out = append(out, k)
		}
		slices.Sort(out)
		return out
	}
	want := map[string][]string{
		"report":  {"filters", "generated_at", "rows", "rows_omitted", "summary"},
		"summary": {"by_kind", "by_policy", "by_region_pair", "by_table", "by_winner_region", "disputed", "hottest_keys", "logged", "merged", "merged_by_table", "overwritten", "total", "trend"},
		"row":     {"a", "b", "disputed", "key", "kind", "logged_by", "outcome", "policy", "reason", "table", "time", "winner", "winner_region"},
		"side":    {"hlc", "hlc_time", "origin", "row", "version"},
		"trend":   {"bucket_seconds", "buckets"},
	}
	summary := generic["summary"].(map[string]any)
	row := generic["rows"].([]any)[0].(map[string]any)
	got := map[string][]string{"report": keys(generic), "summary": keys(summary), "row": keys(row), "side": keys(row["a"]), "trend": keys(summary["trend"])}
	for k := range want {
		if !slices.Equal(got[k], want[k]) {
			t.Errorf("%s fields %v, want %v (a change here breaks readers of the JSON report)", k, got[k], want[k])
		}
	}
}

func TestRenderCSV(t *testing.T) {
	rep := sampleReport(t)
	recs, err := csv.NewReader(strings.NewReader(render(t, rep, FormatCSV))).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(recs[0], CSVHeader) || len(recs) != len(rep.Rows)+1 {
		t.Fatalf("header %v and %d lines for %d rows", recs[0], len(recs), len(rep.Rows))
	}
	col := func(name string) int { return slices.Index(CSVHeader, name) }
	for i, r := range rep.Rows {
		line := recs[i+1]
		if line[col("key")] != r.Key || line[col("winner_region")] != r.WinnerRegion || line[col("b_row")] != string(r.B.Row) ||
			line[col("a_hlc")] != strconv.FormatInt(r.A.HLC, 10) || line[col("logged_by")] != strings.Join(r.LoggedBy, " ") {
			t.Errorf("line %d %v does not match row %+v", i+1, line, r)
		}
	}
}

func TestRenderTable(t *testing.T) {
	rep := sampleReport(t)
	out := render(t, rep, FormatTable)
	summary := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, "  "); ok {
			summary[k] = strings.TrimSpace(v)
		}
	}
	if summary["writes lost (overwritten)"] != strconv.Itoa(rep.Summary.Overwritten) || summary["distinct conflicts"] != strconv.Itoa(rep.Summary.Total) ||
		summary["merged (nothing lost)"] != strconv.Itoa(rep.Summary.Merged) {
		t.Errorf("summary lines %q, %q, %q; want %d lost, %d merged, %d in all", summary["writes lost (overwritten)"], summary["merged (nothing lost)"],
			summary["distinct conflicts"], rep.Summary.Overwritten, rep.Summary.Merged, rep.Summary.Total)
	}
	for _, want := range []string{"REGION PAIR", "HOTTEST KEYS", "TREND (per 5m0s)", "CONFLICTS (lost writes first, newest first, 14 of 14)", "us,eu,ap", "overwritten"} {
		if !strings.Contains(out, want) {
			t.Errorf("table output lacks %q:\n%s", want, out)
		}
	}
	// Aligned: every detail line starts its second column at the same place.
	lines := strings.Split(out, "\n")
	i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "TIME ") })
	at := strings.Index(lines[i], "TABLE")
	for _, l := range lines[i+1 : i+1+len(rep.Rows)] {
		if !strings.HasPrefix(l[at:], "public.") {
			t.Errorf("misaligned detail line %q", l)
		}
	}
}

var externalRef = regexp.MustCompile(`<[^>]*\s(src|href|xlink:href)\s*=[^>]*>`)

var attrValue = regexp.MustCompile(`="[^"]*"`)

var dataValue = regexp.MustCompile(`id="(total|logged|disputed)" data-value="(\d+)"`)

func TestRenderHTMLIsSelfContainedEscapedAndMatchesTheNumbers(t *testing.T) {
	rep := sampleReport(t)
	out := render(t, rep, FormatHTML)
	for _, bad := range []string{"<script", "<img", "<link", "<iframe", "@import", "url("} {
		if strings.Contains(out, bad) {
			t.Errorf("html contains %q (unescaped input or an external asset)", bad)
		}
	}
	if m := externalRef.FindString(attrValue.ReplaceAllString(out, `=""`)); m != "" {
		t.Errorf("html refers to something outside the page: %s", m)
	}
	if !strings.Contains(out, "&lt;script&gt;") && !strings.Contains(out, `\u003cscript`) {
		t.Errorf("hostile row image not shown escaped")
	}
	got := map[string]int{}
	for _, m := range dataValue.FindAllStringSubmatch(out, -1) {
		got[m[1]], _ = strconv.Atoi(m[2])
	}
	s := rep.Summary
	if got["total"] != s.Total || got["logged"] != s.Logged || got["disputed"] != s.Disputed {
		t.Errorf("html numbers %v, summary %d/%d/%d", got, s.Total, s.Logged, s.Disputed)
	}
	if n := strings.Count(out, `<tr class="conflict"`); n != len(rep.Rows) {
		t.Errorf("%d detail rows in html, want %d", n, len(rep.Rows))
	}
	if n := strings.Count(out, `<rect class="bucket"`); n != len(s.Trend.Buckets) {
		t.Errorf("%d trend bars, want %d", n, len(s.Trend.Buckets))
	}
	for _, c := range s.ByRegionPair {
		if !strings.Contains(out, `data-name="`+c.Name+`" data-count="`+strconv.Itoa(c.Count)+`"`) {
			t.Errorf("region pair %s=%d missing from the html", c.Name, c.Count)
		}
	}
	// An empty report renders too.
	empty := render(t, Build(nil, Filters{Table: "public.none"}, t0), FormatHTML)
	if !strings.Contains(empty, "No conflicts match the filters.") {
		t.Errorf("empty report page lacks its message")
	}
}

func TestHandler(t *testing.T) {
	_, _, recs := onePairThreeLoggers()
	srv := httptest.NewServer(Handler(Records(recs)))
	defer srv.Close()
	get := func(query string) (*http.Response, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/conflicts/report?" + query)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	for format, ctype := range map[string]string{"": "application/json", "json": "application/json", "csv": "text/csv; charset=utf-8",
		"html": "text/html; charset=utf-8", "table": "text/plain; charset=utf-8"} {
		q := ""
		if format != "" {
			q = "format=" + format
		}
		resp, body := get(q)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != ctype || body == "" {
			t.Errorf("format %q: %d %q", format, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
	}
	resp, body := get("since=last+tuesday")
	if resp.StatusCode != 400 || !strings.Contains(body, "since:") {
		t.Errorf("bad since: %d %q", resp.StatusCode, body)
	}
	resp, _ = get("limit=1&regoin=us")
	if resp.StatusCode != 400 {
		t.Errorf("unknown parameter: %d", resp.StatusCode)
	}
	r, err := http.Post(srv.URL+"/conflicts/report", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", r.StatusCode)
	}
}
