package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"io"
	"time"

	_ "embed"
)

//go:embed report.html.tmpl
var htmlSource string

var htmlTemplate = template.Must(template.New("report").Funcs(template.FuncMap{
	"sideOf": func(r Row, which string) sideView {
		s := r.A
		if which == "b" {
			s = r.B
		}
		return sideView{S: s, Won: r.Winner == which, Deleted: string(s.Row) == "null", RowText: rowText(s.Row)}
	},
}).Parse(htmlSource))

type sideView struct {
	S       Side
	Won     bool
	Deleted bool
	RowText string
}

type barRow struct {
	Name  string
	Count int
	Pct   string
}

type breakdown struct {
	ID, Title, Column string
	Rows              []barRow
}

type svgBar struct {
	X, Y, W, H string
	Start      string
	Count      int
}

type trendView struct {
	Width, Height, Base, LabelY int
	Max                         int
	BucketLabel                 string
	First, Last                 string
	Bars                        []svgBar
}

type htmlView struct {
	Report     Report
	Generated  string
	FilterText string
	Of         int
	Breakdowns []breakdown
	Trend      trendView
}

// rowText is a row image as read: JSON, one line (it wraps on the page).
func rowText(row json.RawMessage) string { return string(row) }

// every names a bucket size for people: "5 minutes", "hour", "7 days".
func every(seconds int64) string {
	d := time.Duration(seconds) * time.Second
	unit, n := "minute", int64(d/time.Minute)
	switch {
	case d >= 24*time.Hour && d%(24*time.Hour) == 0:
		unit, n = "day", int64(d/(24*time.Hour))
	case d >= time.Hour && d%time.Hour == 0:
		unit, n = "hour", int64(d/time.Hour)
	}
	if n == 1 {
		return unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

func bars(cs []Count) []barRow {
	top := 0
	for _, c := range cs {
		top = max(top, c.Count)
	}
	out := make([]barRow, len(cs))
	for i, c := range cs {
		out[i] = barRow{Name: c.Name, Count: c.Count, Pct: fmt.Sprintf("%.1f", 100*float64(c.Count)/float64(max(top, 1)))}
	}
	return out
}

func f1(v float64) string { return fmt.Sprintf("%.1f", v) }

func trendSVG(t Trend) trendView {
	v := trendView{Width: 1000, Height: 170, Base: 140, LabelY: 160, BucketLabel: every(t.BucketSeconds)}
	if len(t.Buckets) == 0 {
		return v
	}
	for _, b := range t.Buckets {
		v.Max = max(v.Max, b.Count)
	}
	const left, top = 42.0, 10.0
	slot := (float64(v.Width) - left) / float64(len(t.Buckets))
	gap := slot * 0.15
	for i, b := range t.Buckets {
		h := 0.0
		if v.Max > 0 {
			h = (float64(v.Base) - top) * float64(b.Count) / float64(v.Max)
		}
		v.Bars = append(v.Bars, svgBar{X: f1(left + float64(i)*slot + gap/2), Y: f1(float64(v.Base) - h), W: f1(slot - gap), H: f1(h),
			Start: b.Start.UTC().Format(time.RFC3339), Count: b.Count})
	}
	v.First = t.Buckets[0].Start.UTC().Format("2006-01-02 15:04 MST")
	v.Last = t.Buckets[len(t.Buckets)-1].Start.UTC().Format("2006-01-02 15:04 MST")
	return v
}

func renderHTML(w io.Writer, rep Report) error {
	s := rep.Summary
	view := htmlView{
		Report:     rep,
		Generated:  rep.GeneratedAt.UTC().Format("2006-01-02 15:04:05 MST"),
		FilterText: rep.Filters.Describe(),
		Of:         len(rep.Rows) + rep.RowsOmitted,
		Breakdowns: []breakdown{
			{ID: "by_table", Title: "By table", Column: "table", Rows: bars(s.ByTable)},
			{ID: "by_kind", Title: "By kind (write a _ write b)", Column: "kind", Rows: bars(s.ByKind)},
			{ID: "by_policy", Title: "By policy", Column: "policy", Rows: bars(s.ByPolicy)},
			{ID: "by_region_pair", Title: "By region pair", Column: "regions", Rows: bars(s.ByRegionPair)},
			{ID: "by_winner_region", Title: "By winning region", Column: "region", Rows: bars(s.ByWinner)},
		},
		Trend: trendSVG(s.Trend),
	}
	var buf bytes.Buffer
	if err := htmlTemplate.Execute(&buf, view); err != nil {
		return fmt.Errorf("render html report: %w", err)
	}
	_, err := w.Write(buf.Bytes())
	return err
}
