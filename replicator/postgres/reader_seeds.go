package postgres

// The WAL bounds of the seeds of tables added at an epoch (see seed.go):
// a local write committed inside them, to a row with no recorded version,
// is to a row the seed had not reached yet, which no peer has.

import (
	"context"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// seedWindow is where a table's seed ran: after began, before ended.
type seedWindow struct{ began, ended pglogrepl.LSN }

// loadSeedWindows reads the bounds of every finished seed (the data plane
// starts once its seeds are done).
func loadSeedWindows(ctx context.Context, conn *pgx.Conn) (map[string]seedWindow, error) {
	rows, err := conn.Query(ctx, `SELECT tbl, began_lsn::text, ended_lsn::text FROM polyregion.seeded WHERE began_lsn IS NOT NULL AND ended_lsn IS NOT NULL`)
	if err != nil {
		return nil, fmt.Errorf("reader: seeds: %w", err)
	}
	defer rows.Close()
	out := map[string]seedWindow{}
	for rows.Next() {
		var t, b, e string
		if err := rows.Scan(&t, &b, &e); err != nil {
			return nil, fmt.Errorf("reader: seeds: %w", err)
		}
		var w seedWindow
		if w.began, err = pglogrepl.ParseLSN(b); err == nil {
			w.ended, err = pglogrepl.ParseLSN(e)
		}
		if err != nil {
			return nil, fmt.Errorf("reader: seed of %s: %w", t, err)
		}
		out[t] = w
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reader: seeds: %w", err)
	}
	return out, nil
}

// unseededWrite reports whether a local write to table committed at commit
// falls inside the table's seed: if the row has no recorded version, the
// seed had not reached it (a row the seed emitted has one: its chunk
// precedes the write in the stream).
func (r *Reader) unseededWrite(table string, commit pglogrepl.LSN) bool {
	w, ok := r.seeds[table]
	return ok && commit > w.began && commit < w.ended
}
