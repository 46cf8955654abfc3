package postgres

// Sessions: every replicator session pins search_path, the text forms of
// values (date style, time zone, float digits) and its timeouts (off: see
// session_timeouts.go).

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Connect opens a regular session with the settings every replicator
// session uses: search_path pinned to pg_catalog, ISO dates, exact floats.
func Connect(ctx context.Context, connString string) (*pgx.Conn, error) {
	return connect(ctx, connString, nil)
}

// connectOwnerRun is Connect for the sessions that run whole-table
// statements as the tables' owners (a load's inserts, a re-seed's deletes).
// Application code they fire runs in the session and may PREPARE and
// DEALLOCATE statements: one it put in place of a statement the session
// prepared would run with the replicator's privileges. So the session
// prepares nothing by name (as the appliers, see connectApplier).
//
// Their writes are the replicator's own, as the appliers' are (see
// ExactMerges): the delete mark trigger leaves them alone (see
// delete_marks.go), and max and min columns take what they write.
func connectOwnerRun(ctx context.Context, connString string) (*pgx.Conn, error) {
	conn, err := connectWith(ctx, connString, nil, func(c *pgx.ConnConfig) {
		c.DefaultQueryExecMode = pgx.QueryExecModeCacheDescribe
	})
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "SELECT pg_catalog.set_config($1, 'on', false)", ExactMerges); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("set %s: %w", ExactMerges, err)
	}
	return conn, nil
}

// connectDataPlane is Connect for the sessions that version and apply rows.
// Their statements look rows up by arrays of keys, one to tens of
// thousands, in tables that grow fast: joined by hash (or merge), a lookup
// scans the whole table every time, and the planner picks that whenever the
// statistics are stale (row_version grows faster than it is analyzed) or a
// batch is large. Index probes cost in proportion to the batch, not the
// table, so these sessions use nested loops only.
func connectDataPlane(ctx context.Context, connString string) (*pgx.Conn, error) {
	return connect(ctx, connString, map[string]string{"enable_hashjoin": "off", "enable_mergejoin": "off"})
}

// SetTextForms sets the session parameters that fix values' text forms, so
// that keys, row images (handed to custom resolvers, logged with conflicts)
// and search documents read the same in every region, whatever each
// server's or role's defaults: every session that reads rows or the change
// stream uses them.
func SetTextForms(params map[string]string) {
	params["DateStyle"] = "ISO"
	params["IntervalStyle"] = "postgres"
	params["extra_float_digits"] = "3"
	params["TimeZone"] = "UTC"
	// A bytea key read \001\002 here and \x0102 elsewhere would be two keys.
	params["bytea_output"] = "hex"
}

func connect(ctx context.Context, connString string, params map[string]string) (*pgx.Conn, error) {
	return connectWith(ctx, connString, params, nil)
}

// connectWith is connect with a last change to the configuration.
func connectWith(ctx context.Context, connString string, params map[string]string, tune func(*pgx.ConnConfig)) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("parse connection string: %w", err)
	}
	if tune != nil {
		tune(cfg)
	}
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	sessionSettings(cfg)
	textInUTF8(ctx, cfg.RuntimeParams)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s:%d/%s: %w", cfg.Host, cfg.Port, cfg.Database, err)
	}
	return conn, nil
}

// OpenPool opens a pool of sessions with the settings of every replicator
// session (sessionSettings).
func OpenPool(ctx context.Context, connString string) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("parse connection string: %w", err)
	}
	sessionSettings(pc.ConnConfig)
	return pgxpool.NewWithConfig(ctx, pc)
}

// sessionSettings gives cfg what every replicator session runs with:
// search_path pinned to pg_catalog, no JIT (unless the connection string
// asks for it), the values' text forms, its name, and no session timeouts
// (pinTimeouts).
func sessionSettings(cfg *pgx.ConnConfig) {
	cfg.RuntimeParams["search_path"] = "pg_catalog, pg_temp"
	if _, set := cfg.RuntimeParams["jit"]; !set {
		// The replicator's statements are index lookups and writes over
		// a batch's keys: costed past the JIT thresholds once a batch holds
		// a few thousand keys, each would be compiled first (tens of
		// milliseconds of a core) for nothing.
		cfg.RuntimeParams["jit"] = "off"
	}
	SetTextForms(cfg.RuntimeParams)
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "polyregion"
	}
	pinTimeouts(&cfg.Config)
}
