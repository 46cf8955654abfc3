package control

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"

	"github.com/polyregion/polyregion/conflict"
)

// An incoming control connection is authenticated as one peer by the link
// (its token, its certificate); the raft requests on it name their sender
// themselves (the header's server id and address), and raft believes them:
// a vote request names the candidate it votes for, an append names the
// leader it follows. A connection is therefore bound to its peer: every
// request is read and checked whole before raft sees any byte of it, and
// one that speaks for another server (or for nobody) ends the connection.
// Raft ids and addresses are region ids here, so the check is exact.

// Raft's request types on the wire (hashicorp/raft's NetworkTransport:
// one type byte, then the msgpack-encoded request; a snapshot's data
// follows its request).
const (
	rpcAppendEntries uint8 = iota
	rpcRequestVote
	rpcInstallSnapshot
	rpcTimeoutNow
	rpcRequestPreVote
)

// errForeignRequest is the error a bound connection ends with when a
// request speaks for another server than the authenticated peer.
var errForeignRequest = errors.New("raft request does not speak for the authenticated peer")

// boundConn is an incoming connection whose reads return only requests
// already checked against the peer.
type boundConn struct {
	net.Conn
	checked *io.PipeReader
}

func (c *boundConn) Read(p []byte) (int, error) { return c.checked.Read(p) }

func (c *boundConn) Close() error {
	c.checked.Close()
	return c.Conn.Close()
}

// bind returns conn as raft may read it: requests from peer only.
func bind(conn net.Conn, peer conflict.RegionID, log *slog.Logger) net.Conn {
	pr, pw := io.Pipe()
	go func() {
		err := checkRequests(bufio.NewReader(conn), pw, string(peer))
		if errors.Is(err, errForeignRequest) {
			log.Warn("control connection closed: "+err.Error(), "peer", string(peer))
			conn.Close()
		}
		pw.CloseWithError(err)
	}()
	return &boundConn{Conn: conn, checked: pr}
}

// checkRequests copies raft requests from r to w, each only once it is
// read whole and speaks for peer. It returns nil at the end of r.
func checkRequests(r *bufio.Reader, w io.Writer, peer string) error {
	for {
		kind, err := r.ReadByte()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		// The decoder reads through rec, which keeps the bytes it took:
		// without a buffer of its own the decoder takes exactly the
		// request's bytes, so rec holds the request as sent.
		rec := &recorder{r: r, buf: []byte{kind}}
		req, err := requestOf(kind)
		if err != nil {
			return err
		}
		if err := codec.NewDecoder(rec, &codec.MsgpackHandle{}).Decode(req); err != nil {
			return fmt.Errorf("raft request: %w", err)
		}
		if err := speaksFor(kind, req, peer); err != nil {
			return err
		}
		if _, err := w.Write(rec.buf); err != nil {
			return err
		}
		if s, ok := req.(*raft.InstallSnapshotRequest); ok {
			if _, err := io.CopyN(w, r, s.Size); err != nil {
				return err
			}
		}
	}
}

// requestOf returns an empty request of the wire type kind.
func requestOf(kind uint8) (raft.WithRPCHeader, error) {
	switch kind {
	case rpcAppendEntries:
		return &raft.AppendEntriesRequest{}, nil
	case rpcRequestVote:
		return &raft.RequestVoteRequest{}, nil
	case rpcInstallSnapshot:
		return &raft.InstallSnapshotRequest{}, nil
	case rpcTimeoutNow:
		return &raft.TimeoutNowRequest{}, nil
	case rpcRequestPreVote:
		return &raft.RequestPreVoteRequest{}, nil
	}
	return nil, fmt.Errorf("unknown raft request type %d", kind)
}

// speaksFor checks every sender field of a request against peer: the
// header's id and address, and the older fields raft still reads when the
// header's address is empty.
func speaksFor(kind uint8, req raft.WithRPCHeader, peer string) error {
	h := req.GetRPCHeader()
	claims := [][]byte{h.ID, h.Addr}
	switch r := req.(type) { // the older fields raft falls back to
	case *raft.AppendEntriesRequest:
		//lint:ignore SA1019 raft still reads it when the header's address is empty
		claims = append(claims, r.Leader)
	case *raft.RequestVoteRequest:
		//lint:ignore SA1019 raft still reads it when the header's address is empty
		claims = append(claims, r.Candidate)
	case *raft.InstallSnapshotRequest:
		claims = append(claims, r.Leader)
	}
	for i, c := range claims {
		if i >= 2 && len(c) == 0 {
			continue // an older field left empty
		}
		if !bytes.Equal(c, []byte(peer)) {
			return fmt.Errorf("%w: a %s request from %s names %q", errForeignRequest, kindName(kind), peer, c)
		}
	}
	return nil
}

func kindName(kind uint8) string {
	return [...]string{"append", "vote", "snapshot", "timeout", "pre-vote"}[kind]
}

// recorder passes reads through and keeps what they returned.
type recorder struct {
	r   io.Reader
	buf []byte
}

func (c *recorder) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.buf = append(c.buf, p[:n]...)
	return n, err
}
