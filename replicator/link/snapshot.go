package link

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ErrNotServed is returned when the peer does not serve what was asked (a
// snapshot, from a region that serves none).
var ErrNotServed = errors.New("peer does not serve this")

// snapshot serves GET /v1/snapshot: a joining peer, authenticated like a
// stream and with the same configuration, receives a consistent snapshot of
// this region. A snapshot that fails before it sent anything is answered
// with an error status: 422 with the reason when the source refuses it
// (RefuseSnapshot), 503 otherwise (the reason stays in this region's log).
// One that fails part way ends the response early; the peer sees it
// incomplete (it lacks its end frame) and keeps no part of it that did
// not end.
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
	fw := &flushWriter{rw: w}
	fw.w = bufio.NewWriterSize(startWriter{fw}, 256<<10)
	s.cfg.Logger.Info("link: serving a snapshot", "peer", string(peer))
	ctx := r.Context()
	if resume, ok := r.URL.Query()["resume"]; ok {
		ctx = context.WithValue(ctx, resumeKey{}, []byte(resume[0]))
	}
	err := s.cfg.Snapshot(ctx, peer, fw)
	switch {
	case err != nil && !fw.started && errors.Is(err, ErrSnapshotRefused):
		// Nothing was sent yet: the peer is told why, and stops asking.
		s.cfg.Logger.Warn("link: snapshot refused", "peer", string(peer), "err", err)
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
	case err != nil && !fw.started:
		s.cfg.Logger.Error("link: snapshot failed", "peer", string(peer), "err", err)
		http.Error(w, "region "+string(s.cfg.Region)+" could not take a snapshot (its log says why); try again", http.StatusServiceUnavailable)
	case err != nil:
		s.cfg.Logger.Error("link: snapshot failed", "peer", string(peer), "err", err)
		// Abort the response so the peer cannot take it for complete.
		panic(http.ErrAbortHandler)
	default:
		if err := fw.Flush(); err != nil {
			s.cfg.Logger.Warn("link: snapshot not delivered", "peer", string(peer), "err", err)
		}
	}
}

// ErrSnapshotRefused marks a snapshot the peer refuses for a reason that
// asking again cannot fix (its message says which).
var ErrSnapshotRefused = errors.New("snapshot refused")

// RefuseSnapshot marks err, returned by ServerConfig.Snapshot before it
// wrote anything, as a refusal: the joining peer receives its text (so it
// must carry no secret) and stops asking.
func RefuseSnapshot(err error) error { return snapshotRefusal{err} }

type snapshotRefusal struct{ err error }

func (e snapshotRefusal) Error() string   { return e.err.Error() }
func (e snapshotRefusal) Unwrap() []error { return []error{e.err, ErrSnapshotRefused} }

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

// flushWriter buffers and flushes the response. The response's status
// goes out with its first bytes: until then a failed snapshot can still
// be answered with an error status.
type flushWriter struct {
	w       *bufio.Writer
	rw      http.ResponseWriter
	started bool
}

// startWriter is what the buffer writes to: it sends the status first.
type startWriter struct{ f *flushWriter }

func (s startWriter) Write(p []byte) (int, error) {
	if !s.f.started {
		s.f.started = true
		s.f.rw.Header().Set("Content-Type", "application/octet-stream")
		s.f.rw.WriteHeader(http.StatusOK)
	}
	return s.f.rw.Write(p)
}

func (f *flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil && f.w.Buffered() == 0 {
		f.flushResponse()
	}
	return n, err
}

// Flush sends what is buffered (and the status, if nothing went yet).
func (f *flushWriter) Flush() error {
	if !f.started && f.w.Buffered() == 0 {
		// An empty snapshot: the status alone.
		_, _ = startWriter{f}.Write(nil)
	}
	if err := f.w.Flush(); err != nil {
		return err
	}
	f.flushResponse()
	return nil
}

func (f *flushWriter) flushResponse() {
	if fl, ok := f.rw.(http.Flusher); ok && f.started {
		fl.Flush()
	}
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
	// The source answers with its first bytes, after it took the snapshot:
	// the wait for them is bounded like any silence of the stream.
	idle := time.AfterFunc(SnapshotIdleTimeout, cancel)
	defer idle.Stop()
	resp, err := c.request(ctx, http.MethodGet, "/v1/snapshot", q)
	if err != nil {
		return fmt.Errorf("snapshot from %s: %w", c.cfg.Peer, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusUnprocessableEntity {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("snapshot from %s: %w: %s", c.cfg.Peer, ErrSnapshotRefused, strings.TrimSpace(string(b)))
	}
	if err := c.refusal(resp, "snapshot"); err != nil {
		return err
	}
	idle.Reset(SnapshotIdleTimeout)
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
