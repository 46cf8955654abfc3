package postgres

// Siblings as row_version.siblings keeps them: the concurrent writes that
// lost to a row's write and may win again once it is superseded (see the
// conflict package), each with its row, so that a region can bring it back
// (conflict.Reinstate). A local write has seen them all: the reader's
// version clears them.

import (
	"encoding/json"
	"fmt"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

// storedSibling is one element of row_version.siblings.
type storedSibling struct {
	Origin  string `json:"origin"`
	Tick    uint64 `json:"tick"`
	HLC     int64  `json:"hlc"`
	Deleted bool   `json:"deleted,omitempty"`
	// Seq is the write's outbox sequence number in its origin (0 when
	// unknown): a reinstated tombstone is collected by it.
	Seq int64 `json:"seq,omitempty"`
	// VV is the write's version vector as this region logged it (its own
	// for a remote write, the row's for a local one): conflict records and
	// resolvers name it so.
	VV string `json:"vv,omitempty"`
	// Row is a live write's row, column -> text value or null (an
	// unchanged TOAST value is {"unchanged_toast": true}).
	Row json.RawMessage `json:"row,omitempty"`
	// Stamps are the write's column stamps (column_lww tables).
	Stamps map[string]conflict.Stamp `json:"stamps,omitempty"`
}

// dotKey names a write: its origin and the origin's count of it.
type dotKey struct {
	origin conflict.RegionID
	tick   uint64
}

func dotOf(w conflict.Write) dotKey { return dotKey{w.Origin, w.Tick} }

// siblingData is what a region keeps of a sibling besides its rank.
type siblingData struct {
	row    json.RawMessage
	seq    int64
	vv     string
	stamps map[string]conflict.Stamp
}

// siblingSet is the kept data of a version's siblings, by write.
type siblingSet map[dotKey]siblingData

// parseSiblings reads row_version.siblings (nil or a JSON array).
func parseSiblings(raw []byte) ([]conflict.Write, siblingSet, error) {
	if len(raw) == 0 {
		return nil, nil, nil
	}
	var stored []storedSibling
	if err := json.Unmarshal(raw, &stored); err != nil {
		return nil, nil, fmt.Errorf("siblings: %w", err)
	}
	ws := make([]conflict.Write, 0, len(stored))
	data := make(siblingSet, len(stored))
	for _, s := range stored {
		w := conflict.Write{Origin: conflict.RegionID(s.Origin), Tick: s.Tick, HLC: conflict.Timestamp(s.HLC), Deleted: s.Deleted}
		ws = append(ws, w)
		data[dotOf(w)] = siblingData{row: s.Row, seq: s.Seq, vv: s.VV, stamps: s.Stamps}
	}
	return ws, data, nil
}

// encodeSiblings is the row_version.siblings value of a version (nil when
// it has none).
func encodeSiblings(ws []conflict.Write, data siblingSet) *string {
	if len(ws) == 0 {
		return nil
	}
	stored := make([]storedSibling, len(ws))
	for i, w := range ws {
		d := data[dotOf(w)]
		stored[i] = storedSibling{Origin: string(w.Origin), Tick: w.Tick, HLC: int64(w.HLC), Deleted: w.Deleted, Seq: d.seq, VV: d.vv}
		if !w.Deleted {
			stored[i].Row, stored[i].Stamps = d.row, d.stamps
		}
	}
	b, _ := json.Marshal(stored)
	s := string(b)
	return &s
}

// keptSiblings is the data of the siblings a decision leaves (d.Result's):
// the row's old ones as stored, and the local row's write or the remote
// one when it became a sibling (SaveLocal, SaveRemote). s is the row's
// state before the decision.
func keptSiblings(sh replicator.Shape, t *replicator.Txn, c *replicator.Change, s *rowState, d conflict.Decision) siblingSet {
	if d.Action == conflict.Skip {
		if s.meta != nil {
			return s.meta.siblings
		}
		return nil
	}
	if len(d.Result.Siblings) == 0 {
		return nil
	}
	local := s.version()
	lw := dotKey{local.Origin, local.Vector.Get(local.Origin)}
	rw := dotKey{c.Version.Origin, c.Version.Vector.Get(c.Version.Origin)}
	out := make(siblingSet, len(d.Result.Siblings))
	for _, w := range d.Result.Siblings {
		k := dotOf(w)
		switch {
		case d.SaveRemote && k == rw:
			sd := siblingData{seq: int64(t.Seq), vv: c.Version.Vector.String(), stamps: c.Version.Stamps}
			if c.Row != nil && c.Op != conflict.OpDelete {
				sd.row = rowImage(sh, c.Row, nil)
			}
			out[k] = sd
		case d.SaveLocal && k == lw:
			// The write's own row, not one its max and min columns were
			// merged into, and its own vector, not the row's.
			row, stamps := s.ownImage()
			sd := siblingData{row: row, vv: s.ownVersion().Vector.String(), stamps: stamps}
			if s.meta != nil {
				sd.seq = s.meta.srcSeq
			}
			out[k] = sd
		case s.meta != nil:
			out[k] = s.meta.siblings[k]
		}
	}
	return out
}

// reinstatedRow is the row of sibling w, which a decision brings back.
func reinstatedRow(sh replicator.Shape, key string, s *rowState, w conflict.Write) ([]replicator.Value, error) {
	var img json.RawMessage
	if s.meta != nil {
		img = s.meta.siblings[dotOf(w)].row
	}
	if img == nil {
		return nil, fmt.Errorf("apply: %s key %s: sibling %s:%d wins again but no row was kept for it", sh.Table, key, w.Origin, w.Tick)
	}
	return imageRow(sh, img)
}

// imageRow turns a row image (rowImage, ensureImage) back into values for
// a write of the table's columns: a column the image lacks, or an
// unchanged TOAST value, stays as it is.
func imageRow(sh replicator.Shape, img json.RawMessage) ([]replicator.Value, error) {
	m := map[string]any{}
	if err := json.Unmarshal(img, &m); err != nil {
		return nil, fmt.Errorf("sibling row of %s: %w", sh.Table, err)
	}
	row := make([]replicator.Value, len(sh.Columns))
	for i, col := range sh.Columns {
		v, ok := m[col]
		switch t := v.(type) {
		case nil:
			if ok {
				row[i] = replicator.Value{Null: true}
			} else {
				row[i] = replicator.Value{Unchanged: true}
			}
		case string:
			row[i] = replicator.Value{Text: t}
		default:
			row[i] = replicator.Value{Unchanged: true}
		}
	}
	return row, nil
}

// vector is the version vector a sibling is named by: as kept, or its own
// count alone.
func (sd siblingData) vector(w conflict.Write) conflict.Vector {
	if v, err := conflict.ParseVector(sd.vv); err == nil && sd.vv != "" {
		return v
	}
	return conflict.Vector{w.Origin: w.Tick}
}
