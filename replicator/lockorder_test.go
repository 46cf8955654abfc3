package replicator

import (
	"math/rand"
	"slices"
	"testing"
)

func inOrder(o *TableOrder, tables ...string) []string {
	out := slices.Clone(tables)
	o.Sort(out)
	return out
}

func TestTableOrderFollowsTheApplicationsWriteOrder(t *testing.T) {
	o := NewTableOrder()
	// Unknown tables: by name.
	if got := inOrder(o, "public.total", "public.client", "public.bucket"); !slices.Equal(got, []string{"public.bucket", "public.client", "public.total"}) {
		t.Fatalf("unknown tables: got %v", got)
	}
	// The rate-limit transaction: client, then bucket, then total, then history.
	o.Observe([]string{"public.client", "public.bucket", "public.total", "public.history"})
	want := []string{"public.client", "public.bucket", "public.total", "public.history"}
	if got := inOrder(o, "public.history", "public.total", "public.bucket", "public.client"); !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	// A transaction writing two of them the other way round keeps the
	// first order seen.
	o.Observe([]string{"public.total", "public.client"})
	if got := inOrder(o, "public.total", "public.client"); !slices.Equal(got, []string{"public.client", "public.total"}) {
		t.Fatalf("reversed observation changed the order: %v", got)
	}
	// A new table seen after total goes after it; one never seen with the
	// others goes by name among the free ones.
	o.Observe([]string{"public.total", "public.audit"})
	got := inOrder(o, "public.audit", "public.total", "public.client", "public.zzz")
	if i, j := slices.Index(got, "public.total"), slices.Index(got, "public.audit"); i > j {
		t.Fatalf("audit before total: %v", got)
	}
	if got[0] != "public.client" {
		t.Fatalf("client not first: %v", got)
	}
}

// Whatever transactions are observed, in whatever order, the order stays a
// strict total order that agrees with every kept pair: appliers sharing it
// never lock two tables in opposite orders.
func TestTableOrderIsAlwaysConsistent(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	names := []string{"a", "b", "c", "d", "e", "f"}
	for round := 0; round < 200; round++ {
		o := NewTableOrder()
		type pair struct{ a, b string }
		var kept []pair
		for i := 0; i < 20; i++ {
			txn := slices.Clone(names[:1+rng.Intn(len(names))])
			rng.Shuffle(len(txn), func(i, j int) { txn[i], txn[j] = txn[j], txn[i] })
			txn = txn[:1+rng.Intn(len(txn))]
			// A pair is kept when it was first seen in that direction: it
			// must then hold in every order computed afterwards.
			o.Observe(txn)
			for a, next := range o.before {
				for b := range next {
					kept = append(kept, pair{a, b})
				}
			}
			all := slices.Clone(names)
			o.Sort(all)
			pos := map[string]int{}
			for i, n := range all {
				pos[n] = i
			}
			for _, p := range kept {
				if pos[p.a] >= pos[p.b] {
					t.Fatalf("round %d: kept pair %s<%s violated by %v", round, p.a, p.b, all)
				}
			}
		}
	}
}
