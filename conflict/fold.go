package conflict

// FoldUpdate is the version a live row holds after an update under
// last-writer-wins, computed from the two versions alone: the vectors
// merged, and the hybrid timestamp and origin of whichever write ranks
// higher (hybrid timestamp, then origin byte order).
//
// For a live local row and a remote update, under a LastWriterWins policy,
// it equals Decide's Result whatever the causal relation: a write that saw
// another carries a larger hybrid timestamp (Next), so the causal successor
// is also the higher-ranked one; concurrent writes go to the higher-ranked
// one by definition. It is commutative, associative and idempotent, so a
// region may add several updates to a row at once, or before the writes it
// holds are known, and still end where Decide, one update at a time, ends.
// The applier uses it (in SQL, see the replicator's vv_merge) to add peers'
// increments to rows whose every non-key column is a counter without
// reading them first.
func FoldUpdate(a, b Version) Version {
	w := a
	if b.HLC > a.HLC || (b.HLC == a.HLC && b.Origin > a.Origin) {
		w = b
	}
	return Version{Vector: Merge(a.Vector, b.Vector), HLC: w.HLC, Origin: w.Origin, Epoch: max(a.Epoch, b.Epoch)}
}
