package postgres

// Conflict records: built when a change is decided, written with the rest
// of the batch in one statement; the local row's image, when it must be
// read from the table, is read for all of the batch's conflicts at once.

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

// conflictRow is one row of polyregion.conflict_log.
type conflictRow struct {
	region, tbl, key, kind, policy, winner, winnerOrigin string
	localOrigin, remoteOrigin                            string
	localVersion, remoteVersion                          string
	localHLC, remoteHLC                                  int64
	localRow, remoteRow                                  *string
	sourceSeq, epoch                                     int64
	reason                                               string
	pol                                                  conflict.Policy
	lost                                                 conflict.Outcome // outcome(), once known
	// base: the local row's image is the row as the batch found it in the
	// table (read by loadImages) with writes, this batch's earlier writes to
	// it, folded in.
	base   bool
	sh     *replicator.Shape
	writes []imageWrite
}

// newConflictRecord describes a logged conflict: the local side as before
// (the row's image, when known) and the remote change.
func newConflictRecord(region conflict.RegionID, pol conflict.Policy, sh replicator.Shape, seq replicator.Seq, c *replicator.Change, before rowState, d conflict.Decision) *conflictRow {
	lv := before.version()
	// The local write as every region names it: with the vector it was
	// made with, not the row's (which holds what the row absorbed here).
	r := &conflictRow{region: string(region), tbl: sh.Table, key: c.Key, kind: string(d.Kind), policy: pol.Label(), winner: d.Winner.String(), winnerOrigin: string(d.Result.Origin),
		localOrigin: string(lv.Origin), remoteOrigin: string(c.Version.Origin), localVersion: before.ownVersion().Vector.String(), remoteVersion: c.Version.Vector.String(),
		localHLC: int64(lv.HLC), remoteHLC: int64(c.Version.HLC), sourceSeq: int64(seq), reason: d.Reason, pol: pol, epoch: int64(d.Epoch)}
	switch {
	case d.Against.Origin != lv.Origin || d.Against.Tick != lv.Vector.Get(lv.Origin):
		// The remote write superseded the row's and met a sibling: the
		// sibling is the local side.
		w := d.Against
		sd := before.meta.siblings[dotOf(w)]
		r.localOrigin, r.localVersion, r.localHLC = string(w.Origin), sd.vector(w).String(), int64(w.HLC)
		if sd.row != nil && !w.Deleted {
			s := string(sd.row)
			r.localRow = &s
		}
	case before.baseDeferred && before.image == nil:
		r.base, r.sh, r.writes = true, &sh, slices.Clone(before.pending)
	case before.image != nil:
		s := string(before.image)
		r.localRow = &s
	}
	if c.Row != nil {
		s := string(rowImage(sh, c.Row, nil))
		r.remoteRow = &s
	}
	return r
}

// overturnedRecord logs the row's write when it had won under an earlier
// epoch's policy and loses under the decision's (conflict.Decision's
// AlsoLost): it is the record's local side, and it is overwritten.
func overturnedRecord(region conflict.RegionID, pol conflict.Policy, sh replicator.Shape, seq replicator.Seq, c *replicator.Change, before rowState, d conflict.Decision, w conflict.Write) *conflictRow {
	d.Reason = fmt.Sprintf("the row's write %s:%d had won under an earlier epoch's policy and loses under epoch %d's (%s) to %s's write: %s",
		w.Origin, w.Tick, d.Epoch, pol.Label(), d.Result.Origin, d.Reason)
	d.Against = w
	r := newConflictRecord(region, pol, sh, seq, c, before, d)
	r.lost = conflict.Overwritten
	return r
}

// defersImage reports whether the local row's image for a conflict on s
// is left to loadImages: in the fast path, for a row the batch has not
// written, whose image would otherwise be read from the table now, one
// query per conflict (on the rows every region writes, most applied
// changes can be conflicts). A custom resolver needs the image at once,
// and so does a policy that may keep the local row's write as a sibling.
func defersImage(ex *executor, epochs conflict.Epochs, s *rowState) bool {
	if ex.careful || epochs.KeepsSiblingsAt() || !s.exists || s.image != nil {
		return false
	}
	return s.baseDeferred || (len(s.pending) == 0 && !s.written)
}

const conflictColumns = `region, tbl, key, kind, policy, winner, winner_origin, local_origin, remote_origin,
		local_version, remote_version, local_hlc, remote_hlc, local_row, remote_row, source_seq, reason, outcome, epoch`

// outcome is what the conflict cost the write that lost it (see
// conflict.Policy.Outcome); the local image must be known. Worked out once:
// the record's statement and the metrics both ask.
func (r *conflictRow) outcome() conflict.Outcome {
	if r.lost == "" {
		r.lost = r.decideOutcome()
	}
	return r.lost
}

func (r *conflictRow) decideOutcome() conflict.Outcome {
	image := func(s *string) map[string]any {
		if s == nil {
			return nil
		}
		m := map[string]any{}
		if json.Unmarshal([]byte(*s), &m) != nil {
			return nil
		}
		return m
	}
	local, remote := image(r.localRow), image(r.remoteRow)
	if r.winner == conflict.Remote.String() {
		return r.pol.Outcome(conflict.Kind(r.kind), remote, local)
	}
	return r.pol.Outcome(conflict.Kind(r.kind), local, remote)
}

// stmt writes one record (careful mode: inside the change's savepoint).
func (r *conflictRow) stmt() stmt {
	return stmt{sql: `INSERT INTO polyregion.conflict_log (` + conflictColumns + `)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14::jsonb, $15::jsonb, $16, $17, $18, $19)`,
		args: []any{r.region, r.tbl, r.key, r.kind, r.policy, r.winner, r.winnerOrigin, r.localOrigin, r.remoteOrigin,
			r.localVersion, r.remoteVersion, r.localHLC, r.remoteHLC, r.localRow, r.remoteRow, r.sourceSeq, r.reason, string(r.outcome()), r.epoch},
		want: -1}
}

// conflictsStmt writes a batch's records in one statement.
func conflictsStmt(rows []*conflictRow) stmt {
	n := len(rows)
	tbl, key, kind, pol, winner, wo := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	lo, ro, lv, rv, reason, outcome := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	lh, rh, seq, epoch := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	lrow, rrow := make([]*string, n), make([]*string, n)
	for i, r := range rows {
		tbl[i], key[i], kind[i], pol[i], winner[i], wo[i] = r.tbl, r.key, r.kind, r.policy, r.winner, r.winnerOrigin
		lo[i], ro[i], lv[i], rv[i], reason[i] = r.localOrigin, r.remoteOrigin, r.localVersion, r.remoteVersion, r.reason
		lh[i], rh[i], seq[i], lrow[i], rrow[i] = r.localHLC, r.remoteHLC, r.sourceSeq, r.localRow, r.remoteRow
		outcome[i] = string(r.outcome())
		epoch[i] = r.epoch
	}
	return stmt{sql: `INSERT INTO polyregion.conflict_log (` + conflictColumns + `)
		SELECT $1, u.tbl, u.key, u.kind, u.policy, u.winner, u.wo, u.lo, u.ro, u.lv, u.rv, u.lh, u.rh, u.lrow::jsonb, u.rrow::jsonb, u.seq, u.reason, u.outcome, u.epoch
		FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[]),
		  pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::text[]), pg_catalog.unnest($7::text[]), pg_catalog.unnest($8::text[]),
		  pg_catalog.unnest($9::text[]), pg_catalog.unnest($10::text[]), pg_catalog.unnest($11::text[]), pg_catalog.unnest($12::bigint[]),
		  pg_catalog.unnest($13::bigint[]), pg_catalog.unnest($14::text[]), pg_catalog.unnest($15::text[]), pg_catalog.unnest($16::bigint[]),
		  pg_catalog.unnest($17::text[]), pg_catalog.unnest($18::text[]), pg_catalog.unnest($19::bigint[]))
		  AS u(tbl, key, kind, policy, winner, wo, lo, ro, lv, rv, lh, rh, lrow, rrow, seq, reason, outcome, epoch)`,
		args: []any{rows[0].region, tbl, key, kind, pol, winner, wo, lo, ro, lv, rv, lh, rh, lrow, rrow, seq, reason, outcome, epoch},
		want: int64(n)}
}

// loadImages fills in the local row images left to it (see defersImage):
// each table's rows read in one query, before the batch writes any of
// them, then each record's earlier writes folded in.
func (e *executor) loadImages(ctx context.Context) error {
	byTable := map[string][]*conflictRow{}
	var tables []string
	for _, r := range e.bulk.conflicts {
		if !r.base {
			continue
		}
		if _, ok := byTable[r.tbl]; !ok {
			tables = append(tables, r.tbl)
		}
		byTable[r.tbl] = append(byTable[r.tbl], r)
	}
	for _, tbl := range tables {
		rows := byTable[tbl]
		images, err := readImages(ctx, e.tx, *rows[0].sh, rows)
		if err != nil {
			return err
		}
		for _, r := range rows {
			img := images[r.key]
			for _, w := range r.writes {
				img = rowImage(w.sh, w.row, img)
			}
			if img != nil {
				s := string(img)
				r.localRow = &s
			}
			r.base, r.writes = false, nil
		}
	}
	return nil
}

// readImages reads the rows of the records' keys as JSON objects, values
// in their text form (each type's output function, as the change stream
// sends them), so a row's image reads the same whichever region logs it.
func readImages(ctx context.Context, tx pgx.Tx, sh replicator.Shape, rows []*conflictRow) (map[string]json.RawMessage, error) {
	var keys []string
	seen := map[string]bool{}
	for _, r := range rows {
		if !seen[r.key] {
			seen[r.key] = true
			keys = append(keys, r.key)
		}
	}
	lk, err := lookupKeys(sh, keys)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(sh.Columns))
	vals := make([]string, len(sh.Columns))
	for i, c := range sh.Columns {
		names[i] = "'" + strings.ReplaceAll(c, "'", "''") + "'"
		vals[i] = fmt.Sprintf("CASE WHEN t.%[1]s IS NULL THEN NULL ELSE pg_catalog.format('%%s', t.%[1]s) END", quoteIdent(c))
	}
	q := fmt.Sprintf(`SELECT k.ord, r.img FROM %s
		CROSS JOIN LATERAL (SELECT pg_catalog.json_object(ARRAY[%s]::text[], ARRAY[%s]::text[]) AS img FROM %s t WHERE %s LIMIT 1) r`,
		lk.from, strings.Join(names, ", "), strings.Join(vals, ", "), qualified(sh.Table), lk.match)
	res, err := tx.Query(ctx, q, lk.args...)
	if err != nil {
		return nil, fmt.Errorf("apply: read %s: %w", sh.Table, err)
	}
	defer res.Close()
	out := make(map[string]json.RawMessage, len(keys))
	for res.Next() {
		var ord int64
		var img json.RawMessage
		if err := res.Scan(&ord, &img); err != nil {
			return nil, fmt.Errorf("apply: read %s: %w", sh.Table, err)
		}
		out[keys[ord-1]] = img
	}
	return out, res.Err()
}
