package regions

// Tables added at an epoch. A policy change may name tables the cluster
// does not replicate yet: from that epoch on they are replicated too (a
// change never drops one). A region replicates an added table from the
// moment it learns of the epoch, as it stamps what it ships as known
// under it, so its peers know the table before they receive a change of
// it; its rows from before are read once and shipped as the region's
// inserts (postgres/seed.go), so every region ends with every region's
// rows, their conflicts decided by the table's policy.
//
// An added table's policy holds for every epoch before the one that added
// it too (no write of it was ranked under those), and it is left out of
// Fingerprint and Describe: regions learn of the epoch at different
// moments and keep exchanging changes meanwhile.

import (
	"maps"
	"slices"
)

// WithAddedTables returns c with the tables its changes add appended, each
// with its policy at the epoch that added it and Added set to that epoch.
func (c Cluster) WithAddedTables() Cluster {
	have := map[string]bool{}
	for _, t := range c.Tables {
		have[t.Name] = true
	}
	tables := c.Tables
	cloned := false
	for _, e := range c.Changes {
		for _, name := range slices.Sorted(maps.Keys(e.Policies)) {
			if have[name] {
				continue
			}
			if !cloned {
				tables, cloned = append([]Table(nil), c.Tables...), true
			}
			tables = append(tables, Table{Name: name, Policy: e.Policies[name], Added: e.Number})
			have[name] = true
		}
	}
	c.Tables = tables
	return c
}
