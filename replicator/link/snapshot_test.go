package link

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
)

func TestSnapshotIsServedOnlyToAnAuthenticatedPeerWithTheSameConfig(t *testing.T) {
	payload := bytes.Repeat([]byte("snapshot"), 1<<17) // 1 MB
	var asked []conflict.RegionID
	url := serveWith(t, ServerConfig{Outbox: newMemOutbox(), Cluster: cluster, Snapshot: func(_ context.Context, peer conflict.RegionID, w io.Writer) error {
		asked = append(asked, peer)
		_, err := w.Write(payload)
		return err
	}}, TLSFiles{})
	ctx := context.Background()
	var got []byte
	if err := client(t, url, secret, TLSFiles{}, cluster).Snapshot(ctx, nil, func(r io.Reader) error {
		var err error
		got, err = io.ReadAll(r)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) || len(asked) != 1 || asked[0] != "eu" {
		t.Fatalf("got %d bytes for %v, want %d for eu", len(got), asked, len(payload))
	}
	load := func(io.Reader) error { t.Fatal("a refused snapshot was handed to load"); return nil }
	if err := client(t, url, "not-the-secret-at-all", TLSFiles{}, cluster).Snapshot(ctx, nil, load); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong token: %v", err)
	}
	other := regions.Cluster{Regions: []conflict.RegionID{"us", "eu", "ap"}, Tables: cluster.Tables}
	var mm *MismatchError
	if err := client(t, url, secret, TLSFiles{}, other).Snapshot(ctx, nil, load); !errors.As(err, &mm) {
		t.Fatalf("other config: %v", err)
	}
	if len(asked) != 1 {
		t.Fatalf("refused requests took snapshots: %v", asked)
	}
	none := serveWith(t, ServerConfig{Outbox: newMemOutbox(), Cluster: cluster}, TLSFiles{})
	if err := client(t, none, secret, TLSFiles{}, cluster).Snapshot(ctx, nil, load); !errors.Is(err, ErrNotServed) {
		t.Fatalf("server without snapshots: %v", err)
	}
}

// A snapshot that fails after it began is cut off: the peer's read fails,
// it never sees a clean end.
func TestSnapshotThatFailsMidwayBreaksTheStream(t *testing.T) {
	url := serveWith(t, ServerConfig{Outbox: newMemOutbox(), Cluster: cluster, Snapshot: func(_ context.Context, _ conflict.RegionID, w io.Writer) error {
		if _, err := w.Write(bytes.Repeat([]byte{1}, 300<<10)); err != nil {
			return err
		}
		return errors.New("source database went away")
	}}, TLSFiles{})
	err := client(t, url, secret, TLSFiles{}, cluster).Snapshot(context.Background(), nil, func(r io.Reader) error {
		_, err := io.ReadAll(r)
		return err
	})
	if err == nil {
		t.Fatal("a snapshot that failed midway read as complete")
	}
}

// A snapshot the source refuses before it sent anything reaches the peer
// as a refusal with its reason (the peer stops asking); one that fails
// before it sent anything for another reason is answered 503 without the
// error's text (it may name the source's database), and load never runs.
// What the source buffered but did not send is not sent.
func TestSnapshotRefusedOrFailedBeforeItBeganIsAnswered(t *testing.T) {
	fail := func(err error) ServerConfig {
		return ServerConfig{Outbox: newMemOutbox(), Cluster: cluster, Snapshot: func(_ context.Context, _ conflict.RegionID, w io.Writer) error {
			if _, werr := w.Write([]byte("header frame, buffered")); werr != nil {
				return werr
			}
			return err
		}}
	}
	load := func(io.Reader) error { t.Fatal("a snapshot that never began was handed to load"); return nil }
	ctx := context.Background()
	refused := serveWith(t, fail(RefuseSnapshot(errors.New("the joining region loaded tables public.gone from this region before"))), TLSFiles{})
	err := client(t, refused, secret, TLSFiles{}, cluster).Snapshot(ctx, nil, load)
	if !errors.Is(err, ErrSnapshotRefused) || !strings.Contains(err.Error(), "loaded tables public.gone") {
		t.Fatalf("refused snapshot: %v", err)
	}
	failed := serveWith(t, fail(errors.New("connect to user=replicator password=hunter2: refused")), TLSFiles{})
	err = client(t, failed, secret, TLSFiles{}, cluster).Snapshot(ctx, nil, load)
	if err == nil || errors.Is(err, ErrSnapshotRefused) || !strings.Contains(err.Error(), "HTTP 503") || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("failed snapshot: %v", err)
	}
	// An empty snapshot is still a snapshot.
	empty := serveWith(t, ServerConfig{Outbox: newMemOutbox(), Cluster: cluster, Snapshot: func(context.Context, conflict.RegionID, io.Writer) error { return nil }}, TLSFiles{})
	var got []byte
	if err := client(t, empty, secret, TLSFiles{}, cluster).Snapshot(ctx, nil, func(r io.Reader) error {
		var err error
		got, err = io.ReadAll(r)
		return err
	}); err != nil || len(got) != 0 {
		t.Fatalf("empty snapshot: %d bytes, %v", len(got), err)
	}
}

// A source that goes silent mid-stream is given up on after the idle
// timeout: load's read fails instead of hanging.
func TestSnapshotThatGoesSilentIsEnded(t *testing.T) {
	old := SnapshotIdleTimeout
	SnapshotIdleTimeout = 300 * time.Millisecond
	defer func() { SnapshotIdleTimeout = old }()
	release := make(chan struct{})
	defer close(release)
	url := serveWith(t, ServerConfig{Outbox: newMemOutbox(), Cluster: cluster, Snapshot: func(ctx context.Context, _ conflict.RegionID, w io.Writer) error {
		if _, err := w.Write(bytes.Repeat([]byte{1}, 300<<10)); err != nil {
			return err
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return ctx.Err()
	}}, TLSFiles{})
	start := time.Now()
	err := client(t, url, secret, TLSFiles{}, cluster).Snapshot(context.Background(), nil, func(r io.Reader) error {
		_, err := io.ReadAll(r)
		return err
	})
	if err == nil || time.Since(start) > 10*time.Second {
		t.Fatalf("silent source: %v after %s", err, time.Since(start))
	}
	// Silent before its first byte (its status goes out with it): the
	// wait for the answer is bounded the same way.
	mute := serveWith(t, ServerConfig{Outbox: newMemOutbox(), Cluster: cluster, Snapshot: func(ctx context.Context, _ conflict.RegionID, w io.Writer) error {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return ctx.Err()
	}}, TLSFiles{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start = time.Now()
	err = client(t, mute, secret, TLSFiles{}, cluster).Snapshot(ctx, nil, func(r io.Reader) error {
		t.Error("a source that sent nothing was handed to load")
		return nil
	})
	if err == nil || time.Since(start) > 10*time.Second {
		t.Fatalf("source silent before its first byte: %v after %s", err, time.Since(start))
	}
}
