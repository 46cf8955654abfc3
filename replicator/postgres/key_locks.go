package postgres

// Key locks: appliers of different sources exclude each other on the keys
// a batch finds (or assumes) absent, which no row lock can hold.

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
// find a key absent (deleted here, its tombstone recorded or collected;
// or never written here) and write it would both insert it, and decide
// and write its version from the same state: one of them then fails its
// whole batch ("affected 0 rows") and tries again. Under a steady stream
// of keys deleted and written again by several regions (a region catching
// up, above all), the batches of one source kept failing against those of
// another.
//
// So once an apply transaction has read its rows, it takes an advisory
// lock per key it found absent or assumed absent (held to its commit),
// and reads those keys again in the same round trip: the applier of
// another source that wrote one of them in between (before this one held
// its lock) has committed by then, and one that wants one of them later
// waits until this transaction ends and reads it then. Either way the key
// is decided on top of what the other wrote. Applications take no such
// lock: a local write that races an apply still fails the batch, which is
// tried again reading every row.
//
// The locks are taken in ascending order with no time limit: the holder
// is another applier past its own key locks, which waits for no key lock,
// and for a row this one holds (a counter row it adds to in place) only
// up to the lock timeout; should a cycle form anyway, the server's
// deadlock check ends it. A transaction with many such keys (more than
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

// queueKeyLocks queues in b the statements that take the locks of keys
// for the rest of the transaction (see above); wide: the wide lock
// instead.
func (e *executor) queueKeyLocks(b *pgx.Batch, keys []metaKey) (wide bool) {
	ids := keyLockIDs(keys)
	b.Queue(`SET LOCAL lock_timeout = 0`)
	if ids == nil {
		b.Queue(`SELECT pg_catalog.pg_advisory_xact_lock($1::int4, 0)`, int32(wideLockSpace))
	} else {
		b.Queue(`SELECT pg_catalog.pg_advisory_xact_lock_shared($1::int4, 0)`, int32(wideLockSpace))
		// unnest yields the ids in the array's (ascending) order, and each
		// row's lock is taken before the next row's.
		b.Queue(`SELECT pg_catalog.pg_advisory_xact_lock($1::int4, k) FROM pg_catalog.unnest($2::int4[]) AS k`, int32(keyLockSpace), ids)
	}
	b.Queue(fmt.Sprintf(`SET LOCAL lock_timeout = %d`, e.lockTimeout.Milliseconds()))
	return ids == nil
}

// lockAbsent takes the key locks of the keys states found (or assumed)
// absent and reads them again (see above). A key found as it was keeps
// the state read first; one another applier wrote meanwhile takes what
// is there now.
//
// A transaction past keyLockLimit (the wide lock) reads again only the
// keys it read before, not those it assumed absent, having found no
// tombstone for them (see probe in applyChanges): a long run of new keys
// (a backlog of inserts) read again would cost what assuming them absent
// saves. A clash on one of those fails the batch as before, which is
// tried again reading every row.
func (a *Applier) lockAbsent(ctx context.Context, ex *executor, shapes map[string]replicator.Shape, states map[metaKey]*rowState, probe map[metaKey]bool) error {
	var keys []metaKey
	for k, s := range states {
		if !s.exists {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	var b pgx.Batch
	if ex.queueKeyLocks(&b, keys) {
		keys = slices.DeleteFunc(keys, func(k metaKey) bool { return probe[k] && states[k].meta == nil })
	}
	byTable := map[string][]string{}
	before := map[metaKey]*meta{}
	for _, k := range keys {
		byTable[k.tbl] = append(byTable[k.tbl], k.key)
		before[k] = states[k].meta
	}
	metas, err := a.queueRowsAndVersions(&b, shapes, byTable, keys, states)
	if err != nil {
		return err
	}
	if err := ex.tx.SendBatch(ctx, &b).Close(); err != nil {
		return fmt.Errorf("apply: lock and read again the keys found absent: %w", err)
	}
	for _, k := range keys {
		s, was, now := states[k], before[k], metas[k]
		if !s.exists && (was == nil) == (now == nil) && (was == nil || was.tupleXmin == now.tupleXmin) {
			s.meta = was // as read (and judged) first
			continue
		}
		s.unlocked = !s.exists
		s.meta = now
		s.versioned = now != nil
		if unversioned(s) {
			// Written locally since, and not versioned yet: decided again
			// in a batch that reads it as readRows does.
			return retryable{fmt.Errorf("apply: %s %s was written locally while this batch read it", k.tbl, k.key)}
		}
	}
	return nil
}
