package link

import (
	"context"
	"io"
	"net"
	"net/http/httptrace"
	"sync"
)

// When a stream's watchdog finds the peer silent, the connection the
// stream ran on is most likely dead (a half-open TCP connection: no reset
// ever comes). Ending the stream alone left that connection in the
// transport's pool, and the next stream was sent on it and waited for
// headers until the kernel gave up retransmitting (about 15 minutes).
// The watchdog drops the connection too, so the next request dials anew.

// streamConn records the connection a request was sent on.
type streamConn struct {
	mu   sync.Mutex
	conn net.Conn
}

// trace returns ctx with a trace that records the request's connection.
func (s *streamConn) trace(ctx context.Context) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		s.mu.Lock()
		s.conn = info.Conn
		s.mu.Unlock()
	}})
}

// drop closes the recorded connection: the transport forgets it, and any
// other request on it fails at once instead of waiting on a dead path.
func (s *streamConn) drop() {
	s.mu.Lock()
	conn := s.conn
	s.mu.Unlock()
	if conn != nil {
		_ = conn.Close()
	}
}

// activeReader tells a stream's watchdog of every read that brought bytes.
type activeReader struct {
	r        io.Reader
	activity chan<- struct{}
}

func (a activeReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		select {
		case a.activity <- struct{}{}:
		default:
		}
	}
	return n, err
}
