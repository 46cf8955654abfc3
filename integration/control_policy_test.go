package integration

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// TestAPolicyChangeTakesEffectAtOneEpochEverywhere: three regions found
// the control plane with public.kv under last-writer-wins; while each
// region updates the same 20 rows every few milliseconds, cluster
// configure changes the table to region priority (ap, then us, then eu).
// The change is announced as epoch 2, every region reports its fence, and
// it comes into effect while the writes go on. Two concurrent writes made
// the same way before and after it (ap's first, eu's later, while both
// regions' replicators are stopped) are decided by the policy in force:
// eu's (the later one) before, ap's (priority) after, in every region. The
// rows converge, and every conflict logged names the epoch whose policy
// decided it: the founding one for last-writer-wins, 2 for priority.
func TestAPolicyChangeTakesEffectAtOneEpochEverywhere(t *testing.T) {
	tables := []TableSpec{{Name: "public.kv"}}
	ctx := ctxFor(t, 6*time.Minute)
	h := startFounded(t, ctx, tables, func(*RegionConfig) {})
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	for id := 1; id <= 20; id++ {
		mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES ($1, 'seed')`, id)
	}
	for _, r := range h.Regions {
		waitRow(t, ctx, r, `SELECT count(*) FROM public.kv WHERE val = 'seed'`, 20)
	}

	// concurrently writes key in ap, then (later, so with a later commit
	// time) in eu, while neither region's replicator runs: neither write
	// sees the other.
	concurrently := func(key int) {
		t.Helper()
		for _, r := range []*Region{eu, ap} {
			if err := r.StopReplicator(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
		}
		mustExec(t, ctx, ap, `INSERT INTO public.kv (id, val) VALUES ($1, 'ap first')`, key)
		time.Sleep(50 * time.Millisecond)
		mustExec(t, ctx, eu, `INSERT INTO public.kv (id, val) VALUES ($1, 'eu later')`, key)
		for _, r := range []*Region{eu, ap} {
			if err := r.StartReplicator(); err != nil {
				t.Fatal(err)
			}
		}
	}
	concurrently(400)
	for _, r := range h.Regions {
		waitRow(t, ctx, r, `SELECT count(*) FROM public.kv WHERE id = 400 AND val = 'eu later'`, 1)
	}

	// Every region updates the 20 rows throughout the change.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, len(h.Regions))
	for _, r := range h.Regions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := r.Conn(ctx)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			rng := rand.New(rand.NewSource(int64(len(r.Name)) + time.Now().UnixNano()))
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := conn.Exec(ctx, `UPDATE public.kv SET val = $2 WHERE id = $1`, 1+rng.Intn(20), fmt.Sprintf("%s-%d", r.Name, n)); err != nil {
					errs <- fmt.Errorf("%s: %w", r.Name, err)
					return
				}
				time.Sleep(3 * time.Millisecond)
			}
		}()
	}
	time.Sleep(time.Second)

	// The new policy, from us's configuration edited.
	newPath := withTables(t, us, "priority", []TableSpec{{Name: "public.kv", Policy: "region_priority", Priority: []string{"ap", "us", "eu"}}})
	countersPath := withTables(t, us, "counters", []TableSpec{{Name: "public.kv", Counters: []string{"val"}}})
	asked := time.Now()
	out := mustPolyregion(t, ctx, "cluster", "configure", "--config", newPath, "--wait", "90s")
	if !strings.Contains(out, "epoch 2 in effect") {
		t.Fatalf("cluster configure --wait:\n%s", out)
	}
	t.Logf("epoch 2 in effect %.1fs after cluster configure:\n%s", time.Since(asked).Seconds(), out)
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("writer: %v", err)
	default:
	}
	// Another change while none is pending is taken; one that changes
	// what merges is refused.
	if out, err := polyregion(ctx, "cluster", "configure", "--config", countersPath); err == nil || !strings.Contains(out, "changes which columns merge") {
		t.Fatalf("a change of the counters: %v\n%s", err, out)
	}

	concurrently(500)
	for _, r := range h.Regions {
		waitRow(t, ctx, r, `SELECT count(*) FROM public.kv WHERE id = 500 AND val = 'ap first'`, 1)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), 2*time.Minute); err != nil {
		t.Fatal(err)
	}

	// The same two writes logged in several regions (each region logs
	// the conflicts it decides); how many were decided otherwise in
	// another region, as the writes each had received by then ranked
	// them, is reported: the rows themselves must agree.
	pairs, logged := map[string]map[string]bool{}, map[string]int{}
	defer func() {
		several, differ := 0, 0
		for p, n := range logged {
			if n > 1 {
				several++
				if len(pairs[p]) > 1 {
					differ++
				}
			}
		}
		t.Logf("pairs of writes logged in more than one region: %d, decided under another epoch or for another winner somewhere: %d", several, differ)
	}()
	for _, r := range h.Regions {
		st := waitControl(t, r, 30*time.Second, "epoch 2 in effect with every region's fence", func(c controlStatus) bool {
			return c.Epoch.Number == 2 && c.Epoch.Effective > 0 && len(c.Epoch.Fences) == 3
		})
		if st.Epoch.Policies["public.kv"].Kind != "region_priority" {
			t.Fatalf("%s: epoch 2's policy %+v", r.Name, st.Epoch.Policies)
		}
		for start := time.Now(); ; time.Sleep(200 * time.Millisecond) {
			_, metrics := opsGet(t, r, "/metrics")
			if strings.Contains(metrics, fmt.Sprintf("polyregion_control_epoch{region=%q} 2", r.Name)) &&
				strings.Contains(metrics, fmt.Sprintf("polyregion_control_epoch_pending{region=%q} 0", r.Name)) {
				checkDeploySeries(t, metrics, true) // the alerts' control-plane series
				break
			}
			if time.Since(start) > 30*time.Second {
				t.Fatalf("%s: /metrics does not show epoch 2 in effect:\n%s", r.Name, metrics)
			}
		}
		if !strings.Contains(r.Logs(1<<22), "reported the fence of a policy change") {
			t.Fatalf("%s did not report its fence:\n%s", r.Name, r.Logs(4000))
		}
		conn, err := r.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := conn.Query(ctx, `SELECT key, coalesce(epoch, -1), policy, winner_origin, local_origin, remote_origin, reason, local_hlc, remote_hlc FROM polyregion.conflict_log ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		byEpoch := map[int64]int{}
		for rows.Next() {
			var key, policy, winner, lo, ro, reason string
			var epoch, lh, rh int64
			if err := rows.Scan(&key, &epoch, &policy, &winner, &lo, &ro, &reason, &lh, &rh); err != nil {
				t.Fatal(err)
			}
			a, b := fmt.Sprintf("%s@%d", lo, lh), fmt.Sprintf("%s@%d", ro, rh)
			if b < a {
				a, b = b, a
			}
			pair := key + " " + a + " " + b
			if pairs[pair] == nil {
				pairs[pair] = map[string]bool{}
			}
			pairs[pair][fmt.Sprintf("%d/%s", epoch, winner)] = true
			logged[pair]++
			byEpoch[epoch]++
			want := map[int64]string{0: "last_writer_wins", 2: "region_priority"}[epoch]
			if policy != want {
				t.Fatalf("%s: a conflict on key %s logged under epoch %d with policy %q (want %q)", r.Name, key, epoch, policy, want)
			}
			switch key {
			case `["400"]`:
				if epoch != 0 || winner != "eu" {
					t.Fatalf("%s: the conflict before the change: epoch %d, won by %s (want epoch 0, eu)", r.Name, epoch, winner)
				}
			case `["500"]`:
				if epoch != 2 || winner != "ap" {
					t.Fatalf("%s: the conflict after the change: epoch %d, won by %s (want epoch 2, ap)", r.Name, epoch, winner)
				}
			}
			// (A row's write overturned by a sibling under the new
			// policy is logged as losing to that sibling's region.)
			if epoch == 2 && winner != higher(lo, ro) && !strings.HasPrefix(reason, "the row's write") {
				t.Fatalf("%s: key %s decided under epoch 2 for %s over %s", r.Name, key, winner, map[bool]string{true: ro, false: lo}[winner == lo])
			}
		}
		rows.Close()
		conn.Close(context.Background())
		if byEpoch[2] == 0 || len(byEpoch) > 2 {
			t.Fatalf("%s: conflicts logged by epoch %v (want some under epoch 2, and the founding one's only besides)", r.Name, byEpoch)
		}
		t.Logf("%s: conflicts by epoch %v", r.Name, byEpoch)
	}
}

// withTables writes r's configuration with tables in place of its own,
// as an operator edits it for cluster configure, and returns its path.
func withTables(t *testing.T, r *Region, name string, tables []TableSpec) string {
	t.Helper()
	b, err := os.ReadFile(r.ConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	var edited RegionConfig
	if err := yaml.Unmarshal(b, &edited); err != nil {
		t.Fatal(err)
	}
	edited.Tables = tables
	nb, err := yaml.Marshal(edited)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(filepath.Dir(r.ConfigPath), r.Name+"-"+name+".yaml")
	if err := os.WriteFile(path, nb, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// higher is the region of a and b that ap > us > eu ranks higher.
func higher(a, b string) string {
	rank := map[string]int{"ap": 0, "us": 1, "eu": 2}
	if rank[b] < rank[a] {
		return b
	}
	return a
}
