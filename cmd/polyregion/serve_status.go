package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/polyregion/polyregion/replicator/obs"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// statusOutput is `status --json`: the database's view plus, when the
// replicator runs with an operations server, its live view (links, lag,
// index lag, health).
type statusOutput struct {
	postgres.Status
	Replicator      *obs.Snapshot `json:"replicator,omitempty"`
	ReplicatorError string        `json:"replicator_error,omitempty"`
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// replicatorStatus asks the running replicator for its live state (nil, nil
// when no operations server is configured).
func replicatorStatus(ctx context.Context, listen string) (*obs.Snapshot, error) {
	if listen == "" {
		return nil, nil
	}
	base, err := opsURL(listen)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("replicator not reachable at %s: %w", listen, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("replicator at %s: HTTP %d: %s", listen, resp.StatusCode, b)
	}
	var s obs.Snapshot
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, fmt.Errorf("replicator at %s: %w", listen, err)
	}
	return &s, nil
}

// opsURL is the base URL of the replicator's operations server listening
// on listen (a wildcard address is reached on loopback).
func opsURL(listen string) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("http.listen: %w", err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

func printReplicator(w io.Writer, s *obs.Snapshot, err error) {
	switch {
	case err != nil:
		fmt.Fprintf(w, "replicator\t%s\n", err)
		return
	case s == nil:
		fmt.Fprintf(w, "replicator\tno operations server configured (http.listen); links and lag unknown\n")
		return
	}
	fmt.Fprintf(w, "health\t%s since %s\n", s.Status, s.Since)
	for _, r := range s.Reasons {
		fmt.Fprintf(w, "\t- %s\n", r)
	}
	if c := s.Control; c != nil {
		printControl(w, c)
	}
	if s.Index != nil {
		if s.Index.Known {
			fmt.Fprintf(w, "index lag\t%.1fs, %d bytes\n", s.Index.SecondsBehind, s.Index.BytesBehind)
		} else {
			fmt.Fprintf(w, "index lag\tunknown\n")
		}
	}
}

// peerLink is the link and lag columns of a peer's row.
func peerLink(s *obs.Snapshot, peer string) string {
	if s == nil {
		return "?\t?"
	}
	for _, p := range s.Peers {
		if p.Peer != peer {
			continue
		}
		link := fmt.Sprintf("up %.0fs", p.For)
		if !p.LinkUp {
			link = fmt.Sprintf("DOWN %.0fs", p.For)
		}
		return fmt.Sprintf("%s\t%.1fs, %d transactions", link, p.LagSeconds, p.LagTxns)
	}
	return "?\t?"
}
