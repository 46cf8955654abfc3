package obs

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
)

var seriesName = regexp.MustCompile(`\b(polyregion_[a-z0-9_]+|process_[a-z0-9_]+|go_[a-z0-9_]+)\b`)

// DeployMetricNames returns every metric name the shipped Grafana
// dashboard and Prometheus alerts use, with the files naming each.
func DeployMetricNames(root string) (map[string][]string, error) {
	out := map[string][]string{}
	add := func(file, expr string) {
		for _, m := range seriesName.FindAllString(expr, -1) {
			out[m] = append(out[m], file)
		}
	}
	dash := filepath.Join(root, "deploy", "grafana", "polyregion-dashboard.json")
	b, err := os.ReadFile(dash)
	if err != nil {
		return nil, err
	}
	var d struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Query any `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, err
	}
	for _, p := range d.Panels {
		for _, t := range p.Targets {
			add(dash, t.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if q, ok := v.Query.(string); ok {
			add(dash, q)
		}
	}
	alerts := filepath.Join(root, "deploy", "prometheus", "alerts.yml")
	if b, err = os.ReadFile(alerts); err != nil {
		return nil, err
	}
	var a struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &a); err != nil {
		return nil, err
	}
	for _, g := range a.Groups {
		for _, r := range g.Rules {
			add(alerts, r.Expr)
		}
	}
	return out, nil
}

// MissingSeries lists the names used by the deploy files that the
// exposition text (or family names) does not contain. A histogram's
// _bucket, _sum and _count series count as its family.
func MissingSeries(used map[string][]string, families map[string]bool) []string {
	var missing []string
	for name := range used {
		base := name
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(name, suf); ok && families[b] {
				base = b
			}
		}
		if !families[base] {
			missing = append(missing, name)
		}
	}
	sort.Strings(missing)
	return missing
}

func TestMetricsDeployFilesUseExistingSeries(t *testing.T) {
	m := NewMetrics("us", []conflict.RegionID{"eu", "ap"}, []regions.Table{{Name: "public.t"}, {Name: "public.c", Policy: conflict.Policy{Counters: []string{"n"}}}})
	m.Applied("eu", 2, 10, 1, []Conflict{{"public.t", string(conflict.UpdateUpdate), "last_writer_wins", string(conflict.Overwritten)}}, 4, 3*time.Millisecond)
	m.enableControl() // a region with control: set
	m.observeControl(&ControlView{Initialised: true, Epoch: 2, EpochPending: true})
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, f := range fams {
		have[f.GetName()] = true
	}
	used, err := DeployMetricNames(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if len(used) < 15 {
		t.Fatalf("only %d metric names found in the deploy files: %v", len(used), used)
	}
	if missing := MissingSeries(used, have); len(missing) > 0 {
		for _, n := range missing {
			t.Errorf("%s is used by %v but the registry has no such series", n, used[n])
		}
	}
	// Every polyregion family carries at least one series from the start.
	for _, f := range fams {
		if strings.HasPrefix(f.GetName(), "polyregion_") && len(f.GetMetric()) == 0 {
			t.Errorf("%s has no series before anything happened", f.GetName())
		}
	}
	for _, want := range []string{"polyregion_peer_lag_seconds", "polyregion_applied_rows_total", "polyregion_conflicts_total",
		"polyregion_slot_wal_retained_bytes", "polyregion_index_lag_seconds", "polyregion_errors_total", "polyregion_peer_link_up",
		"polyregion_parked_changes", "polyregion_outbox_backlog_transactions", "polyregion_apply_batch_duration_seconds",
		"polyregion_membership_confirmed", "polyregion_slot_lost",
		"go_goroutines", "process_resident_memory_bytes"} {
		if !have[want] {
			t.Errorf("registry lacks %s", want)
		}
	}
}
