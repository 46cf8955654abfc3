package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/polyregion/polyregion/integration/harness"
	"github.com/polyregion/polyregion/replicator/audit"
)

// errInterrupted ends a demo stopped by SIGINT or SIGTERM before its verdict.
var errInterrupted = errors.New("demo interrupted: regions stopped")

// demoTables are the replicated tables the demo compares.
var demoTables = []string{"public.usage_counters", "public.profiles"}

// demoSearch is the text query the demo's search URLs carry.
const demoSearch = "edited_in:eu"

type demoOptions struct {
	duration time.Duration
	keep     bool
	serve    bool
	dir      string
}

func demoCmd() *cobra.Command {
	var o demoOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run three local regions with a conflicting workload and check they converge",
		Long: `Start three local regions (us, eu, ap) on embedded defaults: each a
PostgreSQL cluster made from the installed server binaries, with its own
replicator process, operations server and embedded search index (of the
profiles table). Run a workload shaped like a multi-region API (per-client
request counters with daily and monthly windows, written in every region at
once, plus conflicting user profile edits), then print whether every region
converged, the counter totals against the requests issued, the conflict
summary over the three regions' conflict logs, each region's health and
index, and where to open each region's metrics, HTML conflict report and
search. The last line is the verdict: VERDICT: CONVERGED, or VERDICT: NOT
CONVERGED.

--serve leaves the regions running after the verdict, so those URLs can be
opened, until Ctrl-C.

Run as root, the clusters run as the 'postgres' user (or $POLYREGION_PG_USER).
Everything lives in a temporary directory removed at the end (--keep keeps it;
so does a failure, for its logs). Ctrl-C (SIGINT or SIGTERM) stops the
replicators and the clusters and cleans up.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.Context(), o)
		},
	}
	fl := cmd.Flags()
	fl.DurationVar(&o.duration, "duration", 10*time.Second, "how long the workload writes")
	fl.BoolVar(&o.keep, "keep", false, "keep the clusters' files, configs and logs after the demo")
	fl.BoolVar(&o.serve, "serve", false, "after the verdict, keep the regions running (to open the URLs printed) until Ctrl-C")
	fl.StringVar(&o.dir, "dir", "", "working directory (default: a new temporary directory)")
	return cmd
}

func runDemo(ctx context.Context, o demoOptions) (err error) {
	if o.duration <= 0 {
		return &exitError{exitConfig, fmt.Errorf("demo: --duration must be positive, got %s", o.duration)}
	}
	began := time.Now()
	say := func(format string, a ...any) {
		fmt.Printf("==> [%5.1fs] "+format+"\n", append([]any{time.Since(began).Seconds()}, a...)...)
	}
	dir, created := o.dir, false
	if dir == "" {
		if dir, err = os.MkdirTemp("", "polyregion-demo-"); err != nil {
			return err
		}
		created = true
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// The clusters run as an unprivileged user when started as root: it must
	// be able to enter the directory.
	_ = os.Chmod(dir, 0o755)
	bin, err := os.Executable()
	if err != nil {
		return err
	}

	var h *harness.Harness
	defer func() {
		if ctx.Err() != nil && err != nil {
			// Whatever failed, it failed because the demo was stopped (a
			// child process got the terminal's SIGINT too, say). After the
			// verdict (err nil) Ctrl-C is how --serve ends.
			err = errInterrupted
		}
		// Messages after the verdict go to stderr: the verdict stays the
		// last line of the output.
		if h != nil {
			fmt.Fprintln(os.Stderr, "==> stopping the replicators and the clusters")
			h.Close()
		}
		switch {
		case o.keep || (err != nil && !errors.Is(err, errInterrupted)):
			fmt.Fprintf(os.Stderr, "==> files, configs and logs kept in %s\n", dir)
		case created:
			_ = os.RemoveAll(dir)
			fmt.Fprintf(os.Stderr, "==> removed %s\n", dir)
		}
	}()

	say("starting 3 regions (us, eu, ap) in %s", dir)
	h, err = harness.Start(ctx, harness.Spec{
		Regions: []string{"us", "eu", "ap"}, SchemaSQL: harness.CounterSchema, Tables: harness.CounterTables,
		Dir: dir, Binary: bin,
		Configure: func(region string, c *harness.RegionConfig) {
			// The embedded search index of the profiles table, queried at
			// GET /search/profiles on the operations server.
			c.Search = &harness.SearchSection{Kind: "embedded", Dir: filepath.Join(dir, region+"-index"), FlushInterval: "100ms",
				Indices: []harness.SearchIndex{{Table: "public.profiles", Index: "profiles"}}}
		},
	})
	if err != nil {
		return fmt.Errorf("start regions: %w", err)
	}
	for _, r := range h.Regions {
		say("region %s: postgres 127.0.0.1:%d, replicator link %s, operations http://%s", r.Name, r.Cluster.Port, r.Listen, r.HTTPListen)
	}
	if err := h.StartReplicators(); err != nil {
		return err
	}
	if err := h.WaitConverged(ctx, demoTables, time.Minute); err != nil {
		return fmt.Errorf("replicators did not come up: %w", err)
	}
	say("replicators running; writing in all three regions at once for %s", o.duration)
	issued, err := demoWorkload(ctx, h, o.duration)
	if err != nil {
		return fmt.Errorf("workload: %w", err)
	}
	var requests int64
	for k, v := range issued {
		if k[1] == "daily" {
			requests += v
		}
	}
	say("workload done: %d requests counted (each in a daily and a monthly window); waiting for the regions to converge", requests)
	quiet := time.Now()
	if err := h.WaitConverged(ctx, demoTables, 2*time.Minute); err != nil {
		if ctx.Err() != nil {
			return err
		}
		fmt.Println(err)
		fmt.Println("VERDICT: NOT CONVERGED")
		return err
	}
	say("converged %.1fs after the last write", time.Since(quiet).Seconds())

	bad, err := demoCounters(ctx, h, issued)
	if err != nil {
		return err
	}
	say("conflict summary (the conflict logs of all three regions; each conflict counted once)")
	if err := demoConflicts(ctx, h); err != nil {
		return err
	}
	say("health and search index")
	if err := demoHealth(ctx, h); err != nil {
		return err
	}
	if o.serve {
		say("open in a browser (the regions keep running until Ctrl-C):")
	} else {
		say("open in a browser while a demo runs (--serve keeps the regions up until Ctrl-C):")
	}
	for _, r := range h.Regions {
		base := "http://" + r.HTTPListen
		fmt.Printf("    region %s  metrics      %s/metrics\n", r.Name, base)
		fmt.Printf("              conflicts    %s/conflicts/report?format=html\n", base)
		fmt.Printf("              search       %s/search/profiles?q=%s\n", base, demoSearch)
		fmt.Printf("              health       %s/health\n", base)
	}
	if o.keep {
		fmt.Printf("    configs and logs: %s\n", filepath.Join(dir, "*.yaml, *-replicator.log"))
	}
	if bad > 0 {
		fmt.Println("VERDICT: NOT CONVERGED (counter totals differ from the requests issued)")
		return fmt.Errorf("%d region(s) lost or doubled increments", bad)
	}
	fmt.Println("VERDICT: CONVERGED: every region holds identical rows and every increment is counted once")
	if o.serve {
		<-ctx.Done()
	}
	return nil
}

// demoWorkload runs the quickstart workload, printing each region's
// progress every two seconds.
func demoWorkload(ctx context.Context, h *harness.Harness, d time.Duration) (map[[3]string]int64, error) {
	var mu sync.Mutex
	latest := map[string]string{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		start := time.Now()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			mu.Lock()
			var parts []string
			for _, r := range h.Regions {
				if s := latest[r.Name]; s != "" {
					parts = append(parts, s)
				}
			}
			mu.Unlock()
			fmt.Printf("    %2.0fs of %s: %s\n", time.Since(start).Seconds(), d, orNone(strings.Join(parts, "; ")))
		}
	}()
	issued, err := h.DemoWorkload(ctx, d, func(s string) {
		name, _, _ := strings.Cut(s, ":")
		mu.Lock()
		latest[name] = s
		mu.Unlock()
	})
	close(done)
	wg.Wait()
	return issued, err
}

// demoCounters prints each region's counter total against the requests
// issued and returns how many regions differ.
func demoCounters(ctx context.Context, h *harness.Harness, issued map[[3]string]int64) (int, error) {
	var sum int64
	for _, v := range issued {
		sum += v
	}
	bad := 0
	for _, r := range h.Regions {
		conn, err := r.Conn(ctx)
		if err != nil {
			return 0, err
		}
		var total, counters, profiles int64
		err = conn.QueryRow(ctx, `SELECT (SELECT coalesce(sum(requests), 0) FROM public.usage_counters),
			(SELECT count(*) FROM public.usage_counters), (SELECT count(*) FROM public.profiles)`).Scan(&total, &counters, &profiles)
		conn.Close(context.Background())
		if err != nil {
			return 0, err
		}
		status := "ok"
		if total != sum {
			status = "MISMATCH"
			bad++
		}
		fmt.Printf("    region %s: %d counter rows, %d profiles; counters total %d of %d increments issued (%s)\n",
			r.Name, counters, profiles, total, sum, status)
	}
	return bad, nil
}

// demoConflicts prints the summary of a conflict report over the three
// regions' conflict logs.
func demoConflicts(ctx context.Context, h *harness.Harness) error {
	var src audit.Sources
	for _, r := range h.Regions {
		conn, err := r.Conn(ctx)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		src = append(src, audit.DB{Name: "region " + r.Name, Q: conn})
	}
	rep, err := audit.Read(ctx, src, audit.Filters{Limit: 1}, time.Now())
	if err != nil {
		return err
	}
	s := rep.Summary
	fmt.Printf("    %d writes lost (overwritten by a concurrent write), %d conflicts merged with nothing lost\n", s.Overwritten, s.Merged)
	fmt.Printf("    %d distinct conflicts (%d conflict log records: each region that resolved one logged it), %d disputed winners\n",
		s.Total, s.Logged, s.Disputed)
	fmt.Println("    lost writes:")
	counts := func(cs []audit.Count) string {
		var parts []string
		for _, c := range cs {
			parts = append(parts, fmt.Sprintf("%s %d", c.Name, c.Count))
		}
		return orNone(strings.Join(parts, ", "))
	}
	fmt.Printf("    by table:         %s\n", counts(s.ByTable))
	fmt.Printf("    by kind:          %s\n", counts(s.ByKind))
	fmt.Printf("    by policy:        %s\n", counts(s.ByPolicy))
	fmt.Printf("    by region pair:   %s\n", counts(s.ByRegionPair))
	fmt.Printf("    by winner region: %s\n", counts(s.ByWinner))
	var hot []string
	for i, k := range s.HottestKeys {
		if i == 3 {
			break
		}
		hot = append(hot, fmt.Sprintf("%s %s %d", k.Table, k.Key, k.Count))
	}
	fmt.Printf("    hottest keys:     %s\n", orNone(strings.Join(hot, ", ")))
	fmt.Println("    (usage_counters rows are not among them: requests is a counter and updated_at merges by max, so concurrent")
	fmt.Println("    updates of a counter row lose nothing; they are counted in polyregion_merged_updates_total, not logged)")
	if len(rep.Rows) > 0 {
		r := rep.Rows[0]
		fmt.Printf("    latest: %s %s %s: %s's write vs %s's, %s won (%s)\n", r.Table, r.Key, r.Kind, r.A.Origin, r.B.Origin, r.WinnerRegion, r.Policy)
	}
	return nil
}

// demoHealth prints each region's /health answer and its search index's
// documents against the table's rows (waiting a little for the index to
// catch up).
func demoHealth(ctx context.Context, h *harness.Harness) error {
	client := &http.Client{Timeout: 5 * time.Second}
	get := func(u string) (int, string, error) {
		req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
		if err != nil {
			return 0, "", err
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	for _, r := range h.Regions {
		base := "http://" + r.HTTPListen
		code, body, err := get(base + "/health")
		if err != nil {
			return err
		}
		lines := strings.Split(strings.TrimSpace(body), "\n")
		reasons := ""
		for _, l := range lines[1:] {
			if strings.HasPrefix(l, "- ") {
				reasons += "; " + strings.TrimPrefix(l, "- ")
			}
		}
		fmt.Printf("    region %s: /health %d %s%s\n", r.Name, code, lines[0], reasons)

		conn, err := r.Conn(ctx)
		if err != nil {
			return err
		}
		var rows, fromEU int64
		err = conn.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE edited_in = 'eu') FROM public.profiles`).Scan(&rows, &fromEU)
		conn.Close(context.Background())
		if err != nil {
			return err
		}
		docs, hits := int64(-1), int64(-1)
		state := "behind"
		for deadline := time.Now().Add(30 * time.Second); ; {
			docs, hits = -1, -1
			if t, ok := searchTotal(get, base+"/search/profiles?size=0"); ok {
				docs = t
			}
			if t, ok := searchTotal(get, base+"/search/profiles?size=0&q="+url.QueryEscape(demoSearch)); ok {
				hits = t
			}
			if docs == rows && hits == fromEU {
				state = "in step"
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				break
			}
			time.Sleep(300 * time.Millisecond)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		fmt.Printf("    region %s: search index profiles holds %s for %d rows; q=%s finds %s for %d rows (%s)\n",
			r.Name, countOrNone(docs, "documents"), rows, demoSearch, countOrNone(hits, "documents"), fromEU, state)
	}
	return nil
}

// searchTotal asks the embedded index for a query's total hits.
func searchTotal(get func(string) (int, string, error), u string) (int64, bool) {
	code, body, err := get(u)
	if err != nil || code != http.StatusOK {
		return 0, false
	}
	var out struct {
		Total int64 `json:"total"`
	}
	if json.Unmarshal([]byte(body), &out) != nil {
		return 0, false
	}
	return out.Total, true
}

func countOrNone(n int64, what string) string {
	if n < 0 {
		return "no answer (no " + what + " yet)"
	}
	return fmt.Sprintf("%d %s", n, what)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
