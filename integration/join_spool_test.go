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

// TestARandomKeyTableIsReadOncePerPass: us holds 2,450,000 rows keyed by
// random texts (MD5s, every other one in upper case, which ICU's en-US
// orders among the lower case ones and C before them all), thirteen chunks
// of a join's load, each chunk's key range on nearly every page of the
// table. eu loads them in units, each load from a new snapshot and the
// source's spool holding a few chunks: the first load (two a pass) is cut
// once its first chunk is in, the second (four a pass) once two more are,
// and the third reads the ten chunks left in at most three passes (two
// when the first pass's measured spool lets the rest go in one): the
// table's pages at most three times, not ten. After each cut eu holds exactly us's rows up
// to its last chunk's key, and at the end all of them, once: each row went
// in the chunk of its key range as the database's collation orders keys
// (make test runs it in C, ICU's en-US and C.UTF-8).
func TestARandomKeyTableIsReadOncePerPass(t *testing.T) {
	const rows = 2_450_000
	schema := []string{`CREATE TABLE public.items (id text PRIMARY KEY, n bigint NOT NULL, v text NOT NULL)`}
	names := []string{"public.items"}
	h := startClusters(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: []TableSpec{{Name: "public.items"}}})
	ctx := ctxFor(t, 8*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	// In sessions that end, so their reads of the table are counted
	// before the load's; VACUUM sets the visibility map the chunks'
	// bounds are read with (an index-only scan) and ANALYZE the key's
	// order on disk. The rows are narrow, so the table stays within the
	// 32,672 pages one page of its visibility map covers: the statistics
	// count a switch between two map pages as a read of the table, and
	// the bounds' scans, in random page order, would count them by the
	// hundred thousand.
	if err := us.Cluster.Exec(ctx, AppDB,
		fmt.Sprintf(`INSERT INTO public.items SELECT CASE WHEN g %% 2 = 0 THEN pg_catalog.upper(pg_catalog.md5(g::text)) ELSE pg_catalog.md5(g::text) END, g, pg_catalog.left(pg_catalog.md5(g::text), 2) FROM pg_catalog.generate_series(1, %d) g`, rows),
		`VACUUM (ANALYZE) public.items`); err != nil {
		t.Fatal(err)
	}
	pages := queryInt(t, ctx, us, `SELECT pg_catalog.pg_relation_size('public.items') / pg_catalog.current_setting('block_size')::int`)
	if pages > 32_672 {
		t.Fatalf("the table has %d pages, more than one visibility map page covers", pages)
	}
	// A chunk's size as the source estimates it: the text of a sample of
	// the rows (the same pages: the same seed, the same table).
	chunk := queryInt(t, ctx, us, `SELECT sum(pg_catalog.octet_length(t::text)) / count(*) * 200000 FROM ONLY public.items t TABLESAMPLE SYSTEM (0.1) REPEATABLE (0)`)
	conn, usDSN, euDSN := startJoinInProcess(t, ctx, us, eu, names)
	digest := `SELECT count(*)::text || ' ' || pg_catalog.md5(pg_catalog.string_agg(id || ' ' || n || ' ' || v, ',' ORDER BY id)) FROM public.items`

	var logs lockedLog
	source := postgres.SnapshotConfig{Region: "us", ConnString: usDSN, Tables: names, Resume: &postgres.SnapshotResume{},
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	// load loads a part and returns the pages of the table us read for it.
	load := func(chunksPerPass, cutAfterUnits int64, says string) int64 {
		t.Helper()
		_, resume, _, err := postgres.ReadJoinResume(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		source.Resume, source.SpoolBytes = &resume, chunk*chunksPerPass+chunk/2
		before := settledHeapReads(t, ctx, us)
		err = loadFromSource(ctx, conn, euDSN, source, cutAfterUnits)
		read := settledHeapReads(t, ctx, us) - before
		if cutAfterUnits > 0 && err == nil {
			t.Fatalf("a load cut after %d chunks succeeded", cutAfterUnits)
		}
		if cutAfterUnits == 0 && err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs.String(), says) {
			t.Fatalf("the source did not say %q:\n%s", says, logs.String())
		}
		_, resume, _, err = postgres.ReadJoinResume(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		units := queryInt(t, ctx, eu, `SELECT count(*) FROM polyregion.join_units`)
		if cutAfterUnits > 0 && (units != cutAfterUnits || len(resume.After["public.items"]) != 1) {
			t.Fatalf("the cut load left %d chunks (want %d), resuming after %v", units, cutAfterUnits, resume.After)
		}
		// In a session that ends, so that its reads of us's table are
		// counted before the next load's.
		q, args := digest, []any{}
		if after := resume.After["public.items"]; after != nil {
			q, args = strings.Replace(digest, "FROM public.items", "FROM public.items WHERE id <= $1", 1), []any{after[0]}
		}
		c, err := us.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var want string
		err = c.QueryRow(ctx, q, args...).Scan(&want)
		c.Close(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if got := queryString(t, ctx, eu, digest); got != want {
			t.Fatalf("after %d chunks eu holds %s (rows, digest), us %s up to the last chunk's key", units, got, want)
		}
		return read
	}
	load(2, 1, "table=public.items chunks=13 passes=7")
	load(4, 3, "table=public.items chunks=12 passes=3")
	read := load(4, 0, "table=public.items chunks=10 passes=3")
	// Two or three passes over the table's pages (each over its chunks'
	// key range: nearly every page); chunk by chunk it would be ten.
	if read < pages || read > pages*4 {
		t.Fatalf("the source read %d pages of the table's %d for at most three passes", read, pages)
	}
	t.Logf("eu holds %s (rows, digest), as us; the last load's ten chunks read %d pages of the table's %d", queryString(t, ctx, eu, digest), read, pages)
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
