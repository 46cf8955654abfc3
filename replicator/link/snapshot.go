package link

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// ErrNotServed is returned when the peer does not serve what was asked (a
// snapshot, from a region that serves none).
var ErrNotServed = errors.New("peer does not serve this")

// snapshot serves GET /v1/snapshot: a joining peer, authenticated like a
// stream and with the same configuration, receives a consistent snapshot of
// this region. A snapshot that fails part way ends the response early; the
// peer sees it incomplete (it lacks its end frame) and keeps nothing of it.
func (s *Server) snapshot(w http.ResponseWriter, r *http.Request) {
	peer, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	if !s.sameConfig(w, r, peer) {
		return
	}
	if s.cfg.Snapshot == nil {
		http.Error(w, "region "+string(s.cfg.Region)+" serves no snapshots", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	fw := &flushWriter{w: bufio.NewWriterSize(w, 256<<10), f: w.(http.Flusher)}
	s.cfg.Logger.Info("link: serving a snapshot", "peer", string(peer))
	ctx := r.Context()
	if resume, ok := r.URL.Query()["resume"]; ok {
		ctx = context.WithValue(ctx, resumeKey{}, []byte(resume[0]))
	}
	if err := s.cfg.Snapshot(ctx, peer, fw); err != nil {
		s.cfg.Logger.Error("link: snapshot failed", "peer", string(peer), "err", err)
		// Abort the response so the peer cannot take it for complete.
		panic(http.ErrAbortHandler)
	}
	if err := fw.Flush(); err != nil {
		s.cfg.Logger.Warn("link: snapshot not delivered", "peer", string(peer), "err", err)
	}
}

type resumeKey struct{}

// SnapshotResume returns, inside ServerConfig.Snapshot, what the joining
// peer said it loaded before (its request's resume parameter, a JSON
// document the data plane reads), and whether it sent one: a peer that
// sends none predates loads that go on where they stopped, and takes the
// snapshot whole.
func SnapshotResume(ctx context.Context) ([]byte, bool) {
	b, ok := ctx.Value(resumeKey{}).([]byte)
	return b, ok
}

// flushWriter buffers and flushes the response.
type flushWriter struct {
	w *bufio.Writer
	f http.Flusher
}

func (f *flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil && f.w.Buffered() == 0 {
		f.f.Flush()
	}
	return n, err
}

func (f *flushWriter) Flush() error {
	if err := f.w.Flush(); err != nil {
		return err
	}
	f.f.Flush()
	return nil
}

// Snapshot asks the peer for a consistent snapshot of itself and hands the
// stream to load, which reads it to its end. resume says what this region
// loaded before (see SnapshotResume; nil sends none).
//
// A stream silent for SnapshotIdleTimeout is ended (a half-open connection,
// a source that hangs): load sees it fail.
func (c *Client) Snapshot(ctx context.Context, resume []byte, load func(io.Reader) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	q := url.Values{}
	if resume != nil {
		q.Set("resume", string(resume))
	}
	resp, err := c.request(ctx, http.MethodGet, "/v1/snapshot", q)
	if err != nil {
		return fmt.Errorf("snapshot from %s: %w", c.cfg.Peer, err)
	}
	defer resp.Body.Close()
	if err := c.refusal(resp, "snapshot"); err != nil {
		return err
	}
	idle := time.AfterFunc(SnapshotIdleTimeout, cancel)
	defer idle.Stop()
	return load(&watchedReader{r: resp.Body, idle: idle})
}

// SnapshotIdleTimeout ends a snapshot stream that sent nothing for this
// long. The source sends nothing while it waits for its reader to catch up
// before the pause (up to two minutes), so it is longer than that.
var SnapshotIdleTimeout = 3 * time.Minute

// watchedReader restarts the idle timer on every read that returns data.
type watchedReader struct {
	r    io.Reader
	idle *time.Timer
}

func (w *watchedReader) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	if n > 0 {
		w.idle.Reset(SnapshotIdleTimeout)
	}
	return n, err
}
