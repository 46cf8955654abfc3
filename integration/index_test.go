package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/polyregion/polyregion/indexer"
)

var indexSchema = []string{
	`CREATE TYPE public.plan AS ENUM ('free', 'pro', 'team')`,
	`CREATE TABLE public.profiles (
		id bigint PRIMARY KEY, name text NOT NULL, bio text, tags text[], meta jsonb,
		plan public.plan, score numeric(8,2), seen timestamptz, avatar bytea, secret text)`,
	// Updates that leave the large bio untouched must still carry it, so a
	// region whose concurrent version lost keeps no bio of its own.
	`ALTER TABLE public.profiles REPLICA IDENTITY FULL`,
	`CREATE TABLE public.memberships (org text, member bigint, role text NOT NULL, since date, PRIMARY KEY (org, member))`,
}

var indexTables = []TableSpec{{Name: "public.profiles"}, {Name: "public.memberships"}}

// indexSpecs is what each region indexes; suffix keeps regions apart when
// they share one search node (each region has its own in production).
func indexSpecs(suffix string) []indexer.IndexSpec {
	return []indexer.IndexSpec{
		{Table: "public.profiles", Index: "profiles" + suffix, Exclude: []string{"secret"}, Rename: map[string]string{"name": "display_name"}},
		{Table: "public.memberships", Index: "memberships" + suffix},
	}
}

func searchSection(kind, url, dir string, specs []indexer.IndexSpec) *SearchSection {
	s := &SearchSection{Kind: kind, Dir: dir, FlushInterval: "100ms"}
	if url != "" {
		s.URLs = []string{url}
	}
	for _, sp := range specs {
		s.Indices = append(s.Indices, SearchIndex{Table: sp.Table, Index: sp.Index, Exclude: sp.Exclude, Rename: sp.Rename})
	}
	return s
}

// indexWorkload writes overlapping changes to both tables in every region:
// inserts, updates of some columns (leaving a large TOASTed bio unchanged),
// deletes and re-inserts, for d.
func indexWorkload(ctx context.Context, h *Harness, d time.Duration) error {
	deadline := time.Now().Add(d)
	return h.EachRegion(ctx, func(ctx context.Context, r *Region, pool *pgxpool.Pool) error {
		rng := rand.New(rand.NewSource(time.Now().UnixNano() + int64(len(r.Name))*7919))
		for n := 0; time.Now().Before(deadline); n++ {
			id := 1 + rng.Intn(60)
			err := Retry(ctx, pool, func(tx pgx.Tx) error {
				var err error
				switch op := rng.Intn(10); {
				case op < 3:
					bio := fmt.Sprintf("bio of %d by %s", id, r.Name)
					if id%7 == 0 {
						bio = randomText(rng, 6000) // stored out of line (TOAST)
					}
					_, err = tx.Exec(ctx, `INSERT INTO public.profiles (id, name, bio, tags, meta, plan, score, seen, avatar, secret)
						VALUES ($1, $2, $3, $4, $5, $6, $7, now(), $8, 'x')
						ON CONFLICT (id) DO UPDATE SET name = excluded.name, tags = excluded.tags, meta = excluded.meta`,
						id, fmt.Sprintf("user %d %s-%d", id, r.Name, n), bio, []string{r.Name, "n" + fmt.Sprint(n%5), "with space"},
						map[string]any{"region": r.Name, "n": n, "nested": map[string]any{"ok": n%2 == 0}},
						[]string{"free", "pro", "team"}[n%3], fmt.Sprintf("%d.%02d", n%1000, n%100), []byte{byte(n), 0, 255})
				case op < 7:
					_, err = tx.Exec(ctx, `UPDATE public.profiles SET score = score + 1, name = $2 WHERE id = $1`, id, fmt.Sprintf("renamed %d in %s", id, r.Name))
				case op < 8:
					_, err = tx.Exec(ctx, `DELETE FROM public.profiles WHERE id = $1`, id)
				case op < 9:
					_, err = tx.Exec(ctx, `INSERT INTO public.memberships (org, member, role, since) VALUES ($1, $2, $3, current_date)
						ON CONFLICT (org, member) DO UPDATE SET role = excluded.role`, fmt.Sprintf("org|%d", id%4), id, r.Name)
				default:
					_, err = tx.Exec(ctx, `DELETE FROM public.memberships WHERE org = $1 AND member = $2`, fmt.Sprintf("org|%d", id%4), id)
				}
				return err
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
}

func randomText(rng *rand.Rand, n int) string {
	const letters = "abcdefghijklmnopqrstuvwxyz0123456789 "
	b := make([]byte, n)
	for i := range b {
		b[i] = letters[rng.Intn(len(letters))]
	}
	return string(b)
}

// waitIndexed waits until every index of the region equals its table.
func waitIndexed(ctx context.Context, t *testing.T, r *Region, sc indexer.Scanner, specs []indexer.IndexSpec, timeout time.Duration) []indexer.Difference {
	t.Helper()
	conn, err := r.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	deadline := time.Now().Add(timeout)
	var last []indexer.Difference
	for {
		diffs, err := indexer.Verify(ctx, conn, sc, specs)
		if err == nil {
			equal := true
			for _, d := range diffs {
				equal = equal && d.Equal()
			}
			if equal {
				return diffs
			}
			last = diffs
		}
		if time.Now().After(deadline) {
			t.Fatalf("region %s: index not equal to its tables after %s: %v (last error %v)\n%s", r.Name, timeout, last, err, r.Logs(3000))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// searchAPI reads the embedded index through the replicator's own search
// endpoint (the index files belong to the running process).
type searchAPI struct{ base string }

func (s searchAPI) Refresh(context.Context, string) error { return nil }

func (s searchAPI) Scan(ctx context.Context, index string, fn func(id string, source []byte) error) error {
	for from := 0; ; from += 1000 {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/search/%s?size=1000&from=%d", s.base, url.PathEscape(index), from), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		var out struct {
			Hits []struct {
				ID     string          `json:"_id"`
				Source json.RawMessage `json:"_source"`
			} `json:"hits"`
		}
		err = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("search %s: %s", index, resp.Status)
		}
		if err != nil {
			return err
		}
		for _, h := range out.Hits {
			if err := fn(h.ID, h.Source); err != nil {
				return err
			}
		}
		if len(out.Hits) < 1000 {
			return nil
		}
	}
}

// The quickstart's default: each region's embedded index, queried through
// the replicator's /search endpoint, ends equal to its local tables after
// concurrent writes, conflicts and deletes in three regions.
func TestIndexEmbeddedThreeRegions(t *testing.T) {
	dir := testDir(t)
	specs := indexSpecs("")
	h := startRegions(t, Spec{Dir: dir, SchemaSQL: indexSchema, Tables: indexTables,
		Configure: func(region string, c *RegionConfig) {
			c.Search = searchSection("embedded", "", filepath.Join(dir, region+"-index"), specs)
		}})
	ctx := ctxFor(t, 5*time.Minute)
	if err := indexWorkload(ctx, h, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, []string{"public.profiles", "public.memberships"}, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		diffs := waitIndexed(ctx, t, r, searchAPI{"http://" + r.HTTPListen}, specs, time.Minute)
		t.Logf("region %s: %v", r.Name, diffs)
		if diffs[0].Rows == 0 || diffs[1].Rows == 0 {
			t.Fatalf("region %s: the workload left no rows to index: %v", r.Name, diffs)
		}
	}
	// A search for a field value finds the row, by its renamed field.
	r := h.Regions[0]
	conn, err := r.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var id int64
	var name string
	if err := conn.QueryRow(ctx, `SELECT id, name FROM public.profiles ORDER BY id LIMIT 1`).Scan(&id, &name); err != nil {
		t.Fatal(err)
	}
	word := strings.Fields(name)[len(strings.Fields(name))-1]
	resp, err := http.Get("http://" + r.HTTPListen + "/search/profiles?size=1000&q=" + url.QueryEscape("display_name:"+word))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Hits []struct {
			ID string `json:"_id"`
		} `json:"hits"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, h := range out.Hits {
		found = found || h.ID == fmt.Sprint(id)
	}
	if !found {
		t.Fatalf("search display_name:%s did not find profile %d (%q): %+v", word, id, name, out.Hits)
	}
}

// Elasticsearch 8 and OpenSearch: converge after concurrent writes; a
// document the engine refuses goes to the dead-letter table while the rest
// flows; the engine stopped and restarted, a replicator killed (a replayed
// stretch of the stream) and stale versions replayed by hand all leave each
// index equal to its table.
func TestIndexSearchEngines(t *testing.T) {
	for _, kind := range []SearchKind{SearchElasticsearch, SearchOpenSearch} {
		t.Run(string(kind), func(t *testing.T) { testIndexEngine(t, kind) })
	}
}

func testIndexEngine(t *testing.T, kind SearchKind) {
	if err := SearchAvailable(kind); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s cannot run here: %v", kind, err)
		}
		t.Skipf("%s cannot run here: %v", kind, err)
	}
	dir := testDir(t)
	ctx := ctxFor(t, 10*time.Minute)
	node, err := StartSearchNode(ctx, kind, filepath.Join(dir, "search"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Stop() })
	t.Logf("%s %s at %s", kind, node.Version, node.URL)
	specsOf := map[string][]indexer.IndexSpec{}
	h := startRegions(t, Spec{Dir: dir, SchemaSQL: indexSchema, Tables: indexTables,
		Configure: func(region string, c *RegionConfig) {
			specsOf[region] = indexSpecs("-" + region)
			c.Search = searchSection(string(kind), node.URL, "", specsOf[region])
		}})
	be, err := indexer.Open(ctx, indexer.BackendConfig{Kind: string(kind), URLs: []string{node.URL}})
	if err != nil {
		t.Fatal(err)
	}
	checkAll := func(stage string) {
		t.Helper()
		for _, r := range h.Regions {
			diffs := waitIndexed(ctx, t, r, be, specsOf[r.Name], 2*time.Minute)
			t.Logf("%s: region %s: %v", stage, r.Name, diffs)
		}
	}
	tables := []string{"public.profiles", "public.memberships"}

	if err := indexWorkload(ctx, h, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tables, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	checkAll("after concurrent writes")

	// A row whose jsonb is a string where the index maps an object: every
	// region's engine refuses it, records it, and keeps going.
	us := h.Regions[0]
	pool, err := us.Pool(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO public.profiles (id, name, meta) VALUES (1000, 'refused', '"a string, not an object"')`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO public.profiles (id, name, meta) VALUES (1001, 'accepted', '{"fine": true}')`); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tables, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		waitFor(ctx, t, 2*time.Minute, fmt.Sprintf("region %s records the refused document", r.Name), func() bool {
			return queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.index_dead_letter WHERE doc_id = '1000' AND status = 400 AND reason LIKE '%pars%'`) == 1
		})
		conn, err := r.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		diffs, err := indexer.Verify(ctx, conn, be, specsOf[r.Name][:1])
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d := diffs[0]; d.MissingN != 1 || d.Missing[0] != "1000" || d.ExtraN != 0 || d.ChangedN != 0 {
			t.Fatalf("region %s: want exactly the refused row missing: %v", r.Name, d)
		}
	}
	if _, err := pool.Exec(ctx, `DELETE FROM public.profiles WHERE id = 1000`); err != nil {
		t.Fatal(err)
	}

	// Stale deliveries by hand: an older version of a live row and an
	// insert older than a delete change nothing.
	conn, err := us.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var gen struct{ indices map[string]string }
	if err := conn.QueryRow(ctx, `SELECT indices FROM polyregion.index_generation WHERE state = 'live'`).Scan(&gen.indices); err != nil {
		t.Fatal(err)
	}
	phys := gen.indices[specsOf[us.Name][0].Index]
	var liveID, goneID int64
	if err := conn.QueryRow(ctx, `SELECT min(id), max(id) FROM public.profiles WHERE id < 1000`).Scan(&liveID, &goneID); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `DELETE FROM public.profiles WHERE id = $1`, goneID); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tables, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	checkAll("after a delete")
	rej, err := be.Bulk(ctx, []indexer.Op{
		{Index: phys, ID: fmt.Sprint(liveID), Version: 1, Doc: []byte(`{"display_name":"stale"}`)},
		{Index: phys, ID: fmt.Sprint(goneID), Version: 1, Doc: []byte(`{"display_name":"resurrected"}`)},
	})
	if err != nil || len(rej) > 0 {
		t.Fatalf("stale writes: %v %v", rej, err)
	}
	checkAll("after stale versions were replayed")

	// The engine goes away while writes continue; the feeds wait and catch
	// up once it is back.
	if err := node.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := indexWorkload(ctx, h, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if err := node.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tables, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	checkAll("after the engine restarted")

	// A replicator killed mid-stream replays what its slot had not
	// confirmed; versions keep the replay from undoing newer documents.
	done := make(chan error, 1)
	go func() { done <- indexWorkload(ctx, h, 4*time.Second) }()
	time.Sleep(2 * time.Second)
	if err := us.StopReplicator(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := us.StartReplicator(); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitConverged(ctx, tables, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	checkAll("after a replicator was killed and restarted")

}

func waitFor(ctx context.Context, t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
