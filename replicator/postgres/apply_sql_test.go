package postgres

import (
	"fmt"
	"strings"
	"testing"

	"github.com/polyregion/polyregion/replicator"
)

// groupsOf adds the writes ("insert a k1", "update b k2", "delete c k3";
// updates set every non-key column) and describes the groups formed, as
// "kind table keys" separated by " | ".
func groupsOf(t *testing.T, alone map[string]bool, writes ...string) string {
	t.Helper()
	shapes := map[string]*replicator.Shape{}
	var b bulk
	for _, w := range writes {
		f := strings.Fields(w)
		sh, ok := shapes[f[1]]
		if !ok {
			sh = &replicator.Shape{Table: "public." + f[1], Columns: []string{"id", "v"}, Types: []string{"bigint", "text"}, Key: []int{0}}
			shapes[f[1]] = sh
		}
		kind := map[string]opKind{"insert": opInsert, "update": opUpdate, "delete": opDelete}[f[0]]
		row := []replicator.Value{{Text: f[2]}, {Text: "x"}}
		b.add(op{kind: kind, sh: sh, key: fmt.Sprintf("[%q]", f[2]), row: row}, func(tbl string) bool { return alone[strings.TrimPrefix(tbl, "public.")] })
	}
	var out []string
	for _, g := range b.groups {
		var keys []string
		for _, o := range g.ops {
			keys = append(keys, o.row[0].Text)
		}
		out = append(out, fmt.Sprintf("%d %s %s", g.kind, strings.TrimPrefix(g.sh.Table, "public."), strings.Join(keys, ",")))
	}
	return strings.Join(out, " | ")
}

func TestBulkGroupsWritesOfTablesThatStandAlone(t *testing.T) {
	both := map[string]bool{"a": true, "b": true}
	cases := []struct {
		name   string
		alone  map[string]bool
		writes []string
		want   string
	}{
		{"interleaved tables that stand alone merge", both,
			[]string{"update a 1", "insert b 1", "update a 2", "insert b 2", "update a 3", "insert b 3"},
			"2 a 1,2,3 | 1 b 1,2,3"},
		{"a table that does not stand alone keeps the interleaving", map[string]bool{"a": true},
			[]string{"update a 1", "insert b 1", "update a 2", "insert b 2"},
			"2 a 1 | 1 b 1 | 2 a 2 | 1 b 2"},
		{"no table stands alone: only consecutive writes merge", nil,
			[]string{"insert a 1", "insert a 2", "insert b 1", "insert a 3"},
			"1 a 1,2 | 1 b 1 | 1 a 3"},
		{"a key written again starts a group, and later writes join it", both,
			[]string{"update a 1", "insert b 1", "update a 1", "insert b 2", "update a 2"},
			"2 a 1 | 1 b 1,2 | 2 a 1,2"},
		{"another kind of write to the same table in between stops the search", both,
			[]string{"insert a 1", "insert b 1", "delete a 7", "insert b 2", "insert a 2"},
			"1 a 1 | 1 b 1,2 | 3 a 7 | 1 a 2"},
		{"nothing moves past a table that does not stand alone", map[string]bool{"a": true, "b": true},
			[]string{"insert a 1", "insert c 1", "insert b 1", "insert a 2"},
			"1 a 1 | 1 c 1 | 1 b 1 | 1 a 2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := groupsOf(t, c.alone, c.writes...); got != c.want {
				t.Errorf("groups\n got %s\nwant %s", got, c.want)
			}
		})
	}
}
