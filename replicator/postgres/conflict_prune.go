package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// pruneBatch bounds the records one statement deletes, so that pruning a
// long history never holds one long transaction (or its WAL) at once.
const pruneBatch = 10_000

// PruneConflictLog deletes the conflict log records logged before cutoff,
// oldest first, in transactions of at most pruneBatch records, and returns
// how many it deleted. It stops between batches when ctx ends.
func PruneConflictLog(ctx context.Context, pool *pgxpool.Pool, cutoff time.Time) (int64, error) {
	var total int64
	for {
		tag, err := pool.Exec(ctx, `DELETE FROM polyregion.conflict_log WHERE id IN (
			SELECT id FROM polyregion.conflict_log WHERE logged_at < $1 ORDER BY logged_at LIMIT $2)`, cutoff, pruneBatch)
		if err != nil {
			return total, fmt.Errorf("prune the conflict log: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < pruneBatch || ctx.Err() != nil {
			return total, nil
		}
	}
}
