package postgres

// Policy changes at configuration epochs, as the region's reader records
// them (see conflict/epochs.go for the protocol): polyregion.epochs holds,
// per epoch the region learned of, its fence (the last transaction it
// shipped before: everything after is stamped as known under the epoch)
// and, once the control plane says the epoch is in effect, the WAL
// position from which the region's own writes are ranked under it. Both
// are recorded once, before anything is shipped under them, and survive
// restarts. An epoch learned from a peer (regions/learn.go) is recorded
// with its policies: the control plane does not hold it here yet.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator"
)

// readerEpochs is what the reader stamps local transactions with.
type readerEpochs struct {
	known     uint64        // 0 under the founding configuration
	effective []effectiveAt // by epoch, ascending
}

type effectiveAt struct {
	number uint64
	lsn    pglogrepl.LSN
}

// rank is the epoch a local transaction committed at commit is ranked
// under: the latest in effect before it committed (0: the founding one).
func (e readerEpochs) rank(commit pglogrepl.LSN) uint64 {
	var n uint64
	for _, x := range e.effective {
		if commit > x.lsn {
			n = x.number
		}
	}
	return n
}

// prepareEpochs records the fence of every epoch up to known the region
// had not learned of before (fence: the last transaction shipped so far)
// and the position from which each epoch of inEffect is in effect, where
// not recorded yet, and returns what the reader stamps with. The epochs of
// learned are recorded with their policies.
func prepareEpochs(ctx context.Context, conn *pgx.Conn, known uint64, inEffect []uint64, learned []regions.Epoch, fence replicator.Seq) (readerEpochs, error) {
	out := readerEpochs{}
	if known < 2 {
		return out, nil
	}
	out.known = known
	tx, err := conn.Begin(ctx)
	if err != nil {
		return out, fmt.Errorf("reader: epochs: %w", err)
	}
	defer tx.Rollback(context.Background())
	policies := map[string]map[string]conflict.Policy{}
	for _, e := range learned {
		policies[strconv.FormatUint(e.Number, 10)] = e.Policies
	}
	pj, err := json.Marshal(policies)
	if err != nil {
		return out, fmt.Errorf("reader: epochs: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO polyregion.epochs (number, fence, policies)
		SELECT g, $2, $3::jsonb -> g::text FROM pg_catalog.generate_series(2, $1::bigint) g ON CONFLICT (number) DO NOTHING`, int64(known), int64(fence), string(pj)); err != nil {
		return out, fmt.Errorf("reader: record epoch fences: %w", err)
	}
	nums := make([]int64, len(inEffect))
	for i, n := range inEffect {
		nums[i] = int64(n)
	}
	if _, err := tx.Exec(ctx, `UPDATE polyregion.epochs SET effective_lsn = pg_catalog.pg_current_wal_insert_lsn()
		WHERE number = ANY ($1::bigint[]) AND effective_lsn IS NULL`, nums); err != nil {
		return out, fmt.Errorf("reader: record epochs in effect: %w", err)
	}
	rows, err := tx.Query(ctx, `SELECT number, effective_lsn::text FROM polyregion.epochs WHERE effective_lsn IS NOT NULL ORDER BY number`)
	if err != nil {
		return out, fmt.Errorf("reader: epochs: %w", err)
	}
	for rows.Next() {
		var n int64
		var lsn string
		if err := rows.Scan(&n, &lsn); err != nil {
			rows.Close()
			return out, fmt.Errorf("reader: epochs: %w", err)
		}
		l, err := pglogrepl.ParseLSN(lsn)
		if err != nil {
			rows.Close()
			return out, fmt.Errorf("reader: epoch %d: %w", n, err)
		}
		out.effective = append(out.effective, effectiveAt{number: uint64(n), lsn: l})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return out, fmt.Errorf("reader: epochs: %w", err)
	}
	return out, tx.Commit(ctx)
}

// ReadFence returns the region's fence for epoch: the last transaction it
// shipped before it learned of it (ok is false until its reader recorded
// it).
func ReadFence(ctx context.Context, connString string, epoch uint64) (fence uint64, ok bool, err error) {
	conn, err := Connect(ctx, connString)
	if err != nil {
		return 0, false, err
	}
	defer conn.Close(context.Background())
	var f int64
	err = conn.QueryRow(ctx, `SELECT fence FROM polyregion.epochs WHERE number = $1`, int64(epoch)).Scan(&f)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read the fence of epoch %d: %w", epoch, err)
	}
	return uint64(f), true, nil
}

// LearnedEpochs returns the epochs this region learned from a peer and
// recorded (with their policies; see prepareEpochs), in order: none
// before the reader of this release first ran.
func LearnedEpochs(ctx context.Context, connString string) ([]regions.Epoch, error) {
	conn, err := Connect(ctx, connString)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	var recorded bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute a
		WHERE a.attrelid = pg_catalog.to_regclass('polyregion.epochs') AND a.attname = 'policies' AND NOT a.attisdropped)`).Scan(&recorded); err != nil {
		return nil, fmt.Errorf("read the epochs learned from peers: %w", err)
	}
	if !recorded {
		return nil, nil
	}
	rows, err := conn.Query(ctx, `SELECT number, policies::text FROM polyregion.epochs WHERE policies IS NOT NULL ORDER BY number`)
	if err != nil {
		return nil, fmt.Errorf("read the epochs learned from peers: %w", err)
	}
	defer rows.Close()
	var out []regions.Epoch
	for rows.Next() {
		var n int64
		var pj string
		if err := rows.Scan(&n, &pj); err != nil {
			return nil, fmt.Errorf("read the epochs learned from peers: %w", err)
		}
		e := regions.Epoch{Number: uint64(n)}
		if err := json.Unmarshal([]byte(pj), &e.Policies); err != nil {
			return nil, fmt.Errorf("epoch %d learned from a peer: policies: %w", n, err)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}
