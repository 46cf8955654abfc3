package postgres

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

// Parked changes.
//
// A change that cannot be applied here yet is parked (polyregion.parked)
// with the reason, and the rest of its source's stream goes on. Two kinds:
//
//   - its shape differs from the local table (a column or the primary key
//     differs): every change of that shape from that source is parked, and
//     only that shape; changes of the table in the shape the table has here
//     go on. The applier keeps, per source, the shapes it sets aside and
//     their reasons (parkedShapes): a shape's reason is logged when it is
//     first set aside and when it changes, never on every retry. The shapes
//     are checked again on every retry round (a rolling migration that adds
//     a column in one region first is such a case): when one matches again,
//     its changes are made due and applied by that round, oldest first.
//     Until then they are not tried, only counted (retries) with a growing
//     delay per shape.
//   - a data error (a child before its parent, a unique clash on a
//     secondary index, a TOASTed value not sent for a row that is not
//     here): retried with a growing delay per change (2s doubling, at most
//     parkedDataRetryMax); the reason is logged when it changes.
//
// Every retry goes through the same decision as any change (versions), so
// a parked change that a later one of the same row superseded is skipped.
// An operator lists, retries and discards parked changes (polyregion parked
// list|retry|discard); a discarded change is deleted, so it no longer holds
// tombstone collection back (SettledPositions).

// Delays between tries of a parked change.
const (
	parkedRetryFirst = 2 * time.Second
	// parkedDataRetryMax caps the delay for a change that failed with a
	// data error: what it waits for (a parent row, a cleared clash) comes
	// with no signal.
	parkedDataRetryMax = 30 * time.Second
	// parkedShapeRetryMax caps the bookkeeping delay of a shape that
	// differs: its changes are made due as soon as the shape matches (the
	// shapes are checked on every round), so the delay only spaces the
	// retry counts.
	parkedShapeRetryMax = 10 * time.Minute
)

// retryDelay is the delay before the next try of a parked change (or
// shape) that failed tries times already: parkedRetryFirst doubling, at
// most max.
func retryDelay(tries int, max time.Duration) time.Duration {
	d := parkedRetryFirst
	for i := 0; i < tries && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// parkedShapes holds the shapes of one source's changes that are parked
// because they differ from the local table, keyed by shapeKey, with the
// reason, and how far the applier got with the changes parked before it
// started (see Applier.loadParkedShapes).
type parkedShapes struct {
	reasons  map[string]string
	progress loadProgress
}

// loadProgress: the reasons of the shapes parked before the applier started
// are loaded (loadedReasons), and the changes of those that match now were
// made due (loadedAll).
type loadProgress int

const (
	loadedNothing loadProgress = iota
	loadedReasons
	loadedAll
)

func newParkedShapes() parkedShapes { return parkedShapes{reasons: map[string]string{}} }

func (p *parkedShapes) loaded() bool             { return p.progress >= loadedReasons }
func (p *parkedShapes) settled() bool            { return p.progress == loadedAll }
func (p *parkedShapes) mark(how loadProgress)    { p.progress = how }
func (p *parkedShapes) setAside(key, why string) { p.reasons[key] = why }

// reason returns why changes of the shape are set aside ("" when they are
// not).
func (p *parkedShapes) reason(key string) string { return p.reasons[key] }

// note records the latest check of a shape: why is the difference here, ""
// when it matches. It reports whether the reason is new or changed (to be
// logged) and whether the shape was set aside and matches now (its parked
// changes are to be made due).
func (p *parkedShapes) note(key, why string) (changed, matches bool) {
	if key == "" { // names no shape
		return false, false
	}
	prev, was := p.reasons[key]
	if why == "" {
		delete(p.reasons, key)
		return false, was
	}
	p.reasons[key] = why
	return !was || prev != why, false
}

// shapeKey identifies a shape as it is stored with a parked change: its
// JSON. Two changes with the same key have the same columns, types and key
// in the same order.
func shapeKey(sh replicator.Shape) string {
	b, _ := json.Marshal(sh)
	return string(b)
}

// keyColumns names a shape's primary key columns, in key order.
func keyColumns(sh replicator.Shape) []string {
	out := make([]string, 0, len(sh.Key))
	for _, k := range sh.Key {
		if k >= 0 && k < len(sh.Columns) {
			out = append(out, sh.Columns[k])
		}
	}
	return out
}

// shapeDifference names how a source's shape of a table (src) differs from
// the local one: the first differing column, and the primary keys when
// they differ ("" when the shapes match).
func shapeDifference(local, src replicator.Shape) string {
	l, s := local, src
	l.Key, s.Key = nil, nil
	cols := l.Diff(s)
	lk, sk := keyColumns(local), keyColumns(src)
	if slices.Equal(lk, sk) {
		return cols
	}
	key := fmt.Sprintf("primary key is (%s) here and (%s) in the change", strings.Join(lk, ", "), strings.Join(sk, ", "))
	if cols == "" {
		return key
	}
	return cols + "; " + key
}

// noteShape records, during an apply, a shape of the source's changes
// that differs from the local table (why: the difference). A shape set
// aside for the first time, or for a new reason, is logged once. A shape
// set aside before that matches now is left to the next retry round
// (recheckParkedShapes), which makes its parked changes due and applies
// them, in transactions of its own.
func (a *Applier) noteShape(ctx context.Context, tx pgx.Tx, sh replicator.Shape, key, why string) error {
	if why == "" {
		return nil
	}
	if !a.paused.loaded() {
		if _, err := a.loadParkedShapes(ctx, tx); err != nil {
			return err
		}
		a.paused.mark(loadedReasons)
	}
	if changed, _ := a.paused.note(key, why); changed {
		a.logParkedShape(sh.Table, why)
	}
	return nil
}

// logParkedShape logs why changes of a shape of table are parked (once,
// and again when the reason changes).
func (a *Applier) logParkedShape(table, why string) {
	if _, waiting := a.cfg.Waiting[table]; waiting {
		a.cfg.Logger.Warn("changes of a table the cluster added are parked until it is replicated here", "table", table, "source", a.cfg.Source, "reason", why)
		return
	}
	a.cfg.Logger.Error("changes of this shape are parked: the table differs here; changes in the table's own shape go on",
		"table", table, "source", a.cfg.Source, "difference", why)
}

// makeShapeDueSQL makes every parked change of one source and shape due.
const makeShapeDueSQL = `UPDATE polyregion.parked SET next_retry_at = NULL
	WHERE source = $1 AND tbl = $2 AND shape = $3::jsonb AND resolved_at IS NULL AND next_retry_at IS NOT NULL`

// loadParkedShapes reads the shapes of the source's changes parked here
// and checks them against the local tables: a shape that differs is set
// aside (not logged again: it was, when its changes were parked), unless
// it already is. It returns the shapes that match now.
func (a *Applier) loadParkedShapes(ctx context.Context, tx pgx.Tx) ([]replicator.Shape, error) {
	rows, err := tx.Query(ctx, `SELECT DISTINCT shape FROM polyregion.parked WHERE source = $1 AND resolved_at IS NULL`, string(a.cfg.Source))
	if err != nil {
		return nil, fmt.Errorf("load parked shapes: %w", err)
	}
	var shapes []replicator.Shape
	for rows.Next() {
		var sh replicator.Shape
		if err := rows.Scan(&sh); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load parked shapes: %w", err)
		}
		shapes = append(shapes, sh)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load parked shapes: %w", err)
	}
	var matching []replicator.Shape
	for _, sh := range shapes {
		why, err := a.checkShape(ctx, tx, sh)
		if err != nil {
			return nil, err
		}
		key := shapeKey(sh)
		switch {
		case why == "":
			matching = append(matching, sh)
		case a.paused.reason(key) == "":
			a.paused.setAside(key, why)
		}
	}
	return matching, nil
}

// recheckParkedShapes, at the start of a retry round, checks every shape
// set aside against the local tables again (they may have changed: DDL,
// an operator's fix): the changes of a shape that matches now are made
// due, and a new reason is logged. The first round of an applier also
// makes due the changes parked before it started whose shape matches now
// (fixed while the replicator was away).
func (a *Applier) recheckParkedShapes(ctx context.Context, tx pgx.Tx) error {
	if !a.paused.settled() {
		matching, err := a.loadParkedShapes(ctx, tx)
		if err != nil {
			return err
		}
		for _, sh := range matching {
			if _, err := tx.Exec(ctx, makeShapeDueSQL, string(a.cfg.Source), sh.Table, shapeKey(sh)); err != nil {
				return fmt.Errorf("make parked changes due: %w", err)
			}
		}
		a.paused.mark(loadedAll)
	}
	for key := range a.paused.reasons {
		var sh replicator.Shape
		if err := json.Unmarshal([]byte(key), &sh); err != nil {
			return fmt.Errorf("parked shape: %w", err)
		}
		why, err := a.checkShape(ctx, tx, sh)
		if err != nil {
			return err
		}
		changed, matches := a.paused.note(key, why)
		switch {
		case changed:
			a.cfg.Logger.Error("the reason changes of this shape are parked has changed", "table", sh.Table, "source", a.cfg.Source, "difference", why)
		case matches:
			a.cfg.Logger.Info("a shape whose changes were parked matches the table now; applying them", "table", sh.Table, "source", a.cfg.Source)
			if _, err := tx.Exec(ctx, makeShapeDueSQL, string(a.cfg.Source), sh.Table, key); err != nil {
				return fmt.Errorf("make parked changes due: %w", err)
			}
		}
	}
	return nil
}

// parkedChange is one parked change as the retry reads it.
type parkedChange struct {
	id, seq int64
	change  replicator.Change
	shape   replicator.Shape
	reason  string
	retries int
}

// dueParked reads the source's parked changes due for a retry, oldest
// first.
func dueParked(ctx context.Context, tx pgx.Tx, source conflict.RegionID, limit int) ([]parkedChange, error) {
	rows, err := tx.Query(ctx, `SELECT id, seq, change, shape, reason, retries FROM polyregion.parked
		WHERE source = $1 AND resolved_at IS NULL AND (next_retry_at IS NULL OR next_retry_at <= pg_catalog.now())
		ORDER BY id LIMIT $2`, string(source), limit)
	if err != nil {
		return nil, fmt.Errorf("read parked changes: %w", err)
	}
	defer rows.Close()
	var list []parkedChange
	for rows.Next() {
		var p parkedChange
		if err := rows.Scan(&p.id, &p.seq, &p.change, &p.shape, &p.reason, &p.retries); err != nil {
			return nil, fmt.Errorf("read parked changes: %w", err)
		}
		list = append(list, p)
	}
	return list, rows.Err()
}

// deferShape puts back every due parked change of one source and shape
// whose shape still differs: counted as tried, with the reason, due again
// after the shape's delay. It reports how many it put back.
func (a *Applier) deferShape(ctx context.Context, p parkedChange, key, why string) (int64, error) {
	tag, err := a.conn.Exec(ctx, `UPDATE polyregion.parked SET retries = retries + 1, reason = $4,
			next_retry_at = pg_catalog.now() + pg_catalog.make_interval(secs => $5)
		WHERE source = $1 AND tbl = $2 AND shape = $3::jsonb AND resolved_at IS NULL
		  AND (next_retry_at IS NULL OR next_retry_at <= pg_catalog.now())`,
		string(a.cfg.Source), p.shape.Table, key, why, retryDelay(p.retries, parkedShapeRetryMax).Seconds())
	if err != nil {
		return 0, fmt.Errorf("retry parked: %w", err)
	}
	return tag.RowsAffected(), nil
}

// deferChange puts back one parked change that failed again, with the
// latest reason, due again after its delay. It reports false when the
// change is no longer open (an operator discarded it meanwhile).
func (a *Applier) deferChange(ctx context.Context, p parkedChange, reason string) (bool, error) {
	tag, err := a.conn.Exec(ctx, `UPDATE polyregion.parked SET retries = retries + 1, reason = $2,
			next_retry_at = pg_catalog.now() + pg_catalog.make_interval(secs => $3)
		WHERE id = $1 AND resolved_at IS NULL`, p.id, reason, retryDelay(p.retries, parkedDataRetryMax).Seconds())
	if err != nil {
		return false, fmt.Errorf("retry parked: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// Parked is one parked change, as operators see it.
type Parked struct {
	ID       int64     `json:"id"`
	ParkedAt time.Time `json:"parked_at"`
	Source   string    `json:"source"`
	Seq      int64     `json:"seq"`
	Table    string    `json:"table"`
	Op       string    `json:"op"`
	Key      string    `json:"key"`
	Reason   string    `json:"reason"`
	Retries  int       `json:"retries"`
	// NextRetryAt is when the replicator tries it next (nil: at its next
	// round).
	NextRetryAt *time.Time `json:"next_retry_at"`
	// ResolvedAt is set once it was applied (or skipped as older).
	ResolvedAt *time.Time `json:"resolved_at,omitempty"`
	// Row is the change's row (column -> text value, nil for NULL), when
	// asked for; deletes have none.
	Row map[string]*string `json:"row,omitempty"`
}

// ParkedFilter selects parked changes. Zero fields select everything.
type ParkedFilter struct {
	IDs    []int64
	Source string
	Table  string
	// Resolved includes changes applied since they were parked.
	Resolved bool
	// Limit caps the changes returned, oldest first (0: no cap).
	Limit int
	// Rows includes each change's row.
	Rows bool
}

// ErrParkedSchema: the parked table predates the columns this version
// reads; the replicator adds them when it starts.
var ErrParkedSchema = errors.New("this region's polyregion.parked predates this version: start the region's replicator once (it upgrades its schema), then try again")

// ListParked returns the parked changes f selects, oldest first.
func ListParked(ctx context.Context, conn *pgx.Conn, f ParkedFilter) ([]Parked, error) {
	var where []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if !f.Resolved {
		where = append(where, "resolved_at IS NULL")
	}
	if len(f.IDs) > 0 {
		add("id = ANY($%d::bigint[])", f.IDs)
	}
	if f.Source != "" {
		add("source = $%d", f.Source)
	}
	if f.Table != "" {
		add("tbl = $%d", f.Table)
	}
	q := `SELECT id, parked_at, source, seq, tbl, (change OPERATOR(pg_catalog.->>) 'o')::int, key, reason, retries, next_retry_at, resolved_at, change, shape
		FROM polyregion.parked`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY id"
	if f.Limit > 0 {
		args = append(args, f.Limit)
		q += fmt.Sprintf(" LIMIT $%d", len(args))
	}
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, parkedErr("list parked changes", err)
	}
	defer rows.Close()
	var out []Parked
	for rows.Next() {
		var p Parked
		var op int
		var ch replicator.Change
		var sh replicator.Shape
		if err := rows.Scan(&p.ID, &p.ParkedAt, &p.Source, &p.Seq, &p.Table, &op, &p.Key, &p.Reason, &p.Retries, &p.NextRetryAt, &p.ResolvedAt, &ch, &sh); err != nil {
			return nil, parkedErr("list parked changes", err)
		}
		p.Op = conflict.Op(op).String()
		if f.Rows && ch.Row != nil {
			p.Row = map[string]*string{}
			for i, v := range ch.Row {
				if i >= len(sh.Columns) || v.Unchanged {
					continue
				}
				if v.Null {
					p.Row[sh.Columns[i]] = nil
					continue
				}
				s := v.Text
				p.Row[sh.Columns[i]] = &s
			}
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, parkedErr("list parked changes", err)
	}
	return out, nil
}

// RetryParkedNow makes the given open parked changes due at once: the
// region's running replicator tries them at its next round (every 2s by
// default) through the same decision as any change. It returns the ids it
// made due.
func RetryParkedNow(ctx context.Context, conn *pgx.Conn, ids []int64) ([]int64, error) {
	rows, err := conn.Query(ctx, `UPDATE polyregion.parked SET next_retry_at = NULL
		WHERE id = ANY($1::bigint[]) AND resolved_at IS NULL RETURNING id`, ids)
	if err != nil {
		return nil, parkedErr("retry parked changes", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, parkedErr("retry parked changes", err)
	}
	slices.Sort(out)
	return out, nil
}

// DiscardParked deletes the given open parked changes and returns them: a
// discarded change is never applied here, and no longer holds tombstone
// collection back. Changes applied or discarded meanwhile are left out.
func DiscardParked(ctx context.Context, conn *pgx.Conn, ids []int64) ([]Parked, error) {
	rows, err := conn.Query(ctx, `DELETE FROM polyregion.parked WHERE id = ANY($1::bigint[]) AND resolved_at IS NULL
		RETURNING id, parked_at, source, seq, tbl, (change OPERATOR(pg_catalog.->>) 'o')::int, key, reason, retries`, ids)
	if err != nil {
		return nil, parkedErr("discard parked changes", err)
	}
	defer rows.Close()
	var out []Parked
	for rows.Next() {
		var p Parked
		var op int
		if err := rows.Scan(&p.ID, &p.ParkedAt, &p.Source, &p.Seq, &p.Table, &op, &p.Key, &p.Reason, &p.Retries); err != nil {
			return nil, parkedErr("discard parked changes", err)
		}
		p.Op = conflict.Op(op).String()
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, parkedErr("discard parked changes", err)
	}
	slices.SortFunc(out, func(a, b Parked) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

func parkedErr(what string, err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42703" { // undefined_column
		return fmt.Errorf("%s: %w", what, ErrParkedSchema)
	}
	return fmt.Errorf("%s: %w", what, err)
}
