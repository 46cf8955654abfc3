package postgres

// Which changes the reader's walsender decodes. Up to PostgreSQL 15 pgoutput
// sends every change of the published tables, applied ones included, and
// decodes the reader's own writes (row versions, outbox entries) only to
// drop them; the reader skips applied rows undecoded (skippableRowMessage).
// From PostgreSQL 16 pgoutput takes origin 'none': changes that carry a
// replication origin are dropped before the walsender even queues them. The
// appliers' sessions carry one per source, and the reader's own writes carry
// VersionsOrigin, so the walsender decodes only the applications' writes
// and the barriers (emitted from sessions without an origin).

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// originFilterMajor is the first major version whose pgoutput filters by
// origin.
const originFilterMajor = 16

// serverMajor is the major version in a server_version parameter ("15.8
// (Debian 15.8-1.pgdg120+1)", "17.10", "18beta1"); 0 when unreadable.
func serverMajor(version string) int {
	end := strings.IndexFunc(version, func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(version)
	}
	n, err := strconv.Atoi(version[:end])
	if err != nil {
		return 0
	}
	return n
}

// filtersOrigins reports whether the server behind conn filters the change
// stream by origin.
func filtersOrigins(conn *pgconn.PgConn) bool {
	return serverMajor(conn.ParameterStatus("server_version")) >= originFilterMajor
}

// markVersionsSession gives the reader's writing session VersionsOrigin. A
// session of an earlier run may hold it after its connection closed, until
// its statement in progress ends (see inuse.go): that is waited out.
func markVersionsSession(ctx context.Context, conn *pgx.Conn) error {
	if err := takeOrigin(ctx, conn, VersionsOrigin); err != nil {
		return fmt.Errorf("reader: mark the versioning session with origin %s: %w", VersionsOrigin, err)
	}
	return nil
}
