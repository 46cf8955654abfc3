package regions

// Learning a policy change from a peer. The data plane never waits for
// the control plane: a region cut off from the control plane's leader
// (while it still reaches some peers) would otherwise stop applying, at
// the first transaction a peer shipped knowing an epoch it does not know
// yet, until the partition heals. A peer that ships under an epoch has
// learned it, from the control plane or from another peer, so it can
// tell: every link stream opens with the epochs its sender knows (see
// link.Hello), and a region takes from there the ones after its own.
//
// Taking an epoch this way is what learning it from the control plane
// does (conflict/epochs.go's protocol has a region learn of the change
// from the first transaction stamped under it): the region records its
// fence and stamps what it ships after as known under the epoch. It
// cannot make the epoch effective: that needs every region's fence in the
// control plane, its own included, so it waits for the heal whatever the
// region knows.

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/polyregion/polyregion/conflict"
)

// Learn returns the epochs of offered (a peer's known policy changes,
// numbered from 2) that c does not know yet, in order, each with only its
// number, policies and fingerprint: the changes to append to c.Changes.
// It refuses, naming the epoch, an offer c could not run with: an epoch
// c knows with other policies, a gap after c's latest, or a change the
// tables' merges cannot take (see conflict.NewEpochs).
func (c Cluster) Learn(offered []Epoch) ([]Epoch, error) {
	known := c.KnownEpoch()
	byNumber := map[uint64]Epoch{}
	for _, e := range offered {
		byNumber[e.Number] = e
	}
	for _, mine := range c.Changes {
		if e, ok := byNumber[mine.Number]; ok && mine.Policies != nil && policiesFingerprint(mine.Policies) != policiesFingerprint(e.Policies) {
			return nil, fmt.Errorf("epoch %d: the peer's policies differ from this region's (%s)", mine.Number, strings.Join(Diff(describePolicies(mine.Policies), describePolicies(e.Policies)), "; "))
		}
	}
	var learned []Epoch
	next := c
	next.Changes = slices.Clone(c.Changes)
	for n := known + 1; ; n++ {
		e, ok := byNumber[n]
		if !ok {
			break
		}
		if len(e.Policies) == 0 {
			return nil, fmt.Errorf("epoch %d: no policies", n)
		}
		for _, name := range slices.Sorted(maps.Keys(e.Policies)) {
			if err := ValidateTableName(name); err != nil {
				return nil, fmt.Errorf("epoch %d: %v", n, err)
			}
			if err := e.Policies[name].Validate(); err != nil {
				return nil, fmt.Errorf("epoch %d: table %s: %v", n, name, err)
			}
		}
		l := Epoch{Number: n, Fingerprint: policiesFingerprint(e.Policies), Policies: maps.Clone(e.Policies)}
		next.Changes = append(next.Changes, l)
		with := next.WithTableChanges()
		for _, t := range with.Tables {
			if _, err := with.TableEpochs(t.Name); err != nil {
				return nil, fmt.Errorf("epoch %d: %v", n, err)
			}
		}
		learned = append(learned, l)
	}
	for n := range byNumber {
		if n > known+uint64(len(learned)) {
			return nil, fmt.Errorf("epoch %d: this region knows epoch %d and the peer gave no epoch %d", n, known, known+uint64(len(learned))+1)
		}
	}
	return learned, nil
}

// Offer is what a region tells its peers of the policy changes it knows:
// each with its number, policies and fingerprint.
func (c Cluster) Offer() []Epoch {
	var out []Epoch
	for _, e := range c.Changes {
		if e.Policies != nil {
			out = append(out, Epoch{Number: e.Number, Fingerprint: e.Fingerprint, Policies: e.Policies})
		}
	}
	return out
}

func describePolicies(ps map[string]conflict.Policy) map[string]string {
	out := make(map[string]string, len(ps))
	for name, p := range ps {
		out["table "+name] = p.Fingerprint()
	}
	return out
}
