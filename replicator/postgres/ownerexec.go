package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Applied changes run with the privileges of the table's owner, not the
// replicator's: an application's trigger (or a default, check or index
// expression) fired by an applied row must not reach the replicator's own
// tables. PostgreSQL 16's apply worker does the same (run_as_owner off).
//
// Each owner of replicated tables gets polyregion.exec_as_<owner oid>, a
// SECURITY DEFINER function the owner owns, which runs one statement with
// its arguments (as text). Inside a security-definer function PostgreSQL
// refuses SET ROLE and RESET ROLE, so code fired by the statement cannot
// switch back to the replicator's role; the owner has no privilege on the
// polyregion schema, so that code can neither read nor change it. Only the
// replicator may execute the functions, and the owners cannot reach them
// (no USAGE on the schema) to change them.
//
// Tables owned by a superuser or by the replicator's own role gain nothing
// from this (their triggers would run with those privileges anyway); their
// changes are applied directly, and Preflight reports them.

// execAsName is the function that runs statements as the role with oid.
func execAsName(owner uint32) string {
	return "polyregion.exec_as_" + strconv.FormatUint(uint64(owner), 10)
}

// prepareOwnerExec creates (or refreshes) the exec_as function of every
// owner of tables whose changes must not run as the replicator.
func prepareOwnerExec(ctx context.Context, conn *pgx.Conn, tables []string) error {
	owners, err := tableOwners(ctx, conn, tables)
	if err != nil {
		return err
	}
	for _, o := range owners {
		if !o.confined() {
			continue
		}
		if err := createExecAs(ctx, conn, o); err != nil {
			return fmt.Errorf("prepare applying as %s (owner of %s): %w", o.name, strings.Join(o.tables, ", "), err)
		}
	}
	return nil
}

type tableOwner struct {
	oid    uint32
	name   string
	super  bool
	self   bool // the replicator's own role
	tables []string
}

// confined reports whether applying as the owner takes privileges away.
func (o tableOwner) confined() bool { return !o.super && !o.self }

func tableOwners(ctx context.Context, conn *pgx.Conn, tables []string) ([]tableOwner, error) {
	list := qualifiedNames(tables)
	rows, err := conn.Query(ctx, `SELECT r.oid::int8, r.rolname, r.rolsuper, r.rolname = current_user,
			pg_catalog.array_agg(n.nspname || '.' || c.relname ORDER BY 1)
		FROM pg_catalog.unnest($1::text[]) AS t(name)
		JOIN pg_catalog.pg_class c ON c.oid = t.name::pg_catalog.regclass
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_catalog.pg_roles r ON r.oid = c.relowner
		GROUP BY 1, 2, 3, 4 ORDER BY 1`, list)
	if err != nil {
		return nil, fmt.Errorf("table owners: %w", err)
	}
	defer rows.Close()
	var out []tableOwner
	for rows.Next() {
		var o tableOwner
		var oid int64
		if err := rows.Scan(&oid, &o.name, &o.super, &o.self, &o.tables); err != nil {
			return nil, fmt.Errorf("table owners: %w", err)
		}
		o.oid = uint32(oid)
		out = append(out, o)
	}
	return out, rows.Err()
}

// execAsBody runs stmt, whose parameters are $1[1], $1[2], ... (see
// ownerStmt), and returns the rows it processed.
//
// Code the statement fires may SET (not SET LOCAL) a setting: that outlasts
// the call, in the replicator's session, even past the function's own SET
// clause. A search_path naming the owner's schema first would let the
// owner's operators and functions run as the replicator in every later
// statement; time zone and date style would change keys and row images.
// So every setting a session may change that the replicator depends on is
// put back as it was when the call began.
const execAsBody = `RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
DECLARE
	n bigint;
	names text[] := '{search_path,TimeZone,DateStyle,IntervalStyle,extra_float_digits,client_encoding,standard_conforming_strings,bytea_output,synchronous_commit,lock_timeout,statement_timeout,default_transaction_read_only,default_transaction_isolation,idle_in_transaction_session_timeout,idle_session_timeout,transaction_timeout,` + ExactMerges + `}';
	saved text[];
BEGIN
	saved := ` + settingsNow + `;
	EXECUTE stmt USING args;
	GET DIAGNOSTICS n = ROW_COUNT;
	-- No operator by name: the search_path in force may be the owner's.
	IF ` + settingsNow + ` OPERATOR(pg_catalog.<>) saved THEN
		FOR i IN 1 .. pg_catalog.array_length(names, 1) LOOP
			-- NULL: a setting this server does not have (transaction_timeout before 17).
			IF saved[i] IS NOT NULL THEN
				PERFORM pg_catalog.set_config(names[i], saved[i], false);
			END IF;
		END LOOP;
	END IF;
	RETURN n;
END
$body$`

// settingsNow is the value of each of execAsBody's names, in order: one
// expression, so the function evaluates it without running a query.
const settingsNow = `ARRAY[pg_catalog.current_setting('search_path'), pg_catalog.current_setting('TimeZone'),
		pg_catalog.current_setting('DateStyle'), pg_catalog.current_setting('IntervalStyle'),
		pg_catalog.current_setting('extra_float_digits'), pg_catalog.current_setting('client_encoding'),
		pg_catalog.current_setting('standard_conforming_strings'), pg_catalog.current_setting('bytea_output'),
		pg_catalog.current_setting('synchronous_commit'), pg_catalog.current_setting('lock_timeout'),
		pg_catalog.current_setting('statement_timeout'), pg_catalog.current_setting('default_transaction_read_only'),
		pg_catalog.current_setting('default_transaction_isolation'), pg_catalog.current_setting('idle_in_transaction_session_timeout'),
		pg_catalog.current_setting('idle_session_timeout'), pg_catalog.current_setting('transaction_timeout', true),
		pg_catalog.current_setting('` + ExactMerges + `', true)]`

func createExecAs(ctx context.Context, conn *pgx.Conn, o tableOwner) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	fn := execAsName(o.oid)
	sig := fn + "(text, text[])"
	role := quoteIdent(o.name)
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.pg_advisory_xact_lock(7340211)`); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "CREATE OR REPLACE FUNCTION "+fn+"(stmt text, args text[]) "+execAsBody); err != nil {
		return err
	}
	// An owner with CREATE on the schema could replace its function with
	// one that runs as its caller, the replicator: refuse. It is given
	// CREATE only for the moment it takes the function over.
	var hasCreate bool
	if err := tx.QueryRow(ctx, `SELECT pg_catalog.has_schema_privilege($1, 'polyregion', 'CREATE')`, o.name).Scan(&hasCreate); err != nil {
		return err
	}
	if hasCreate {
		return fmt.Errorf("role %s may create objects in the polyregion schema, so code it owns could run as the replicator: REVOKE CREATE ON SCHEMA polyregion FROM %s (and from any role it belongs to)", o.name, role)
	}
	steps := []string{
		"GRANT CREATE ON SCHEMA polyregion TO " + role,
		"ALTER FUNCTION " + sig + " OWNER TO " + role,
		"REVOKE CREATE ON SCHEMA polyregion FROM " + role,
		"REVOKE ALL ON FUNCTION " + sig + " FROM PUBLIC",
		"GRANT EXECUTE ON FUNCTION " + sig + " TO CURRENT_USER",
	}
	for _, s := range steps {
		if _, err := tx.Exec(ctx, s); err != nil {
			if strings.Contains(err.Error(), "must be able to SET ROLE") || strings.Contains(err.Error(), "must be member of role") {
				return fmt.Errorf("the replicator's role must be a member of %s (GRANT %s TO the replicator's role): %w", o.name, role, err)
			}
			return fmt.Errorf("%s: %w", s, err)
		}
	}
	return tx.Commit(ctx)
}

// execAs returns the function the applier runs table's writes through
// ("" to run them directly: the owner is a superuser or the replicator).
func execAs(ctx context.Context, tx pgx.Tx, table string) (string, error) {
	var oid int64
	var confined, exists bool
	// The function counts only as Prepare made it: security definer, owned
	// by the table's owner, without settings of its own but search_path.
	err := tx.QueryRow(ctx, `SELECT r.oid::int8, NOT r.rolsuper AND r.rolname <> current_user,
			EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
				WHERE p.oid = pg_catalog.to_regprocedure('polyregion.exec_as_' || r.oid || '(text, text[])')
				AND p.prosecdef AND p.proowner = c.relowner
				AND p.proconfig OPERATOR(pg_catalog.=) ARRAY['search_path=pg_catalog, pg_temp']::text[])
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles r ON r.oid = c.relowner
		WHERE c.oid = $1::pg_catalog.regclass`, qualified(table)).Scan(&oid, &confined, &exists)
	if err != nil {
		return "", fmt.Errorf("owner of %s: %w", table, err)
	}
	if !confined {
		return "", nil
	}
	if !exists {
		// The table changed owner since the replicator started: restart it
		// (Prepare creates the function) rather than apply with its rights.
		return "", fmt.Errorf("owner of %s: %w", table, errNoExecAs)
	}
	return execAsName(uint32(oid)), nil
}

// ownerRun runs whole-table statements (a load's insert, a re-seed's
// delete) with each table's owner's privileges, as the applier runs its
// writes, and then the deferred triggers they queued inside the first
// owner's function (at commit they would run as the replicator).
type ownerRun struct {
	tx    pgx.Tx
	first string // the first owner's function a statement ran through
}

// fn is the function table's statements run through ("" to run them
// directly: see execAs).
func (o *ownerRun) fn(ctx context.Context, table string) (string, error) {
	fn, err := execAs(ctx, o.tx, table)
	if err == nil && fn != "" && o.first == "" {
		o.first = fn
	}
	return fn, err
}

// exec runs sql, a statement without parameters on table, as its owner and
// returns the rows it processed.
func (o *ownerRun) exec(ctx context.Context, table, sql string) (int64, error) {
	fn, err := o.fn(ctx, table)
	if err != nil {
		return 0, err
	}
	if fn == "" {
		tag, err := o.tx.Exec(ctx, sql)
		return tag.RowsAffected(), err
	}
	var n int64
	err = o.tx.QueryRow(ctx, "SELECT "+fn+"($1, '{}'::text[])", sql).Scan(&n)
	return n, err
}

// deferred runs the deferred triggers queued so far, inside the first
// owner's function (nothing when no statement ran through one).
func (o *ownerRun) deferred(ctx context.Context) error {
	if o.first == "" {
		return nil
	}
	_, err := o.tx.Exec(ctx, "SELECT "+o.first+"('SET CONSTRAINTS ALL IMMEDIATE', NULL)")
	return err
}

var errNoExecAs = errors.New("no function to apply as the table's owner, or not as the replicator made it (the owner changed, or the function was altered): restart the replicator to prepare it")

// ownerStmt rewrites s to run through fn, with every parameter in one
// text[] argument. The set-based statements (every parameter an array of
// one row count) send a two-dimensional array, one row per parameter, in
// binary, and $k becomes $1[k:k] (a 1 x n slice, which unnest reads in
// order); the others send each parameter's text form and $k becomes $1[k].
// The call returns the rows the statement processed.
func ownerStmt(fn string, s stmt) (stmt, error) {
	call := "SELECT " + fn + "($1, $2::text[])"
	if rows, ok := parameterRows(s.args); ok {
		return stmt{sql: call, args: []any{rewriteParams(s.sql, true), rows}, want: s.want, table: s.table, counted: true}, nil
	}
	args := make([]*string, len(s.args))
	for i, a := range s.args {
		t, err := argText(a)
		if err != nil {
			return stmt{}, fmt.Errorf("apply as owner: parameter %d: %w", i+1, err)
		}
		args[i] = t
	}
	return stmt{sql: call, args: []any{rewriteParams(s.sql, false), args}, want: s.want, table: s.table, counted: true}, nil
}

// parameterRows returns args as the rows of a two-dimensional text array
// when every one is a text array of the same, non-zero length.
func parameterRows(args []any) ([][]*string, bool) {
	rows := make([][]*string, len(args))
	for i, a := range args {
		switch v := a.(type) {
		case []*string:
			rows[i] = v
		case []string:
			ps := make([]*string, len(v))
			for j := range v {
				ps[j] = &v[j]
			}
			rows[i] = ps
		default:
			return nil, false
		}
		if len(rows[i]) == 0 || len(rows[i]) != len(rows[0]) {
			return nil, false
		}
	}
	return rows, len(rows) > 0
}

// argText is a parameter's text form (nil for NULL).
func argText(a any) (*string, error) {
	switch v := a.(type) {
	case nil:
		return nil, nil
	case string:
		return &v, nil
	case *string:
		return v, nil
	case []string:
		ps := make([]*string, len(v))
		for i := range v {
			ps[i] = &v[i]
		}
		s := arrayLiteral(ps)
		return &s, nil
	case []*string:
		s := arrayLiteral(v)
		return &s, nil
	case int64:
		s := strconv.FormatInt(v, 10)
		return &s, nil
	case []int64:
		var b strings.Builder
		b.WriteByte('{')
		for i, n := range v {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.FormatInt(n, 10))
		}
		b.WriteByte('}')
		s := b.String()
		return &s, nil
	}
	return nil, fmt.Errorf("no text form for %T", a)
}

// arrayLiteral writes a one-dimensional text[] literal: every element
// quoted (backslashes and quotes escaped), NULL for nil.
func arrayLiteral(vals []*string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, v := range vals {
		if i > 0 {
			b.WriteByte(',')
		}
		if v == nil {
			b.WriteString("NULL")
			continue
		}
		b.WriteByte('"')
		for _, r := range *v {
			if r == '"' || r == '\\' {
				b.WriteByte('\\')
			}
			b.WriteRune(r)
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// rewriteParams turns each parameter $n of sql into $1[n] (or, for rows
// of a two-dimensional array, $1[n:n]), leaving quoted identifiers and
// string literals alone.
func rewriteParams(sql string, rows bool) string {
	var b strings.Builder
	b.Grow(len(sql) + 16)
	for i := 0; i < len(sql); {
		c := sql[i]
		switch {
		case c == '"' || c == '\'':
			j := i + 1
			for j < len(sql) {
				if sql[j] == c {
					if j+1 < len(sql) && sql[j+1] == c { // doubled: escaped
						j += 2
						continue
					}
					break
				}
				j++
			}
			end := min(j+1, len(sql))
			b.WriteString(sql[i:end])
			i = end
		case c == '$' && i+1 < len(sql) && sql[i+1] >= '0' && sql[i+1] <= '9':
			j := i + 1
			for j < len(sql) && sql[j] >= '0' && sql[j] <= '9' {
				j++
			}
			if rows {
				b.WriteString("$1[" + sql[i+1:j] + ":" + sql[i+1:j] + "]")
			} else {
				b.WriteString("$1[" + sql[i+1:j] + "]")
			}
			i = j
		default:
			b.WriteByte(c)
			i++
		}
	}
	return b.String()
}

// execAs returns (and remembers) the function table's writes run through.
func (a *Applier) execAs(ctx context.Context, tx pgx.Tx, table string) (string, error) {
	if fn, ok := a.owners[table]; ok {
		return fn, nil
	}
	fn, err := execAs(ctx, tx, table)
	if err != nil {
		return "", err
	}
	if a.owners == nil {
		a.owners = map[string]string{}
	}
	a.owners[table] = fn
	return fn, nil
}

// asOwner returns s as it must run: through its table owner's function
// when it writes an application table whose owner has one.
func (e *executor) asOwner(ctx context.Context, s stmt) (stmt, error) {
	if s.table == "" || s.counted || e.execAs == nil {
		return s, nil
	}
	fn, err := e.execAs(ctx, e.tx, s.table)
	if err != nil || fn == "" {
		return s, err
	}
	if !slices.Contains(e.ranAs, fn) {
		e.ranAs = append(e.ranAs, fn)
	}
	return ownerStmt(fn, s)
}

// exec runs one statement and returns the rows it processed.
func (e *executor) exec(ctx context.Context, s stmt) (int64, error) {
	if s.counted {
		var n int64
		err := e.tx.QueryRow(ctx, s.sql, s.args...).Scan(&n)
		return n, err
	}
	tag, err := e.tx.Exec(ctx, s.sql, s.args...)
	return tag.RowsAffected(), err
}

// deferredStmt runs the deferred triggers the transaction's writes queued
// (constraint triggers declared INITIALLY DEFERRED, deferred foreign-key
// checks) before commit, inside the owner's function: at commit itself they
// would run as the replicator. Checking them after every write of the
// transaction is what commit would check. With tables of several owners,
// they run as the first owner written (never as the replicator). It is
// empty when no write went through an owner's function.
func (e *executor) deferredStmt() stmt {
	if len(e.ranAs) == 0 {
		return stmt{}
	}
	return stmt{sql: "SELECT " + e.ranAs[0] + "('SET CONSTRAINTS ALL IMMEDIATE', NULL)", want: -1}
}

// UnconfinedTables lists the replicated tables whose applied changes run
// with the replicator's privileges or more, because a superuser or the
// replicator's own role owns them: code an application attaches to them
// (triggers, defaults) runs with those privileges when peers' changes are
// applied. Each entry names the table and why.
func UnconfinedTables(ctx context.Context, conn *pgx.Conn, tables []string) ([]string, error) {
	owners, err := tableOwners(ctx, conn, tables)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, o := range owners {
		why := "owned by the superuser " + o.name
		if o.self {
			why = "owned by the replicator's own role " + o.name
		} else if !o.super {
			continue
		}
		for _, t := range o.tables {
			out = append(out, t+" ("+why+")")
		}
	}
	return out, nil
}
