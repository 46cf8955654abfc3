package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

var notesSchema = append(append([]string(nil), kvSchema...),
	`CREATE TABLE public.notes (id integer PRIMARY KEY, body text, n bigint NOT NULL DEFAULT 0)`)

// TestATableAddedAtAnEpochSeedsEveryRegionsRows: three regions replicate
// public.kv; public.notes exists in each and is not replicated: us holds
// 300 rows, eu 20 (ten of them on us's keys, with other values); ap has
// no such table. While us and eu keep writing notes (updates of us's rows,
// inserts of new ones), cluster configure adds the table: until the table
// is created in ap, ap says so in /health, parks what the others write to
// it, and replicates public.kv both ways. Every region then holds every
// region's rows, those written before the change and during it: the ten
// keys both held are decided by the policy, the same way everywhere, and
// every later write reaches every region. Each region seeded the table
// once; a change that adds a table missing in the region that takes the
// command is refused. Then a change drops public.kv: a row written to it
// stays in its region, while notes keep flowing both ways.
func TestATableAddedAtAnEpochSeedsEveryRegionsRows(t *testing.T) {
	tables := []TableSpec{{Name: "public.kv"}}
	ctx := ctxFor(t, 6*time.Minute)
	h := startFoundedThrough(t, ctx, notesSchema, tables, func(*RegionConfig) {}, nil)
	us, eu, ap := h.Regions[0], h.Regions[1], h.Regions[2]
	mustExec(t, ctx, us, `INSERT INTO public.notes (id, body) SELECT g, 'us ' || g FROM pg_catalog.generate_series(1, 300) g`)
	mustExec(t, ctx, eu, `INSERT INTO public.notes (id, body) SELECT g, 'eu ' || g FROM pg_catalog.generate_series(291, 310) g`)
	mustExec(t, ctx, ap, `DROP TABLE public.notes`)

	// us bumps n of its first 50 rows and inserts rows from 100000 on; eu
	// inserts rows from 200000 on; each counts what it wrote.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	inserted := map[string]*int{"us": new(int), "eu": new(int)}
	for _, w := range []struct {
		r    *Region
		base int
	}{{us, 100000}, {eu, 200000}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := w.r.Conn(ctx)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := conn.Exec(ctx, `INSERT INTO public.notes (id, body) VALUES ($1, $2)`, w.base+i, fmt.Sprintf("%s insert %d", w.r.Name, i)); err != nil {
					errs <- fmt.Errorf("%s: %w", w.r.Name, err)
					return
				}
				*inserted[w.r.Name] = i + 1
				if w.r == us {
					if _, err := conn.Exec(ctx, `UPDATE public.notes SET n = n + 1 WHERE id = $1`, 1+i%50); err != nil {
						errs <- fmt.Errorf("%s: %w", w.r.Name, err)
						return
					}
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	time.Sleep(time.Second)

	// status names what each member's release takes.
	st := mustPolyregion(t, ctx, "status", "--config", eu.ConfigPath)
	for _, r := range h.Regions {
		if !strings.Contains(st, "member "+r.Name) || strings.Count(st, "(release takes policy and table changes, and the later membership rules)") != 3 {
			t.Fatalf("status does not show that %s's release takes table changes:\n%s", r.Name, st)
		}
	}
	out := mustPolyregion(t, ctx, "cluster", "configure", "--config",
		withTables(t, us, "notes", []TableSpec{{Name: "public.kv"}, {Name: "public.notes"}}))
	if !strings.Contains(out, "epoch 2") {
		t.Fatalf("cluster configure:\n%s", out)
	}
	// ap has no such table yet: it says so in /health, parks what us and
	// eu write to it, and replicates every other table meanwhile, both
	// ways; once the table is there, it seeds it and applies what it
	// parked.
	waitHealth(t, ap, time.Minute, "degraded, naming the added table", func(code int, body string) bool {
		return code == 200 && strings.Contains(body, "table public.notes added by the cluster is not replicated here yet")
	})
	mustExec(t, ctx, ap, `INSERT INTO public.kv (id, val) VALUES (6001, 'written in ap while notes waits')`)
	mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES (6002, 'written in us while notes waits')`)
	waitRow(t, ctx, us, `SELECT count(*) FROM public.kv WHERE id = 6001`, 1)
	waitRow(t, ctx, ap, `SELECT count(*) FROM public.kv WHERE id = 6002`, 1)
	waitRow(t, ctx, ap, `SELECT (count(*) > 0)::int FROM polyregion.parked WHERE tbl = 'public.notes' AND resolved_at IS NULL AND source = 'us'`, 1)
	t.Logf("while public.notes waited in ap, kv rows went both ways and ap parked %d changes of notes",
		queryInt(t, ctx, ap, `SELECT count(*) FROM polyregion.parked WHERE tbl = 'public.notes'`))
	mustExec(t, ctx, ap, notesSchema[len(notesSchema)-1])
	created := time.Now()
	for _, r := range h.Regions {
		waitControl(t, r, 2*time.Minute, "epoch 2 in effect with every region's fence", func(c controlStatus) bool {
			return c.Epoch.Number == 2 && c.Epoch.Effective > 0 && len(c.Epoch.Fences) == 3
		})
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("writer: %v", err)
	default:
	}
	if err := h.WaitConverged(ctx, []string{"public.kv", "public.notes"}, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("converged %.1fs after the table was created in ap", time.Since(created).Seconds())
	updates := *inserted["us"]
	for _, r := range h.Regions {
		for q, want := range map[string]int{
			`SELECT count(*) FROM public.notes WHERE id BETWEEN 1 AND 310`:                                          310,
			`SELECT count(*) FROM public.notes WHERE id BETWEEN 1 AND 290 AND body = 'us ' || id`:                   290,
			`SELECT count(*) FROM public.notes WHERE id BETWEEN 301 AND 310 AND body = 'eu ' || id`:                 10,
			`SELECT count(*) FROM public.notes WHERE id >= 100000 AND id < 200000`:                                  *inserted["us"],
			`SELECT count(*) FROM public.notes WHERE id >= 200000`:                                                  *inserted["eu"],
			`SELECT coalesce(sum(n), 0)::int FROM public.notes WHERE id BETWEEN 1 AND 50`:                           updates,
			`SELECT count(*) FROM polyregion.seeded WHERE tbl = 'public.notes' AND epoch = 2`:                       1,
			`SELECT count(*) FROM public.notes WHERE id BETWEEN 291 AND 300 AND body IN ('us ' || id, 'eu ' || id)`: 10,
		} {
			if n := queryInt(t, ctx, r, q); n != int64(want) {
				t.Fatalf("%s: %s = %d, want %d", r.Name, q, n, want)
			}
		}
		if !strings.Contains(r.Logs(1<<22), "replicating a table added by the cluster") {
			t.Fatalf("%s did not log seeding the table:\n%s", r.Name, r.Logs(4000))
		}
	}
	t.Logf("us inserted %d notes and bumped counts %d times, eu inserted %d, while the table was added; seeded rows: us %d, eu %d, ap %d",
		*inserted["us"], updates, *inserted["eu"],
		queryInt(t, ctx, us, `SELECT rows FROM polyregion.seeded`), queryInt(t, ctx, eu, `SELECT rows FROM polyregion.seeded`), queryInt(t, ctx, ap, `SELECT rows FROM polyregion.seeded`))

	if out, err := polyregion(ctx, "cluster", "configure", "--config", withTables(t, us, "nope", []TableSpec{{Name: "public.kv"}, {Name: "public.notes"}, {Name: "public.nope"}})); err == nil || !strings.Contains(out, "public.nope") || !strings.Contains(out, "refused") {
		t.Fatalf("a change that adds a table missing in the region that takes it: %v\n%s", err, out)
	}
	if c, _ := controlOf(us); c.Epoch.Number != 2 {
		t.Fatalf("a refused change announced epoch %d", c.Epoch.Number)
	}

	// public.kv is dropped: its changes stay where they are made, and the
	// links (their fingerprint the founding tables') go on with notes. A kv
	// change ap parked before the drop (ap's kv has a column the others'
	// lacks) is set aside then, not applied.
	mustExec(t, ctx, ap, `ALTER TABLE public.kv ADD COLUMN extra integer`)
	mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES (6500, 'parked in ap before the drop')`)
	waitRow(t, ctx, ap, `SELECT (count(*) >= 1)::int FROM polyregion.parked WHERE tbl = 'public.kv' AND source = 'us' AND resolved_at IS NULL`, 1)
	out = mustPolyregion(t, ctx, "cluster", "configure", "--config", withTables(t, us, "notes-only", []TableSpec{{Name: "public.notes"}}), "--wait", "90s")
	if !strings.Contains(out, "epoch 3 in effect") {
		t.Fatalf("cluster configure dropping public.kv:\n%s", out)
	}
	mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES (7000, 'after the drop')`)
	mustExec(t, ctx, us, `INSERT INTO public.notes (id, body) VALUES (300000, 'after the drop')`)
	mustExec(t, ctx, eu, `INSERT INTO public.notes (id, body) VALUES (300001, 'after the drop')`)
	for _, r := range h.Regions {
		waitRow(t, ctx, r, `SELECT count(*) FROM public.notes WHERE id IN (300000, 300001)`, 2)
		want := int64(0)
		if r == us {
			want = 1
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.kv WHERE id = 7000`); n != want {
			t.Fatalf("%s holds %d copies of the kv row written in us after kv was dropped, want %d", r.Name, n, want)
		}
		waitRow(t, ctx, r, `SELECT count(*) FROM polyregion.parked WHERE resolved_at IS NULL`, 0)
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.parked WHERE tbl = 'public.kv' AND reason NOT LIKE 'not applied: the cluster dropped the table%'`); n != 0 {
			t.Fatalf("%s holds %d parked changes of kv not set aside by the drop", r.Name, n)
		}
		if r == ap {
			if n := queryInt(t, ctx, r, `SELECT count(*) FROM public.kv WHERE id = 6500`); n != 0 {
				t.Fatalf("ap applied the kv change it parked before kv was dropped")
			}
		}
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM pg_catalog.pg_publication_tables WHERE tablename = 'kv'`); n != 0 {
			t.Fatalf("%s still publishes public.kv", r.Name)
		}
		// The drop is in effect: kv's versions go, notes' stay.
		waitRow(t, ctx, r, `SELECT count(*) FROM polyregion.row_version WHERE tbl = 'public.kv'`, 0)
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.row_version WHERE tbl = 'public.notes'`); n < 310 {
			t.Fatalf("%s holds %d versions of notes rows", r.Name, n)
		}
	}
}
