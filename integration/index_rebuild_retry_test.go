package integration

import (
	"context"
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
// ever.
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
	stop := startFeed(t, ctx, cfg, be)
	defer stop()
	count := func(sql string) int {
		t.Helper()
		var n int
		if err := super.QueryRow(ctx, sql).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitFor(ctx, t, 30*time.Second, "the retired generation's slot dropped", func() bool {
		return count(`SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = '`+orphan+`'`) == 0
	})
	waitFor(ctx, t, 30*time.Second, "a generation building beside the live one", func() bool {
		return count(`SELECT count(*) FROM polyregion.index_generation WHERE state = 'building' AND gen > 100`) == 1
	})
	time.Sleep(2 * time.Second)
	lock.Close(context.Background())
	waitFor(ctx, t, time.Minute, "the rebuilt generation live", func() bool {
		return count(`SELECT count(*) FROM polyregion.index_generation WHERE state = 'live' AND gen > 100`) == 1
	})
	waitIndexed(ctx, t, r, be, cfg.Indices, time.Minute)
}
