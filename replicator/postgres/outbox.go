package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
	"github.com/polyregion/polyregion/replicator/link"
)

// Outbox serves the local outbox to the link server and trims it once every
// peer has acknowledged an entry.
type Outbox struct {
	pool   *pgxpool.Pool
	reader *Reader
	peers  []string
}

// NewOutbox returns an Outbox over pool; reader signals new entries.
func NewOutbox(pool *pgxpool.Pool, reader *Reader, peers []conflict.RegionID) *Outbox {
	ps := make([]string, len(peers))
	for i, p := range peers {
		ps[i] = string(p)
	}
	return &Outbox{pool: pool, reader: reader, peers: ps}
}

// Read implements link.Outbox.
func (o *Outbox) Read(ctx context.Context, after replicator.Seq, limit int) ([]link.Entry, error) {
	rows, err := o.pool.Query(ctx, `SELECT seq, payload FROM polyregion.outbox WHERE seq > $1 ORDER BY seq LIMIT $2`, int64(after), limit)
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	defer rows.Close()
	var out []link.Entry
	for rows.Next() {
		var e link.Entry
		var seq int64
		if err := rows.Scan(&seq, &e.Payload); err != nil {
			return nil, fmt.Errorf("read outbox: %w", err)
		}
		e.Seq = replicator.Seq(seq)
		out = append(out, e)
	}
	return out, rows.Err()
}

// Changed implements link.Outbox.
func (o *Outbox) Changed() <-chan struct{} { return o.reader.Changed() }

// Ack implements link.Outbox: it records the peer's position and deletes
// entries every configured peer has applied.
func (o *Outbox) Ack(ctx context.Context, peer conflict.RegionID, seq replicator.Seq) error {
	_, err := o.pool.Exec(ctx, `INSERT INTO polyregion.peer_ack (peer, seq, updated_at) VALUES ($1, $2, pg_catalog.now())
		ON CONFLICT (peer) DO UPDATE SET seq = GREATEST(polyregion.peer_ack.seq, excluded.seq), updated_at = excluded.updated_at`, string(peer), int64(seq))
	if err != nil {
		return fmt.Errorf("record ack of %s: %w", peer, err)
	}
	_, err = o.pool.Exec(ctx, `DELETE FROM polyregion.outbox WHERE seq <= (
		SELECT CASE WHEN count(*) = pg_catalog.cardinality($1::text[]) THEN min(seq) ELSE 0 END
		FROM polyregion.peer_ack WHERE peer = ANY($1::text[]))`, o.peers)
	if err != nil {
		return fmt.Errorf("trim outbox: %w", err)
	}
	return nil
}

// Backlog returns, per peer, how many outbox transactions it has not yet
// acknowledged.
func (o *Outbox) Backlog(ctx context.Context) (map[string]int64, error) {
	out := map[string]int64{}
	var maxSeq int64
	if err := o.pool.QueryRow(ctx, `SELECT coalesce(max(seq), 0) FROM polyregion.outbox`).Scan(&maxSeq); err != nil {
		return nil, fmt.Errorf("outbox backlog: %w", err)
	}
	for _, p := range o.peers {
		var acked int64
		err := o.pool.QueryRow(ctx, `SELECT coalesce((SELECT seq FROM polyregion.peer_ack WHERE peer = $1), 0)`, p).Scan(&acked)
		if err != nil {
			return nil, fmt.Errorf("outbox backlog: %w", err)
		}
		if maxSeq > acked {
			out[p] = maxSeq - acked
		} else {
			out[p] = 0
		}
	}
	return out, nil
}
