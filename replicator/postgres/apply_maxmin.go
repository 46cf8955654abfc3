package postgres

// Max and min columns under a decision: a live row's max (min) column is
// the greatest (least) among the own rows of the live writes no other
// write has seen: the result's write and the live writes kept as its
// siblings. Worked out from those rows at every decision and written
// exactly (the merge trigger leaves the applier's writes alone), so that a
// value only a write that a delete saw had brought does not survive where
// it was merged before the delete arrived. A row that holds more than its
// write's own keeps that write's own row (meta.own), which is what a
// sibling made of it keeps.

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

// ownImage is the local row's own write's row and column stamps: kept
// apart when the row holds more, else the row itself (its image must be
// loaded).
func (s *rowState) ownImage() (json.RawMessage, map[string]conflict.Stamp) {
	if s.meta != nil && s.meta.own != nil {
		return s.meta.own, s.meta.ownStamps
	}
	s.foldImage()
	return s.image, s.version().Stamps
}

// maxMinValues works out the max and min columns of the row a decision
// leaves live (d.Result not deleted, d.Action not Skip): their values by
// column index (vals), to be written when write is set; own is the
// result's write's row when the row holds more than it (nil otherwise),
// ownStamps its stamps.
func maxMinValues(ctx context.Context, tx pgx.Tx, sh replicator.Shape, pol conflict.Policy, c *replicator.Change, s *rowState, d conflict.Decision, sibs siblingSet) (res maxMinResult, err error) {
	var top []replicator.Value
	var topStamps map[string]conflict.Stamp
	switch d.Action {
	case conflict.ApplyRemote:
		top, topStamps = c.Row, c.Version.Stamps
	case conflict.KeepLocal:
		img, st := s.ownImage()
		if img == nil {
			if s.exists {
				// ensureImage runs before every such decision: merging
				// without the row's own values would diverge.
				return maxMinResult{}, fmt.Errorf("apply: %s key %s: the local row's image is not loaded for its max and min columns", sh.Table, c.Key)
			}
			return maxMinResult{}, nil // no local row to hold values
		}
		if top, err = imageRow(sh, img); err != nil {
			return maxMinResult{}, err
		}
		topStamps = st
	case conflict.Reinstate:
		sd, ok := sibs[dotOf(d.Against)]
		if !ok && s.meta != nil {
			sd = s.meta.siblings[dotOf(d.Against)]
		}
		if sd.row == nil {
			return maxMinResult{}, fmt.Errorf("apply: %s key %s: sibling %s:%d wins again but no row was kept for it", sh.Table, c.Key, d.Against.Origin, d.Against.Tick)
		}
		if top, err = imageRow(sh, sd.row); err != nil {
			return maxMinResult{}, err
		}
		topStamps = sd.stamps
	default:
		return maxMinResult{}, nil
	}
	rows := [][]replicator.Value{top}
	for _, w := range d.Result.Siblings {
		if w.Deleted {
			continue
		}
		sd, ok := sibs[dotOf(w)]
		if !ok || sd.row == nil {
			return maxMinResult{}, fmt.Errorf("apply: %s key %s: sibling %s:%d counts in the max and min columns but no row was kept for it", sh.Table, c.Key, w.Origin, w.Tick)
		}
		r, err := imageRow(sh, sd.row)
		if err != nil {
			return maxMinResult{}, err
		}
		rows = append(rows, r)
	}
	// The row shown holds more than its write's own: kept for when the
	// write becomes a sibling.
	hadMore := s.meta != nil && s.meta.own != nil
	var own json.RawMessage
	var ownStamps map[string]conflict.Stamp
	if len(rows) > 1 {
		own, ownStamps = rowImage(sh, top, nil), topStamps
	}
	if len(rows) == 1 && d.Action == conflict.KeepLocal && !hadMore {
		return maxMinResult{}, nil // the row is its write's own already
	}
	vals := map[int]replicator.Value{}
	var exprs []string
	var args []any
	var idx []int
	for i, col := range sh.Columns {
		var fn string
		switch pol.Merge(col) {
		case "max":
			fn = "GREATEST"
		case "min":
			fn = "LEAST"
		default:
			continue
		}
		if len(rows) == 1 {
			if i < len(top) && !top[i].Unchanged {
				vals[i] = top[i]
			}
			continue
		}
		var terms []string
		for _, r := range rows {
			if i >= len(r) || r[i].Unchanged || r[i].Null {
				continue
			}
			args = append(args, r[i].Text)
			terms = append(terms, fmt.Sprintf("$%d::%s", len(args), sh.Types[i]))
		}
		if len(terms) == 0 {
			vals[i] = replicator.Value{Null: true}
			continue
		}
		exprs = append(exprs, fmt.Sprintf("%s(%s)::text", fn, strings.Join(terms, ", ")))
		idx = append(idx, i)
	}
	if len(exprs) > 0 {
		out := make([]*string, len(exprs))
		dest := make([]any, len(exprs))
		for j := range out {
			dest[j] = &out[j]
		}
		if err := tx.QueryRow(ctx, "SELECT "+strings.Join(exprs, ", "), args...).Scan(dest...); err != nil {
			return maxMinResult{}, fmt.Errorf("apply: %s key %s: merge max and min columns: %w", sh.Table, c.Key, err)
		}
		for j, i := range idx {
			if out[j] == nil {
				vals[i] = replicator.Value{Null: true}
			} else {
				vals[i] = replicator.Value{Text: *out[j]}
			}
		}
	}
	return maxMinResult{vals: vals, write: true, own: own, ownStamps: ownStamps}, nil
}
