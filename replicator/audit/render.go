package audit

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"
)

// ContentType is the HTTP content type of a format.
func ContentType(format string) string {
	switch format {
	case FormatCSV:
		return "text/csv; charset=utf-8"
	case FormatJSON:
		return "application/json"
	case FormatHTML:
		return "text/html; charset=utf-8"
	}
	return "text/plain; charset=utf-8"
}

// Render writes rep in format (FormatTable, FormatCSV, FormatJSON or
// FormatHTML).
//
//   - table: aligned text, the summary and then the detail rows (row images
//     clipped).
//   - csv: the detail rows only, one per conflict, with a header line
//     (CSVHeader); row images are JSON.
//   - json: the Report as its field tags name it (see the README's
//     "Conflict reports" section for the schema).
//   - html: one self-contained page (no external assets).
func Render(w io.Writer, rep Report, format string) error {
	switch format {
	case FormatTable:
		return renderTable(w, rep)
	case FormatCSV:
		return renderCSV(w, rep)
	case FormatJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	case FormatHTML:
		return renderHTML(w, rep)
	}
	_, err := ParseFormat(format)
	return err
}

// CSVHeader names the CSV columns.
var CSVHeader = []string{"time", "table", "key", "outcome", "kind", "policy", "winner", "winner_region",
	"a_origin", "a_version", "a_hlc", "a_hlc_time", "a_row",
	"b_origin", "b_version", "b_hlc", "b_hlc_time", "b_row",
	"reason", "logged_by", "disputed"}

func renderCSV(w io.Writer, rep Report) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(CSVHeader); err != nil {
		return err
	}
	for _, r := range rep.Rows {
		rec := []string{r.Time.Format(time.RFC3339Nano), r.Table, r.Key, r.Outcome, r.Kind, r.Policy, r.Winner, r.WinnerRegion}
		for _, s := range []Side{r.A, r.B} {
			rec = append(rec, s.Origin, s.Version, strconv.FormatInt(s.HLC, 10), s.HLCTime, string(s.Row))
		}
		rec = append(rec, r.Reason, strings.Join(r.LoggedBy, " "), strconv.FormatBool(r.Disputed))
		if err := cw.Write(rec); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// Describe is a one-line text form of the filters.
func (f Filters) Describe() string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	if !f.Since.IsZero() {
		add("since", f.Since.UTC().Format(time.RFC3339))
	}
	if !f.Until.IsZero() {
		add("until", f.Until.UTC().Format(time.RFC3339))
	}
	add("table", f.Table)
	add("region", f.Region)
	add("pair", f.Pair)
	if f.Limit > 0 {
		add("limit", strconv.Itoa(f.Limit))
	}
	if len(parts) == 0 {
		return "none (every conflict logged)"
	}
	return strings.Join(parts, " ")
}

func renderTable(out io.Writer, rep Report) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	s := rep.Summary
	fmt.Fprintf(w, "Conflict report\tgenerated %s\n", rep.GeneratedAt.Format(time.RFC3339))
	fmt.Fprintf(w, "filters\t%s\n", rep.Filters.Describe())
	fmt.Fprintf(w, "writes lost (overwritten)\t%d\n", s.Overwritten)
	fmt.Fprintf(w, "merged (nothing lost)\t%d%s\n", s.Merged, mergedText(s.MergedBy))
	fmt.Fprintf(w, "distinct conflicts\t%d\n", s.Total)
	fmt.Fprintf(w, "log records read\t%d (a conflict is logged by each region that resolved it)\n", s.Logged)
	fmt.Fprintf(w, "disputed winners\t%d\n", s.Disputed)
	for _, b := range []struct {
		title string
		c     []Count
	}{{"TABLE", s.ByTable}, {"KIND", s.ByKind}, {"POLICY", s.ByPolicy}, {"REGION PAIR", s.ByRegionPair}, {"WINNER REGION", s.ByWinner}} {
		fmt.Fprintf(w, "\n%s\tLOST WRITES\n", b.title)
		for _, c := range b.c {
			fmt.Fprintf(w, "%s\t%d\n", clip(c.Name, 60), c.Count)
		}
	}
	fmt.Fprintf(w, "\nHOTTEST KEYS\tTABLE\tLOST WRITES\n")
	for _, k := range s.HottestKeys {
		fmt.Fprintf(w, "%s\t%s\t%d\n", clip(k.Key, 60), k.Table, k.Count)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	top := 0
	for _, b := range s.Trend.Buckets {
		top = max(top, b.Count)
	}
	fmt.Fprintf(w, "\nTREND (per %s)\tLOST WRITES\t\n", time.Duration(s.Trend.BucketSeconds)*time.Second)
	for _, b := range s.Trend.Buckets {
		bar := ""
		if top > 0 {
			bar = strings.Repeat("#", (b.Count*40+top-1)/top)
		}
		fmt.Fprintf(w, "%s\t%d\t%s\n", b.Start.Format(time.RFC3339), b.Count, bar)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nCONFLICTS (lost writes first, newest first, %d of %d)\n", len(rep.Rows), len(rep.Rows)+rep.RowsOmitted)
	fmt.Fprintln(w, "TIME\tTABLE\tKEY\tOUTCOME\tKIND\tPOLICY\tWINNER\tWRITE A\tROW A\tWRITE B\tROW B\tLOGGED BY\tREASON")
	for _, r := range rep.Rows {
		win := r.Winner + " (" + r.WinnerRegion + ")"
		if r.Disputed {
			win += " DISPUTED"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Time.Format(time.RFC3339), r.Table, clip(r.Key, 60), r.Outcome, r.Kind, r.Policy, win,
			sideText(r.A), clip(string(r.A.Row), 40), sideText(r.B), clip(string(r.B.Row), 40), strings.Join(r.LoggedBy, ","), clip(r.Reason, 200))
	}
	return w.Flush()
}

// mergedText is the merged conflicts per table, for the summary line.
func mergedText(by []Count) string {
	if len(by) == 0 {
		return ""
	}
	parts := make([]string, len(by))
	for i, c := range by {
		parts[i] = c.Name + " " + strconv.Itoa(c.Count)
	}
	return " (" + clip(strings.Join(parts, ", "), 120) + ")"
}

func sideText(s Side) string { return s.Origin + " " + s.HLCTime + " [" + s.Version + "]" }

// clip shortens s to n runes, marking the cut; tabs and newlines become
// spaces so a cell stays one cell.
func clip(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if r == '\t' || r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}
