package integration

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// TestARandomKeyTableIsReadOncePerPass: us holds 1,850,000 rows keyed by
// random texts (MD5s, every other one in upper case, which ICU's en-US
// orders among the lower case ones and C before them all), ten chunks of a
// join's load, each chunk's key range on nearly every page of the table.
// eu loads them in units from a source whose spool holds two chunks: five
// passes, cut once the first chunk is in. The load goes on from a new
// snapshot with a spool of four chunks: the nine chunks left take three
// passes, and the source reads the table three times, not nine. eu ends
// with every row of us, once: each row went in the chunk of its key range
// as the database's collation orders keys (make test runs it in C, ICU's
// en-US and C.UTF-8).
func TestARandomKeyTableIsReadOncePerPass(t *testing.T) {
	const rows = 1_850_000
	schema := []string{`CREATE TABLE public.items (id text PRIMARY KEY, n bigint NOT NULL, v text NOT NULL)`}
	names := []string{"public.items"}
	h := startClusters(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: []TableSpec{{Name: "public.items"}}})
	ctx := ctxFor(t, 8*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	// In sessions that end, so their reads of the table are counted
	// before the load's; VACUUM sets the visibility map the chunks'
	// bounds are read with (an index-only scan) and ANALYZE the key's
	// order on disk.
	if err := us.Cluster.Exec(ctx, AppDB,
		fmt.Sprintf(`INSERT INTO public.items SELECT CASE WHEN g %% 2 = 0 THEN pg_catalog.upper(pg_catalog.md5(g::text)) ELSE pg_catalog.md5(g::text) END, g, pg_catalog.md5(g::text) FROM pg_catalog.generate_series(1, %d) g`, rows),
		`VACUUM (ANALYZE) public.items`); err != nil {
		t.Fatal(err)
	}
	pages := queryInt(t, ctx, us, `SELECT pg_catalog.pg_relation_size('public.items') / pg_catalog.current_setting('block_size')::int`)
	chunk := queryInt(t, ctx, us, `SELECT (pg_catalog.pg_table_size(c.oid) / c.reltuples * 200000)::bigint FROM pg_catalog.pg_class c WHERE c.oid = 'public.items'::regclass`)
	conn, usDSN, euDSN := startJoinInProcess(t, ctx, us, eu, names)

	var logs lockedLog
	source := postgres.SnapshotConfig{Region: "us", ConnString: usDSN, Tables: names, Resume: &postgres.SnapshotResume{},
		SpoolBytes: chunk * 5 / 2, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	if err := loadFromSource(ctx, conn, euDSN, source, 1); err == nil {
		t.Fatal("a load cut after its first chunk succeeded")
	}
	if !strings.Contains(logs.String(), "table=public.items chunks=10 passes=5") {
		t.Fatalf("the source did not say it read the table's 10 chunks in 5 passes:\n%s", logs.String())
	}
	if kept, units := queryInt(t, ctx, eu, `SELECT count(*) FROM public.items`), queryInt(t, ctx, eu, `SELECT count(*) FROM polyregion.join_units`); units != 1 || kept != 200_000 {
		t.Fatalf("the cut load kept %d rows in %d chunks, want 200000 in 1", kept, units)
	}

	_, resume, _, err := postgres.ReadJoinResume(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	source.Resume, source.SpoolBytes = &resume, chunk*9/2
	before := settledHeapReads(t, ctx, us)
	if err := loadFromSource(ctx, conn, euDSN, source, 0); err != nil {
		t.Fatal(err)
	}
	read := settledHeapReads(t, ctx, us) - before
	if !strings.Contains(logs.String(), "table=public.items chunks=9 passes=3") {
		t.Fatalf("the source did not say it read the table's 9 chunks left in 3 passes:\n%s", logs.String())
	}
	// Three passes over the table's pages (each over its chunks' key
	// range: nearly every page); chunk by chunk it would have been nine.
	if read < pages*2 || read > pages*4 {
		t.Fatalf("the source read %d pages of the table's %d for three passes", read, pages)
	}
	sum := `SELECT count(*)::text || ' ' || pg_catalog.md5(pg_catalog.string_agg(id || ' ' || n || ' ' || v, ',' ORDER BY id)) FROM public.items`
	want, got := queryString(t, ctx, us, sum), queryString(t, ctx, eu, sum)
	if got != want {
		t.Fatalf("eu holds %s (rows, digest), us %s", got, want)
	}
	t.Logf("eu holds us's %s; the load's nine chunks read %d pages of the table's %d in three passes", want, read, pages)
}

// settledHeapReads is how many pages of public.items r's sessions have
// read (from its buffers or the disk), once the count stops moving
// (sessions report theirs when they end or go idle).
func settledHeapReads(t *testing.T, ctx context.Context, r *Region) int64 {
	t.Helper()
	q := `SELECT coalesce(heap_blks_hit, 0) + coalesce(heap_blks_read, 0) FROM pg_catalog.pg_statio_user_tables WHERE relid = 'public.items'::regclass`
	last, since := int64(-1), time.Now()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		n := queryInt(t, ctx, r, q)
		if n != last {
			last, since = n, time.Now()
			continue
		}
		if time.Since(since) >= 2*time.Second {
			return n
		}
	}
	t.Fatalf("%s: the table's page reads kept moving for 30 s", r.Name)
	return 0
}

// lockedLog is a log's output, written and read from several goroutines.
type lockedLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
