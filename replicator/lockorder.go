package replicator

import (
	"slices"
	"sync"
)

// TableOrder is the order in which appliers lock the rows of different
// tables, learned from the order in which source transactions write them.
//
// Applications lock rows as they write them. An applier that locked the
// rows of a batch in another order (table names, say) would hold a row an
// application wants next while waiting for one the application holds: a
// deadlock, which PostgreSQL breaks only after deadlock_timeout by failing
// one side, often the application. Source transactions are written by the
// same applications, so the order in which each one first writes its
// tables is the applications' own lock order; appliers that lock every
// batch table by table in that order never close a cycle with an
// application that keeps it.
//
// The first order seen between two tables is kept: a later transaction
// writing them the other way round changes nothing (it cannot be
// honoured for both). Tables never seen together are ordered by name.
// One TableOrder is shared by every applier of a process, so appliers
// also lock in one order among themselves. Safe for concurrent use.
type TableOrder struct {
	mu sync.Mutex
	// before[a][b]: a transaction wrote a before b and the pair was kept.
	before map[string]map[string]bool
	seen   map[[2]string]bool // pairs already considered
	rank   map[string]int     // position of each table in the order
}

// NewTableOrder returns an order that knows no table yet.
func NewTableOrder() *TableOrder {
	return &TableOrder{before: map[string]map[string]bool{}, seen: map[[2]string]bool{}, rank: map[string]int{}}
}

// Observe learns from one source transaction: tables lists the tables it
// writes, in the order of their first change.
func (o *TableOrder) Observe(tables []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	changed := o.addUnknown(tables)
	for i := 1; i < len(tables); i++ {
		a, b := tables[i-1], tables[i]
		if a == b || o.seen[[2]string{a, b}] {
			continue
		}
		o.seen[[2]string{a, b}] = true
		if o.reaches(b, a) {
			continue // the other order was seen first
		}
		o.before[a][b] = true
		changed = true
	}
	if changed {
		o.recompute()
	}
}

// Sort puts tables in lock order.
func (o *TableOrder) Sort(tables []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.addUnknown(tables) {
		o.recompute()
	}
	slices.SortFunc(tables, func(a, b string) int { return o.rank[a] - o.rank[b] })
}

// addUnknown adds the tables it does not know yet, with no order (o.mu
// held), and reports whether there were any: the caller then recomputes
// the ranks before the lock is released.
func (o *TableOrder) addUnknown(tables []string) bool {
	added := false
	for _, t := range tables {
		if _, ok := o.before[t]; !ok {
			o.before[t] = map[string]bool{}
			o.rank[t] = len(o.rank)
			added = true
		}
	}
	return added
}

// reaches reports whether a path of kept pairs leads from a to b.
func (o *TableOrder) reaches(a, b string) bool {
	stack, visited := []string{a}, map[string]bool{a: true}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if n == b {
			return true
		}
		for m := range o.before[n] {
			if !visited[m] {
				visited[m] = true
				stack = append(stack, m)
			}
		}
	}
	return false
}

// recompute ranks every table: a topological order of the kept pairs,
// choosing the smallest name among the tables free to go next.
func (o *TableOrder) recompute() {
	indeg := map[string]int{}
	for t, next := range o.before {
		if _, ok := indeg[t]; !ok {
			indeg[t] = 0
		}
		for n := range next {
			indeg[n]++
		}
	}
	var ready []string
	for t, d := range indeg {
		if d == 0 {
			ready = append(ready, t)
		}
	}
	rank := 0
	for len(ready) > 0 {
		slices.Sort(ready)
		t := ready[0]
		ready = ready[1:]
		o.rank[t] = rank
		rank++
		for n := range o.before[t] {
			if indeg[n]--; indeg[n] == 0 {
				ready = append(ready, n)
			}
		}
	}
}
