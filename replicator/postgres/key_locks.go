package postgres

// Key locks: appliers of different sources exclude each other on the keys
// a batch writes, absent rows included.

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/replicator"
)

// An applier locks the rows it reads (FOR UPDATE), but a row that is
// absent has nothing to lock. Two appliers of different sources that both
// find a deleted key absent (its tombstone recorded) and write it again
// would both insert it, and decide and write its version from the same
// tombstone: one of them then fails its whole batch ("affected 0 rows")
// and tries again. Under a steady stream of keys deleted and written
// again by several regions (a region catching up, above all), the batches
// of one source kept failing against those of another.
//
// So once an apply transaction has read its rows, it takes an advisory
// lock per key it found absent with a tombstone (held to its commit): the
// applier of another source that found the same key absent waits until
// this transaction ends, then reads the key again and decides on top of
// what this one wrote. Keys with no version at all (new keys: an event
// table's, a backlog of inserts) take none; two sources inserting the same
// new key at once is an insert/insert conflict, rare, and fails a batch
// as before, which is tried again reading every row. Applications take no
// such lock: a local write that races an apply fails the batch too.
//
// The locks are taken in ascending order, each tried first and waited for
// only when held, with no time limit: the holder is another applier past
// its reads, which waits for no key lock and for application rows only up
// to the lock timeout. A transaction with many such keys (more than
// keyLockLimit) takes one wide lock exclusively instead, and every other
// transaction takes that one shared before its key locks: the lock table
// (max_locks_per_transaction times the server's connections, shared by
// the whole server) never holds more than keyLockLimit+1 of these per
// applier.
//
// A large transaction (one arriving in parts) takes none: its parts would
// add up past that bound. A race of its keys with another source's fails
// a batch as before.
const (
	// keyLockSpace and wideLockSpace are the first keys of the two-key
	// advisory locks polyregion takes: a key's lock is (keyLockSpace,
	// hash of table and key); the wide lock (wideLockSpace, 0).
	keyLockSpace  = 0x706f6c6b // "polk"
	wideLockSpace = 0x706f6c77 // "polw"
	keyLockLimit  = 256
)

// keyLockIDs returns the locks' second keys for keys, ascending and
// distinct, or nil when there are more than keyLockLimit (the wide lock is
// taken instead).
func keyLockIDs(keys []metaKey) []int32 {
	ids := make([]int32, 0, len(keys))
	h := fnv.New32a()
	for _, k := range keys {
		h.Reset()
		h.Write([]byte(k.tbl))
		h.Write([]byte{0})
		h.Write([]byte(k.key))
		ids = append(ids, int32(h.Sum32()))
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	if len(ids) > keyLockLimit {
		return nil
	}
	return ids
}

// lockKeys takes the locks of keys for the rest of the transaction (see
// above). It reports whether it waited for another transaction's locks:
// that one has ended since, and what this one read of those keys may no
// longer hold.
func (e *executor) lockKeys(ctx context.Context, keys []metaKey) (waited bool, err error) {
	if len(keys) == 0 {
		return false, nil
	}
	ids := keyLockIDs(keys)
	wide := "_shared"
	if ids == nil {
		wide = ""
	}
	b := &pgx.Batch{}
	b.Queue(`SET LOCAL lock_timeout = 0`)
	// A function returning void casts to the empty text.
	b.Queue(fmt.Sprintf(`SELECT CASE WHEN pg_catalog.pg_try_advisory_xact_lock%[1]s($1::int4, 0) THEN 0
		ELSE pg_catalog.length(pg_catalog.pg_advisory_xact_lock%[1]s($1::int4, 0)::text) + 1 END`, wide), int32(wideLockSpace))
	if ids != nil {
		// unnest yields the ids in the array's (ascending) order, and each
		// row's lock is taken before the next row's.
		b.Queue(`SELECT pg_catalog.count(*) FILTER (WHERE w > 0) FROM (
			SELECT CASE WHEN pg_catalog.pg_try_advisory_xact_lock($1::int4, k) THEN 0
				ELSE pg_catalog.length(pg_catalog.pg_advisory_xact_lock($1::int4, k)::text) + 1 END AS w
			FROM pg_catalog.unnest($2::int4[]) AS k) AS l`, int32(keyLockSpace), ids)
	}
	b.Queue(fmt.Sprintf(`SET LOCAL lock_timeout = %d`, e.lockTimeout.Milliseconds()))
	br := e.tx.SendBatch(ctx, b)
	defer br.Close()
	var w int64
	if _, err = br.Exec(); err == nil {
		if err = br.QueryRow().Scan(&w); err == nil && ids != nil {
			var n int64
			err = br.QueryRow().Scan(&n)
			w += n
		}
	}
	if err == nil {
		_, err = br.Exec()
	}
	if err == nil {
		err = br.Close()
	}
	if err != nil {
		return false, fmt.Errorf("apply: lock the batch's keys: %w", err)
	}
	return w > 0, nil
}

// lockAbsent takes the key locks of the keys states found absent with a
// tombstone (see above). When it had to wait for another applier, it reads
// those keys again: the other may have written them.
func (a *Applier) lockAbsent(ctx context.Context, ex *executor, shapes map[string]replicator.Shape, states map[metaKey]*rowState) error {
	var keys []metaKey
	for k, s := range states {
		if !s.exists && s.meta != nil {
			keys = append(keys, k)
		}
	}
	waited, err := ex.lockKeys(ctx, keys)
	if err != nil || !waited {
		return err
	}
	byTable := map[string][]string{}
	for _, k := range keys {
		byTable[k.tbl] = append(byTable[k.tbl], k.key)
	}
	metas, err := a.readRowsAndVersions(ctx, ex.tx, shapes, byTable, keys, states)
	if err != nil {
		return err
	}
	for _, k := range keys {
		s := states[k]
		s.unlocked = !s.exists
		s.meta = metas[k]
		s.versioned = s.meta != nil
		if unversioned(s) {
			// Written locally too since (not versioned yet): decided again
			// in a batch that reads it as readRows does.
			return retryable{fmt.Errorf("apply: %s %s was written locally while another source's applier held it", k.tbl, k.key)}
		}
	}
	return nil
}
