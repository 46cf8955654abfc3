package regions

// Tables added and dropped at an epoch. A change gives the policy of every
// table the cluster replicates from its epoch on: one it did not replicate
// is added, one it leaves out is dropped.
//
// A region replicates an added table from the moment it learns of the
// epoch, as it stamps what it ships as known under it, so its peers know
// the table before they receive a change of it; its rows from before are
// read once and shipped as the region's inserts (postgres/seed.go), so
// every region ends with every region's rows, their conflicts decided by
// the table's policy. An added table's policy holds for every epoch before
// the one that added it too (no write of it was ranked under those).
//
// A region stops replicating a dropped table when it learns of the epoch:
// it no longer ships the table's changes, and skips those its peers still
// ship until they learn of it too. Each region keeps the table's rows as
// they are then; they are no longer kept in step.
//
// Neither changes Fingerprint or Describe: regions learn of the epoch at
// different moments and keep exchanging changes meanwhile. So an added
// table is left out of them, and a founding table that was dropped stays
// in them (Cluster.Dropped).

import (
	"maps"
	"slices"
)

// WithTableChanges returns c with the tables its changes add appended
// (each with its policy at the epoch that added it and Added set to that
// epoch) and those they drop moved to Dropped.
func (c Cluster) WithTableChanges() Cluster {
	tables := slices.Clone(c.Tables)
	dropped := slices.Clone(c.Dropped)
	for _, e := range c.Changes {
		if e.Policies == nil {
			continue
		}
		kept := tables[:0]
		for _, t := range tables {
			if _, ok := e.Policies[t.Name]; ok {
				kept = append(kept, t)
			} else if t.Added == 0 {
				dropped = append(dropped, t)
			}
		}
		tables = kept
		for _, name := range slices.Sorted(maps.Keys(e.Policies)) {
			if !slices.ContainsFunc(tables, func(t Table) bool { return t.Name == name }) {
				tables = append(tables, Table{Name: name, Policy: e.Policies[name], Added: e.Number})
			}
		}
	}
	c.Tables, c.Dropped = tables, dropped
	return c
}

// DroppedTables are the tables a change dropped and none added again:
// founding ones (Dropped) and added ones a later change left out.
func (c Cluster) DroppedTables() map[string]bool {
	out := map[string]bool{}
	for _, t := range c.Dropped {
		out[t.Name] = true
	}
	for _, e := range c.Changes {
		for name := range e.Policies {
			out[name] = true
		}
	}
	for _, t := range c.Tables {
		delete(out, t.Name)
	}
	return out
}

// IsDropped reports whether a change dropped table name and none added it
// again.
func (c Cluster) IsDropped(name string) bool { return c.DroppedTables()[name] }

// DroppedSettled lists, sorted, the dropped tables (DroppedTables) whose
// dropping change is in effect: no region ships their changes any more,
// so what a region kept to replicate them (their rows' versions) can go.
func (c Cluster) DroppedSettled() []string {
	dropped := c.DroppedTables()
	if len(dropped) == 0 {
		return nil
	}
	at := map[string]Epoch{} // table -> the change that last left it out
	cur := map[string]bool{}
	for _, t := range c.founding() {
		cur[t.Name] = true
	}
	for _, e := range c.Changes {
		if e.Policies == nil {
			continue
		}
		for name := range cur {
			if _, ok := e.Policies[name]; !ok {
				at[name] = e
			}
		}
		cur = map[string]bool{}
		for name := range e.Policies {
			cur[name] = true
		}
	}
	var out []string
	for name := range dropped {
		if e, ok := at[name]; ok && e.Effective > 0 {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}
