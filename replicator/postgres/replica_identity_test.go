package postgres

import (
	"testing"

	"github.com/jackc/pglogrepl"
)

// The stream's description of a relation tells whether its old rows carry
// the primary key: DEFAULT and FULL flag the key columns, an identity
// index flags its own, NOTHING flags none.
func TestIdentityLogsKeyFromTheStreamsFlags(t *testing.T) {
	cols := func(flags ...uint8) []*pglogrepl.RelationMessageColumn {
		var out []*pglogrepl.RelationMessageColumn
		for _, f := range flags {
			out = append(out, &pglogrepl.RelationMessageColumn{Flags: f})
		}
		return out
	}
	for _, c := range []struct {
		name  string
		ident uint8
		flags []uint8
		key   []int
		want  bool
	}{
		{"default", 'd', []uint8{1, 0, 0}, []int{0}, true},
		{"full", 'f', []uint8{1, 1, 1}, []int{0}, true},
		{"index holding the key", 'i', []uint8{1, 1, 0}, []int{0}, true},
		{"index without the key", 'i', []uint8{0, 1, 0}, []int{0}, false},
		{"index with half of a two-column key", 'i', []uint8{1, 0, 1}, []int{0, 1}, false},
		{"nothing", 'n', []uint8{0, 0, 0}, []int{0}, false},
	} {
		msg := &pglogrepl.RelationMessage{ReplicaIdentity: c.ident, Columns: cols(c.flags...)}
		if got := identityLogsKey(msg, c.key); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
