package audit

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Source reads conflict log records. Records returns every record f
// selects (it may return more: Build filters again, but it must not return
// fewer); Limit is not applied to records. A Source is safe for concurrent
// use if what it reads through is.
type Source interface {
	Records(ctx context.Context, f Filters) ([]Record, error)
}

// Querier is what a database source reads through: *pgx.Conn (one caller
// at a time) or *pgxpool.Pool (concurrent callers, as an HTTP handler has).
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// DB reads one region's polyregion.conflict_log. Name is how errors name
// the database (a region id, say).
type DB struct {
	Name string
	Q    Querier
}

// Records implements Source; the filters run in the database.
func (d DB) Records(ctx context.Context, f Filters) ([]Record, error) {
	var conds []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	if !f.Since.IsZero() {
		conds = append(conds, "logged_at >= "+arg(f.Since))
	}
	if !f.Until.IsZero() {
		conds = append(conds, "logged_at < "+arg(f.Until))
	}
	if f.Table != "" {
		conds = append(conds, "tbl = "+arg(f.Table))
	}
	if f.Region != "" {
		p := arg(f.Region)
		conds = append(conds, fmt.Sprintf("(local_origin = %s OR remote_origin = %s)", p, p))
	}
	if f.Pair != "" {
		a, b, _ := strings.Cut(f.Pair, "-")
		pa, pb := arg(a), arg(b)
		conds = append(conds, fmt.Sprintf("((local_origin = %s AND remote_origin = %s) OR (local_origin = %s AND remote_origin = %s))", pa, pb, pb, pa))
	}
	sql := `SELECT id, logged_at, region, tbl, key, kind, policy, winner, winner_origin, local_origin, remote_origin,
		local_version, remote_version, local_hlc, remote_hlc, local_row::text, remote_row::text, source_seq, reason,
		coalesce(outcome, '')
		FROM polyregion.conflict_log`
	if len(conds) > 0 {
		sql += " WHERE " + strings.Join(conds, " AND ")
	}
	sql += " ORDER BY id"
	rows, err := d.Q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("read conflict log of %s: %w", d.Name, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Record, error) {
		var r Record
		var local, remote *string
		err := row.Scan(&r.ID, &r.LoggedAt, &r.Region, &r.Table, &r.Key, &r.Kind, &r.Policy, &r.Winner, &r.WinnerOrigin,
			&r.LocalOrigin, &r.RemoteOrigin, &r.LocalVersion, &r.RemoteVersion, &r.LocalHLC, &r.RemoteHLC,
			&local, &remote, &r.SourceSeq, &r.Reason, &r.Outcome)
		if local != nil {
			r.LocalRow = []byte(*local)
		}
		if remote != nil {
			r.RemoteRow = []byte(*remote)
		}
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("read conflict log of %s: %w", d.Name, err)
	}
	return out, nil
}

// Sources reads several sources (one per region, say) one after another
// and returns all their records.
type Sources []Source

// Records implements Source.
func (s Sources) Records(ctx context.Context, f Filters) ([]Record, error) {
	var out []Record
	for _, src := range s {
		recs, err := src.Records(ctx, f)
		if err != nil {
			return nil, err
		}
		out = append(out, recs...)
	}
	return out, nil
}

// Records is a fixed set of records (tests, or logs exported elsewhere).
type Records []Record

// Records implements Source.
func (r Records) Records(context.Context, Filters) ([]Record, error) { return r, nil }

// Read reads src under f and builds the report.
func Read(ctx context.Context, src Source, f Filters, now time.Time) (Report, error) {
	if err := f.Validate(); err != nil {
		return Report{}, err
	}
	recs, err := src.Records(ctx, f)
	if err != nil {
		return Report{}, err
	}
	return Build(recs, f, now), nil
}
