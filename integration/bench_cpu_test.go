package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Where a benchmark phase's CPU went, by who spent it: the servers'
// sessions by application_name (or backend type), the replicator
// processes, and the benchmark process itself (its clients). Every region
// runs on one machine, so a phase that keeps the machine busy runs at the
// rate its CPU per transaction allows: these figures say which part of
// that cost is the application's own and which is replication's.
//
// CPU times come from /proc (user + system time of each process, in the
// kernel's 1/100 s ticks); a process that exits during the phase is not
// counted, one that starts during it is counted from its start.

// cpuTick is the unit of /proc/<pid>/stat's times (USER_HZ, 100 on Linux).
const cpuTick = 10 * time.Millisecond

// cpuSnapshot is, at one moment, every counted process's CPU time and
// who it is.
type cpuSnapshot struct {
	at    time.Time
	busy  int64 // the machine's non-idle ticks (/proc/stat), all CPUs
	total int64 // all ticks, all CPUs
	procs map[int]cpuProc
}

type cpuProc struct {
	who   string
	ticks int64
}

// takeCPUSnapshot reads the CPU time of every server process of h's
// clusters, of every replicator and of this process.
func takeCPUSnapshot(ctx context.Context, h *Harness) (cpuSnapshot, error) {
	s := cpuSnapshot{at: time.Now(), procs: map[int]cpuProc{}}
	var err error
	if s.busy, s.total, err = machineTicks(); err != nil {
		return s, err
	}
	parents := map[int]bool{}
	names := map[int]string{}
	for _, r := range h.Regions {
		pm, err := r.Cluster.PID()
		if err != nil {
			return s, err
		}
		parents[pm] = true
		names[pm] = "server (postmaster)"
		conn, err := r.Conn(ctx)
		if err != nil {
			return s, err
		}
		rows, _ := conn.Query(ctx, `SELECT pid, coalesce(nullif(application_name, ''), backend_type) FROM pg_catalog.pg_stat_activity`)
		var pid int
		var who string
		_, err = pgx.ForEachRow(rows, []any{&pid, &who}, func() error {
			names[pid] = cpuGroup(who)
			return nil
		})
		conn.Close(context.Background())
		if err != nil {
			return s, fmt.Errorf("region %s: sessions: %w", r.Name, err)
		}
		if pid := r.PID(); pid != 0 {
			names[pid] = "replicator processes"
		}
	}
	names[os.Getpid()] = "benchmark clients"
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, _ := strconv.Atoi(filepath.Base(d))
		ppid, ticks, ok := procTicks(pid)
		if !ok {
			continue
		}
		who, named := names[pid]
		if !named {
			if !parents[ppid] {
				continue
			}
			who = "server (other)"
		}
		s.procs[pid] = cpuProc{who: who, ticks: ticks}
	}
	return s, nil
}

// cpuGroup names the group a session's CPU is counted in: the appliers of
// every source as one.
func cpuGroup(who string) string {
	if strings.HasPrefix(who, "polyregion-apply-") {
		return "polyregion-apply-*"
	}
	return who
}

// procTicks reads a process's parent and its user + system ticks.
func procTicks(pid int) (ppid int, ticks int64, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// The command name is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is the state (field 3); ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return 0, 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return ppid, u + st, true
}

// machineTicks reads the machine's busy and total ticks over all CPUs.
func machineTicks() (busy, total int64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	for i, v := range f[1:] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %w", err)
		}
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total, nil
}

// cpuPhase takes a phase's snapshots (see measure).
type cpuPhase struct{ start, end cpuSnapshot }

// measure returns a function that takes the phase's first snapshot when
// first called and its last when called again.
func (p *cpuPhase) measure(ctx context.Context, h *Harness) func() error {
	calls := 0
	return func() error {
		s, err := takeCPUSnapshot(ctx, h)
		if err != nil {
			return err
		}
		if calls++; calls == 1 {
			p.start = s
		} else {
			p.end = s
		}
		return nil
	}
}

func (p *cpuPhase) split() cpuSplit { return cpuBetween(p.start, p.end) }

// cpuSplit is the CPU a phase took, by group, from two snapshots.
type cpuSplit struct {
	wall    time.Duration
	busy    float64 // share of the machine's CPU time that was busy
	byGroup map[string]time.Duration
}

func cpuBetween(a, b cpuSnapshot) cpuSplit {
	sp := cpuSplit{wall: b.at.Sub(a.at), byGroup: map[string]time.Duration{}}
	if d := b.total - a.total; d > 0 {
		sp.busy = float64(b.busy-a.busy) / float64(d)
	}
	for pid, p := range b.procs {
		d := p.ticks - a.procs[pid].ticks
		if prev, ok := a.procs[pid]; d < 0 || ok && prev.who != p.who {
			d = p.ticks // a new process under a reused pid
		}
		sp.byGroup[p.who] += time.Duration(d) * cpuTick
	}
	return sp
}

func (sp cpuSplit) total() time.Duration {
	var t time.Duration
	for _, d := range sp.byGroup {
		t += d
	}
	return t
}

// groups returns the groups, the costliest first.
func (sp cpuSplit) groups() []string {
	out := make([]string, 0, len(sp.byGroup))
	for g, d := range sp.byGroup {
		if d > 0 {
			out = append(out, g)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if sp.byGroup[out[i]] != sp.byGroup[out[j]] {
			return sp.byGroup[out[i]] > sp.byGroup[out[j]]
		}
		return out[i] < out[j]
	})
	return out
}

// perTxn is d spread over txns transactions, in milliseconds.
func perTxn(d time.Duration, txns int64) float64 {
	if txns <= 0 {
		return 0
	}
	return float64(d) / float64(time.Millisecond) / float64(txns)
}
