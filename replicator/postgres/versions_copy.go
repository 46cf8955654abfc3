package postgres

// New row versions written by one binary COPY (the reader's versions of
// new local rows, the applier's of rows new here). A version recorded
// meanwhile by someone else is a unique violation of the COPY.

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

const versionCopySQL = `COPY polyregion.row_version (tbl, key, vv, hlc, origin, deleted, xid, counters, src_seq, deleted_at, siblings, stamps, own, epoch) FROM STDIN (FORMAT binary)`

// versionFields is the number of columns versionCopySQL fills.
const versionFields = 14

// versionCopy gathers new versions for one COPY.
type versionCopy struct {
	rows []versionRow
	// now stamps deleted_at of tombstones (when they may be collected).
	now time.Time
}

type versionRow struct {
	k   metaKey
	m   *meta
	xid *uint32
}

func newVersionCopy(n int) *versionCopy {
	return &versionCopy{rows: make([]versionRow, 0, n), now: time.Now()}
}

// add appends k's version m; xid is the xmin the version describes, or nil
// for none (a tombstone, or a version of a row no write here made). m is
// read when the COPY is sent.
func (c *versionCopy) add(k metaKey, m *meta, xid *uint32) {
	if xid != nil {
		x := *xid
		xid = &x
	}
	c.rows = append(c.rows, versionRow{k, m, xid})
}

// encode writes row i of the COPY.
func (c *versionCopy) encode(b *binaryCopy, i int) error {
	r := &c.rows[i]
	m := r.m
	var counters *string
	if len(m.counters) > 0 {
		j, err := json.Marshal(m.counters)
		if err != nil {
			return fmt.Errorf("version of %s %s: %w", r.k.tbl, r.k.key, err)
		}
		s := string(j)
		counters = &s
	}
	b.row(versionFields)
	b.text(r.k.tbl)
	b.text(r.k.key)
	b.text(m.version.Vector.String())
	b.int8(int64(m.version.HLC))
	b.text(string(m.version.Origin))
	b.bool(m.version.Deleted)
	if r.xid == nil {
		b.null()
	} else {
		b.xid(*r.xid)
	}
	b.jsonb(counters)
	b.int8(m.srcSeq)
	if m.version.Deleted {
		b.timestamptz(c.now)
	} else {
		b.null()
	}
	b.jsonb(encodeSiblings(m.version.Siblings, m.siblings))
	b.jsonb(encodeStamps(m.version.Stamps))
	b.jsonb(ownValue(m))
	b.int8(int64(m.version.Epoch))
	return nil
}

// write copies the versions in tx. A key whose version was recorded since
// it was read fails with a unique violation (23505).
func (c *versionCopy) write(ctx context.Context, tx pgx.Tx) error {
	if len(c.rows) == 0 {
		return nil
	}
	tag, err := tx.Conn().PgConn().CopyFrom(ctx, newCopyReader(len(c.rows), c.encode), versionCopySQL)
	if err != nil {
		return err
	}
	if tag.RowsAffected() != int64(len(c.rows)) {
		return fmt.Errorf("%d of %d row versions written", tag.RowsAffected(), len(c.rows))
	}
	return nil
}

// parseXid reads a version's recorded xid: nil for none.
func parseXid(k metaKey, s string) (*uint32, error) {
	if s == "" {
		return nil, nil
	}
	x, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("version of %s %s: xid %q: %w", k.tbl, k.key, s, err)
	}
	v := uint32(x)
	return &v, nil
}
