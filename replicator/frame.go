package replicator

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

// Streams between regions (a link's transactions, a joining region's
// snapshot) are sequences of frames: a type byte, the payload's length as
// four bytes (big endian), the payload.

// WriteFrame writes one frame.
func WriteFrame(w io.Writer, typ byte, payload []byte) error {
	var hdr [5]byte
	hdr[0] = typ
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// ReadFrame reads one frame whose payload is at most limit bytes. A stream
// that ends before the frame does (clean end included) is io.EOF when no
// byte of the frame was read, io.ErrUnexpectedEOF otherwise.
func ReadFrame(r *bufio.Reader, limit uint32) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > limit {
		return 0, nil, fmt.Errorf("frame of %d bytes exceeds the limit of %d", n, limit)
	}
	buf, err := readPayload(r, int(n))
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return hdr[0], buf, nil
}

// readStep bounds how far the payload's buffer runs ahead of the bytes
// that arrived: the length is only the sender's word, and a header alone
// must not make the receiver allocate up to the limit (1GiB on a link).
const readStep = 4 << 20

// readPayload reads n bytes, growing the buffer as they arrive (at most
// doubling it, so a large frame costs at most about twice its size).
func readPayload(r io.Reader, n int) ([]byte, error) {
	buf := make([]byte, 0, min(n, readStep))
	for len(buf) < n {
		step := min(n-len(buf), readStep)
		if len(buf)+step > cap(buf) {
			grown := make([]byte, len(buf), min(n, max(2*cap(buf), len(buf)+step)))
			copy(grown, buf)
			buf = grown
		}
		got, err := io.ReadFull(r, buf[len(buf):len(buf)+step])
		buf = buf[:len(buf)+got]
		if err != nil {
			return nil, err
		}
	}
	return buf, nil
}
