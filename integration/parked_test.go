package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestParkedChangeUnderAnOldPrimaryKeyDoesNotStopTheTable: the key of a
// table is changed from (user_id) to (user_id, email) in every region in
// turn while writes go on, so that a change made under the old key reaches
// a region that already has the new one. That change alone is parked, with
// a reason naming both keys, logged once (not on every retry); the changes
// made under the new key, before and after it, flow both ways; status and
// the metric count it; `parked list` shows it; `parked discard` refuses
// without a confirmation, then removes it with --yes and prints what it
// discarded; rewriting the row where it was made (the README's recovery)
// converges the regions.
func TestParkedChangeUnderAnOldPrimaryKeyDoesNotStopTheTable(t *testing.T) {
	schema := []string{`CREATE TABLE public.users (user_id integer PRIMARY KEY, email text NOT NULL, name text)`}
	tables := []TableSpec{{Name: "public.users"}}
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 4*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	const rekey = `ALTER TABLE public.users DROP CONSTRAINT users_pkey, ADD PRIMARY KEY (user_id, email)`

	mustExec(t, ctx, us, `INSERT INTO public.users VALUES (1, 'a@example.com', 'a'), (2, 'b@example.com', 'b'), (3, 'c@example.com', 'c')`)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.users`, 3)

	// eu takes the new key first, while its replicator is down.
	if err := eu.StopReplicator(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := eu.Cluster.Exec(ctx, AppDB, rekey); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, eu, `UPDATE public.users SET name = 'eu, new key' WHERE user_id = 3`)
	// us writes under the old key; its reader ships the change with the
	// old key before us takes the new key and writes on.
	shipped := func() int64 {
		return queryInt(t, ctx, us, `SELECT coalesce(max(next_seq), 0) FROM polyregion.reader_state`)
	}
	before := shipped()
	mustExec(t, ctx, us, `UPDATE public.users SET name = 'us, old key' WHERE user_id = 1`)
	waitRow(t, ctx, us, `SELECT (coalesce(max(next_seq), 0) > `+strconv.FormatInt(before, 10)+`)::int FROM polyregion.reader_state`, 1)
	if err := us.Cluster.Exec(ctx, AppDB, rekey); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, us, `UPDATE public.users SET name = 'us, new key' WHERE user_id = 2`)
	mustExec(t, ctx, us, `INSERT INTO public.users VALUES (4, 'd@example.com', 'us, new row')`)
	if err := eu.StartReplicator(); err != nil {
		t.Fatal(err)
	}

	// The old-key change is parked, alone, with both keys named.
	waitRow(t, ctx, eu, `SELECT count(*) FROM polyregion.parked WHERE tbl = 'public.users' AND resolved_at IS NULL`, 1)
	reason := queryString(t, ctx, eu, `SELECT reason FROM polyregion.parked WHERE tbl = 'public.users'`)
	if !strings.Contains(reason, "primary key is (user_id, email) here and (user_id)") {
		t.Errorf("parked reason %q does not name the key difference", reason)
	}
	if key := queryString(t, ctx, eu, `SELECT key FROM polyregion.parked WHERE tbl = 'public.users'`); key != `["1"]` {
		t.Errorf("parked key %s, want the old-key change of user 1", key)
	}
	// Changes under the current key flow, from us to eu and from eu to us.
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.users WHERE user_id = 2 AND name = 'us, new key'`, 1)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.users WHERE user_id = 4`, 1)
	waitRow(t, ctx, us, `SELECT count(*) FROM public.users WHERE user_id = 3 AND name = 'eu, new key'`, 1)
	mustExec(t, ctx, us, `UPDATE public.users SET name = 'us, later' WHERE user_id = 4`)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.users WHERE user_id = 4 AND name = 'us, later'`, 1)
	if n := queryInt(t, ctx, eu, `SELECT count(*) FROM polyregion.parked WHERE resolved_at IS NULL`); n != 1 {
		t.Errorf("eu has %d open parked changes, want only the old-key one", n)
	}

	// The reason is logged once, not on every retry round (every 2s).
	time.Sleep(7 * time.Second)
	if n := lines(eu.Logs(8<<20), "public.users", "primary key"); n != 1 {
		t.Errorf("eu logged the key difference %d times in 7s+, want once:\n%s", n, tailLines(eu.Logs(1<<20), 20))
	}
	if n := queryInt(t, ctx, eu, `SELECT retries FROM polyregion.parked WHERE tbl = 'public.users'`); n < 1 {
		t.Errorf("retries not counted: %d", n)
	}

	// status, the metric and `parked list` show it.
	if n := parkedOpen(t, ctx, eu); n != 1 {
		t.Errorf("status: %d parked changes open, want 1", n)
	}
	waitMetric(t, eu, "polyregion_parked_changes", 1)
	var list []postgres.Parked // as `parked list --json` prints it
	if err := json.Unmarshal(cli(t, ctx, "", "parked", "list", "--json", "--config", eu.ConfigPath), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Source != "us" || list[0].Table != "public.users" || list[0].Key != `["1"]` || list[0].Op != "update" ||
		list[0].Reason != reason || list[0].Seq <= 0 || list[0].ParkedAt.IsZero() {
		t.Fatalf("parked list: %+v", list)
	}
	text := string(cli(t, ctx, "", "parked", "list", "--config", eu.ConfigPath))
	for _, want := range []string{"id", "source", "retries", "parked at", `["1"]`, "primary key is (user_id, email) here"} {
		if !strings.Contains(text, want) {
			t.Errorf("parked list does not show %q:\n%s", want, text)
		}
	}

	// Discard refuses without a confirmation (standard input is no
	// terminal here), then discards with --yes.
	cmd := exec.CommandContext(ctx, binary, "parked", "discard", "--all", "--config", eu.ConfigPath)
	cmd.Stdin = strings.NewReader("discard\n")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "--yes") {
		t.Errorf("discard without --yes: %v\n%s", err, out)
	}
	if n := parkedOpen(t, ctx, eu); n != 1 {
		t.Fatalf("a refused discard removed parked changes: %d open", n)
	}
	out := string(cli(t, ctx, "", "parked", "discard", "--id", strconv.FormatInt(list[0].ID, 10), "--yes", "--config", eu.ConfigPath))
	if !strings.Contains(out, "discarded parked change "+strconv.FormatInt(list[0].ID, 10)) || !strings.Contains(out, `["1"]`) || !strings.Contains(out, "primary key") {
		t.Errorf("discard does not say what it discarded:\n%s", out)
	}
	if n := parkedOpen(t, ctx, eu); n != 0 {
		t.Errorf("status after discard: %d parked changes open, want 0", n)
	}
	waitMetric(t, eu, "polyregion_parked_changes", 0)

	// Recovery: the row is rewritten where the old-key change was made; it
	// goes out under the new key and the regions converge.
	mustExec(t, ctx, us, `UPDATE public.users SET name = name WHERE user_id = 1`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	if got := queryString(t, ctx, eu, `SELECT name FROM public.users WHERE user_id = 1`); got != "us, old key" {
		t.Errorf("eu user 1 after recovery: %q", got)
	}
}

// TestParkedNewShapeIsAppliedOnceTheTableCatchesUp: a rolling migration
// adds a column in us before eu. us's changes of the new shape are parked
// in eu (only them: the table's other changes go on), with the reason
// logged once; as soon as eu adds the column too, the retry applies them.
// A change made right after eu's DDL may overtake the parked ones: the
// versions decide, so the older parked changes of that row are skipped and
// the regions end with the newest row.
func TestParkedNewShapeIsAppliedOnceTheTableCatchesUp(t *testing.T) {
	schema := []string{`CREATE TABLE public.items (id integer PRIMARY KEY, name text)`}
	tables := []TableSpec{{Name: "public.items"}}
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, us, `INSERT INTO public.items VALUES (1, 'chair'), (2, 'desk')`)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.items`, 2)

	if err := us.Cluster.Exec(ctx, AppDB, `ALTER TABLE public.items ADD COLUMN color text`); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, us, `UPDATE public.items SET color = 'red' WHERE id = 1`)
	mustExec(t, ctx, us, `UPDATE public.items SET color = 'blue' WHERE id = 1`)
	mustExec(t, ctx, us, `INSERT INTO public.items VALUES (3, 'lamp', 'white')`)
	waitRow(t, ctx, eu, `SELECT count(*) FROM polyregion.parked WHERE tbl = 'public.items' AND resolved_at IS NULL`, 3)
	// eu's own changes (in its shape) still flow to us.
	mustExec(t, ctx, eu, `UPDATE public.items SET name = 'desk, eu' WHERE id = 2`)
	// us has the column; eu's change lacks it: parked in us, not applied.
	waitRow(t, ctx, us, `SELECT count(*) FROM polyregion.parked WHERE tbl = 'public.items' AND resolved_at IS NULL`, 1)
	reason := queryString(t, ctx, eu, `SELECT reason FROM polyregion.parked WHERE tbl = 'public.items' LIMIT 1`)
	if !strings.Contains(reason, `"color"`) {
		t.Errorf("parked reason %q does not name the column", reason)
	}
	// An operator's retry goes through the replicator: the shape still
	// differs, so they stay parked, with the reason, not logged again.
	out := string(cli(t, ctx, "", "parked", "retry", "--all", "--source", "us", "--wait", "20s", "--config", eu.ConfigPath))
	if !strings.Contains(out, "3 parked change(s) made due") || strings.Count(out, "still parked: ") != 3 || !strings.Contains(out, `"color"`) {
		t.Errorf("parked retry while the shape differs:\n%s", out)
	}
	time.Sleep(5 * time.Second)
	if n := lines(eu.Logs(8<<20), "public.items", `\"color\"`); n != 1 {
		t.Errorf("eu logged the column difference %d times, want once:\n%s", n, tailLines(eu.Logs(1<<20), 20))
	}

	// eu catches up; a change made right after may arrive before the
	// parked ones are retried.
	if err := eu.Cluster.Exec(ctx, AppDB, `ALTER TABLE public.items ADD COLUMN color text`); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, us, `UPDATE public.items SET color = 'green' WHERE id = 1`)
	waitRow(t, ctx, eu, `SELECT count(*) FROM polyregion.parked WHERE resolved_at IS NULL`, 0)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.items WHERE id = 1 AND color = 'green'`, 1)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.items WHERE id = 3 AND color = 'white'`, 1)
	// eu's change made before its DDL will never match us's table: it stays
	// parked there until an operator discards it (after recovering it).
	if n := queryInt(t, ctx, us, `SELECT count(*) FROM polyregion.parked WHERE resolved_at IS NULL`); n != 1 {
		t.Errorf("us has %d open parked changes, want eu's old-shape one", n)
	}
	cli(t, ctx, "", "parked", "discard", "--all", "--source", "eu", "--yes", "--config", us.ConfigPath)
	mustExec(t, ctx, eu, `UPDATE public.items SET name = name WHERE id = 2`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
}

// lines counts the log lines holding every one of words.
func lines(logs string, words ...string) int {
	n := 0
	for _, l := range strings.Split(logs, "\n") {
		all := true
		for _, w := range words {
			all = all && strings.Contains(l, w)
		}
		if all {
			n++
		}
	}
	return n
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// cli runs the polyregion binary and returns its standard output; stdin is
// given to it when not empty.
func cli(t *testing.T, ctx context.Context, stdin string, args ...string) []byte {
	t.Helper()
	cmd := exec.CommandContext(ctx, binary, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("polyregion %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// parkedOpen is the parked_open count of `polyregion status --json`.
func parkedOpen(t *testing.T, ctx context.Context, r *Region) int64 {
	t.Helper()
	var st struct {
		ParkedOpen int64 `json:"parked_open"`
	}
	if err := json.Unmarshal(cli(t, ctx, "", "status", "--json", "--config", r.ConfigPath), &st); err != nil {
		t.Fatal(err)
	}
	return st.ParkedOpen
}

// waitMetric waits until the region's replicator exports the gauge at want.
func waitMetric(t *testing.T, r *Region, name string, want float64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var got float64
	for time.Now().Before(deadline) {
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + r.HTTPListen + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var ok bool
			if got, ok = metricValue(string(b), name); ok && got == want {
				return
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Errorf("region %s: %s = %v, want %v", r.Name, name, got, want)
}
