package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"math"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
	"github.com/polyregion/polyregion/replicator/link"
)

// Outbox serves the local outbox to the link server, records the peers'
// acknowledgements, and trims what every peer acknowledged.
type Outbox struct {
	pool   *pgxpool.Pool
	reader *Reader
	region string
	peers  []string
	// maxTxns caps how many transactions the outbox keeps for a peer that
	// is away (0: no cap). A peer that falls further behind must be
	// re-seeded; the cap bounds the disk an absent peer can take.
	maxTxns int64
	// Removed, when set, reports whether the cluster removed a peer: its
	// acknowledgements are waited for no more when trimming.
	Removed func(conflict.RegionID) bool
}

// waitedFor lists the peers whose acknowledgements trimming waits for.
func (o *Outbox) waitedFor() []string {
	if o.Removed == nil {
		return o.peers
	}
	out := make([]string, 0, len(o.peers))
	for _, p := range o.peers {
		if !o.Removed(conflict.RegionID(p)) {
			out = append(out, p)
		}
	}
	return out
}

// NewOutbox returns an Outbox over pool; reader signals new entries.
func NewOutbox(pool *pgxpool.Pool, reader *Reader, region conflict.RegionID, peers []conflict.RegionID, maxTxns int64) *Outbox {
	ps := make([]string, len(peers))
	for i, p := range peers {
		ps[i] = string(p)
	}
	return &Outbox{pool: pool, reader: reader, region: string(region), peers: ps, maxTxns: maxTxns}
}

// Read implements link.Outbox: more when it stopped at limit or at
// maxReadBytes.
func (o *Outbox) Read(ctx context.Context, after replicator.Seq, part int, limit int) ([]link.Entry, bool, error) {
	rows, err := o.pool.Query(ctx, `SELECT seq, part, more, rows, payload FROM polyregion.outbox
		WHERE (seq, part) > ($1, $2) ORDER BY seq, part LIMIT $3`, int64(after), part, limit)
	if err != nil {
		return nil, false, fmt.Errorf("read outbox: %w", err)
	}
	defer rows.Close()
	var out []link.Entry
	size := 0
	for rows.Next() {
		if size >= maxReadBytes {
			return out, true, nil
		}
		var e link.Entry
		var seq int64
		if err := rows.Scan(&seq, &e.Part, &e.More, &e.Rows, &e.Payload); err != nil {
			return nil, false, fmt.Errorf("read outbox: %w", err)
		}
		e.Seq = replicator.Seq(seq)
		out = append(out, e)
		size += len(e.Payload)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("read outbox: %w", err)
	}
	return out, len(out) == limit, nil
}

// maxReadBytes bounds one Read's payloads (large transactions' parts are
// big); the server asks again for the rest.
const maxReadBytes = 16 << 20

// Retained implements link.Outbox.
func (o *Outbox) Retained(ctx context.Context) (oldest, newest replicator.Seq, err error) {
	var lo, hi int64
	err = o.pool.QueryRow(ctx, `SELECT coalesce((SELECT min(seq) FROM polyregion.outbox), 0),
		coalesce((SELECT next_seq - 1 FROM polyregion.reader_state WHERE slot = $1), 0)`, SlotName(o.region)).Scan(&lo, &hi)
	if err != nil {
		return 0, 0, fmt.Errorf("outbox retention: %w", err)
	}
	return replicator.Seq(lo), replicator.Seq(hi), nil
}

// Changed implements link.Outbox: the reader's Appended.
func (o *Outbox) Changed() <-chan struct{} { return o.reader.Appended() }

// Ack implements link.Outbox: it records the peer's position (trimming is
// Trim's, once the membership is known to be current). A position beyond
// the newest sequence ever assigned is refused and changes nothing (the
// link server refuses it first; this keeps the table right whoever calls).
func (o *Outbox) Ack(ctx context.Context, peer conflict.RegionID, seq replicator.Seq) error {
	if seq > math.MaxInt64 {
		return fmt.Errorf("record ack of %s: seq %d is beyond any sequence assigned; refused", peer, uint64(seq))
	}
	tag, err := o.pool.Exec(ctx, `INSERT INTO polyregion.peer_ack (peer, seq, updated_at)
		SELECT $1, $2::bigint, pg_catalog.now()
		WHERE $2::bigint <= coalesce((SELECT next_seq - 1 FROM polyregion.reader_state WHERE slot = $3), 0)
		ON CONFLICT (peer) DO UPDATE SET seq = GREATEST(polyregion.peer_ack.seq, excluded.seq), updated_at = excluded.updated_at`,
		string(peer), int64(seq), SlotName(o.region))
	if err != nil {
		return fmt.Errorf("record ack of %s: %w", peer, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("record ack of %s: seq %d is beyond the newest transaction assigned here; refused", peer, uint64(seq))
	}
	return o.Cap(ctx)
}

// AckFloor returns the newest entry every waited-for peer has acknowledged
// (0 while one has acknowledged nothing).
func (o *Outbox) AckFloor(ctx context.Context) (replicator.Seq, error) {
	var floor int64
	err := o.pool.QueryRow(ctx, `SELECT CASE WHEN count(*) = pg_catalog.cardinality($1::text[]) THEN coalesce(min(seq), 0) ELSE 0 END
		FROM polyregion.peer_ack WHERE peer = ANY($1::text[])`, o.waitedFor()).Scan(&floor)
	if err != nil {
		return 0, fmt.Errorf("read peer acknowledgements: %w", err)
	}
	return replicator.Seq(max(floor, 0)), nil
}

// Trim deletes the entries up to floor (from AckFloor, read before the
// membership it was read under was confirmed current).
func (o *Outbox) Trim(ctx context.Context, floor replicator.Seq) error {
	if floor == 0 {
		return nil
	}
	if _, err := o.pool.Exec(ctx, `DELETE FROM polyregion.outbox WHERE seq <= $1`, int64(floor)); err != nil {
		return fmt.Errorf("trim outbox: %w", err)
	}
	return nil
}

// RepairAcks lowers every peer position recorded beyond the newest
// sequence ever assigned down to it, logging each one repaired. Such a
// position can only come from an acknowledgement of transactions never
// shipped (accepted by earlier versions); left in place it would never be
// lowered by the peer's real acknowledgements. Run it before serving peers.
func (o *Outbox) RepairAcks(ctx context.Context, log *slog.Logger) error {
	rows, err := o.pool.Query(ctx, `UPDATE polyregion.peer_ack a SET seq = n.seq, updated_at = pg_catalog.now()
		FROM (SELECT coalesce((SELECT next_seq - 1 FROM polyregion.reader_state WHERE slot = $1), 0) AS seq) n,
			polyregion.peer_ack o
		WHERE o.peer = a.peer AND a.seq > n.seq
		RETURNING a.peer, o.seq, a.seq`, SlotName(o.region))
	if err != nil {
		return fmt.Errorf("repair peer positions: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var peer string
		var was, now int64
		if err := rows.Scan(&peer, &was, &now); err != nil {
			return fmt.Errorf("repair peer positions: %w", err)
		}
		log.Warn("lowered a peer's recorded acknowledgement that was beyond the newest transaction ever assigned here; "+
			"if the outbox was trimmed past what the peer applied, it will be told to re-seed",
			"peer", peer, "recorded_seq", was, "lowered_to", now)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("repair peer positions: %w", err)
	}
	return nil
}

// Cap drops the oldest entries beyond the retention cap, whether or not
// peers acknowledged them. It returns nil when there is no cap.
func (o *Outbox) Cap(ctx context.Context) error {
	if o.maxTxns <= 0 {
		return nil
	}
	_, err := o.pool.Exec(ctx, `DELETE FROM polyregion.outbox WHERE seq <= (SELECT max(seq) FROM polyregion.outbox) - $1`, o.maxTxns)
	if err != nil {
		return fmt.Errorf("cap outbox: %w", err)
	}
	return nil
}
