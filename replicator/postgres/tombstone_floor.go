package postgres

// Tombstone floors: how far a region has settled each origin's deletes.
//
// A tombstone left by a delete from origin O with sequence number s is
// settled in a region once every write concurrent with the delete, or
// before it, has been applied there (the criterion is the node's, see
// tombstones.go); so are the writes kept with it as siblings, each by its
// own origin. The floor of O is the highest s up to which that holds; it
// only rises, and it is recorded before the region tells its peers.
//
// A region collects a tombstone only once every member's floor covers it.
// A region that collected one and writes the key again makes a first
// write (version {region: 1}): it knows nothing of the history the
// tombstone held. Every other region then holds the tombstone settled or
// has collected it too, and takes that write as one that follows the
// delete (SupersedesSettled): as if the tombstone were gone, as it is in
// the writing region. Counting from the old vector instead would make the
// write look concurrent with the delete, or already seen, in the regions
// that still hold it, and the regions would end with different rows.

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

// RaiseTombstoneFloors records floors (per origin; a zero leaves an
// origin's floor as it is) and returns every floor now recorded. A floor
// never goes down.
func RaiseTombstoneFloors(ctx context.Context, conn *pgx.Conn, floors map[string]int64) (map[string]int64, error) {
	if err := raiseFloors(ctx, conn, floors); err != nil {
		return nil, err
	}
	return TombstoneFloors(ctx, conn)
}

// setTombstoneFloors replaces the recorded floors with those of the
// snapshot a region loads (none from a source that predates them): the
// region's rows are the snapshot's.
func setTombstoneFloors(ctx context.Context, tx pgx.Tx, floors map[string]int64) error {
	if _, err := tx.Exec(ctx, `DELETE FROM polyregion.tombstone_floor`); err != nil {
		return fmt.Errorf("tombstone floors: %w", err)
	}
	return raiseFloors(ctx, tx, floors)
}

// raiseFloors raises the recorded floors to floors where they are lower.
func raiseFloors(ctx context.Context, q interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, floors map[string]int64) error {
	if floors == nil {
		floors = map[string]int64{}
	}
	raise, err := json.Marshal(floors)
	if err != nil {
		return fmt.Errorf("raise tombstone floors: %w", err)
	}
	_, err = q.Exec(ctx, `INSERT INTO polyregion.tombstone_floor AS f (origin, seq)
		SELECT key, value::bigint FROM pg_catalog.jsonb_each_text($1::jsonb) WHERE value::bigint > 0
		ON CONFLICT (origin) DO UPDATE SET seq = excluded.seq, updated_at = pg_catalog.now() WHERE f.seq < excluded.seq`, string(raise))
	if err != nil {
		return fmt.Errorf("raise tombstone floors: %w", err)
	}
	return nil
}

// TombstoneFloors returns the floors this region recorded, per origin.
func TombstoneFloors(ctx context.Context, q querier) (map[string]int64, error) {
	rows, err := q.Query(ctx, `SELECT origin, seq FROM polyregion.tombstone_floor`)
	if err != nil {
		return nil, fmt.Errorf("read tombstone floors: %w", err)
	}
	out := map[string]int64{}
	var origin string
	var seq int64
	_, err = pgx.ForEachRow(rows, []any{&origin, &seq}, func() error {
		out[origin] = seq
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read tombstone floors: %w", err)
	}
	return out, nil
}

// SupersedesSettled reports whether a remote write whose version is v
// follows the local tombstone m outright, as if m were gone: v is its
// region's first write to the key (the region holds no version of it, so
// it collected the tombstone) and m is settled under floors, its
// siblings included.
func SupersedesSettled(v conflict.Version, m *meta, floors map[string]int64) bool {
	if m == nil || !m.version.Deleted || !firstWrite(v) {
		return false
	}
	settled := func(origin conflict.RegionID, seq int64) bool {
		f := floors[string(origin)]
		return f > 0 && seq <= f
	}
	if !settled(m.version.Origin, m.srcSeq) {
		return false
	}
	for d, s := range m.siblings {
		if !settled(d.origin, s.seq) {
			return false
		}
	}
	return true
}

// firstWrite reports whether v is the first write its region made to a
// row it held no version of.
func firstWrite(v conflict.Version) bool {
	return len(v.Vector) == 1 && v.Vector.Get(v.Origin) == 1
}

// settledTombstone reports whether change c follows the row's tombstone
// outright (SupersedesSettled). A table with counters keeps its
// tombstones, whose sums live on: none of them is ever collected.
func (a *Applier) settledTombstone(ctx context.Context, ex *executor, sh replicator.Shape, c *replicator.Change, s *rowState) (bool, error) {
	if s.exists || s.meta == nil || !s.meta.version.Deleted || !firstWrite(c.Version) || len(a.policy(sh.Table).Counters) > 0 {
		return false, nil
	}
	if ex.floors == nil {
		f, err := TombstoneFloors(ctx, ex.tx)
		if err != nil {
			return false, err
		}
		ex.floors = f
	}
	return SupersedesSettled(c.Version, s.meta, ex.floors), nil
}
