package postgres

import (
	"fmt"
	"strings"
	"testing"

	"github.com/polyregion/polyregion/replicator"
)

// groupsOf adds the writes ("insert a k1", "update b k2", "delete c k3";
// updates set every non-key column, "update b k2 key" none) and describes
// the groups formed, as "kind table keys" separated by " | ".
func groupsOf(t *testing.T, commute map[string]commuting, writes ...string) string {
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
		if f[0] == "update" && len(f) > 3 {
			row[1] = replicator.Value{Unchanged: true} // "update a 1 key": only the key column is set
		}
		b.add(op{kind: kind, sh: sh, key: fmt.Sprintf("[%q]", f[2]), row: row}, func(tbl string) commuting { return commute[strings.TrimPrefix(tbl, "public.")] })
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
	alone := commuting{tables: true}
	both := map[string]commuting{"a": alone, "b": alone}
	cases := []struct {
		name   string
		alone  map[string]commuting
		writes []string
		want   string
	}{
		{"interleaved tables that stand alone merge", both,
			[]string{"update a 1", "insert b 1", "update a 2", "insert b 2", "update a 3", "insert b 3"},
			"2 a 1,2,3 | 1 b 1,2,3"},
		{"a table that does not stand alone keeps the interleaving", map[string]commuting{"a": alone},
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
		{"nothing moves past a table that does not stand alone", both,
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

// A table whose rows commute (nothing but the primary key ties two rows)
// merges its writes past its own writes of other rows; a row's own writes
// keep their order, and so does every write of a table whose rows do not
// commute.
func TestBulkGroupsWritesOfRowsThatCommute(t *testing.T) {
	rows := commuting{tables: true, rows: true}
	cases := []struct {
		name    string
		commute map[string]commuting
		writes  []string
		want    string
	}{
		{"updates of other columns in between: each set of columns merges", map[string]commuting{"a": rows},
			[]string{"update a 1", "update a 2 key", "update a 3", "update a 4 key", "update a 5"},
			"2 a 1,3,5 | 2 a 2,4"},
		{"other kinds of write in between", map[string]commuting{"a": rows},
			[]string{"insert a 1", "delete a 7", "insert a 2", "update a 8", "insert a 3", "delete a 9"},
			"1 a 1,2,3 | 3 a 7,9 | 2 a 8"},
		{"a row written again stays after its earlier write", map[string]commuting{"a": rows},
			[]string{"update a 1", "update a 2 key", "update a 1", "update a 3"},
			"2 a 1 | 2 a 2 | 2 a 1,3"},
		{"a write does not pass its own row's write of another kind", map[string]commuting{"a": rows},
			[]string{"insert a 1", "delete a 1", "insert a 1", "insert a 2"},
			"1 a 1 | 3 a 1 | 1 a 1,2"},
		{"and past tables that stand alone", map[string]commuting{"a": rows, "b": {tables: true}},
			[]string{"update a 1", "insert b 1", "update a 2 key", "insert b 2", "update a 3"},
			"2 a 1,3 | 1 b 1,2 | 2 a 2"},
		{"rows that do not commute keep the source's order", map[string]commuting{"a": {tables: true}},
			[]string{"update a 1", "update a 2 key", "update a 3"},
			"2 a 1 | 2 a 2 | 2 a 3"},
		{"nothing moves past a table that does not stand alone", map[string]commuting{"a": rows},
			[]string{"update a 1", "insert c 1", "update a 2", "update a 3 key", "update a 4"},
			"2 a 1 | 1 c 1 | 2 a 2,4 | 2 a 3"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := groupsOf(t, c.commute, c.writes...); got != c.want {
				t.Errorf("groups\n got %s\nwant %s", got, c.want)
			}
		})
	}
}
