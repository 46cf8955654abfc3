package postgres

import (
	"fmt"
	"slices"
	"testing"
)

func TestKeyLockIDsAreAscendingDistinctAndBounded(t *testing.T) {
	keys := []metaKey{{"public.a", `["2"]`}, {"public.a", `["1"]`}, {"public.b", `["1"]`}, {"public.a", `["2"]`}}
	ids := keyLockIDs(keys)
	if len(ids) != 3 {
		t.Fatalf("%d ids for 3 distinct keys: %v", len(ids), ids)
	}
	if !slices.IsSorted(ids) {
		t.Fatalf("ids not ascending (appliers would take them in different orders): %v", ids)
	}
	// The table is part of the key: the same key in two tables differs.
	if a, b := keyLockIDs(keys[1:2]), keyLockIDs(keys[2:3]); a[0] == b[0] {
		t.Fatalf("public.a and public.b's key [1] share a lock id %d", a[0])
	}
	// Deterministic: every applier of the region names a key alike.
	if again := keyLockIDs(keys); !slices.Equal(ids, again) {
		t.Fatalf("ids differ between calls: %v, %v", ids, again)
	}
	many := make([]metaKey, keyLockLimit+1)
	for i := range many {
		many[i] = metaKey{"public.a", fmt.Sprintf(`["%d"]`, i)}
	}
	if got := keyLockIDs(many); got != nil {
		t.Fatalf("%d keys (over the limit of %d) gave %d ids, want none (the wide lock instead)", len(many), keyLockLimit, len(got))
	}
	if got := keyLockIDs(many[:keyLockLimit]); len(got) != keyLockLimit {
		t.Fatalf("%d keys (the limit) gave %d ids", keyLockLimit, len(got))
	}
}
