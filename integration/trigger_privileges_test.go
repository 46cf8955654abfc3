package integration

import (
	"context"
	"strings"
	"testing"
	"time"
)

// hostileSchema: the application's table, a log the application's own
// trigger writes, and a trigger function that tries to reach the
// replicator's tables: read them, change them, and switch back to the
// replicator's role first. It runs as an ordinary AFTER trigger and as a
// deferred constraint trigger (which fires at commit).
var hostileSchema = []string{
	kvSchema[0],
	`CREATE TABLE public.trigger_log (id bigserial PRIMARY KEY, trig text, session text DEFAULT session_user, as_user text, attempt text, outcome text)`,
	`CREATE FUNCTION public.hostile() RETURNS trigger LANGUAGE plpgsql AS $$
	DECLARE r text;
	BEGIN
		BEGIN PERFORM pg_catalog.count(*) FROM polyregion.peer_ack; r := 'allowed';
		EXCEPTION WHEN others THEN r := 'refused: ' || SQLERRM; END;
		INSERT INTO public.trigger_log (trig, as_user, attempt, outcome) VALUES (TG_NAME, current_user, 'read', r);
		BEGIN UPDATE polyregion.applied SET applied_at = '2000-01-01'; r := 'allowed';
		EXCEPTION WHEN others THEN r := 'refused: ' || SQLERRM; END;
		INSERT INTO public.trigger_log (trig, as_user, attempt, outcome) VALUES (TG_NAME, current_user, 'change', r);
		BEGIN
			EXECUTE 'RESET ROLE';
			UPDATE polyregion.applied SET applied_at = '2000-01-01'; r := 'allowed';
			EXECUTE 'SET ROLE app';
		EXCEPTION WHEN others THEN r := 'refused: ' || SQLERRM; END;
		INSERT INTO public.trigger_log (trig, as_user, attempt, outcome) VALUES (TG_NAME, current_user, 'escape', r);
		-- A plain SET outlasts the function that ran it: with the owner's
		-- schema first, its operator would run in the replicator's later
		-- statements.
		SET search_path = public, pg_catalog;
		SET TimeZone = 'Pacific/Chatham';
		RETURN NULL;
	END $$`,
	`CREATE FUNCTION public.spy_eq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
		IF current_user <> 'app' THEN
			INSERT INTO public.trigger_log (trig, as_user, attempt, outcome) VALUES ('operator', current_user, 'hijack', 'ran as ' || current_user);
		END IF;
		RETURN a OPERATOR(pg_catalog.=) b;
	END $$`,
	`CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.spy_eq)`,
	// Prepared statements outlast the function and its role: one put in
	// place of a statement the replicator's session prepared would run with
	// the replicator's privileges the next time it executes that statement.
	`CREATE FUNCTION public.stolen() RETURNS bigint LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO public.trigger_log (trig, as_user, attempt, outcome) VALUES ('prepared', current_user, 'hijack', 'ran as ' || current_user);
		UPDATE polyregion.applied SET applied_at = '2000-01-01';
		RETURN 0;
	END $$`,
	`CREATE FUNCTION public.swap_statements() RETURNS trigger LANGUAGE plpgsql AS $$
	DECLARE s record;
	BEGIN
		FOR s IN SELECT name, parameter_types FROM pg_catalog.pg_prepared_statements WHERE NOT from_sql LOOP
			EXECUTE pg_catalog.format('DEALLOCATE %I', s.name);
			EXECUTE pg_catalog.format('PREPARE %I%s AS SELECT public.stolen()', s.name,
				CASE WHEN pg_catalog.cardinality(s.parameter_types) > 0
					THEN '(' || pg_catalog.array_to_string(s.parameter_types::text[], ',') || ')' ELSE '' END);
		END LOOP;
		RETURN NULL;
	END $$`,
	`CREATE TRIGGER swap_statements AFTER INSERT OR UPDATE OR DELETE ON public.kv FOR EACH ROW EXECUTE FUNCTION public.swap_statements()`,
	`CREATE TRIGGER hostile AFTER INSERT OR UPDATE OR DELETE ON public.kv FOR EACH ROW EXECUTE FUNCTION public.hostile()`,
	`CREATE CONSTRAINT TRIGGER hostile_deferred AFTER INSERT OR UPDATE ON public.kv DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.hostile()`,
}

// TestApplicationTriggersCannotReachTheReplicatorsTables: peers' changes
// are applied with the table owner's privileges. An application's
// trigger, ordinary or deferred to commit, fired by an applied row runs as
// the owner and can neither read nor change the replicator's tables, nor
// switch back to the replicator's role, nor put a statement of its own in
// place of one the replicator's session prepared; the rows replicate as
// usual.
func TestApplicationTriggersCannotReachTheReplicatorsTables(t *testing.T) {
	h := startRegions(t, Spec{Regions: []string{"us", "eu"}, SchemaSQL: hostileSchema, Tables: []TableSpec{{Name: "public.kv"}}})
	ctx := ctxFor(t, 3*time.Minute)
	us, eu := h.Regions[0], h.Regions[1]

	mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES (1, 'a'), (2, 'b')`)
	mustExec(t, ctx, us, `UPDATE public.kv SET val = 'c' WHERE id = 1`)
	mustExec(t, ctx, us, `DELETE FROM public.kv WHERE id = 2`)
	mustExec(t, ctx, eu, `INSERT INTO public.kv (id, val) VALUES (3, 'local')`) // eu's own write
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv WHERE (id = 1 AND val = 'c') OR id = 3`, 2)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv WHERE id = 2`, 0)
	waitRow(t, ctx, us, `SELECT count(*) FROM public.kv WHERE id = 3`, 1)

	for _, r := range h.Regions {
		if got := queryString(t, ctx, r, `SELECT coalesce(string_agg(outcome, '; '), '') FROM public.trigger_log WHERE trig = 'prepared'`); got != "" {
			t.Fatalf("%s: a statement an application trigger prepared in place of the replicator's ran: %s", r.Name, got)
		}
	}
	// Triggers fired by applied rows in eu: every one, ordinary and deferred.
	rows := triggersRanAsTheOwner(t, ctx, eu, "applied")
	// More applied writes after the triggers' SETs: the replicator's
	// statements must not have met the owner's operator.
	mustExec(t, ctx, us, `INSERT INTO public.kv (id, val) VALUES (4, 'd')`)
	mustExec(t, ctx, us, `UPDATE public.kv SET val = 'e' WHERE id = 4`)
	waitRow(t, ctx, eu, `SELECT count(*) FROM public.kv WHERE id = 4 AND val = 'e'`, 1)
	if got := queryString(t, ctx, eu, `SELECT coalesce(string_agg(DISTINCT outcome, '; '), '') FROM public.trigger_log WHERE trig = 'operator'`); got != "" {
		t.Errorf("the owner's operator ran in the replicator's statements after a trigger's SET search_path: %s", got)
	}
	for _, r := range h.Regions {
		if n := queryInt(t, ctx, r, `SELECT count(*) FROM polyregion.applied WHERE applied_at = '2000-01-01'`); n != 0 {
			t.Errorf("%s: an application trigger changed the replicator's tables (%d rows)", r.Name, n)
		}
	}
	if t.Failed() {
		t.Logf("eu's trigger log:\n%s", rows)
	}
}

// triggersRanAsTheOwner checks that the hostile triggers, ordinary and
// deferred, fired in r's replicator session (by rows it applied or loaded:
// what) and that every one ran as the owner and was refused. It returns
// their log.
func triggersRanAsTheOwner(t *testing.T, ctx context.Context, r *Region, what string) string {
	t.Helper()
	fired := `FROM public.trigger_log WHERE session = 'polyregion'` // the replicator's login role
	if n := queryInt(t, ctx, r, `SELECT count(DISTINCT trig) `+fired); n != 2 {
		t.Fatalf("triggers fired by %s rows in %s: %d kinds, want the ordinary and the deferred one", what, r.Name, n)
	}
	rows := queryString(t, ctx, r, `SELECT coalesce(string_agg(trig || ' as ' || as_user || ': ' || attempt || ' ' || outcome, E'\n' ORDER BY id), '') `+fired)
	for _, l := range strings.Split(rows, "\n") {
		if !strings.Contains(l, " as app: ") || !strings.Contains(l, " refused: ") {
			t.Errorf("an application trigger fired by a row %s in %s got through: %s", what, r.Name, l)
		}
	}
	return rows
}
