package integration

import (
	"strings"
	"testing"
	"time"
)

// TestJoinLoadsAsTheOwnerUnlessTheCopyRunsNoCode: a joining region loads a
// table whose triggers fire on insert through its owner's function (the
// triggers run as the owner and reach none of the replicator's tables),
// and a table into which a COPY runs no code directly. A table with a check
// constraint, or a column of a domain, goes through the owner too.
func TestJoinLoadsAsTheOwnerUnlessTheCopyRunsNoCode(t *testing.T) {
	schema := append(append([]string(nil), hostileSchema...),
		`CREATE TABLE public.plain (id integer PRIMARY KEY, val text NOT NULL)`,
		`CREATE TABLE public.checked (id integer PRIMARY KEY, val text NOT NULL CHECK (val <> ''))`,
		`CREATE DOMAIN public.label AS text CHECK (VALUE <> '')`,
		`CREATE TABLE public.labelled (id integer PRIMARY KEY, val public.label NOT NULL)`)
	tables := []TableSpec{{Name: "public.kv"}, {Name: "public.plain"}, {Name: "public.checked"}, {Name: "public.labelled"}}
	h := startClusters(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: schema, Tables: tables})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) SELECT g, 'v' || g FROM generate_series(1, 50) g`)
	for _, tbl := range []string{"plain", "checked", "labelled"} {
		mustExec(t, ctx, us, `INSERT INTO public.`+tbl+` (id, val) SELECT g, 'v' || g FROM generate_series(1, 50) g`)
	}
	startReady(t, ctx, us)
	joinFrom(t, ctx, eu, "us", 2*time.Minute)
	for _, tbl := range []string{"kv", "plain", "checked", "labelled"} {
		if n := queryInt(t, ctx, eu, `SELECT count(*) FROM public.`+tbl); n != 50 {
			t.Fatalf("eu loaded %d rows of public.%s, want 50", n, tbl)
		}
	}
	logs := eu.Logs(1 << 22)
	for tbl, how := range map[string]string{"public.kv": "as its owner", "public.plain": "directly", "public.checked": "as its owner", "public.labelled": "as its owner"} {
		if !strings.Contains(logs, `"msg":"snapshot: table loaded","region":"eu","table":"`+tbl+`","rows":50,"copied":"`+how+`"`) {
			t.Errorf("eu's log does not say %s was copied %s", tbl, how)
		}
	}
	// Every trigger the load fired ran as the owner and was refused.
	triggersRanAsTheOwner(t, ctx, eu, "loaded")
	if t.Failed() {
		t.Logf("eu's log:\n%s", eu.Logs(8000))
	}
}
