//lint:file-ignore SA1019 the tests forge requests in the older fields raft still reads, encoded as raft encodes them

package control

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"

	"github.com/polyregion/polyregion/regions"
)

// wire encodes requests as hashicorp/raft's NetworkTransport sends them.
func wire(t *testing.T, reqs ...any) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := codec.NewEncoder(&b, &codec.MsgpackHandle{BasicHandle: codec.BasicHandle{TimeNotBuiltin: true}})
	for _, r := range reqs {
		switch r := r.(type) {
		case []byte: // a snapshot's data
			b.Write(r)
			continue
		case *raft.AppendEntriesRequest:
			b.WriteByte(rpcAppendEntries)
		case *raft.RequestVoteRequest:
			b.WriteByte(rpcRequestVote)
		case *raft.InstallSnapshotRequest:
			b.WriteByte(rpcInstallSnapshot)
		case *raft.TimeoutNowRequest:
			b.WriteByte(rpcTimeoutNow)
		case *raft.RequestPreVoteRequest:
			b.WriteByte(rpcRequestPreVote)
		}
		if err := enc.Encode(r); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

func header(id string) raft.RPCHeader {
	return raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(id), Addr: []byte(id)}
}

func TestABoundConnectionPassesItsPeersRequestsUnchanged(t *testing.T) {
	snapshot := bytes.Repeat([]byte("snapshot data "), 1000)
	in := wire(t,
		&raft.AppendEntriesRequest{RPCHeader: header("eu"), Term: 3, Leader: []byte("eu"), PrevLogEntry: 7, LeaderCommitIndex: 6,
			Entries: []*raft.Log{{Index: 8, Term: 3, Type: raft.LogCommand, Data: []byte("a command"), AppendedAt: time.Now()}}},
		&raft.RequestVoteRequest{RPCHeader: header("eu"), Term: 4, Candidate: []byte("eu"), LastLogIndex: 8},
		&raft.InstallSnapshotRequest{RPCHeader: header("eu"), Term: 4, Leader: []byte("eu"), Size: int64(len(snapshot))}, snapshot,
		&raft.TimeoutNowRequest{RPCHeader: header("eu")},
		&raft.RequestPreVoteRequest{RPCHeader: header("eu"), Term: 5},
		&raft.AppendEntriesRequest{RPCHeader: header("eu"), Term: 5}, // a heartbeat, older fields empty
	)
	var out bytes.Buffer
	if err := checkRequests(bufio.NewReader(bytes.NewReader(in)), &out, "eu"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("raft would read %d bytes other than the %d sent", out.Len(), len(in))
	}
}

func TestABoundConnectionEndsAtARequestForAnotherServer(t *testing.T) {
	good := &raft.RequestVoteRequest{RPCHeader: header("eu"), Term: 4}
	forged := map[string]any{
		"id":        &raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{ID: []byte("us"), Addr: []byte("eu")}, Term: 9},
		"address":   &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ID: []byte("eu"), Addr: []byte("us")}, Term: 9},
		"leader":    &raft.AppendEntriesRequest{RPCHeader: header("eu"), Leader: []byte("us"), Term: 9},
		"candidate": &raft.RequestVoteRequest{RPCHeader: header("eu"), Candidate: []byte("us"), Term: 9},
		"snapshot":  &raft.InstallSnapshotRequest{RPCHeader: header("us"), Term: 9},
		"nobody":    &raft.TimeoutNowRequest{},
	}
	for name, req := range forged {
		t.Run(name, func(t *testing.T) {
			first := wire(t, good)
			in := append(append([]byte{}, first...), wire(t, req, good)...)
			var out bytes.Buffer
			err := checkRequests(bufio.NewReader(bytes.NewReader(in)), &out, "eu")
			if !errors.Is(err, errForeignRequest) {
				t.Fatalf("err = %v, want a refusal", err)
			}
			if !bytes.Equal(out.Bytes(), first) {
				t.Fatalf("raft would read %d bytes; want only the %d of the request before the forged one", out.Len(), len(first))
			}
		})
	}
	if err := checkRequests(bufio.NewReader(bytes.NewReader([]byte{9, 0x80})), io.Discard, "eu"); err == nil {
		t.Fatal("an unknown request type was taken")
	}
}

// A region that holds a valid link token speaks for itself only: an append
// it sends to a follower in the leader's name (here a heartbeat with a far
// later term, which the follower would take, then refuse the real leader)
// never reaches raft, and its connection is closed.
func TestAPeerCannotSpeakForAnotherMember(t *testing.T) {
	nw := newNetwork()
	us, eu, ap := nw.start(t, "us"), nw.start(t, "eu"), nw.start(t, "ap")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if _, err := us.Init(ctx, regions.Command{Members: []regions.Member{{ID: "us"}, {ID: "eu"}, {ID: "ap"}}, Fingerprint: "fp1"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "three voters, us leading", func() bool {
		return voters(us) == "ap,eu,us" && us.raft.State() == raft.Leader && eu.Membership().Epoch().Number == 1 && ap.Membership().Epoch().Number == 1
	})
	term := us.raft.CurrentTerm()

	a, b := net.Pipe()
	defer a.Close()
	eu.Conn("ap", b) // authenticated as ap by the link
	forged := wire(t, &raft.AppendEntriesRequest{RPCHeader: header("us"), Leader: []byte("us"), Term: term + 100})
	go a.Write(forged)
	answered := make(chan error, 1)
	go func() {
		a.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := a.Read(make([]byte, 1))
		answered <- err
	}()
	time.Sleep(time.Second)
	if got := eu.raft.CurrentTerm(); got != term || us.raft.State() != raft.Leader {
		t.Fatalf("after an append in us's name on ap's connection to eu: eu's term %d -> %d, us %s; want unchanged, us leading", term, got, us.raft.State())
	}
	if err := <-answered; !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("the forged request's connection: %v, want it closed without an answer", err)
	}
}
