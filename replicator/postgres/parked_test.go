package postgres

import (
	"strings"
	"testing"
	"time"

	"github.com/polyregion/polyregion/replicator"
)

func usersShape(key ...int) replicator.Shape {
	return replicator.Shape{Table: "public.users", Columns: []string{"user_id", "email", "name"}, Types: []string{"integer", "text", "text"}, Key: key}
}

func TestShapeDifferenceNamesBothPrimaryKeys(t *testing.T) {
	here, change := usersShape(0, 1), usersShape(0)
	got := shapeDifference(here, change)
	if want := "primary key is (user_id, email) here and (user_id) in the change"; got != want {
		t.Fatalf("difference %q, want %q", got, want)
	}
	if got := shapeDifference(here, usersShape(1, 0)); !strings.Contains(got, "(user_id, email) here and (email, user_id)") {
		t.Errorf("key order not named: %q", got)
	}
	if got := shapeDifference(here, here); got != "" {
		t.Errorf("equal shapes differ: %q", got)
	}
	// Same columns in another order, same key: no difference.
	moved := replicator.Shape{Table: "public.users", Columns: []string{"name", "email", "user_id"}, Types: []string{"text", "text", "integer"}, Key: []int{2, 1}}
	if got := shapeDifference(here, moved); got != "" {
		t.Errorf("reordered columns differ: %q", got)
	}
	// A column and the key both differ: both named.
	wider := usersShape(0)
	wider.Columns = append(wider.Columns, "color")
	wider.Types = append(wider.Types, "text")
	got = shapeDifference(here, wider)
	if !strings.Contains(got, `"color"`) || !strings.Contains(got, "primary key is (user_id, email) here and (user_id)") {
		t.Errorf("column and key difference: %q", got)
	}
}

func TestShapeKeyTellsKeysApart(t *testing.T) {
	if shapeKey(usersShape(0)) == shapeKey(usersShape(0, 1)) {
		t.Fatal("shapes with different primary keys share a key")
	}
	if a, b := shapeKey(usersShape(0, 1)), shapeKey(usersShape(0, 1)); a != b {
		t.Fatal("equal shapes have different keys")
	}
	if shapeKey(usersShape(0)) == "" {
		t.Fatal("a shape's key is the loaded marker")
	}
}

func TestParkedShapeReasonIsLoggedOnceAndWhenItChanges(t *testing.T) {
	p := newParkedShapes()
	k := shapeKey(usersShape(0))
	steps := []struct {
		why              string
		changed, matches bool
	}{
		{"primary key differs", true, false},  // first set aside: logged
		{"primary key differs", false, false}, // every retry after: silent
		{"primary key differs", false, false},
		{"column \"x\" missing", true, false}, // new reason: logged
		{"", false, true},                     // matches now: its changes are made due
		{"", false, false},                    // and only once
		{"primary key differs", true, false},  // differs again: logged again
	}
	for i, s := range steps {
		changed, matches := p.note(k, s.why)
		if changed != s.changed || matches != s.matches {
			t.Errorf("step %d (%q): changed=%v matches=%v, want %v %v", i, s.why, changed, matches, s.changed, s.matches)
		}
		if got := p.reason(k); got != s.why {
			t.Errorf("step %d: reason %q, want %q", i, got, s.why)
		}
	}
	if p.loaded() || p.settled() {
		t.Fatal("loaded before marked")
	}
	p.mark(loadedReasons)
	if !p.loaded() || p.settled() || p.reason("") != "" {
		t.Fatal("reasons loaded marker")
	}
	p.mark(loadedAll)
	if !p.settled() || p.reason("") != "" {
		t.Fatal("all loaded marker")
	}
	if changed, matches := p.note("", "x"); changed || matches || !p.settled() {
		t.Fatal("the loaded marker was taken for a shape")
	}
}

func TestParkedRetryDelayGrowsToItsCap(t *testing.T) {
	want := []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for tries, w := range want {
		if got := retryDelay(tries, parkedDataRetryMax); got != w {
			t.Errorf("retryDelay(%d) = %v, want %v", tries, got, w)
		}
	}
	if got := retryDelay(1_000_000, parkedShapeRetryMax); got != parkedShapeRetryMax {
		t.Errorf("retryDelay(many) = %v, want the cap %v", got, parkedShapeRetryMax)
	}
}
