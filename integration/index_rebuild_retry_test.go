package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/indexer"
)

// A rebuild beside the live generation whose first attempt fails (here
// another session holds the build lock, as an `index rebuild` killed
// mid-build leaves it for a moment) is tried again by the running feed
// until it goes live; before, the live stream ran on and the new
// generation was never built until the feed restarted. And the slot of a
// retired generation (its retirement interrupted before the slot was
// dropped) is dropped when the feed starts, instead of holding WAL for
// ever. While the lock is held, the live stream is not restarted, and an
// `index rebuild` is refused before it records a generation.
func TestIndexRebuildRetriedAndRetiredSlotsDropped(t *testing.T) {
	ctx, d := indexedDocs(t, 2000, 500)
	r, be := d.r, d.be

	super, err := r.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(context.Background())
	const orphan = "polyregion_idx_orphan"
	for _, sql := range []string{
		`SELECT pg_catalog.pg_create_logical_replication_slot('` + orphan + `', 'pgoutput')`,
		`INSERT INTO polyregion.index_generation (gen, state, slot, indices, fingerprint) VALUES (100, 'retired', '` + orphan + `', '{}', 'gone')`,
	} {
		if _, err := super.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	lock, err := pgx.Connect(ctx, d.cfg.Database)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close(context.Background())
	if _, err := lock.Exec(ctx, `SELECT pg_catalog.pg_advisory_lock($1)`, int64(0x706f6c79696478)); err != nil { // the build lock
		t.Fatal(err)
	}

	// A new configuration (body indexed too): a rebuild beside the live
	// generation, which fails while the lock is held.
	cfg := d.cfg
	cfg.Indices = []indexer.IndexSpec{{Table: "public.docs", Index: "docs"}}
	count := func(sql string) int {
		t.Helper()
		var n int
		if err := super.QueryRow(ctx, sql).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// A rebuild command refused while the lock is held leaves no
	// generation behind for a running feed to build in its stead.
	gens := count(`SELECT count(*) FROM polyregion.index_generation`)
	if _, err := indexer.Rebuild(ctx, cfg, be); err == nil || !strings.Contains(err.Error(), "another process is building") {
		t.Fatalf("rebuild with the build lock held elsewhere: %v, want refused", err)
	}
	if n := count(`SELECT count(*) FROM polyregion.index_generation`); n != gens {
		t.Fatalf("a refused rebuild left %d generations, %d before", n, gens)
	}
	stop := startFeed(t, ctx, cfg, be)
	defer stop()
	waitFor(ctx, t, 30*time.Second, "the retired generation's slot dropped", func() bool {
		return count(`SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = '`+orphan+`'`) == 0
	})
	waitFor(ctx, t, 30*time.Second, "a generation building beside the live one", func() bool {
		return count(`SELECT count(*) FROM polyregion.index_generation WHERE state = 'building' AND gen > 100`) == 1
	})
	// While the lock's holder builds (as `index rebuild` would), the live
	// stream runs on in one session: before, it was stopped and started
	// again every 10 s to look at the build again.
	livePID := `SELECT coalesce((SELECT s.active_pid FROM pg_catalog.pg_replication_slots s
		JOIN polyregion.index_generation g ON g.slot = s.slot_name WHERE g.state = 'live'), 0)`
	waitFor(ctx, t, 30*time.Second, "the live generation streaming", func() bool { return count(livePID) != 0 })
	pid := count(livePID)
	deadline := time.Now().Add(14 * time.Second)
	for time.Now().Before(deadline) {
		if now := count(livePID); now != pid {
			t.Fatalf("the live stream was restarted (walsender %d, then %d) while another session held the build lock", pid, now)
		}
		time.Sleep(100 * time.Millisecond)
	}
	lock.Close(context.Background())
	waitFor(ctx, t, time.Minute, "the rebuilt generation live", func() bool {
		return count(`SELECT count(*) FROM polyregion.index_generation WHERE state = 'live' AND gen > 100`) == 1
	})
	waitIndexed(ctx, t, r, be, cfg.Indices, time.Minute)
}
