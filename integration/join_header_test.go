package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/polyregion/polyregion/replicator"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// flushRecorder is a snapshot's destination that notes how much had been
// written each time it was flushed, as the link's response writer sends
// what it holds.
type flushRecorder struct {
	buf     bytes.Buffer
	flushes []int
}

func (f *flushRecorder) Write(p []byte) (int, error) { return f.buf.Write(p) }

func (f *flushRecorder) Flush() error {
	f.flushes = append(f.flushes, f.buf.Len())
	return nil
}

// TestTheSnapshotHeaderGoesOutBeforeTheRows: the source flushes the
// snapshot's header as soon as it is written, before it reads any row, so
// the joining region checks itself, makes its slot anew and opens its
// load while the source reads the first part. Before, the header waited
// in the link's buffer until the first part's rows filled it.
func TestTheSnapshotHeaderGoesOutBeforeTheRows(t *testing.T) {
	schema := []string{`CREATE TABLE public.items (id bigint PRIMARY KEY, v text NOT NULL)`}
	h := startClusters(t, Spec{Regions: []string{"us"}, SchemaSQL: schema, Tables: []TableSpec{{Name: "public.items"}}})
	ctx := ctxFor(t, 2*time.Minute)
	us := h.Regions[0]
	mustExec(t, ctx, us, `INSERT INTO public.items SELECT g, md5(g::text) FROM pg_catalog.generate_series(1, 1000) g`)
	startReady(t, ctx, us)
	w := &flushRecorder{}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	sum, err := postgres.WriteSnapshot(ctx, postgres.SnapshotConfig{Region: "us", ConnString: us.Cluster.URL("polyregion", AppDB),
		Tables: []string{"public.items"}, Resume: &postgres.SnapshotResume{}, Logger: quiet}, w)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Rows["public.items"] != 1000 {
		t.Fatalf("the snapshot holds %d rows, want 1000", sum.Rows["public.items"])
	}
	// The stream opens with the header frame; headerEnd is where it ends.
	b := w.buf.Bytes()
	r := bytes.NewReader(b)
	br := bufio.NewReader(r)
	typ, payload, err := replicator.ReadFrame(br, 1<<20)
	if err != nil || typ != 'H' {
		t.Fatalf("the snapshot does not open with a header frame: %q, %v", typ, err)
	}
	headerEnd := len(b) - r.Len() - br.Buffered()
	var hdr postgres.SnapshotHeader
	if err := json.Unmarshal(payload, &hdr); err != nil {
		t.Fatalf("the header frame: %v", err)
	}
	if len(w.flushes) == 0 || w.flushes[0] != headerEnd {
		t.Fatalf("flushed at %v bytes of %d; want the first flush right after the header's %d bytes", w.flushes, len(b), headerEnd)
	}
	if hdr.Source != "us" || !hdr.Units {
		t.Fatalf("header: source %q, units %v", hdr.Source, hdr.Units)
	}
}
