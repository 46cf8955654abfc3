package postgres

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/polyregion/polyregion/replicator"
)

// A region joins by loading a snapshot of another region (the source): its
// replicated tables' rows, their versions, the changes it parked, and how
// far it had applied every region, all as of one consistent point. The
// snapshot travels as a stream of frames (one type byte, a four-byte length,
// the payload):
//
//	'H' header (JSON SnapshotHeader)
//	'T' a table's rows follow (JSON snapshotPart naming it)
//	'V' the versions follow, 'K' the parked changes follow
//	'D' COPY data of the current part, in text form (any number)
//	'E' end of the current part (JSON snapshotPart with its row count)
//	'C' commit what came since the last commit (JSON SnapshotUnit)
//	'Z' end of the snapshot (JSON SnapshotSummary)
//
// A snapshot asked for in units (SnapshotHeader.Units) ends each unit with
// a 'C' frame, and its rows, versions and parked changes come unit by
// unit (see snapshot_units.go); otherwise they come as tables, then 'V'
// and 'K' for all of them, with no 'C'.
//
// A stream that ends without 'Z' is incomplete and nothing of it is kept.
//
// COPY data travels in text form, written and read by sessions that pin the
// text forms of values (dates, intervals, floats, time zone), as the change
// stream's values do: every type has a text form, not every extension type
// a binary one, and PostgreSQL does not promise that binary forms read the
// same across server versions, which regions may run (during an upgrade).
const (
	frameHeader   = 'H'
	frameTable    = 'T'
	frameVersions = 'V'
	frameParked   = 'K'
	frameData     = 'D'
	frameEnd      = 'E'
	frameDone     = 'Z'
	frameCommit   = 'C'
)

// SnapshotHeader says what a snapshot holds and where the joining region
// resumes every stream.
type SnapshotHeader struct {
	// Source is the region the snapshot was taken in.
	Source string `json:"source"`
	// SourceSeq is the last of Source's own transactions the snapshot holds:
	// the joining region streams Source's outbox after it.
	SourceSeq int64 `json:"source_seq"`
	// Applied is, per other region, the last of its transactions Source had
	// applied at the snapshot: the joining region streams it after that.
	Applied []SnapshotPosition `json:"applied"`
	// Tables lists the replicated tables in the order their rows follow
	// (referenced tables before the tables that reference them).
	Tables []SnapshotTable `json:"tables"`
	// PauseMillis is how long Source's writers to the replicated tables
	// waited while the snapshot was taken.
	PauseMillis int64 `json:"pause_ms"`
	// VersionColumns are the row_version columns the versions part
	// carries, in order (absent from sources that predate the list).
	VersionColumns []string `json:"version_columns,omitempty"`
	// Units: the snapshot comes in units, each ended by a commit frame
	// (asked for with a SnapshotResume; absent from sources that predate
	// them, which send it whole).
	Units bool `json:"units,omitempty"`
	// TombstoneFloors are Source's tombstone floors at the snapshot
	// (absent from sources that predate them): every write concurrent
	// with a delete they cover is in the snapshot, so the joining region
	// starts with them.
	TombstoneFloors map[string]int64 `json:"tombstone_floors,omitempty"`
	// Encoding is the text encoding Source's rows are sent in (see
	// TextEncoding; absent from sources that predate it).
	Encoding string `json:"encoding,omitempty"`
}

// SnapshotPosition is one source region's position.
type SnapshotPosition struct {
	Region string `json:"region"`
	Seq    int64  `json:"seq"`
	LSN    string `json:"lsn,omitempty"`
	HLC    int64  `json:"hlc"`
}

// SnapshotTable is one table of a snapshot: its columns as copied (name and
// type, generated columns left out) and its estimated row count.
type SnapshotTable struct {
	Name    string           `json:"name"`
	Columns []SnapshotColumn `json:"columns"`
	// Estimate is the planner's row estimate (for progress only).
	Estimate int64 `json:"estimate"`
}

// SnapshotColumn is one copied column.
type SnapshotColumn struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

type snapshotPart struct {
	Name string `json:"name,omitempty"`
	Rows int64  `json:"rows"`
	// Restart: the table's rows come whole, replacing the chunks of it
	// the joining region loaded before (see snapshot_units.go).
	Restart bool `json:"restart,omitempty"`
}

// SnapshotSummary ends a snapshot: rows per table, versions and parked
// changes it held.
type SnapshotSummary struct {
	Rows     map[string]int64 `json:"rows"`
	Versions int64            `json:"versions"`
	Parked   int64            `json:"parked"`
}

// maxSnapshotFrame bounds one frame; COPY data is cut into chunks far
// smaller.
const maxSnapshotFrame = 64 << 20

func writeSnapshotJSON(w io.Writer, typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return replicator.WriteFrame(w, typ, b)
}

func readSnapshotFrame(r *bufio.Reader) (byte, []byte, error) {
	typ, payload, err := replicator.ReadFrame(r, maxSnapshotFrame)
	if err == io.EOF {
		return 0, nil, fmt.Errorf("snapshot ended before its last frame: %w", io.ErrUnexpectedEOF)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("snapshot: %w", err)
	}
	return typ, payload, nil
}

// frameWriter gathers a COPY's output, which comes a row at a time, into
// 'D' frames of about dataFrameSize (a frame per row would make the loading
// side send the server a message per row). Flush sends what it holds.
type frameWriter struct {
	w    io.Writer
	buf  []byte
	sent int64 // bytes of data written
}

// dataFrameSize is the size a data frame is sent at; a row larger than the
// rest of the frame is cut across frames of at most 1 MB.
const dataFrameSize = 256 << 10

func (f *frameWriter) Write(p []byte) (int, error) {
	f.buf = append(f.buf, p...)
	if len(f.buf) >= dataFrameSize {
		if err := f.Flush(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush sends the data gathered so far.
func (f *frameWriter) Flush() error {
	for b := f.buf; len(b) > 0; {
		n := min(len(b), 1<<20)
		if err := replicator.WriteFrame(f.w, frameData, b[:n]); err != nil {
			return err
		}
		f.sent += int64(n)
		b = b[n:]
	}
	f.buf = f.buf[:0]
	return nil
}

// JoinPositions are where a region that loaded h streams every other region
// from: Source after its own last transaction in the snapshot, every other
// region after what Source had applied of it.
//
// own is how many transactions of its own the joining region shipped: 0
// for a new region; for a region re-seeded after it drained, all it ever
// shipped. The snapshot must hold exactly those: fewer and the region's own
// writes would be missing from its tables (Source cannot get them while the
// region loads), more and Source took another region of the same name for
// this one. floor is, for a re-seeded region, how far it had applied each
// region before (peers still count on those positions: their outboxes and
// tombstones are trimmed by them); a snapshot behind any of them is
// ErrSourceBehind (Source gets there from that region's stream: try again).
func JoinPositions(h SnapshotHeader, joining string, own int64, floor map[string]int64) ([]SnapshotPosition, error) {
	if h.Source == "" || h.Source == joining {
		return nil, refuseJoin("snapshot source %q: a region cannot join from itself or from nowhere", h.Source)
	}
	if h.SourceSeq < 0 {
		return nil, refuseJoin("snapshot from %s: negative position %d", h.Source, h.SourceSeq)
	}
	out := []SnapshotPosition{{Region: h.Source, Seq: h.SourceSeq}}
	seen := map[string]bool{h.Source: true}
	var applied int64
	for _, p := range h.Applied {
		if p.Seq < 0 {
			return nil, refuseJoin("snapshot from %s: negative position %d for %s", h.Source, p.Seq, p.Region)
		}
		if seen[p.Region] || (p.Region == joining && applied > 0) {
			return nil, refuseJoin("snapshot from %s lists region %s twice", h.Source, p.Region)
		}
		if p.Region == joining {
			applied = p.Seq
			continue
		}
		seen[p.Region] = true
		out = append(out, p)
	}
	switch {
	case applied > own:
		return nil, refuseJoin("snapshot from %s says it applied %d transactions of %s, which shipped %d: is another region running as %s, or was this one restored from an older backup?", h.Source, applied, joining, own, joining)
	case applied < own:
		return nil, refuseJoin("%s has applied %d of the %d transactions %s shipped, and cannot get the others while %s loads: join from a region that has them all", h.Source, applied, own, joining, joining)
	}
	at := map[string]int64{}
	for _, p := range out {
		at[p.Region] = p.Seq
	}
	for r, min := range floor {
		if at[r] < min {
			return nil, fmt.Errorf("%w: %s has applied %d transactions of %s, %s had applied %d before it was emptied", ErrSourceBehind, h.Source, at[r], r, joining, min)
		}
	}
	return out, nil
}

// ErrSourceBehind: the snapshot's source has not yet applied as much of some
// region as the re-seeded region had; a later snapshot will have it.
var ErrSourceBehind = errors.New("the source is behind where this region was")
