package integration

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/indexer"
)

// A rebuild asked for again while the one before is ready and not live
// yet supersedes it: the feed abandons the older one (its slot would hold
// WAL for ever) and goes live with the newer one, and never switches back.
func TestIndexRebuildSupersededIsAbandoned(t *testing.T) {
	ctx, d := indexedDocs(t, 2000, 500)
	r, conn, be, specs, cfg := d.r, d.conn, d.be, d.specs, d.cfg

	// Two rebuilds while no feed runs: both end ready.
	older, err := indexer.Rebuild(ctx, cfg, be)
	if err != nil {
		t.Fatal(err)
	}
	if err := fillDocs(ctx, r, 2001, 2500); err != nil {
		t.Fatal(err)
	}
	newer, err := indexer.Rebuild(ctx, cfg, be)
	if err != nil {
		t.Fatal(err)
	}
	if newer <= older {
		t.Fatalf("second rebuild: generation %d after %d", newer, older)
	}
	state := func(gen int) string { return d.state(t, ctx, gen) }
	stop := startFeed(t, ctx, cfg, be)
	defer stop()
	waitFor(ctx, t, time.Minute, "the newer generation live", func() bool { return state(newer) == "live" })
	// Several polls later it still is, and the older one is gone with its
	// slot.
	time.Sleep(3 * time.Second)
	if s := state(newer); s != "live" {
		t.Fatalf("generation %d is %s after going live; generation %d is %s", newer, s, older, state(older))
	}
	if s := state(older); s != "retired" {
		t.Fatalf("superseded generation %d is %s, want retired", older, s)
	}
	var slots int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.pg_replication_slots WHERE slot_name = (SELECT slot FROM polyregion.index_generation WHERE gen = $1)`, older).Scan(&slots); err != nil {
		t.Fatal(err)
	}
	if slots != 0 {
		t.Fatalf("superseded generation %d kept its slot", older)
	}
	waitIndexed(ctx, t, r, be, specs, time.Minute)
}

// A ready generation that can never catch up (its index was deleted
// before it went live) is abandoned, not retried for ever, and the live
// generation goes on; the feed's start takes no lock that a reader of its
// state (a backup) holds it up behind.
func TestIndexRebuildThatCannotCatchUpIsAbandoned(t *testing.T) {
	ctx, d := indexedDocs(t, 2000, 500)
	r, conn, be, specs, cfg := d.r, d.conn, d.be, d.specs, d.cfg

	// A reader of the feed's state holds its lock throughout, as a backup
	// would.
	reader, err := pgx.Connect(ctx, cfg.Database)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close(context.Background())
	backup, err := reader.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer backup.Rollback(context.Background())
	if _, err := backup.Exec(ctx, `SELECT count(*) FROM polyregion.index_generation`); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	gen, err := indexer.Rebuild(rctx, cfg, be)
	cancel()
	if err != nil {
		t.Fatalf("rebuild while the feed's state is read elsewhere: %v", err)
	}
	var phys string
	if err := conn.QueryRow(ctx, `SELECT indices->>'docs' FROM polyregion.index_generation WHERE gen = $1`, gen).Scan(&phys); err != nil {
		t.Fatal(err)
	}
	if err := be.DeleteIndex(ctx, phys); err != nil {
		t.Fatal(err)
	}

	stop := startFeed(t, ctx, cfg, be)
	defer stop()
	state := func(g int) string { return d.state(t, ctx, g) }
	waitFor(ctx, t, time.Minute, "the generation that lost its index abandoned", func() bool { return state(gen) == "retired" })
	if s := state(1); s != "live" {
		t.Fatalf("generation 1 is %s, want live", s)
	}
	// The live generation goes on taking changes.
	if err := fillDocs(ctx, r, 2001, 2100); err != nil {
		t.Fatal(err)
	}
	waitIndexed(ctx, t, r, be, specs, time.Minute)
}
