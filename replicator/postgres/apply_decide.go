package postgres

// Deciding one incoming change against the local row and its version
// (conflict.Decide), the writes it needs, its conflict record and the
// custom SQL resolver.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

// policy is the table's policy in the founding epoch: what merges (and
// is shipped with a write) is the same in every epoch; how writes rank is
// the decision's epoch's (tableEpochs).
func (a *Applier) policy(table string) conflict.Policy {
	t, _ := a.cfg.Cluster.Table(table)
	return t.Policy
}

// tableEpochs are the table's policies by epoch.
func (a *Applier) tableEpochs(table string) conflict.Epochs {
	if e, ok := a.epochs[table]; ok {
		return e
	}
	return conflict.Epochs{Policies: []conflict.Policy{a.policy(table)}}
}

// applyChange decides one remote change against the local row and queues
// the writes it needs.
func (a *Applier) applyChange(ctx context.Context, ex *executor, t *replicator.Txn, sh replicator.Shape, c *replicator.Change, s *rowState) error {
	epochs := a.tableEpochs(sh.Table)
	gone, err := a.settledTombstone(ctx, ex, sh, c, s)
	if err != nil {
		return err
	}
	if gone {
		// As if the tombstone were collected, as it is where the write was
		// made: the version tuple stays, to be written over.
		s.meta = &meta{tupleXmin: s.meta.tupleXmin}
	}
	local := s.version()
	localExists := s.exists || (s.meta != nil && !gone)
	d := conflict.DecideAt(epochs, local, localExists, c.Version, c.Op)
	// The policy of the epoch that ranks the writes (what merges is the
	// same in every epoch).
	pol := epochs.At(d.Epoch)
	merged := losesNothing(sh, pol, d)
	if d.Conflict && !merged {
		// The local row's image goes into the conflict log (and to a
		// custom resolver); it is read only when needed, and in the fast
		// path with the batch's other conflicts (see defersImage).
		if defersImage(ex, epochs, s) {
			s.baseDeferred = true
		} else if err := a.ensureImage(ctx, ex.tx, sh, c.Key, s); err != nil {
			return err
		}
	}
	for d.Action == conflict.External {
		winner, err := a.runResolver(ctx, ex.tx, pol, sh, c, s, d.Contest)
		if err != nil {
			return err
		}
		d = conflict.ResolveExternal(d, local, c.Version, winner)
	}
	// Under column_lww a row that stays live joins the rows of the writes
	// it keeps, the local one's among them.
	join := joinsColumns(pol, d)
	// So does one with max or min columns, for those (see maxMinValues).
	maxMin := hasMaxMin(pol) && d.Action != conflict.Skip && !d.Result.Deleted
	if (d.SaveLocal || (join && (d.Conflict || len(d.Result.Siblings) > 0)) || (maxMin && d.Action == conflict.KeepLocal)) && s.exists {
		// The local row's write became a sibling, or joins: its row is
		// needed.
		if err := a.ensureImage(ctx, ex.tx, sh, c.Key, s); err != nil {
			return err
		}
	}
	sibs := keptSiblings(sh, t, c, s, d)
	// Max and min columns merge over the live writes, whichever wins (see
	// maxMinValues).
	var mm maxMinResult
	if maxMin {
		var err error
		if mm, err = maxMinValues(ctx, ex.tx, sh, pol, c, s, d, sibs); err != nil {
			if !ex.parkOnError {
				return err
			}
			ex.park(a.cfg.Source, t.Seq, sh, c, err.Error())
			return nil
		}
	}
	if pol.ColumnLWW() && (join || d.Conflict) {
		s.foldImage() // the local row joins, or its columns are weighed
	}
	p, err := planChange(changeInput{region: a.cfg.Region, pol: pol, sh: &sh, seq: t.Seq, c: c, s: *s, d: d, merged: merged, sibs: sibs, mm: mm, ops: ex.ops})
	if err != nil {
		return err
	}
	if p.park != "" {
		if !ex.parkOnError {
			return errors.New(p.park)
		}
		ex.park(a.cfg.Source, t.Seq, sh, c, p.park)
		return nil
	}
	if len(p.ops) == 0 {
		return nil
	}
	before := *s
	*s = p.next
	if s.unlocked {
		ex.unlocked = append(ex.unlocked, metaKey{sh.Table, c.Key})
	}
	err = ex.run(ctx, p.ops)
	ex.ops = p.ops[:0] // run copied or executed them
	if err != nil {
		if ex.careful && ex.parkOnError && isDataError(err) {
			*s = before
			ex.park(a.cfg.Source, t.Seq, sh, c, err.Error())
			return nil
		}
		return err
	}
	switch {
	case merged:
		ex.merged++
	case d.Conflict:
		ex.conflicts = append(ex.conflicts, ConflictStat{Table: sh.Table, Kind: string(d.Kind), Policy: pol.Label(), row: p.record})
	}
	for _, r := range p.more {
		ex.conflicts = append(ex.conflicts, ConflictStat{Table: sh.Table, Kind: r.kind, Policy: pol.Label(), row: r})
	}
	return nil
}

// losesNothing reports whether a decision is a concurrent update of a row
// whose columns are all key or merging columns: whichever write wins, both
// writes' increments are kept (see planChange) and there is nothing else
// to overwrite. Such a conflict is counted, not logged row by row (on the
// counters every region increments, nearly every applied change is one).
func losesNothing(sh replicator.Shape, pol conflict.Policy, d conflict.Decision) bool {
	return d.Conflict && d.Kind == conflict.UpdateUpdate && d.Action != conflict.External && mergesOnly(sh, pol)
}

// mergesOnly reports whether every column of the table that is not in its
// primary key merges concurrent writes (a counter, max or min column):
// concurrent updates of such a row then lose nothing.
func mergesOnly(sh replicator.Shape, pol conflict.Policy) bool {
	if len(pol.Counters)+len(pol.Max)+len(pol.Min) == 0 {
		return false
	}
	for i, col := range sh.Columns {
		if !sh.IsKey(i) && pol.Merge(col) == "" {
			return false
		}
	}
	return true
}

// hasMaxMin reports whether the policy merges any column by max or min.
func hasMaxMin(pol conflict.Policy) bool { return len(pol.Max)+len(pol.Min) > 0 }

// ensureImage loads the local row's image unless it is known: the row as
// read from the table with the batch's writes to it folded in. A row the
// batch wrote whole has one already. One it wrote only some columns of
// (counters, max and min columns) before its image was needed is read now
// (baseDeferred), and its writes folded in: in the fast path the table has
// not seen the batch's queued writes yet; in careful mode it has, and
// folding them again changes nothing (each sets its columns' values).
func (a *Applier) ensureImage(ctx context.Context, tx pgx.Tx, sh replicator.Shape, key string, s *rowState) error {
	if s.exists && (s.baseDeferred || (s.image == nil && !s.written)) {
		img, err := readImage(ctx, tx, sh, key)
		if err != nil {
			return err
		}
		s.image, s.baseDeferred = img, false
	}
	s.foldImage()
	return nil
}

// readImage reads a row's image from the table.
func readImage(ctx context.Context, tx pgx.Tx, sh replicator.Shape, key string) (json.RawMessage, error) {
	// Values in their text form (each type's output function, as the
	// change stream sends them), so a row's image reads the same whichever
	// region logs or resolves it.
	names := make([]string, len(sh.Columns))
	vals := make([]string, len(sh.Columns))
	for i, c := range sh.Columns {
		names[i] = "'" + strings.ReplaceAll(c, "'", "''") + "'"
		vals[i] = fmt.Sprintf("CASE WHEN t.%[1]s IS NULL THEN NULL ELSE pg_catalog.format('%%s', t.%[1]s) END", quoteIdent(c))
	}
	where, args := keyWhere(sh, key, 0)
	q := fmt.Sprintf("SELECT pg_catalog.json_object(ARRAY[%s]::text[], ARRAY[%s]::text[]) FROM %s t WHERE %s",
		strings.Join(names, ", "), strings.Join(vals, ", "), qualified(sh.Table), where)
	var img json.RawMessage
	if err := tx.QueryRow(ctx, q, args...).Scan(&img); err != nil {
		return nil, fmt.Errorf("apply: read %s key %s: %w", sh.Table, key, err)
	}
	return img, nil
}

// rowImage returns prev (a JSON object, may be nil) with the columns row
// sets; unchanged TOAST values keep prev's value or are marked as such.
func rowImage(sh replicator.Shape, row []replicator.Value, prev json.RawMessage) json.RawMessage {
	m := map[string]any{}
	if prev != nil {
		_ = json.Unmarshal(prev, &m)
	}
	for i, col := range sh.Columns {
		v := row[i]
		switch {
		case v.Unchanged:
			if _, ok := m[col]; !ok {
				m[col] = map[string]bool{"unchanged_toast": true}
			}
		case v.Null:
			m[col] = nil
		default:
			m[col] = v.Text
		}
	}
	b, _ := json.Marshal(m)
	return b
}

// runResolver calls a custom SQL resolver:
// fn(table text, key text, local jsonb, remote jsonb, local_version jsonb, remote_version jsonb) returns text
// answering 'local' or 'remote', to rank the two writes of contest (the
// first as local): the row's own write, the remote change or a sibling.
// It must be deterministic: every region calls it with the same arguments
// for the same conflict.
func (a *Applier) runResolver(ctx context.Context, tx pgx.Tx, pol conflict.Policy, sh replicator.Shape, c *replicator.Change, s *rowState, contest [2]conflict.Write) (conflict.Side, error) {
	localImg, lv := resolverArgs(sh, c, s, contest[0])
	remoteImg, rv := resolverArgs(sh, c, s, contest[1])
	schema, fn, _ := strings.Cut(pol.Resolver, ".")
	q := fmt.Sprintf("SELECT %s.%s($1, $2, $3::jsonb, $4::jsonb, $5::jsonb, $6::jsonb)::text", quoteIdent(schema), quoteIdent(fn))
	if _, err := tx.Exec(ctx, "SAVEPOINT resolver"); err != nil {
		return 0, fmt.Errorf("apply: resolver: %w", err)
	}
	var answer string
	err := tx.QueryRow(ctx, q, sh.Table, c.Key, localImg, remoteImg, string(lv), string(rv)).Scan(&answer)
	if err != nil {
		_, _ = tx.Exec(ctx, "ROLLBACK TO SAVEPOINT resolver")
		return 0, fmt.Errorf("apply: custom resolver %s for %s key %s: %w", pol.Resolver, sh.Table, c.Key, err)
	}
	if _, err := tx.Exec(ctx, "RELEASE SAVEPOINT resolver"); err != nil {
		return 0, fmt.Errorf("apply: resolver: %w", err)
	}
	switch answer {
	case "local":
		return conflict.Local, nil
	case "remote":
		return conflict.Remote, nil
	}
	return 0, fmt.Errorf("apply: custom resolver %s for %s key %s answered %q; it must answer 'local' or 'remote'", pol.Resolver, sh.Table, c.Key, answer)
}

// resolverArgs is a write's row image and version as a resolver gets them
// (JSON; images built from the changes' own values, ordered by column
// name): the remote change's, a sibling's as kept, or the local row's
// write's as made (the same in every region).
func resolverArgs(sh replicator.Shape, c *replicator.Change, s *rowState, w conflict.Write) (img string, version []byte) {
	if w.Origin == c.Version.Origin && w.Tick == c.Version.Vector.Get(c.Version.Origin) {
		if c.Row == nil {
			img = "null"
		} else {
			remote := map[string]any{}
			for i, col := range sh.Columns {
				if c.Row[i].Null {
					remote[col] = nil
				} else {
					remote[col] = c.Row[i].Text
				}
			}
			b, _ := json.Marshal(remote)
			img = string(b)
		}
		v := c.Version
		v.Siblings = nil
		version, _ = json.Marshal(v)
		return img, version
	}
	if s.meta != nil {
		if sd, ok := s.meta.siblings[dotOf(w)]; ok {
			img = "null"
			if sd.row != nil && !w.Deleted {
				img = string(sd.row)
			}
			version, _ = json.Marshal(conflict.Version{Vector: sd.vector(w), HLC: w.HLC, Origin: w.Origin, Deleted: w.Deleted})
			return img, version
		}
	}
	// The local write as made: its own row (not one its max and min
	// columns were merged into here) and its own vector.
	img = "null"
	if row, _ := s.ownImage(); row != nil {
		img = string(row)
	}
	v := s.ownVersion()
	v.Siblings = nil
	version, _ = json.Marshal(v)
	return img, version
}
