// Package conflict is the deterministic conflict core of the polyregion
// active-active PostgreSQL replicator.
//
// Every replicated row carries a [Version]: a version vector ([Vector]) that
// counts, per region, the writes in the row's history; the hybrid logical
// clock timestamp ([Timestamp]) and origin region of the write that produced
// it; and a tombstone flag. When a change arrives from a peer, [Decide]
// compares it with the local version and returns a [Decision]: apply it, keep
// the local row, skip it (already seen), or ask a custom SQL resolver
// ([ResolveExternal] finishes that case). [MergeCounter] and [CounterDelta]
// do the exact decimal arithmetic for counter columns, whose concurrent
// increments are all kept whatever the decision.
//
// # Guarantees
//
//   - Pure: no I/O, goroutines, logging, randomness or wall-clock reads.
//     Time comes in only as an argument ([Clock.Now], [Clock.Observe],
//     [Next]). The same inputs give the same outputs on every platform; map
//     iteration order never shows in a result or a message.
//   - Inputs are never modified. Every Vector returned is a new map that
//     shares nothing with the arguments.
//   - Causality first: a remote version whose vector dominates the local one
//     is always applied, and one the local vector already includes is always
//     skipped (so re-delivery is harmless). Neither is a conflict, and no
//     policy is consulted.
//   - Argument order does not matter. For concurrent versions the winner is
//     the greater of the two under one strict total order on (Deleted,
//     Origin, HLC): first the delete rule (if any), then region priority (for
//     [RegionPriority]), then HLC, then Origin byte order, then tombstone
//     over live. So Decide(p, a, true, b, opB) and Decide(p, b, true, a, opA)
//     produce the same Result (same Origin, HLC, Deleted, Vector); only the
//     Side names differ.
//   - Arrival order does not matter either, for writes that are pairwise
//     concurrent, each having ticked its own region's entry
//     ([Vector.Tick]) as real histories do. The Result of a conflict is
//     exactly the winning write (its own Origin, HLC and Deleted, with the
//     merged Vector), so folding such writes through Decide in any order
//     ends in the same Result. With
//     [LastWriterWins] and no delete rule this also holds for arbitrary
//     causal histories, as long as every write's HLC exceeds the HLCs of the
//     writes it saw (which [Clock.Observe] and [Next] guarantee).
//   - Result.Vector is always Merge(local.Vector, remote.Vector).
//   - The winner depends only on the two versions and the policy, never on
//     the wall clock at decision time.
//   - A [Clock] returns strictly increasing timestamps, each one greater than
//     every timestamp it has returned or observed, even if the wall clock
//     goes backwards. When the 16-bit logical counter overflows, it carries
//     into the millisecond part. Timestamps stop increasing only at
//     [MaxTimestamp] (in the year 10889).
//   - Counter arithmetic is exact (math/big) at any size, and results are in
//     canonical PostgreSQL numeric text.
//
// # What callers must do
//
//   - Validate policies ([Policy.Validate]) when loading configuration, and
//     make all regions agree on [Policy.Fingerprint]. Decide itself never
//     fails: it treats an unknown kind as [LastWriterWins] and an unknown
//     delete rule as [DeleteByPolicy].
//   - After any decision except [Skip], store Decision.Result as the row's
//     version. This includes [KeepLocal]: the vector has absorbed the remote
//     write, and for a delete/delete conflict the winning tombstone may be
//     the remote one.
//   - For [External], run Policy.Resolver and pass its answer to
//     ResolveExternal. Until then Result is the unchanged local version and
//     must not be stored. For arrival order not to matter, the resolver must
//     be deterministic and must rank writes in a total order. Delete/delete
//     conflicts never go to the resolver: they are decided by last-writer-wins.
//   - Versions with Equal vectors are taken to be the same write (the second
//     one is skipped).
//   - Op is the source of truth for the remote side: the remote is a
//     tombstone exactly when op is [OpDelete], whatever remote.Deleted says.
//     On the local side, a row that does not exist (localExists false) counts
//     as a tombstone.
//
// # Known limit
//
// [RegionPriority] and the [DeleteWins]/[UpdateWins] rules do not follow
// causality. Say write c causally follows write a, and a beat a third write
// b that is concurrent with both. In some arrival orders c then meets a
// merged version that still names a as the winner, and a can beat c again.
// A row's version keeps only the merged vector, not the winner's own vector,
// so this package cannot tell that c supersedes a. Order independence for
// these policies is therefore guaranteed only for pairwise-concurrent writes.
package conflict
