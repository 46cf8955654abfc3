package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestALongRunOfInsertsGoesInByCopy: a batch's run of 600 inserts into a
// table (the application's role owns it) whose inserts run no code goes
// in by COPY, every value as sent
// (tabs, newlines, backslashes, a literal \N, NULL, the empty string);
// the same run into a table with an insert trigger goes by INSERT through
// its owner's function. A run whose key is here already (another region
// inserted it first) fails the COPY, retryably; the retry reads every row,
// writes by INSERT and decides the clash as an insert/insert conflict.
func TestALongRunOfInsertsGoesInByCopy(t *testing.T) {
	b := startApplierBench(t, []string{
		// A default of a copied column does not keep a table from COPY.
		`CREATE TABLE public.events (id bigint PRIMARY KEY, note text, n integer DEFAULT 7)`,
		`CREATE TABLE public.handles (id bigint PRIMARY KEY, handle text UNIQUE)`,
		`CREATE TABLE public.audited (id bigint PRIMARY KEY, note text, n integer)`,
		`CREATE TABLE public.audit_log (id bigint, note text)`,
		`CREATE FUNCTION public.audit() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN INSERT INTO public.audit_log VALUES (NEW.id, NEW.note); RETURN NEW; END$$`,
		`CREATE TRIGGER audited_insert BEFORE INSERT ON public.audited FOR EACH ROW EXECUTE FUNCTION public.audit()`,
		`ALTER TABLE public.audited ENABLE ALWAYS TRIGGER audited_insert`,
	}, regions.Table{Name: "public.events"}, regions.Table{Name: "public.audited"}, regions.Table{Name: "public.handles"})
	ctx, ap := b.ctx, b.ap
	// Every statement of the appliers' sessions is logged: which writes
	// went by COPY shows there.
	if err := ap.Cluster.Exec(ctx, "postgres", `ALTER DATABASE `+AppDB+` SET log_statement = 'all'`); err != nil {
		t.Fatal(err)
	}
	events, audited := b.shapes["public.events"], b.shapes["public.audited"]
	fromUS := b.applier(t, "us", postgres.ApplierConfig{})
	fromEU := b.applier(t, "eu", postgres.ApplierConfig{})

	notes := []*string{nil, ptr(""), ptr("tab\there"), ptr("new\nline"), ptr("cr\rhere"), ptr(`back\slash`), ptr(`\N`), ptr(`\\N`), ptr("quote ' \" done"), ptr("unicode ✓ é")}
	insert := func(sh replicator.Shape, id int, origin conflict.RegionID, seq uint64, ms int64) replicator.Change {
		note := replicator.Value{Null: true}
		if p := notes[id%len(notes)]; p != nil {
			note = replicator.Value{Text: *p}
		}
		return replicator.Change{Op: conflict.OpInsert, Key: fmt.Sprintf(`["%d"]`, id),
			Row:     []replicator.Value{{Text: fmt.Sprint(id)}, note, {Text: fmt.Sprint(id * 7)}},
			Version: conflict.Version{Vector: conflict.Vector{origin: seq}, HLC: conflict.MakeTimestamp(1_700_000_000_000+ms, 0), Origin: origin}}
	}
	txn := func(seq uint64, changes []replicator.Change) *replicator.Txn {
		return &replicator.Txn{Origin: "us", Seq: replicator.Seq(seq), LSN: "0/1", Shapes: []replicator.Shape{events, audited}, Changes: changes}
	}
	var first []replicator.Change
	for id := 1; id <= 600; id++ {
		first = append(first, insert(events, id, "us", 1, 10))
	}
	for id := 1; id <= 300; id++ {
		c := insert(audited, id, "us", 1, 10)
		c.T = 1
		first = append(first, c)
	}
	logFrom := logSize(t, ap)
	if _, err := fromUS.Apply(ctx, []*replicator.Txn{txn(1, first)}); err != nil {
		t.Fatal(err)
	}
	log := logSince(t, ap, logFrom)
	if n := copiesInto(log, "events"); n != 1 {
		t.Fatalf("%d COPY statements into events, want 1; the log:\n%s", n, clipLog(log))
	}
	if n := copiesInto(log, "audited"); n != 0 {
		t.Fatalf("%d COPY statements into audited (it has an insert trigger), want none", n)
	}
	conn, err := ap.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for id := 1; id <= 600; id++ {
		want := notes[id%len(notes)]
		var got *string
		var n int64
		if err := conn.QueryRow(ctx, `SELECT note, n FROM public.events WHERE id = $1`, id).Scan(&got, &n); err != nil {
			t.Fatalf("row %d: %v", id, err)
		}
		if (got == nil) != (want == nil) || (got != nil && *got != *want) || n != int64(id*7) {
			t.Fatalf("row %d: note %s, n %d; sent %s, %d", id, show(got), n, show(want), id*7)
		}
	}
	if n := queryInt(t, ctx, ap, `SELECT count(*) FROM public.audit_log`); n != 300 {
		t.Fatalf("the trigger ran for %d of audited's 300 rows", n)
	}
	if n := queryInt(t, ctx, ap, `SELECT count(*) FROM polyregion.row_version WHERE tbl IN ('public.events', 'public.audited')`); n != 900 {
		t.Fatalf("%d versions recorded, want 900", n)
	}

	// eu inserted row 700 first; us's second run holds it too.
	if _, err := fromEU.Apply(ctx, []*replicator.Txn{{Origin: "eu", Seq: 1, LSN: "0/1", Shapes: []replicator.Shape{events},
		Changes: []replicator.Change{insert(events, 700, "eu", 1, 5)}}}); err != nil {
		t.Fatal(err)
	}
	var second []replicator.Change
	for id := 601; id <= 900; id++ {
		second = append(second, insert(events, id, "us", 2, 20))
	}
	logFrom = logSize(t, ap)
	_, err = fromUS.Apply(ctx, []*replicator.Txn{txn(2, second)})
	if err == nil || !postgres.IsRetryable(err) || !strings.Contains(err.Error(), "copy into") {
		t.Fatalf("a run holding a key that is here: %v, want the COPY to fail retryably", err)
	}
	if _, err := fromUS.Apply(ctx, []*replicator.Txn{txn(2, second)}); err != nil {
		t.Fatalf("the retry: %v", err)
	}
	if n := copiesInto(logSince(t, ap, logFrom), "events"); n != 1 {
		t.Fatalf("%d COPY statements into events over the attempt and its retry, want 1 (the retry writes by INSERT)", n)
	}
	if got := queryInt(t, ctx, ap, `SELECT count(*) FROM public.events`); got != 900 {
		t.Fatalf("%d rows in events, want 900", got)
	}
	// us's insert was the later: its row stands, and the clash is logged.
	if got := queryInt(t, ctx, ap, `SELECT n FROM public.events WHERE id = 700`); got != 4900 {
		t.Fatalf("row 700 holds n = %d", got)
	}
	if got := queryInt(t, ctx, ap, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl = 'public.events' AND key = '["700"]'`); got != 1 {
		t.Fatalf("%d conflicts logged for row 700, want 1", got)
	}

	// A transaction applied in parts whose run holds a key that is here:
	// the COPY fails retryably. The follower retries it on a new stream,
	// by a new applier told to read every row: no COPY, and the clash is
	// decided.
	if _, err := fromEU.Apply(ctx, []*replicator.Txn{{Origin: "eu", Seq: 2, LSN: "0/1", Shapes: []replicator.Shape{events},
		Changes: []replicator.Change{insert(events, 1000, "eu", 2, 5)}}}); err != nil {
		t.Fatal(err)
	}
	var third []replicator.Change
	for id := 901; id <= 1200; id++ {
		third = append(third, insert(events, id, "us", 3, 30))
	}
	large := txn(3, third)
	none := func() (*replicator.Txn, error) {
		return nil, fmt.Errorf("a one-part transaction asked for another part")
	}
	if _, err := fromUS.ApplyLarge(ctx, large, none, false); !postgres.IsRetryable(err) || !strings.Contains(err.Error(), "copy into") {
		t.Fatalf("a large transaction whose COPY found its key here: %v, want the COPY to fail retryably", err)
	}
	logFrom = logSize(t, ap)
	fromUS.Close()
	fromUS = b.applier(t, "us", postgres.ApplierConfig{})
	fromUS.ReadEveryRow()
	if _, err := fromUS.ApplyLarge(ctx, large, none, false); err != nil {
		t.Fatalf("retried reading every row: %v", err)
	}
	if n := copiesInto(logSince(t, ap, logFrom), "events"); n != 0 {
		t.Fatalf("%d COPY statements into events in the retry, want none", n)
	}
	if got := queryInt(t, ctx, ap, `SELECT count(*) FROM public.events`); got != 1200 {
		t.Fatalf("%d rows in events, want 1200", got)
	}
	if got := queryInt(t, ctx, ap, `SELECT count(*) FROM polyregion.conflict_log WHERE tbl = 'public.events' AND key = '["1000"]'`); got != 1 {
		t.Fatalf("%d conflicts logged for row 1000, want 1", got)
	}

	// A run whose row breaks another unique constraint (eu took the
	// handle first): a data error, not a race. The batch goes in change by
	// change at once, the row at fault parked; retried, it would fail the
	// same way.
	handles := b.shapes["public.handles"]
	handle := func(id int, h string, origin conflict.RegionID, seq uint64) replicator.Change {
		return replicator.Change{Op: conflict.OpInsert, Key: fmt.Sprintf(`["%d"]`, id), Row: []replicator.Value{{Text: fmt.Sprint(id)}, {Text: h}},
			Version: conflict.Version{Vector: conflict.Vector{origin: seq}, HLC: conflict.MakeTimestamp(1_700_000_000_000+40, 0), Origin: origin}}
	}
	if _, err := fromEU.Apply(ctx, []*replicator.Txn{{Origin: "eu", Seq: 3, LSN: "0/1", Shapes: []replicator.Shape{handles},
		Changes: []replicator.Change{handle(5000, "taken", "eu", 3)}}}); err != nil {
		t.Fatal(err)
	}
	var fourth []replicator.Change
	for id := 1; id <= 300; id++ {
		h := fmt.Sprintf("h%d", id)
		if id == 100 {
			h = "taken"
		}
		fourth = append(fourth, handle(id, h, "us", 4))
	}
	if _, err := fromUS.Apply(ctx, []*replicator.Txn{{Origin: "us", Seq: 4, LSN: "0/1", Shapes: []replicator.Shape{handles}, Changes: fourth}}); err != nil {
		t.Fatalf("a run breaking another unique constraint: %v, want it applied with the row at fault parked", err)
	}
	if got := queryInt(t, ctx, ap, `SELECT count(*) FROM public.handles`); got != 300 {
		t.Fatalf("%d rows in handles, want 300 (299 of us's, eu's one)", got)
	}
	if got := queryInt(t, ctx, ap, `SELECT count(*) FROM polyregion.parked WHERE tbl = 'public.handles' AND key = '["100"]'`); got != 1 {
		t.Fatalf("%d parked changes of handle 100, want 1", got)
	}
}

func ptr(s string) *string { return &s }

func show(s *string) string {
	if s == nil {
		return "NULL"
	}
	return fmt.Sprintf("%q", *s)
}

// logSize is where the region's server log ends now.
func logSize(t *testing.T, r *Region) int64 {
	t.Helper()
	fi, err := os.Stat(r.Cluster.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// logSince is the region's server log from offset on.
func logSince(t *testing.T, r *Region, offset int64) string {
	t.Helper()
	b, err := os.ReadFile(r.Cluster.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(b[min(offset, int64(len(b))):])
}

// copiesInto counts the COPY ... FROM STDIN statements into public.table
// in log.
func copiesInto(log, table string) int {
	return strings.Count(log, `statement: COPY "public"."`+table+`"`)
}

func clipLog(log string) string {
	if len(log) > 4000 {
		return log[len(log)-4000:]
	}
	return log
}
