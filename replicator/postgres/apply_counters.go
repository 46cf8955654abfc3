package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
)

// Counter-only rows: the rows every region increments at once (request
// counters for rate limits, shared totals) are the rows applications
// write most. Reading and deciding each peer's update of such a row would
// hold the row locked while the local reader versions the application's
// latest increments (they are always newer than the recorded version), so
// every local writer of the row would queue behind the applier.
//
// A row whose every non-key column is a counter needs none of that: an
// update of it only adds deltas, which commute, and under last-writer-wins
// the version it leaves is conflict.FoldUpdate of the recorded version and
// the update's, whatever the order (and whatever local increments the
// reader has not versioned yet: none of them was shipped, so the peer's
// update cannot have seen them, and their versions are recorded later on
// top of the folded one). So such updates are applied in place: each key's
// deltas summed in the batch, `col = col + delta`, and its version folded
// into the recorded one in SQL (polyregion.vv_merge), with no read before.
// Tables with max or min columns are not taken in place: those columns
// merge over the live writes that lost, which a decision keeps as
// siblings (see apply_maxmin.go).
//
// Counters need the local table to have REPLICA IDENTITY FULL: the reader then
// takes each local write's counter deltas from the old row in the WAL, not
// from the recorded version's sums (the fold adds its deltas to those sums
// too, possibly before the reader has versioned an earlier local write;
// sums and rows agree again once it has, and a tombstone keeps the sums
// as they were when the row was deleted).
// A key with no live version recorded is read and decided instead (see
// apply_fold_versions.go). A key the fold still cannot take (no row here,
// a tombstone recorded since it was looked up, or a local delete not
// versioned yet: see delete_marks.go) fails the batch, which is then
// applied again reading every row. Concurrent updates of such
// rows lose nothing and are not logged.

// keyUse is how one batch uses a key.
type keyUse struct {
	first conflict.Op // the key's first change
	folds bool        // every change is an update of a counter-only row
}

// foldRow is one key's folded updates in a batch.
type foldRow struct {
	sh      replicator.Shape
	deltas  map[string]string // counter column -> summed delta
	version conflict.Version  // the updates' versions, folded
	seq     int64             // source sequence number of the update that ranks highest
	own     conflict.Vector   // the vector that update was made with
}

// countersOnly reports whether updates of the table's rows can be folded:
// last-writer-wins without update_wins and without max or min columns,
// every non-key column an integer or numeric counter, and REPLICA
// IDENTITY FULL here.
func (a *Applier) countersOnly(sh replicator.Shape) bool {
	pol := a.policy(sh.Table)
	// Under every epoch's policy (a later one may rank writes otherwise).
	for _, p := range a.tableEpochs(sh.Table).Policies {
		if (p.Kind != "" && p.Kind != conflict.LastWriterWins) || p.Deletes == conflict.UpdateWins {
			return false
		}
	}
	// Under update_wins a live row keeps the live writes that lost to it
	// as siblings (a later delete may bring them back): only a decision
	// can keep them.
	// Max and min columns merge over the live writes that lost too, kept
	// as siblings (see maxMinValues): only a decision keeps them.
	if (pol.Kind != "" && pol.Kind != conflict.LastWriterWins) || pol.Deletes == conflict.UpdateWins || hasMaxMin(pol) || !mergesOnly(sh, pol) || (len(pol.Counters) > 0 && !a.full[sh.Table]) {
		return false
	}
	for i, col := range sh.Columns {
		if !sh.IsKey(i) && pol.IsCounter(col) && !exactNumber(sh.Types[i]) {
			return false
		}
	}
	return true
}

// exactNumber reports whether SQL addition of the type gives what
// conflict.MergeCounter gives (floating point would not, to the last bit).
func exactNumber(typ string) bool {
	switch typ {
	case "smallint", "integer", "bigint", "numeric":
		return true
	}
	return strings.HasPrefix(typ, "numeric(")
}

// foldsAfterReads reports whether, in lock order, every table of the
// folded keys comes after every table of the keys read (and locked) first.
func (a *Applier) foldsAfterReads(folded map[metaKey]bool, read map[string][]string) bool {
	foldTables := map[string]bool{}
	for k := range folded {
		foldTables[k.tbl] = true
	}
	all := make([]string, 0, len(foldTables)+len(read))
	for t := range foldTables {
		all = append(all, t)
	}
	for t := range read {
		if foldTables[t] {
			return false
		}
		all = append(all, t)
	}
	a.cfg.Order.Sort(all)
	seenFold := false
	for _, t := range all {
		if foldTables[t] {
			seenFold = true
		} else if seenFold {
			return false
		}
	}
	return true
}

// fold adds one update of a counter-only row to the batch.
func (b *bulk) fold(k metaKey, sh replicator.Shape, c *replicator.Change, seq int64) error {
	if b.folds == nil {
		b.folds = map[metaKey]*foldRow{}
	}
	f, ok := b.folds[k]
	if !ok {
		f = &foldRow{sh: sh, deltas: map[string]string{}, version: c.Version, seq: seq, own: c.Version.Vector}
		b.folds[k] = f
		b.foldOrder = append(b.foldOrder, k)
	} else {
		v := conflict.FoldUpdate(f.version, c.Version)
		if v.HLC != f.version.HLC || v.Origin != f.version.Origin {
			f.seq, f.own = seq, c.Version.Vector
		}
		f.version = v
	}
	for col, d := range c.Deltas {
		if d == "" || d == "0" {
			continue
		}
		sum, err := conflict.MergeCounter(f.deltas[col], d)
		if err != nil {
			return fmt.Errorf("apply: counter %s.%s key %s: %w", sh.Table, col, c.Key, err)
		}
		f.deltas[col] = sum
	}
	return nil
}

// foldStatements returns the folded rows' writes, table by table in lock
// order and each table's keys in key order, and queues their versions
// (written with the others, in key order, by metaStatements).
func (b *bulk) foldStatements(order *replicator.TableOrder) []stmt {
	if len(b.foldOrder) == 0 {
		return nil
	}
	byTable := map[string][]metaKey{}
	for _, k := range b.foldOrder {
		byTable[k.tbl] = append(byTable[k.tbl], k)
	}
	tables := make([]string, 0, len(byTable))
	for t := range byTable {
		tables = append(tables, t)
	}
	order.Sort(tables)
	var out []stmt
	for _, t := range tables {
		ks := byTable[t]
		sort.Slice(ks, func(i, j int) bool { return ks[i].key < ks[j].key })
		out = append(out, b.foldRows(ks)...)
	}
	if b.metas == nil {
		b.metas = map[metaKey]*metaEntry{}
	}
	for _, k := range b.foldOrder {
		f := b.folds[k]
		m := &meta{version: f.version, srcSeq: f.seq, counters: f.deltas}
		m.withOwn(f.own)
		e := &metaEntry{key: k, meta: m, xmin: "0", fold: true}
		b.metas[k] = e
		b.metaOrder = append(b.metaOrder, e)
	}
	return out
}

// foldRows locks one table's folded rows in key order, then adds their
// deltas; each statement must find every row.
func (b *bulk) foldRows(ks []metaKey) []stmt {
	sh := b.folds[ks[0]].sh
	keyVals := make([][]string, len(sh.Key))
	for _, k := range ks {
		var parts []string
		_ = json.Unmarshal([]byte(k.key), &parts) // a malformed key matches no row: the batch fails and its retry reads (and names) it
		for j := range sh.Key {
			p := ""
			if j < len(parts) {
				p = parts[j]
			}
			keyVals[j] = append(keyVals[j], p)
		}
	}
	var args []any
	var unnest, alias, match []string
	for j, ki := range sh.Key {
		args = append(args, keyVals[j])
		unnest = append(unnest, fmt.Sprintf("pg_catalog.unnest($%d::text[])", len(args)))
		alias = append(alias, fmt.Sprintf("k%d", j))
		match = append(match, fmt.Sprintf("t.%s = u.k%d::%s", quoteIdent(sh.Columns[ki]), j, sh.Types[ki]))
	}
	lock := stmt{
		sql: fmt.Sprintf(`SELECT pg_catalog.count(*) FROM ROWS FROM (%s) WITH ORDINALITY AS u(%s, ord)
			CROSS JOIN LATERAL (SELECT 1 FROM %s t WHERE %s LIMIT 1 FOR UPDATE) r`,
			strings.Join(unnest, ", "), strings.Join(alias, ", "), qualified(sh.Table), strings.Join(match, " AND ")),
		args: args, want: -1,
	}
	var sets []string
	for i, col := range sh.Columns {
		if sh.IsKey(i) {
			continue
		}
		vals := make([]string, len(ks))
		for r, k := range ks {
			vals[r] = b.folds[k].deltas[col]
			if vals[r] == "" {
				vals[r] = "0"
			}
		}
		args = append(args, vals)
		unnest = append(unnest, fmt.Sprintf("pg_catalog.unnest($%d::text[])", len(args)))
		alias = append(alias, fmt.Sprintf("d%d", i))
		// A zero delta leaves the value as it is (NULL included), as the
		// read-and-decide path does.
		sets = append(sets, fmt.Sprintf("%[1]s = CASE WHEN u.d%[2]d::%[3]s = 0 THEN t.%[1]s ELSE coalesce(t.%[1]s, 0) + u.d%[2]d::%[3]s END", quoteIdent(col), i, sh.Types[i]))
	}
	update := stmt{
		sql: fmt.Sprintf("UPDATE %s AS t SET %s FROM ROWS FROM (%s) AS u(%s) WHERE %s", qualified(sh.Table),
			strings.Join(sets, ", "), strings.Join(unnest, ", "), strings.Join(alias, ", "), strings.Join(match, " AND ")),
		args: args, want: int64(len(ks)), table: sh.Table,
	}
	return []stmt{lock, update}
}

// foldMetaSQL is updateMetaSQL where each row ($15) either replaces a
// version over its tuple as read (as updateMetaSQL does) or folds an
// update into the live version recorded (conflict.FoldUpdate: vectors
// merged, timestamp, origin and source sequence of the higher-ranked
// write, and the vector that write was made with in own when the merged
// one differs (meta.ownVV); the update's deltas, in counters, added to the
// recorded sums; the higher epoch; deleted flag and xid stay), unless an
// application's delete of the row waits to be versioned (see
// delete_marks.go). The merged
// vector is worked out once per row (OFFSET 0 keeps the planner from
// copying the call into each use).
const foldMetaSQL = `UPDATE polyregion.row_version AS m SET
	   (vv, own) = (SELECT x.vv, CASE WHEN NOT u.fold THEN u.own::jsonb
	                   WHEN u.hlc > m.hlc OR (u.hlc = m.hlc AND u.origin COLLATE "C" > m.origin COLLATE "C") THEN
	                        CASE WHEN x.vv = coalesce(u.own::jsonb ->> 'vv', u.vv) THEN NULL
	                             ELSE pg_catalog.jsonb_build_object('vv', coalesce(u.own::jsonb ->> 'vv', u.vv)) END
	                   WHEN m.own ->> 'vv' IS NOT NULL OR x.vv = m.vv THEN m.own
	                   ELSE coalesce(m.own, '{}'::jsonb) || pg_catalog.jsonb_build_object('vv', m.vv) END
	                FROM (SELECT CASE WHEN u.fold THEN polyregion.vv_merge(m.vv, u.vv) ELSE u.vv END AS vv OFFSET 0) AS x),
	   hlc = CASE WHEN u.fold AND NOT (u.hlc > m.hlc OR (u.hlc = m.hlc AND u.origin COLLATE "C" > m.origin COLLATE "C")) THEN m.hlc ELSE u.hlc END,
	   origin = CASE WHEN u.fold AND NOT (u.hlc > m.hlc OR (u.hlc = m.hlc AND u.origin COLLATE "C" > m.origin COLLATE "C")) THEN m.origin ELSE u.origin END,
	   src_seq = CASE WHEN u.fold AND NOT (u.hlc > m.hlc OR (u.hlc = m.hlc AND u.origin COLLATE "C" > m.origin COLLATE "C")) THEN m.src_seq ELSE u.src_seq END,
	   deleted = CASE WHEN u.fold THEN m.deleted ELSE u.deleted END,
	   xid = CASE WHEN u.fold THEN m.xid WHEN u.xid = '@' THEN pg_catalog.pg_current_xact_id()::xid ELSE NULLIF(u.xid, '')::xid END,
	   counters = CASE WHEN u.fold THEN polyregion.counters_add(m.counters, u.counters::jsonb) ELSE u.counters::jsonb END,
	   siblings = CASE WHEN u.fold THEN m.siblings ELSE u.siblings::jsonb END,
	   stamps = CASE WHEN u.fold THEN m.stamps ELSE u.stamps::jsonb END,
	   epoch = CASE WHEN u.fold THEN GREATEST(m.epoch, u.epoch) ELSE u.epoch END,
	   deleted_at = CASE WHEN u.fold THEN m.deleted_at WHEN u.deleted THEN coalesce(m.deleted_at, pg_catalog.now()) END
	FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::bigint[]),
	     pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::bool[]), pg_catalog.unnest($7::text[]), pg_catalog.unnest($8::text[]), pg_catalog.unnest($9::bigint[]),
	     pg_catalog.unnest($10::text[]), pg_catalog.unnest($11::text[]), pg_catalog.unnest($12::text[]), pg_catalog.unnest($13::bigint[]), pg_catalog.unnest($14::text[]),
	     pg_catalog.unnest($15::bool[]))
	     AS u(tbl, key, vv, hlc, origin, deleted, xid, counters, src_seq, siblings, stamps, own, epoch, tuple_xmin, fold)
	WHERE m.tbl = u.tbl AND m.key = u.key AND CASE WHEN u.fold THEN NOT m.deleted
	        AND NOT EXISTS (SELECT FROM polyregion.unversioned_deletes d WHERE d.key = u.key::pg_catalog.jsonb AND d.tbl = u.tbl)
	        AND NOT EXISTS (SELECT FROM polyregion.unversioned_deletes d WHERE d.key = 'null'::pg_catalog.jsonb AND d.tbl = u.tbl)
	    ELSE m.xmin = u.tuple_xmin::xid END`

// rowQuerier is a connection or a transaction.
type rowQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// identityFull reports whether a table has REPLICA IDENTITY FULL.
func identityFull(ctx context.Context, q rowQuerier, table string) (bool, error) {
	var full bool
	err := q.QueryRow(ctx, `SELECT c.relreplident = 'f' FROM pg_catalog.pg_class c WHERE c.oid = $1::pg_catalog.regclass`, qualified(table)).Scan(&full)
	if err != nil {
		return false, fmt.Errorf("replica identity of %s: %w", table, err)
	}
	return full, nil
}
