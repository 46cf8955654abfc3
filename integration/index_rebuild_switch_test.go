package integration

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/polyregion/polyregion/indexer"
)

// A rebuild while a generation is live keeps searches through the aliases
// moving forward: changes made during the copy, which the live generation
// shows at once, are not undone when the aliases move to the new
// generation (a deleted row does not come back, an update does not
// revert), also when the feed restarts between the build and the switch;
// after the switch the index equals the table.
func TestIndexRebuildSwitchKeepsChanges(t *testing.T) {
	h := startClusters(t, Spec{Regions: []string{"us"}, SchemaSQL: benchIndexSchema, Tables: []TableSpec{{Name: "public.docs"}}})
	ctx := ctxFor(t, 4*time.Minute)
	d := newDocsIndex(t, ctx, h, 12000, 1000)
	r, conn, be, specs, cfg := d.r, d.conn, d.be, d.specs, d.cfg
	emb := be.(*indexer.Embedded)
	startFeed := func() func() { return startFeed(t, ctx, cfg, be) }
	stopFeed := startFeed()
	defer func() { stopFeed() }()
	waitIndexed(ctx, t, r, be, specs, time.Minute)
	liveGen := func() (gen int) {
		if err := conn.QueryRow(ctx, `SELECT coalesce(max(gen), 0) FROM polyregion.index_generation WHERE state = 'live'`).Scan(&gen); err != nil {
			t.Fatal(err)
		}
		return gen
	}
	if g := liveGen(); g != 1 {
		t.Fatalf("live generation %d, want 1", g)
	}

	// The watcher reads rows through the alias: once a deleted row is
	// gone it must stay gone, once an update shows it must stay.
	type watched struct {
		id    string
		title string // "" for a deleted row
	}
	var mu sync.Mutex
	var watch []watched
	shown := map[string]bool{}
	var regressions []string
	sample := func() {
		mu.Lock()
		defer mu.Unlock()
		for _, w := range watch {
			src, err := emb.Source("docs", w.id)
			if err != nil {
				continue
			}
			var doc struct{ Title string }
			if src != nil {
				_ = json.Unmarshal(src, &doc)
			}
			now := (w.title == "" && src == nil) || (w.title != "" && doc.Title == w.title)
			if shown[w.id] && !now {
				regressions = append(regressions, "document "+w.id+" went back to "+string(src))
				watch = slices.DeleteFunc(watch, func(x watched) bool { return x.id == w.id })
				return
			}
			shown[w.id] = shown[w.id] || now
		}
	}
	isShown := func(id string) bool {
		mu.Lock()
		defer mu.Unlock()
		return shown[id]
	}
	wctx, wcancel := context.WithCancel(ctx)
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		for wctx.Err() == nil {
			sample()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	defer func() { wcancel(); <-wdone }()
	change := func(sql string, w ...watched) {
		pool, err := r.Pool(ctx)
		if err != nil {
			t.Error(err)
			return
		}
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Error(err)
			return
		}
		mu.Lock()
		watch = append(watch, w...)
		mu.Unlock()
		deadline := time.Now().Add(30 * time.Second)
		for _, x := range w {
			for !isShown(x.id) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if !isShown(x.id) {
				t.Errorf("change to document %s not in the live index after 30s", x.id)
			}
		}
	}

	// Rebuild: part way through the copy, rows change (many, so the new
	// generation has much to catch up) and the live generation shows it.
	// The feed stops as the copy ends: the generation is ready, and the
	// feed that starts next finds it so.
	changed, stopped := false, false
	rcfg := cfg
	rcfg.Progress = func(p indexer.BuildProgress) {
		if p.Done && changed && !stopped {
			stopFeed()
			stopped = true
		}
		if changed || p.Rows < 2000 {
			return
		}
		changed = true
		change(`UPDATE public.docs SET title = 'rebuilt ' || id WHERE id % 10 = 0`, watched{indexer.DocID([]string{"10"}), "rebuilt 10"})
		change(`DELETE FROM public.docs WHERE id % 13 = 0`, watched{indexer.DocID([]string{"13"}), ""})
	}
	gen, err := indexer.Rebuild(ctx, rcfg, be)
	if err != nil {
		t.Fatal(err)
	}
	if !changed || !stopped {
		t.Fatal("the rebuild reported no progress")
	}
	var state string
	if err := conn.QueryRow(ctx, `SELECT state FROM polyregion.index_generation WHERE gen = $1`, gen).Scan(&state); err != nil {
		t.Fatal(err)
	}
	if state != "ready" || liveGen() != 1 {
		t.Fatalf("after the rebuild: generation %d %s, live generation %d", gen, state, liveGen())
	}
	// The feed starts again with the generation ready, and more rows
	// change meanwhile.
	stopFeed = startFeed()
	change(`DELETE FROM public.docs WHERE id % 17 = 0`, watched{indexer.DocID([]string{"17"}), ""})
	waitFor(ctx, t, time.Minute, "the rebuilt generation live", func() bool { return liveGen() == gen })
	waitIndexed(ctx, t, r, be, specs, time.Minute)
	wcancel()
	<-wdone
	if len(regressions) > 0 {
		t.Fatalf("searches through the alias went back to older rows:\n%v", regressions)
	}
}
