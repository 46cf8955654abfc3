package postgres

// Policy changes at configuration epochs, as the region's reader records
// them (see conflict/epochs.go for the protocol): polyregion.epochs holds,
// per epoch the region learned of, its fence (the last transaction it
// shipped before: everything after is stamped as known under the epoch)
// and, once the control plane says the epoch is in effect, the WAL
// position from which the region's own writes are ranked under it. Both
// are recorded once, before anything is shipped under them, and survive
// restarts.

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

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
// not recorded yet, and returns what the reader stamps with.
func prepareEpochs(ctx context.Context, conn *pgx.Conn, known uint64, inEffect []uint64, fence replicator.Seq) (readerEpochs, error) {
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
	if _, err := tx.Exec(ctx, `INSERT INTO polyregion.epochs (number, fence)
		SELECT g, $2 FROM pg_catalog.generate_series(2, $1::bigint) g ON CONFLICT (number) DO NOTHING`, int64(known), int64(fence)); err != nil {
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
