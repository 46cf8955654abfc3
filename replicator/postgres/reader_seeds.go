package postgres

// The WAL bounds of the seeds of tables added at an epoch (see seed.go):
// a local write committed inside them, to a row with no recorded version,
// is to a row the seed had not reached yet, which no peer has.
//
// A seed runs while the data plane does (the table's peers' changes are
// parked meanwhile). A running seed's window has no end yet: the data
// plane restarts once it ends, and the next run reads the window closed.
// The reader learns of a seed that begins while it runs from the seed's
// first message: the seed's first transaction records where it began and
// publishes the table, so no write to the table is in the stream before
// that message.

import (
	"context"
	"fmt"
	"math"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// seedWindow is where a table's seed ran: after began, before ended
// (math.MaxUint64 while it runs).
type seedWindow struct{ began, ended pglogrepl.LSN }

// loadSeedWindows reads the bounds of every finished seed, and of every
// running one (open at the end).
func loadSeedWindows(ctx context.Context, conn *pgx.Conn) (map[string]seedWindow, error) {
	rows, err := conn.Query(ctx, `SELECT tbl, began_lsn::text, ended_lsn::text FROM polyregion.seeded WHERE began_lsn IS NOT NULL AND ended_lsn IS NOT NULL
		UNION ALL SELECT tbl, began_lsn::text, NULL FROM polyregion.seeding WHERE began_lsn IS NOT NULL AND NOT EXISTS (SELECT FROM polyregion.seeded d WHERE d.tbl = seeding.tbl)`)
	if err != nil {
		return nil, fmt.Errorf("reader: seeds: %w", err)
	}
	defer rows.Close()
	out := map[string]seedWindow{}
	for rows.Next() {
		var t, b string
		var e *string
		if err := rows.Scan(&t, &b, &e); err != nil {
			return nil, fmt.Errorf("reader: seeds: %w", err)
		}
		w := seedWindow{ended: math.MaxUint64}
		w.began, err = pglogrepl.ParseLSN(b)
		if err == nil && e != nil {
			w.ended, err = pglogrepl.ParseLSN(*e)
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

// loadSeeds (re)reads the seeds' windows.
func (r *Reader) loadSeeds(ctx context.Context, conn *pgx.Conn) error {
	w, err := loadSeedWindows(ctx, conn)
	if err != nil {
		return err
	}
	r.seeds.Store(&w)
	return nil
}

// seedBegun makes sure the window of table's seed is known once one of its
// messages is decoded (a seed that began after the windows were read).
func (r *Reader) seedBegun(ctx context.Context, conn *pgx.Conn, table string) error {
	return r.awaitSeed(ctx, table, func() (map[string]seedWindow, error) { return loadSeedWindows(ctx, conn) })
}

// awaitSeed is seedBegun with the windows read by load. The walsender may
// send a transaction as soon as its commit record is flushed, a moment
// before the committing session lets other sessions see it (PostgreSQL
// marks a transaction visible after it writes the record), so a seed whose
// message was just decoded may not show in polyregion.seeding yet: read
// again until it does, for at most visibleWithin. (Under synchronous
// replication the moment lasts until the standby confirms the commit; a
// wait past the bound fails the reader, which starts again from its
// confirmed position: nothing is lost.)
func (r *Reader) awaitSeed(ctx context.Context, table string, load func() (map[string]seedWindow, error)) error {
	if w := r.seeds.Load(); w != nil {
		if _, ok := (*w)[table]; ok {
			return nil
		}
	}
	ok, err := untilTrue(ctx, visibleWithin, func() (bool, error) {
		w, err := load()
		if err != nil {
			return false, err
		}
		r.seeds.Store(&w)
		_, ok := w[table]
		return ok, nil
	})
	if err == nil && !ok {
		err = fmt.Errorf("reader: a seed of %s is in the stream, and where it began is not recorded (polyregion.seeding) after %s", table, visibleWithin)
	}
	return err
}

// unseededWrite reports whether a local write to table committed at commit
// falls inside the table's seed: if the row has no recorded version, the
// seed had not reached it (a row the seed emitted has one: its chunk
// precedes the write in the stream).
func (r *Reader) unseededWrite(table string, commit pglogrepl.LSN) bool {
	ws := r.seeds.Load()
	if ws == nil {
		return false
	}
	w, ok := (*ws)[table]
	return ok && commit > w.began && commit < w.ended
}
