package control

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/polyregion/polyregion/conflict"
)

// stream is raft's network layer over the regions' links: raft addresses
// are region ids, outgoing connections are dialled through the link (its
// TLS and the peer's token), and incoming ones arrive from the link server
// once it has authenticated the peer.
type stream struct {
	region conflict.RegionID
	dial   func(ctx context.Context, peer conflict.RegionID) (net.Conn, error)
	conns  chan net.Conn
	done   chan struct{}
	once   sync.Once
}

func newStream(region conflict.RegionID, dial func(context.Context, conflict.RegionID) (net.Conn, error)) *stream {
	return &stream{region: region, dial: dial, conns: make(chan net.Conn), done: make(chan struct{})}
}

var errClosed = errors.New("control plane closed")

// take hands an incoming authenticated connection to raft (or closes it
// when the control plane is closed).
func (s *stream) take(conn net.Conn) {
	select {
	case s.conns <- conn:
	case <-s.done:
		conn.Close()
	}
}

// Accept implements net.Listener.
func (s *stream) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.done:
		return nil, errClosed
	}
}

// Close implements net.Listener.
func (s *stream) Close() error {
	s.once.Do(func() { close(s.done) })
	return nil
}

// Addr implements net.Listener: the region's id is its raft address.
func (s *stream) Addr() net.Addr { return regionAddr(s.region) }

// Dial implements raft.StreamLayer.
func (s *stream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.dial(ctx, conflict.RegionID(address))
}

type regionAddr conflict.RegionID

func (a regionAddr) Network() string { return "polyregion" }
func (a regionAddr) String() string  { return string(a) }
