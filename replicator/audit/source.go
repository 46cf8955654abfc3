package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Source reads conflict log records. Records yields every record f
// selects (it may yield more: the report filters again, but it must not
// yield fewer) in identity order (CompareRecords), and stops at its first
// error; Limit is not applied to records. A Source is safe for concurrent
// use if what it reads through is.
type Source interface {
	Records(ctx context.Context, f Filters) iter.Seq2[Record, error]
}

// ImageSource is a Source whose records come without their row images
// (they are most of a record's size); Images reads them for the records a
// report lists, by id. An id missing from the answer (the record was
// deleted meanwhile) leaves its images null.
type ImageSource interface {
	Source
	Images(ctx context.Context, ids []int64) (map[int64]Images, error)
}

// Images are a record's two row images (nil: no row).
type Images struct {
	Local, Remote json.RawMessage
}

// Querier is what a database source reads through: *pgx.Conn (one caller
// at a time) or *pgxpool.Pool (concurrent callers, as an HTTP handler has).
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// DB reads one region's polyregion.conflict_log. Name is how errors name
// the database (a region id, say). The database sorts the records; the
// report holds only what it lists.
type DB struct {
	Name string
	Q    Querier
}

// identityOrder returns the SQL that sorts conflict log records as
// CompareRecords does (a lateral join naming whether the remote write is
// a, and the ORDER BY): write a is the one with the lower (hybrid
// timestamp, origin, vector), and text compares as Go compares the bytes
// the client receives. COLLATE "C" compares the database's own bytes,
// which the client receives as they are when its encoding is the
// database's (or either is SQL_ASCII); otherwise text is compared as
// converted to the client's encoding, or non-ASCII keys would come out of
// order. Encoding names are the server's (letters, digits, '_').
func identityOrder(serverEnc, clientEnc string) (join, orderBy string) {
	txt := func(col string) string { return col + ` COLLATE "C"` }
	if serverEnc != clientEnc && serverEnc != "SQL_ASCII" && clientEnc != "SQL_ASCII" {
		txt = func(col string) string { return "pg_catalog.convert_to(" + col + ", '" + clientEnc + "')" }
	}
	either := func(remote, local string) string {
		return txt("(CASE WHEN o.ra THEN c." + remote + " ELSE c." + local + " END)")
	}
	join = `
	CROSS JOIN LATERAL (SELECT (c.remote_hlc, ` + txt("c.remote_origin") + `, ` + txt("c.remote_version") + `)
		< (c.local_hlc, ` + txt("c.local_origin") + `, ` + txt("c.local_version") + `) AS ra) o`
	orderBy = ` ORDER BY ` + txt("c.tbl") + `, ` + txt("c.key") + `,
	CASE WHEN o.ra THEN c.remote_hlc ELSE c.local_hlc END, ` + either("remote_origin", "local_origin") + `, ` + either("remote_version", "local_version") + `,
	CASE WHEN o.ra THEN c.local_hlc ELSE c.remote_hlc END, ` + either("local_origin", "remote_origin") + `, ` + either("local_version", "remote_version")
	return join, orderBy
}

// encodingName matches the names PostgreSQL gives encodings.
var encodingName = regexp.MustCompile(`^[A-Za-z0-9_]+$`)

// Records implements Source; the filters run in the database, and the row
// images are left to Images.
func (d DB) Records(ctx context.Context, f Filters) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		var conds []string
		var args []any
		arg := func(v any) string {
			args = append(args, v)
			return fmt.Sprintf("$%d", len(args))
		}
		if !f.Since.IsZero() {
			conds = append(conds, "c.logged_at >= "+arg(f.Since))
		}
		if !f.Until.IsZero() {
			conds = append(conds, "c.logged_at < "+arg(f.Until))
		}
		if f.Table != "" {
			conds = append(conds, "c.tbl = "+arg(f.Table))
		}
		if f.Region != "" {
			p := arg(f.Region)
			conds = append(conds, fmt.Sprintf("(c.local_origin = %s OR c.remote_origin = %s)", p, p))
		}
		if f.Pair != "" {
			a, b, _ := strings.Cut(f.Pair, "-")
			pa, pb := arg(a), arg(b)
			conds = append(conds, fmt.Sprintf("((c.local_origin = %s AND c.remote_origin = %s) OR (c.local_origin = %s AND c.remote_origin = %s))", pa, pb, pb, pa))
		}
		var serverEnc, clientEnc string
		settings, err := d.Q.Query(ctx, `SELECT pg_catalog.current_setting('server_encoding'), pg_catalog.current_setting('client_encoding')`)
		if err == nil {
			_, err = pgx.ForEachRow(settings, []any{&serverEnc, &clientEnc}, func() error { return nil })
		}
		if err == nil && (!encodingName.MatchString(serverEnc) || !encodingName.MatchString(clientEnc)) {
			err = fmt.Errorf("unexpected encoding names %q, %q", serverEnc, clientEnc)
		}
		if err != nil {
			yield(Record{}, fmt.Errorf("read conflict log of %s: %w", d.Name, err))
			return
		}
		join, orderBy := identityOrder(serverEnc, clientEnc)
		sql := `SELECT c.id, c.logged_at, c.region, c.tbl, c.key, c.kind, c.policy, c.winner, c.winner_origin, c.local_origin, c.remote_origin,
			c.local_version, c.remote_version, c.local_hlc, c.remote_hlc, c.source_seq, c.reason, coalesce(c.outcome, '')
			FROM polyregion.conflict_log c` + join
		if len(conds) > 0 {
			sql += " WHERE " + strings.Join(conds, " AND ")
		}
		sql += orderBy
		rows, err := d.Q.Query(ctx, sql, args...)
		if err != nil {
			yield(Record{}, fmt.Errorf("read conflict log of %s: %w", d.Name, err))
			return
		}
		defer rows.Close()
		for rows.Next() {
			var r Record
			if err := rows.Scan(&r.ID, &r.LoggedAt, &r.Region, &r.Table, &r.Key, &r.Kind, &r.Policy, &r.Winner, &r.WinnerOrigin,
				&r.LocalOrigin, &r.RemoteOrigin, &r.LocalVersion, &r.RemoteVersion, &r.LocalHLC, &r.RemoteHLC,
				&r.SourceSeq, &r.Reason, &r.Outcome); err != nil {
				yield(Record{}, fmt.Errorf("read conflict log of %s: %w", d.Name, err))
				return
			}
			if !yield(r, nil) {
				return
			}
		}
		if err := rows.Err(); err != nil {
			yield(Record{}, fmt.Errorf("read conflict log of %s: %w", d.Name, err))
		}
	}
}

// imagesPerQuery bounds the ids one images query names.
const imagesPerQuery = 5000

// Images implements ImageSource.
func (d DB) Images(ctx context.Context, ids []int64) (map[int64]Images, error) {
	out := make(map[int64]Images, len(ids))
	for part := range slices.Chunk(ids, imagesPerQuery) {
		rows, err := d.Q.Query(ctx, `SELECT id, local_row::text, remote_row::text FROM polyregion.conflict_log WHERE id = ANY($1)`, part)
		if err != nil {
			return nil, fmt.Errorf("read conflict log of %s: %w", d.Name, err)
		}
		var id int64
		var local, remote *string
		_, err = pgx.ForEachRow(rows, []any{&id, &local, &remote}, func() error {
			var im Images
			if local != nil {
				im.Local = json.RawMessage(*local)
			}
			if remote != nil {
				im.Remote = json.RawMessage(*remote)
			}
			out[id] = im
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("read conflict log of %s: %w", d.Name, err)
		}
	}
	return out, nil
}

// Sources reads several sources (one per region, say) together, merging
// their records in identity order. They are read at once: sources that
// read a database each need a connection (or pool) of their own.
type Sources []Source

// flatten lists the sources src reads, nested Sources included.
func flatten(src Source) []Source {
	ss, ok := src.(Sources)
	if !ok {
		return []Source{src}
	}
	var out []Source
	for _, s := range ss {
		out = append(out, flatten(s)...)
	}
	return out
}

// Records implements Source.
func (s Sources) Records(ctx context.Context, f Filters) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		for r, err := range merged(ctx, f, flatten(s)) {
			if !yield(r.Record, err) || err != nil {
				return
			}
		}
	}
}

// merged yields the records of every source, each tagged with its source's
// index, in identity order (then source order).
func merged(ctx context.Context, f Filters, srcs []Source) iter.Seq2[read, error] {
	return func(yield func(read, error) bool) {
		type head struct {
			next func() (Record, error, bool)
			r    Record
			ok   bool
		}
		heads := make([]head, len(srcs))
		advance := func(i int) error {
			r, err, ok := heads[i].next()
			if err != nil {
				return err
			}
			heads[i].r, heads[i].ok = r, ok
			return nil
		}
		for i, s := range srcs {
			next, stop := iter.Pull2(s.Records(ctx, f))
			defer stop()
			heads[i].next = next
			if err := advance(i); err != nil {
				yield(read{}, err)
				return
			}
		}
		for {
			best := -1
			for i, h := range heads {
				if h.ok && (best < 0 || CompareRecords(h.r, heads[best].r) < 0) {
					best = i
				}
			}
			if best < 0 {
				return
			}
			if !yield(read{Record: heads[best].r, src: best}, nil) {
				return
			}
			if err := advance(best); err != nil {
				yield(read{}, err)
				return
			}
		}
	}
}

// Records is a fixed set of records (tests, or logs exported elsewhere),
// row images included.
type Records []Record

// Records implements Source.
func (r Records) Records(context.Context, Filters) iter.Seq2[Record, error] {
	sorted := slices.Clone(r)
	slices.SortStableFunc(sorted, CompareRecords)
	return func(yield func(Record, error) bool) {
		for _, rec := range sorted {
			if !yield(rec, nil) {
				return
			}
		}
	}
}

// Read reads src under f and builds the report, holding only the records
// of one conflict at a time and the rows the report lists, whose row
// images it then reads. Several sources (Sources) are read together.
func Read(ctx context.Context, src Source, f Filters, now time.Time) (Report, error) {
	if err := f.Validate(); err != nil {
		return Report{}, err
	}
	srcs := flatten(src)
	b := newBuilder(f, now)
	for r, err := range merged(ctx, f, srcs) {
		if err != nil {
			return Report{}, err
		}
		if err := b.add(r); err != nil {
			return Report{}, err
		}
	}
	rep, details := b.finish()
	for i, s := range srcs {
		is, ok := s.(ImageSource)
		if !ok {
			continue
		}
		var ids []int64
		for _, d := range details {
			if d.desc.src == i {
				ids = append(ids, d.desc.ID)
			}
		}
		if len(ids) == 0 {
			continue
		}
		images, err := is.Images(ctx, ids)
		if err != nil {
			return Report{}, err
		}
		for _, d := range details {
			if d.desc.src == i {
				im := images[d.desc.ID]
				d.desc.LocalRow, d.desc.RemoteRow = im.Local, im.Remote
			}
		}
	}
	rep.Rows = rowsOf(details)
	return rep, nil
}
