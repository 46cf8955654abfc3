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
//   - Arrival order does not matter either, for any number of regions and
//     any causal history, under every policy: of all the writes to a row,
//     those that no other write has seen compete, and the policy's ranking
//     picks the highest of them (see [Write] and siblings.go). A row's
//     Version keeps the winner and the other competitors that may still win
//     ([Version.Siblings]); a write that supersedes the winner meets them,
//     and one of them may win again ([Reinstate]). The ranking of two
//     writes is the policy's: first the delete rule (if any), then region
//     priority (for [RegionPriority]) or the resolver (for [CustomSQL]),
//     then HLC, then Origin byte order, then tombstone over live.
//     Requirement: every write's HLC exceeds those of the writes it saw
//     ([Clock.Observe], [Next] over [Version.Latest]).
//   - Policy changes: [DecideAt] takes a table's policies by configuration
//     epoch ([Epochs]); a row's version carries the highest epoch among
//     its writes and its competing writes are ranked under that epoch's
//     policy, so the guarantees above hold across a change made while
//     regions write, provided the regions follow the protocol in
//     epochs.go. With one policy, DecideAt decides exactly as Decide.
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
//     version, siblings included. This includes [KeepLocal]: the vector has
//     absorbed the remote write, and for a delete/delete conflict the
//     winning tombstone may be the remote one. When SaveLocal or SaveRemote
//     is set, keep that write's row with the sibling: [Reinstate] writes it
//     back (or deletes the row, for a tombstone).
//   - A local write has seen the row's siblings: its version has none, and
//     a hybrid timestamp above [Version.Latest].
//   - Under column-level last-writer-wins ([ColumnLWW], columns.go): stamp
//     a local write's columns with [LocalStamps]; when a decision leaves
//     the row live, write the join of the rows of [JoinSources]
//     ([JoinColumns]) and store its stamps in Result.Stamps; keep each
//     sibling's stamps with its row; name a write that lost data by
//     [LostColumns].
//   - Under max and min columns, every live write that loses is kept as a
//     sibling too: a live row's max (min) column is the greatest (least)
//     among the own rows of its write and its live siblings (each write's
//     row as its region had it right after the write), worked out at every
//     decision. Keep a row's write's own row (and, under column_lww, its
//     own stamps) apart once the row holds more, and keep them with the
//     sibling the write may become.
//   - For [External], run Policy.Resolver on the two writes of
//     Decision.Contest and pass its answer to ResolveExternal, again while
//     the result is External (a write meeting several siblings needs one
//     answer per pair). Until then Result is the unchanged local version and
//     must not be stored. For arrival order not to matter, the resolver must
//     be deterministic and must rank writes in a total order. Delete/delete
//     conflicts never go to the resolver: they are decided by last-writer-wins.
//   - Versions with Equal vectors are taken to be the same write (the second
//     one is skipped).
//   - Op is the source of truth for the remote side: the remote is a
//     tombstone exactly when op is [OpDelete], whatever remote.Deleted says.
//     On the local side, a row that does not exist (localExists false) counts
//     as a tombstone.
package conflict
