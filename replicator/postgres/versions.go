package postgres

// Row versions as stored in polyregion.row_version: loading them (and
// tombstones) for a set of keys, and writing them (upsert, update over the
// tuple as read, COPY of new ones).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/polyregion/polyregion/conflict"
)

// meta is a row's recorded version.
type meta struct {
	version  conflict.Version
	xid      string // "" when NULL
	counters map[string]string
	// srcSeq is the origin region's outbox sequence number of the write.
	srcSeq int64
	// siblings holds the rows (and sequence numbers) of version.Siblings.
	siblings siblingSet
	// own is the row of the version's own write when the row holds more
	// than it (max and min columns merged from siblings; see
	// maxMinValues), nil when the row is the write's own; ownStamps are
	// that write's own column stamps (column_lww tables).
	own       json.RawMessage
	ownStamps map[string]conflict.Stamp
	// ownVV is the vector the version's own write was made with (and
	// shipped with from its origin) when the row's vector holds more: the
	// writes the row absorbed without that write losing it (concurrent
	// writes it won over, folded updates that ranked lower). nil when the
	// row's vector is the write's own. Decisions take the row's vector;
	// what names the write to others (a conflict record's local version,
	// a custom resolver's argument, the vector kept with it as a sibling)
	// takes this one, which every region holds alike.
	ownVV conflict.Vector
	// tupleXmin is the transaction that last wrote the row_version tuple
	// itself, as loaded: an update conditioned on it finds out whether
	// anybody changed the version since.
	tupleXmin string
}

type metaKey struct{ tbl, key string }

// loadTombstones is loadMetaLocked (without locks) for keys where only a tombstone can be
// recorded (a probe of the tombstones' index, far smaller than all
// versions).
func loadTombstones(ctx context.Context, q querier, keys []metaKey) (map[metaKey]*meta, error) {
	if len(keys) == 0 {
		return map[metaKey]*meta{}, nil
	}
	// Most tables have no tombstone at all: their keys need no probe. (A
	// tombstone recorded after this check fails the caller's COPY.)
	var tbls []string
	for _, k := range keys {
		if len(tbls) == 0 || tbls[len(tbls)-1] != k.tbl {
			tbls = append(tbls, k.tbl)
		}
	}
	rows, err := q.Query(ctx, `SELECT t.tbl FROM pg_catalog.unnest($1::text[]) AS t(tbl)
		WHERE EXISTS (SELECT FROM polyregion.row_version v WHERE v.deleted AND v.tbl = t.tbl)`, tbls)
	if err != nil {
		return nil, fmt.Errorf("load tombstones: %w", err)
	}
	has := map[string]bool{}
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			rows.Close()
			return nil, fmt.Errorf("load tombstones: %w", err)
		}
		has[t] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load tombstones: %w", err)
	}
	var probe []metaKey
	for _, k := range keys {
		if has[k.tbl] {
			probe = append(probe, k)
		}
	}
	return loadMetaWhere(ctx, q, probe, false, " AND v.deleted")
}

// loadMetaLocked loads the recorded versions of keys, optionally locking
// those it finds until the transaction ends, in the order of keys.
func loadMetaLocked(ctx context.Context, q querier, keys []metaKey, lock bool) (map[metaKey]*meta, error) {
	return loadMetaWhere(ctx, q, keys, lock, "")
}

func loadMetaWhere(ctx context.Context, q querier, keys []metaKey, lock bool, cond string) (map[metaKey]*meta, error) {
	out := make(map[metaKey]*meta, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	sql, args := metaQuery(keys, lock, cond)
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("load row versions: %w", err)
	}
	defer rows.Close()
	return out, scanMetas(rows, out)
}

// metaQuery is the query loadMetaWhere runs (keys not empty).
func metaQuery(keys []metaKey, lock bool, cond string) (string, []any) {
	// One index probe per key, whatever the planner thinks of the table's
	// size (LIMIT keeps the subquery a nested loop: a join would be hashed
	// over a scan of every version once the batch is large or the
	// statistics stale). Locks are taken in the order of keys.
	forUpdate := ""
	if lock {
		forUpdate = " FOR UPDATE"
	}
	tbls := make([]string, len(keys))
	ks := make([]string, len(keys))
	for i, k := range keys {
		tbls[i], ks[i] = k.tbl, k.key
	}
	return `SELECT m.tbl, m.key, m.vv, m.hlc, m.origin, m.deleted, coalesce(m.xid::text, ''), m.counters, m.src_seq, m.tuple_xmin, m.siblings, m.stamps, m.own, m.epoch
		FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS k(tbl, key)
		CROSS JOIN LATERAL (SELECT v.tbl, v.key, v.vv, v.hlc, v.origin, v.deleted, v.xid, v.counters, v.src_seq, v.xmin::text AS tuple_xmin, v.siblings, v.stamps, v.own, v.epoch
			FROM polyregion.row_version v WHERE v.tbl = k.tbl AND v.key = k.key` + cond + ` LIMIT 1` + forUpdate + `) m`, []any{tbls, ks}
}

// scanMetas reads metaQuery's rows into out.
func scanMetas(rows pgx.Rows, out map[metaKey]*meta) error {
	for rows.Next() {
		var k metaKey
		var vv, origin, xid, tupleXmin string
		var hlc int64
		var deleted bool
		var counters map[string]string
		var srcSeq, epoch int64
		var sibs, stamps, own []byte
		if err := rows.Scan(&k.tbl, &k.key, &vv, &hlc, &origin, &deleted, &xid, &counters, &srcSeq, &tupleXmin, &sibs, &stamps, &own, &epoch); err != nil {
			return fmt.Errorf("load row versions: %w", err)
		}
		vec, err := conflict.ParseVector(vv)
		if err != nil {
			return fmt.Errorf("load row versions: %s %s: %w", k.tbl, k.key, err)
		}
		ws, sd, err := parseSiblings(sibs)
		if err != nil {
			return fmt.Errorf("load row versions: %s %s: %w", k.tbl, k.key, err)
		}
		st, err := parseStamps(stamps)
		if err != nil {
			return fmt.Errorf("load row versions: %s %s: %w", k.tbl, k.key, err)
		}
		var ownRow storedOwn
		var ownVV conflict.Vector
		if len(own) > 0 {
			if err := json.Unmarshal(own, &ownRow); err != nil {
				return fmt.Errorf("load row versions: %s %s: own row: %w", k.tbl, k.key, err)
			}
			if ownRow.VV != "" {
				if ownVV, err = conflict.ParseVector(ownRow.VV); err != nil {
					return fmt.Errorf("load row versions: %s %s: own vector: %w", k.tbl, k.key, err)
				}
			}
		}
		out[k] = &meta{
			version:   conflict.Version{Vector: vec, HLC: conflict.Timestamp(hlc), Origin: conflict.RegionID(origin), Deleted: deleted, Siblings: ws, Stamps: st, Epoch: uint64(epoch)},
			siblings:  sd,
			own:       ownRow.Row,
			ownStamps: ownRow.Stamps,
			ownVV:     ownVV,
			xid:       xid,
			counters:  counters,
			srcSeq:    srcSeq,
			tupleXmin: tupleXmin,
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("load row versions: %w", err)
	}
	return nil
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// metaWriter accumulates row_version upserts for one statement.
type metaWriter struct {
	tbl, key, vv, origin, xid []string
	hlc, srcSeq, epoch        []int64
	deleted                   []bool
	counters, siblings        []*string
	stamps, own               []*string
	// tupleXmin: for updateMetaSQL, each version's tuple xmin as read.
	tupleXmin []string
}

func (w *metaWriter) add(k metaKey, m *meta) {
	w.tbl = append(w.tbl, k.tbl)
	w.key = append(w.key, k.key)
	w.vv = append(w.vv, m.version.Vector.String())
	w.hlc = append(w.hlc, int64(m.version.HLC))
	w.origin = append(w.origin, string(m.version.Origin))
	w.deleted = append(w.deleted, m.version.Deleted)
	w.xid = append(w.xid, m.xid)
	w.srcSeq = append(w.srcSeq, m.srcSeq)
	if len(m.counters) > 0 {
		b, _ := json.Marshal(m.counters)
		s := string(b)
		w.counters = append(w.counters, &s)
	} else {
		w.counters = append(w.counters, nil)
	}
	w.siblings = append(w.siblings, encodeSiblings(m.version.Siblings, m.siblings))
	w.stamps = append(w.stamps, encodeStamps(m.version.Stamps))
	w.own = append(w.own, ownValue(m))
	w.epoch = append(w.epoch, int64(m.version.Epoch))
}

// storedOwn is row_version.own: what a version's own write holds apart
// from the row: its row and stamps (meta.own, ownStamps) and its vector
// (meta.ownVV), each only when the row's differs.
type storedOwn struct {
	Row    json.RawMessage           `json:"row,omitempty"`
	Stamps map[string]conflict.Stamp `json:"stamps,omitempty"`
	VV     string                    `json:"vv,omitempty"`
}

// ownValue is the row_version.own value of m (nil when none).
func ownValue(m *meta) *string {
	var o storedOwn
	if m.own != nil && !m.version.Deleted {
		o.Row, o.Stamps = m.own, m.ownStamps
	}
	if len(m.ownVV) > 0 {
		o.VV = m.ownVV.String()
	}
	if o.Row == nil && o.VV == "" {
		return nil
	}
	b, _ := json.Marshal(o)
	s := string(b)
	return &s
}

// ownVector is the vector m's own write was made with.
func (m *meta) ownVector() conflict.Vector {
	if len(m.ownVV) > 0 {
		return m.ownVV
	}
	return m.version.Vector
}

// withOwn sets m.ownVV to own, or to nil when it is the row's vector.
func (m *meta) withOwn(own conflict.Vector) {
	m.ownVV = nil
	if len(own) > 0 && conflict.Compare(own, m.version.Vector) != conflict.Equal {
		m.ownVV = own
	}
}

const upsertMetaSQL = `INSERT INTO polyregion.row_version AS m (tbl, key, vv, hlc, origin, deleted, xid, counters, src_seq, deleted_at, siblings, stamps, own, epoch)
	SELECT tbl, key, vv, hlc, origin, deleted,
	       CASE WHEN xid = '@' THEN pg_catalog.pg_current_xact_id()::xid ELSE NULLIF(xid, '')::xid END,
	       counters::jsonb, src_seq, CASE WHEN deleted THEN pg_catalog.now() END, siblings::jsonb, stamps::jsonb, own::jsonb, epoch
	FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::bigint[]),
	     pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::bool[]), pg_catalog.unnest($7::text[]), pg_catalog.unnest($8::text[]), pg_catalog.unnest($9::bigint[]),
	     pg_catalog.unnest($10::text[]), pg_catalog.unnest($11::text[]), pg_catalog.unnest($12::text[]), pg_catalog.unnest($13::bigint[]))
	     AS u(tbl, key, vv, hlc, origin, deleted, xid, counters, src_seq, siblings, stamps, own, epoch)
	ON CONFLICT (tbl, key) DO UPDATE SET vv = excluded.vv, hlc = excluded.hlc, origin = excluded.origin,
	   deleted = excluded.deleted, xid = excluded.xid, counters = excluded.counters, src_seq = excluded.src_seq,
	   siblings = excluded.siblings, stamps = excluded.stamps, own = excluded.own, epoch = excluded.epoch,
	   deleted_at = CASE WHEN excluded.deleted THEN coalesce(m.deleted_at, excluded.deleted_at) END`

// updateMetaSQL replaces versions that exist, each only if its tuple is
// still the one read (xmin, $14); the caller compares the row count. An
// xid of '@' (appliers only) is the writing transaction's.
const updateMetaSQL = `UPDATE polyregion.row_version AS m SET vv = u.vv, hlc = u.hlc, origin = u.origin, deleted = u.deleted,
	   xid = CASE WHEN u.xid = '@' THEN pg_catalog.pg_current_xact_id()::xid ELSE NULLIF(u.xid, '')::xid END, counters = u.counters::jsonb, src_seq = u.src_seq,
	   siblings = u.siblings::jsonb, stamps = u.stamps::jsonb, own = u.own::jsonb, epoch = u.epoch,
	   deleted_at = CASE WHEN u.deleted THEN coalesce(m.deleted_at, pg_catalog.now()) END
	FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::bigint[]),
	     pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::bool[]), pg_catalog.unnest($7::text[]), pg_catalog.unnest($8::text[]), pg_catalog.unnest($9::bigint[]),
	     pg_catalog.unnest($10::text[]), pg_catalog.unnest($11::text[]), pg_catalog.unnest($12::text[]), pg_catalog.unnest($13::bigint[]), pg_catalog.unnest($14::text[]))
	     AS u(tbl, key, vv, hlc, origin, deleted, xid, counters, src_seq, siblings, stamps, own, epoch, tuple_xmin)
	WHERE m.tbl = u.tbl AND m.key = u.key AND m.xmin = u.tuple_xmin::xid`

// errVersionRace: a version the reader was about to create was recorded
// by an applier meanwhile; the batch must be versioned again.
var errVersionRace = errors.New("reader: a row version changed while versioning; retrying")

// retryablePersist reports errors after which versioning the same batch
// again is right.
func retryablePersist(err error) bool {
	if errors.Is(err, errVersionRace) {
		return true
	}
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}

func (w *metaWriter) args() []any {
	return []any{w.tbl, w.key, w.vv, w.hlc, w.origin, w.deleted, w.xid, w.counters, w.srcSeq, w.siblings, w.stamps, w.own, w.epoch}
}
