package replicator

import (
	"strings"
	"testing"

	"github.com/polyregion/polyregion/conflict"
)

func shape() Shape {
	return Shape{Table: "public.t", Columns: []string{"a", "b", "c"}, Types: []string{"integer", "text", "date"}, Key: []int{2, 0}}
}

func TestKeyOfIsCanonicalJSONInKeyOrder(t *testing.T) {
	k, err := shape().KeyOf([]Value{{Text: "7"}, {Text: "x"}, {Text: `2026-01-01 "q"`}})
	if err != nil {
		t.Fatal(err)
	}
	if want := `["2026-01-01 \"q\"","7"]`; k != want {
		t.Fatalf("key %s, want %s", k, want)
	}
	if _, err := shape().KeyOf([]Value{{Null: true}, {}, {Text: "d"}}); err == nil || !strings.Contains(err.Error(), `"a"`) {
		t.Fatalf("NULL key column: %v", err)
	}
}

func TestShapeDiffNamesTheDifference(t *testing.T) {
	a := shape()
	cases := []struct {
		mod  func(*Shape)
		want string
	}{
		{func(s *Shape) {}, ""},
		{func(s *Shape) {
			s.Columns = []string{"c", "b", "a"}
			s.Types = []string{"date", "text", "integer"}
			s.Key = []int{0, 2}
		}, ""},
		{func(s *Shape) { s.Types[1] = "varchar(3)" }, `column "b" is text on one side and varchar(3) on the other`},
		{func(s *Shape) { s.Columns = append(s.Columns, "d"); s.Types = append(s.Types, "text") }, `column "d" missing on one side`},
		{func(s *Shape) { s.Columns, s.Types = s.Columns[:2], s.Types[:2]; s.Key = []int{0} }, `column "c" missing on one side`},
		{func(s *Shape) { s.Key = []int{0} }, "primary keys differ"},
	}
	for i, c := range cases {
		b := shape()
		b.Columns = append([]string(nil), b.Columns...)
		b.Types = append([]string(nil), b.Types...)
		c.mod(&b)
		if got := a.Diff(b); got != c.want {
			t.Errorf("case %d: Diff = %q, want %q", i, got, c.want)
		}
	}
}

func TestDecodeTxnRejectsMalformed(t *testing.T) {
	good := &Txn{Origin: "us", Seq: 3, Shapes: []Shape{shape()}, Changes: []Change{{T: 0, Op: conflict.OpInsert, Key: `["d","1"]`, Row: []Value{{Text: "1"}, {Null: true}, {Text: "d"}}}}}
	b, err := good.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeTxn(b)
	if err != nil || back.Seq != 3 || !back.Changes[0].Row[1].Null {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	bad := *good
	bad.Changes = []Change{{T: 1, Op: conflict.OpInsert}}
	b, _ = bad.Encode()
	if _, err := DecodeTxn(b); err == nil || !strings.Contains(err.Error(), "names shape 1") {
		t.Fatalf("bad shape index: %v", err)
	}
	bad.Changes = []Change{{T: 0, Op: conflict.OpUpdate, Row: []Value{{Text: "1"}}}}
	b, _ = bad.Encode()
	if _, err := DecodeTxn(b); err == nil || !strings.Contains(err.Error(), "1 values for 3 columns") {
		t.Fatalf("short row: %v", err)
	}
	if _, err := DecodeTxn([]byte("{")); err == nil {
		t.Fatal("truncated payload decoded")
	}
}
