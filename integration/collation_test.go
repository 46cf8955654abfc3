package integration

import (
	"testing"
	"time"
)

// TestTextKeysReplicateInAnyCollation: rows keyed by text that the
// database's collation orders otherwise than their bytes (case, accents,
// digits, punctuation; `make test` runs it in the C locale on the system's
// PostgreSQL, with ICU's en-US on 17 and in C.UTF-8 on 18, see
// POLYREGION_TEST_LOCALE) replicate, are edited, deleted and inserted in
// both regions at once, and converge to the rows each write implies.
func TestTextKeysReplicateInAnyCollation(t *testing.T) {
	tables := []TableSpec{{Name: "public.tags"}}
	h := startRegions(t, Spec{
		Regions:   []string{"us", "eu"},
		SchemaSQL: []string{`CREATE TABLE public.tags (name text PRIMARY KEY, n integer NOT NULL)`},
		Tables:    tables,
	})
	ctx := ctxFor(t, 2*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]
	// The collation the run asked for (see localeArgs): a run in another
	// locale must not pass on a database in the C locale.
	collation := queryString(t, ctx, us, `SELECT d.datlocprovider::text || ':' || coalesce(to_jsonb(d)->>'datlocale', to_jsonb(d)->>'daticulocale', d.datcollate)
		FROM pg_catalog.pg_database d WHERE d.datname = current_database()`)
	t.Logf("database collation: %s", collation)
	provider, locale := RequestedLocale()
	want := string(provider) + ":" + locale
	if collation != want {
		t.Fatalf("the database's collation is %s, want %s", collation, want)
	}
	names := []string{"a", "B", "b", "é", "e", "Z", "10", "9", "straße", "strasse", "Ä", "ä", "a b", "a-b"}
	for i, name := range names {
		mustExec(t, ctx, us, `INSERT INTO public.tags (name, n) VALUES ($1, $2)`, name, i)
	}
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	// Both regions write the same keys at once: edits, a delete, a key
	// inserted in both.
	mustExec(t, ctx, us, `UPDATE public.tags SET n = n + 100 WHERE name IN ('é', 'B', 'straße')`)
	mustExec(t, ctx, eu, `UPDATE public.tags SET n = n + 1000 WHERE name IN ('e', 'b', 'strasse')`)
	mustExec(t, ctx, eu, `DELETE FROM public.tags WHERE name IN ('Ä', 'a-b')`)
	mustExec(t, ctx, us, `INSERT INTO public.tags (name, n) VALUES ('Ω', 1)`)
	mustExec(t, ctx, eu, `INSERT INTO public.tags (name, n) VALUES ('ω', 2)`)
	if err := h.WaitConverged(ctx, tableNames(tables), time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, r := range h.Regions {
		// Two deleted, two inserted.
		if got := queryString(t, ctx, r, `SELECT string_agg(name, ' ' ORDER BY name COLLATE "C") FROM public.tags`); got != "10 9 B Z a a b b e strasse straße ä é Ω ω" {
			t.Errorf("%s: tags %q", r.Name, got)
		}
		if got := queryInt(t, ctx, r, `SELECT n FROM public.tags WHERE name = 'straße'`); got != 108 {
			t.Errorf("%s: straße = %d, want 108", r.Name, got)
		}
		if got := queryInt(t, ctx, r, `SELECT n FROM public.tags WHERE name = 'strasse'`); got != 1009 {
			t.Errorf("%s: strasse = %d, want 1009", r.Name, got)
		}
	}
}
