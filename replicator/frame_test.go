package replicator

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"testing"
)

// A header announcing a large frame, then nothing: the receiver must not
// allocate the announced size before the bytes arrive (a 5-byte header
// would otherwise cost a link's receiver 1GiB).
func TestReadFrameAllocatesAsThePayloadArrives(t *testing.T) {
	var hdr [5]byte
	hdr[0] = 'T'
	binary.BigEndian.PutUint32(hdr[1:], 1<<30)
	payload := bytes.Repeat([]byte{7}, 100<<10)
	r := bufio.NewReader(io.MultiReader(bytes.NewReader(hdr[:]), bytes.NewReader(payload)))

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, _, err := ReadFrame(r, 1<<30)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated frame: %v, want io.ErrUnexpectedEOF", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 16<<20 {
		t.Fatalf("a 1GiB header followed by 100KiB allocated %d MiB, want a few", got>>20)
	}
}

// Frames larger than one read step come back whole and unchanged.
func TestReadFrameReturnsFramesOfEverySize(t *testing.T) {
	var stream bytes.Buffer
	sizes := []int{0, 1, 4096, readStep - 1, readStep, readStep + 1, 2*readStep + 12345}
	for i, n := range sizes {
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(i + j)
		}
		if err := WriteFrame(&stream, byte('A'+i), p); err != nil {
			t.Fatal(err)
		}
	}
	r := bufio.NewReader(bytes.NewReader(stream.Bytes()))
	for i, n := range sizes {
		typ, p, err := ReadFrame(r, 1<<30)
		if err != nil {
			t.Fatalf("frame %d (%d bytes): %v", i, n, err)
		}
		if typ != byte('A'+i) || len(p) != n {
			t.Fatalf("frame %d: type %q, %d bytes; want %q, %d", i, typ, len(p), byte('A'+i), n)
		}
		for j := range p {
			if p[j] != byte(i+j) {
				t.Fatalf("frame %d: byte %d is %d, want %d", i, j, p[j], byte(i+j))
			}
		}
	}
	if _, _, err := ReadFrame(r, 1<<30); err != io.EOF {
		t.Fatalf("after the last frame: %v, want io.EOF", err)
	}
	// Over the limit: refused before anything is read.
	var big bytes.Buffer
	_ = WriteFrame(&big, 'T', make([]byte, 10))
	if _, _, err := ReadFrame(bufio.NewReader(&big), 9); err == nil {
		t.Fatal("a frame over the limit was read")
	}
}
