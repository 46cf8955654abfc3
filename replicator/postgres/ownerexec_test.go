package postgres

import "testing"

func TestRewriteParamsLeavesQuotedTextAlone(t *testing.T) {
	for in, want := range map[string]string{
		`UPDATE "t$1" AS t SET "a""$2" = $1::int WHERE k = $12::text`: `UPDATE "t$1" AS t SET "a""$2" = $1[1]::int WHERE k = $1[12]::text`,
		`SELECT 'x$3''$4', $2`:          `SELECT 'x$3''$4', $1[2]`,
		`pg_catalog.unnest($3::text[])`: `pg_catalog.unnest($1[3]::text[])`,
		`SET CONSTRAINTS ALL IMMEDIATE`: `SET CONSTRAINTS ALL IMMEDIATE`,
		`x = $`:                         `x = $`,
	} {
		if got := rewriteParams(in, false); got != want {
			t.Errorf("rewriteParams(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestArgTextWritesArrayLiteralsPostgreSQLReadsBack(t *testing.T) {
	q, bs, empty := `a"b`, `c\d`, ""
	for _, c := range []struct {
		in   any
		want string
	}{
		{[]string{"x", q, bs, empty, "NULL"}, `{"x","a\"b","c\\d","","NULL"}`},
		{[]*string{nil, &q}, `{NULL,"a\"b"}`},
		{[]int64{1, -2}, `{1,-2}`},
		{"plain", "plain"},
		{int64(7), "7"},
	} {
		got, err := argText(c.in)
		if err != nil || got == nil || *got != c.want {
			t.Errorf("argText(%#v) = %v, %v; want %q", c.in, got, err, c.want)
		}
	}
	if got, err := argText(nil); got != nil || err != nil {
		t.Errorf("argText(nil) = %v, %v; want NULL", got, err)
	}
	if _, err := argText(3.5); err == nil {
		t.Error("argText(float64) has no text form and must say so")
	}
}

func TestOwnerStmtKeepsWhatTheStatementMustAffect(t *testing.T) {
	s, err := ownerStmt("polyregion.exec_as_10", stmt{sql: "DELETE FROM t WHERE k = $1::int", args: []any{"5"}, want: 1, table: "public.t"})
	if err != nil {
		t.Fatal(err)
	}
	if s.sql != "SELECT polyregion.exec_as_10($1, $2::text[])" || !s.counted || s.want != 1 {
		t.Fatalf("ownerStmt = %+v", s)
	}
	if s.args[0] != "DELETE FROM t WHERE k = $1[1]::int" {
		t.Fatalf("statement sent = %q", s.args[0])
	}
}

func TestOwnerStmtSendsSetBasedParametersAsRows(t *testing.T) {
	x := "x"
	s, err := ownerStmt("polyregion.exec_as_10", stmt{sql: "UPDATE t SET v = u.v FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS u(k, v) WHERE t.k = u.k::int",
		args: []any{[]string{"1", "2"}, []*string{&x, nil}}, want: 2, table: "public.t"})
	if err != nil {
		t.Fatal(err)
	}
	if want := "UPDATE t SET v = u.v FROM ROWS FROM (pg_catalog.unnest($1[1:1]::text[]), pg_catalog.unnest($1[2:2]::text[])) AS u(k, v) WHERE t.k = u.k::int"; s.args[0] != want {
		t.Fatalf("statement sent = %q", s.args[0])
	}
	rows, ok := s.args[1].([][]*string)
	if !ok || len(rows) != 2 || *rows[0][1] != "2" || rows[1][1] != nil {
		t.Fatalf("rows sent = %#v", s.args[1])
	}
	// Arrays of different lengths (or scalars) go as text forms.
	s, err = ownerStmt("f", stmt{sql: "$1 $2", args: []any{[]string{"1"}, []string{"1", "2"}}})
	if err != nil || s.args[0] != "$1[1] $1[2]" {
		t.Fatalf("mixed lengths: %q, %v", s.args[0], err)
	}
}
