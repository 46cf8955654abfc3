package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// controlStatus is a region's GET /control.
type controlStatus struct {
	Role   string   `json:"role"`
	Leader string   `json:"leader"`
	Term   uint64   `json:"term"`
	Quorum bool     `json:"quorum"`
	Voters []string `json:"voters"`
	// Takes: what each region's release takes of the changes made at an
	// epoch, as last reported.
	Takes map[string]int `json:"takes"`
	Epoch struct {
		Number    uint64            `json:"number"`
		Effective uint64            `json:"effective"`
		Fences    map[string]uint64 `json:"fences"`
		Policies  map[string]struct {
			Kind string
		} `json:"policies"`
	} `json:"epoch"`
	Members []struct {
		ID    string `json:"id"`
		State string `json:"state"`
	} `json:"members"`
}

func (c controlStatus) state(id string) string {
	for _, m := range c.Members {
		if m.ID == id {
			return m.State
		}
	}
	return ""
}

func controlOf(r *Region) (controlStatus, bool) {
	var st controlStatus
	resp, err := httpClient.Get("http://" + r.HTTPListen + "/control")
	if err != nil {
		return st, false
	}
	defer resp.Body.Close()
	return st, resp.StatusCode == 200 && json.NewDecoder(resp.Body).Decode(&st) == nil
}

// waitControl waits until ok accepts r's view of the control plane.
func waitControl(t *testing.T, r *Region, within time.Duration, what string, ok func(controlStatus) bool) controlStatus {
	t.Helper()
	var st controlStatus
	for start := time.Now(); time.Since(start) < within; time.Sleep(100 * time.Millisecond) {
		var up bool
		if st, up = controlOf(r); up && ok(st) {
			return st
		}
	}
	t.Fatalf("%s: the control plane did not show %s within %s; last: %+v\n%s", r.Name, what, within, st, r.Logs(4000))
	return st
}

// polyregion runs the CLI and returns its combined output.
func polyregion(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, args...).CombinedOutput()
	return string(out), err
}

func mustPolyregion(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	out, err := polyregion(ctx, args...)
	if err != nil {
		t.Fatalf("polyregion %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// addPeerByReload adds peer to r's configuration (regions and peers, with
// the token peer's configuration holds for r, through a proxy) and makes the
// running replicator reload it.
func addPeerByReload(t *testing.T, nf *NetFaults, r, peer *Region) {
	t.Helper()
	read := func(path string) RegionConfig {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var c RegionConfig
		if err := yaml.Unmarshal(b, &c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	theirs, mine := read(peer.ConfigPath), read(r.ConfigPath)
	var token string
	for _, p := range theirs.Peers {
		if p.ID == r.Name {
			token = p.Token
		}
	}
	addr, err := nf.add(Link{From: r.Name, To: peer.Name}, peer.Listen, map[string]bool{})
	if err != nil {
		t.Fatal(err)
	}
	mine.Regions = append(mine.Regions, peer.Name)
	mine.Peers = append(mine.Peers, PeerEntry{ID: peer.Name, URL: "http://" + addr, Token: token})
	b, err := yaml.Marshal(mine)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.ConfigPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	before := strings.Count(r.Logs(1<<24), "config reload: peers applied")
	if err := r.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); strings.Count(r.Logs(1<<24), "config reload: peers applied") == before; time.Sleep(50 * time.Millisecond) {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("%s did not apply its new peer %s on reload:\n%s", r.Name, peer.Name, r.Logs(4000))
		}
	}
}

// TestRegionsJoinAndLeaveThroughTheControlPlane takes one region holding
// data to four through the control plane (each added with region add, then
// joining online), kills the control plane's leader during a join, cuts a
// region off from the majority, removes a dead region by force and a live
// one by draining it; writes go on throughout.
func TestRegionsJoinAndLeaveThroughTheControlPlane(t *testing.T) {
	schema := append(append([]string(nil), LedgerSchema...),
		`CREATE TABLE public.bulk (id bigint PRIMARY KEY, payload text NOT NULL, n integer NOT NULL DEFAULT 0)`,
		`CREATE TABLE public.marks (id integer PRIMARY KEY, note text NOT NULL)`)
	tables := append(append([]TableSpec(nil), LedgerTables...), TableSpec{Name: "public.bulk"}, TableSpec{Name: "public.marks"})
	nf := NewNetFaults()
	t.Cleanup(nf.Close)
	dir := t.TempDir()
	h := startClusters(t, Spec{Regions: []string{"us", "eu", "ap", "sa"}, SchemaSQL: schema, Tables: tables,
		Configure: nf.Configure(func(region string, c *RegionConfig) {
			c.Health = map[string]string{"hold": "200ms", "probe_interval": "100ms"}
			c.Control = &ControlSection{Dir: filepath.Join(dir, region+"-control"), ReportInterval: "1s"}
			if region != "sa" {
				// sa comes later: the others learn how to reach it by a
				// reload, with no restart.
				c.Regions = slices.DeleteFunc(slices.Clone(c.Regions), func(r string) bool { return r == "sa" })
				c.Peers = slices.DeleteFunc(c.Peers, func(p PeerEntry) bool { return p.ID == "sa" })
			}
		})})
	if err := nf.Check([]string{"us", "eu", "ap"}); err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 10*time.Minute)
	regionsByName := map[string]*Region{}
	for _, r := range h.Regions {
		regionsByName[r.Name] = r
	}
	us, eu, ap, sa := h.Regions[0], h.Regions[1], h.Regions[2], h.Regions[3]
	const rows = 20000
	mustExec(t, ctx, us, `INSERT INTO public.bulk (id, payload) SELECT g, md5(g::text) FROM generate_series(1, $1::int) g`, rows)
	if err := SeedLedger(ctx, h); err != nil {
		t.Fatal(err)
	}
	startReady(t, ctx, us)
	out := mustPolyregion(t, ctx, "cluster", "init", "--config", us.ConfigPath, "--url", "http://"+us.Listen)
	if !strings.Contains(out, "member us") || !strings.Contains(out, "active") {
		t.Fatalf("cluster init output does not show us active:\n%s", out)
	}
	if out, err := polyregion(ctx, "cluster", "init", "--config", us.ConfigPath); err == nil || !strings.Contains(out, "already initialised") {
		t.Fatalf("a second cluster init: %v\n%s", err, out)
	}

	ledger := NewLedger()
	churn := newBulkChurn(rows)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var werrs []string
	record := func(err error) {
		if err != nil {
			errMu.Lock()
			werrs = append(werrs, err.Error())
			errMu.Unlock()
		}
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		record(ledger.Run(ctx, &Harness{Spec: h.Spec, Regions: []*Region{us}}, 2, 20, stop))
	}()
	go func() { defer wg.Done(); record(churn.run(ctx, us, 20, stop)) }()

	// eu is added, then joins from us.
	mustPolyregion(t, ctx, "region", "add", "eu", "--url", "http://"+eu.Listen, "--from", "us", "--config", us.ConfigPath)
	joinFrom(t, ctx, eu, "us", 3*time.Minute)
	waitControl(t, us, time.Minute, "eu active and voting", func(c controlStatus) bool {
		return c.state("eu") == "active" && slices.Equal(c.Voters, []string{"eu", "us"})
	})
	wg.Add(2)
	go func() { defer wg.Done(); record(churn.run(ctx, eu, 20, stop)) }()
	go func() {
		defer wg.Done()
		record(ledger.Run(ctx, &Harness{Spec: h.Spec, Regions: []*Region{eu}}, 1, 20, stop))
	}()

	// ap starts before it is added: it waits, naming the command.
	if err := ap.StartReplicatorWith("--join", "eu"); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		if st, ok := statusOf(ap); ok && strings.Contains(st.Joining, "waiting to be added to the cluster: run `polyregion region add ap") {
			break
		}
		if time.Since(start) > 30*time.Second {
			st, _ := statusOf(ap)
			t.Fatalf("ap started before it was added does not say it waits to be added: %+v", st)
		}
	}
	if n := queryInt(t, ctx, ap, `SELECT count(*) FROM public.bulk`); n != 0 {
		t.Fatalf("ap loaded %d rows before the cluster added it", n)
	}
	// Added from eu's command line (eu forwards it to the leader).
	mustPolyregion(t, ctx, "region", "add", "ap", "--url", "http://"+ap.Listen, "--from", "eu", "--config", eu.ConfigPath)
	waitJoined(t, ctx, ap, 3*time.Minute)
	before := waitControl(t, us, time.Minute, "three voters", func(c controlStatus) bool {
		return slices.Equal(c.Voters, []string{"ap", "eu", "us"}) && c.Leader != ""
	})
	// ap writes too (until it is drained): three regions write at once
	// while sa joins.
	stopAP := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		record(ledger.Run(ctx, &Harness{Spec: h.Spec, Regions: []*Region{ap}}, 1, 20, stopAP))
	}()

	// sa joins from a region that does not lead. The leader's replicator is
	// killed as soon as sa is added, before its data plane can follow sa,
	// and stays down until sa has joined: sa loads and catches up without
	// it, and is made active by the next leader. The leader's database
	// takes writes meanwhile; they reach sa once it is back, so its outbox
	// kept what sa needs.
	leader := regionsByName[before.Leader]
	source := eu
	if leader == eu {
		source = ap
	}
	for _, r := range []*Region{us, eu, ap} {
		addPeerByReload(t, nf, r, sa)
	}
	mustPolyregion(t, ctx, "region", "add", "sa", "--url", "http://"+sa.Listen, "--from", source.Name, "--config", source.ConfigPath)
	if err := leader.StopReplicator(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, leader, `INSERT INTO public.marks VALUES (2, 'written while the replicator was down during a join')`)
	joinFrom(t, ctx, sa, source.Name, 3*time.Minute)
	after := waitControl(t, source, time.Minute, "sa active under a new leader", func(c controlStatus) bool {
		return c.state("sa") == "active" && c.Leader != "" && c.Leader != leader.Name && c.Term > before.Term
	})
	t.Logf("control plane: leader %s (term %d) killed as sa's join began; sa loaded, caught up and was made active under %s (term %d) without it", before.Leader, before.Term, after.Leader, after.Term)
	if n := queryInt(t, ctx, sa, `SELECT count(*) FROM public.marks WHERE id = 2`); n != 0 {
		t.Fatalf("sa holds the mark written in %s while its replicator was down", leader.Name)
	}
	if err := leader.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	waitRow(t, ctx, sa, `SELECT count(*) FROM public.marks WHERE id = 2`, 1)
	waitControl(t, leader, time.Minute, "four voters, seen from the restarted region", func(c controlStatus) bool {
		return slices.Equal(c.Voters, []string{"ap", "eu", "sa", "us"}) && c.Quorum
	})

	// ap is cut off from every other region: a change there is refused,
	// naming why, and is not applied; data flows among the others.
	if err := nf.Isolate("ap"); err != nil {
		t.Fatal(err)
	}
	waitControl(t, ap, time.Minute, "no quorum in the cut-off region", func(c controlStatus) bool { return !c.Quorum })
	waitHealth(t, ap, 30*time.Second, "degraded for lack of quorum, still serving", func(code int, body string) bool {
		return code == 200 && strings.Contains(body, "control plane: no quorum")
	})
	out, err := polyregion(ctx, "region", "add", "xx", "--url", "http://xx", "--from", "ap", "--config", ap.ConfigPath)
	if err == nil || !strings.Contains(out, "no majority") || !strings.Contains(out, "ap, eu, sa, us") {
		t.Fatalf("a change in the cut-off region: %v\n%s", err, out)
	}
	mustExec(t, ctx, us, `INSERT INTO public.marks VALUES (1, 'written during the partition')`)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.marks WHERE id = 1`, 1)
	if n := queryInt(t, ctx, ap, `SELECT count(*) FROM public.marks WHERE id = 1`); n != 0 {
		t.Fatalf("ap, cut off, holds %d marks written during the partition", n)
	}
	if err := nf.HealAll(); err != nil {
		t.Fatal(err)
	}
	waitRow(t, ctx, ap, `SELECT count(*) FROM public.marks WHERE id = 1`, 1)
	waitControl(t, ap, time.Minute, "quorum again after the heal, and no trace of the refused change", func(c controlStatus) bool {
		return c.Quorum && c.state("xx") == ""
	})

	// sa dies; it is removed by force. Until then us keeps its outbox and
	// its tombstones for sa; afterwards they go, and sa's links are refused.
	if err := sa.StopReplicator(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if n := queryInt(t, ctx, us, `SELECT count(*) FROM polyregion.row_version WHERE tbl = 'public.bulk' AND deleted`); n == 0 {
		t.Fatal("us holds no tombstones while sa is away; the churn deleted no rows?")
	}
	out = mustPolyregion(t, ctx, "region", "remove", "sa", "--force", "--config", eu.ConfigPath)
	if !strings.Contains(out, "member sa") || !strings.Contains(out, "removed") {
		t.Fatalf("region remove --force sa:\n%s", out)
	}
	t.Logf("forced removal of sa:\n%s", out)

	// ap is removed by draining it: its writes stop, and the removal waits
	// until every one of them reached the others (checked below: every
	// ledger transaction of ap's is in us and eu).
	close(stopAP)
	out = mustPolyregion(t, ctx, "region", "remove", "ap", "--config", us.ConfigPath, "--wait", "2m")
	if !strings.Contains(out, "member ap") || !strings.Contains(out, "removed") {
		t.Fatalf("region remove ap:\n%s", out)
	}
	waitHealth(t, ap, 30*time.Second, "503: removed from the cluster", func(code int, body string) bool {
		return code == 503 && strings.Contains(body, "removed from the cluster")
	})

	close(stop)
	wg.Wait()
	if len(werrs) > 0 {
		t.Fatalf("writers failed: %s", strings.Join(werrs, "; "))
	}
	left := &Harness{Spec: h.Spec, Regions: []*Region{us, eu}}
	if err := left.WaitConverged(ctx, tableNames(tables), 3*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := ledger.ExactlyOnceIn(ctx, h, left.Regions); err != nil {
		t.Fatal(err)
	}
	churn.verify(t, ctx, left)
	for _, r := range left.Regions {
		waitRow(t, ctx, r, `SELECT count(*) FROM polyregion.row_version WHERE tbl = 'public.bulk' AND deleted`, 0)
		waitRow(t, ctx, r, `SELECT count(*) FROM polyregion.outbox`, 0)
	}
	// The dead region comes back: every region refuses its links.
	if err := sa.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); !strings.Contains(sa.Logs(1<<22), "peer refuses this region: the cluster removed it"); time.Sleep(200 * time.Millisecond) {
		if time.Since(start) > time.Minute {
			t.Fatalf("sa's links were not refused after its removal:\n%s", sa.Logs(4000))
		}
	}
	t.Logf("%d ledger transactions, %d bulk updates and deletes", ledger.Transactions(), churn.total())
}

// TestAWitnessKeepsTwoRegionsAMajority: two regions and a witness (a
// control-plane voter with no database). With one region's replicator gone,
// the other and the witness still hold a majority: the dead region is
// removed by force. Writes go on throughout.
func TestAWitnessKeepsTwoRegionsAMajority(t *testing.T) {
	dir := t.TempDir()
	wListen, wHTTP := freeAddr(t), freeAddr(t)
	tokens := map[string]string{"us": "witness-token-us-0123456789", "eu": "witness-token-eu-0123456789"}
	h := startClusters(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: healthSchema, Tables: healthTables,
		Configure: func(region string, c *RegionConfig) {
			c.Health = map[string]string{"hold": "200ms", "probe_interval": "100ms"}
			c.Control = &ControlSection{Dir: filepath.Join(dir, region+"-control"), ReportInterval: "1s"}
			c.Witnesses = []PeerEntry{{ID: "w1", URL: "http://" + wListen, Token: tokens[region]}}
		}})
	ctx := ctxFor(t, 5*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, us, `INSERT INTO public.notes SELECT g, 'note ' || g FROM generate_series(1, 100) g`)
	startReady(t, ctx, us)
	mustPolyregion(t, ctx, "cluster", "init", "--config", us.ConfigPath)
	mustPolyregion(t, ctx, "region", "add", "eu", "--url", "http://"+eu.Listen, "--from", "us", "--config", us.ConfigPath)
	joinFrom(t, ctx, eu, "us", 2*time.Minute)
	waitControl(t, us, time.Minute, "two voters", func(c controlStatus) bool { return slices.Equal(c.Voters, []string{"eu", "us"}) })

	// The witness, with a token per region.
	wcfg := fmt.Sprintf("witness: w1\nlisten: %s\nregions:\n  - {id: us, url: 'http://%s', token: %s}\n  - {id: eu, url: 'http://%s', token: %s}\ncontrol: {dir: %s}\nhttp: {listen: %s}\nlog: {format: json}\n",
		wListen, us.Listen, tokens["us"], eu.Listen, tokens["eu"], filepath.Join(dir, "w1-control"), wHTTP)
	wpath := filepath.Join(dir, "w1.yaml")
	if err := os.WriteFile(wpath, []byte(wcfg), 0o600); err != nil {
		t.Fatal(err)
	}
	wlog, err := os.Create(filepath.Join(dir, "w1.log"))
	if err != nil {
		t.Fatal(err)
	}
	witness := exec.Command(binary, "witness", "--config", wpath)
	witness.Stdout, witness.Stderr = wlog, wlog
	if err := witness.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = witness.Process.Kill()
		_ = witness.Wait()
		wlog.Close()
		if t.Failed() {
			b, _ := os.ReadFile(wlog.Name())
			t.Logf("---- witness log ----\n%s", b)
		}
	})
	mustPolyregion(t, ctx, "region", "add", "w1", "--witness", "--url", "http://"+wListen, "--config", eu.ConfigPath)
	waitControl(t, us, time.Minute, "three voters, the witness among them", func(c controlStatus) bool {
		return slices.Equal(c.Voters, []string{"eu", "us", "w1"}) && c.state("w1") == "active"
	})
	for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		resp, err := httpClient.Get("http://" + wHTTP + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(b), `polyregion_control_members{region="w1",state="active"} 3`) {
				break
			}
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("the witness's /metrics does not count three active members: %v", err)
		}
	}

	// eu is gone; us and the witness are a majority of three.
	if err := eu.StopReplicator(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, us, `INSERT INTO public.notes VALUES (1000, 'written after eu went')`)
	out := mustPolyregion(t, ctx, "region", "remove", "eu", "--force", "--config", us.ConfigPath)
	if !strings.Contains(out, "member eu") || !strings.Contains(out, "removed") {
		t.Fatalf("region remove --force eu with the witness:\n%s", out)
	}
	waitControl(t, us, time.Minute, "us and the witness as voters", func(c controlStatus) bool {
		return slices.Equal(c.Voters, []string{"us", "w1"}) && c.Quorum
	})
	waitHealth(t, us, 30*time.Second, "serving, nothing to wait for", isServing)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// TestRegionsAddedOnlineTakeTheirOwnSequenceNumbers: the region holding
// the data founds the cluster with its sequence offset; each region added
// is given the lowest offset never given (its configured one is not used:
// here eu's and ap's collide);
// then all three insert through a bigserial and an identity key at once:
// no insert/insert conflict, no row lost, each region's keys its own.
func TestRegionsAddedOnlineTakeTheirOwnSequenceNumbers(t *testing.T) {
	schema := []string{
		`CREATE TABLE public.events (id bigserial PRIMARY KEY, region text NOT NULL, n integer NOT NULL)`,
		`CREATE TABLE public.items (id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name text NOT NULL)`,
	}
	tables := []TableSpec{{Name: "public.events"}, {Name: "public.items"}}
	dir := t.TempDir()
	// eu and ap are each configured with offset 3: used as configured, their
	// keys would collide.
	configured := map[string]map[string]int64{
		"us": {"us": 1, "eu": 2, "ap": 3},
		"eu": {"us": 1, "eu": 3, "ap": 2},
		"ap": {"us": 1, "eu": 2, "ap": 3},
	}
	h := startClusters(t, Spec{SchemaSQL: schema, Tables: tables, Configure: func(region string, c *RegionConfig) {
		c.Sequences = &SequencesSection{Stride: 4, Offsets: configured[region]}
		c.Control = &ControlSection{Dir: filepath.Join(dir, region+"-control"), ReportInterval: "1s"}
	}})
	ctx := ctxFor(t, 5*time.Minute)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	mustExec(t, ctx, us, `INSERT INTO public.events (region, n) SELECT 'seed', g FROM generate_series(1, 50) g`)
	startReady(t, ctx, us)
	mustPolyregion(t, ctx, "cluster", "init", "--config", us.ConfigPath)
	for _, r := range []*Region{eu, ap} {
		mustPolyregion(t, ctx, "region", "add", r.Name, "--url", "http://"+r.Listen, "--from", "us", "--config", us.ConfigPath)
		joinFrom(t, ctx, r, "us", 2*time.Minute)
	}
	offsets := map[string]int64{"us": 1, "eu": 0, "ap": 2}
	out := mustPolyregion(t, ctx, "status", "--config", ap.ConfigPath)
	if !strings.Contains(out, "stride=4;ap=2,eu=0,us=1") {
		t.Fatalf("status does not show the offsets the control plane gave:\n%s", out)
	}

	insertThroughSequences(t, ctx, h, tables, 4, offsets)
}
