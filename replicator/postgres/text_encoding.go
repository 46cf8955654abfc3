package postgres

// The encoding text travels in. A session receives text in its
// client_encoding, converted from the database's encoding by the server,
// except where either is SQL_ASCII: then nothing is converted. The
// replicator ships the bytes it read and writes the bytes it receives, so
// every region must exchange text in one encoding (see
// replicator.EncodingDifference), and what a region shipped stays in the
// encoding it was read in.

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// sqlASCII is the encoding of a database (or session) whose bytes are not
// converted: text is whatever bytes were stored.
const sqlASCII = "SQL_ASCII"

// textEncoding is the encoding a session's text arrives in and is taken
// in, given the server's and the session's encodings.
func textEncoding(server, client string) string {
	switch {
	case server == sqlASCII:
		return sqlASCII // stored bytes, unconverted whatever the session says
	case client == sqlASCII:
		return server // unconverted: the database's own
	}
	return client
}

// TextEncoding is the encoding conn's text arrives in and is taken in: its
// client_encoding (the database's own unless the connection string, or a
// setting of the role or database, sets another), but for SQL_ASCII. Every
// text value the reader ships is in its sessions', and the appliers write
// what peers ship as if it were in theirs.
func TextEncoding(conn *pgconn.PgConn) string {
	return textEncoding(conn.ParameterStatus("server_encoding"), conn.ParameterStatus("client_encoding"))
}

type utf8TextKey struct{}

// WithUTF8Text returns a context under which the sessions Connect,
// OpenReplication and StartChangeStream open receive text in UTF-8
// (client_encoding UTF8, whatever the connection string says): the search
// feed's documents are JSON, which holds UTF-8 only (Go's encoder turns
// every other byte into U+FFFD). A SQL_ASCII database converts nothing, so
// its bytes arrive as they were stored.
func WithUTF8Text(ctx context.Context) context.Context {
	return context.WithValue(ctx, utf8TextKey{}, true)
}

// textInUTF8 sets client_encoding in params when ctx asks for UTF-8 text.
func textInUTF8(ctx context.Context, params map[string]string) {
	if on, _ := ctx.Value(utf8TextKey{}).(bool); on {
		params["client_encoding"] = "UTF8"
	}
}

// KeepTextEncoding records enc as the encoding the region's sessions
// exchange text in, and refuses a change of it while the outbox holds
// transactions a peer (of peers) has not acknowledged: they were read in
// the encoding before and would be taken for enc. A first start records it
// and checks nothing; so does a region with no peers (a region that joins
// it later streams only what it ships after its snapshot, whose header
// names the encoding then).
func KeepTextEncoding(ctx context.Context, conn *pgx.Conn, enc string, peers []string) error {
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var before string
		err := tx.QueryRow(ctx, `SELECT encoding FROM polyregion.text_encoding FOR UPDATE`).Scan(&before)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return fmt.Errorf("text encoding: %w", err)
		case before == enc:
			return nil
		case len(peers) == 0:
		default:
			var waiting int64
			if err := tx.QueryRow(ctx, `SELECT count(DISTINCT seq) FROM polyregion.outbox WHERE seq > (
					SELECT CASE WHEN count(*) = pg_catalog.cardinality($1::text[]) THEN coalesce(min(seq), 0) ELSE 0 END
					FROM polyregion.peer_ack WHERE peer = ANY ($1::text[]))`, peers).Scan(&waiting); err != nil {
				return fmt.Errorf("text encoding: %w", err)
			}
			if waiting > 0 {
				return Problems{fmt.Sprintf("the database sessions exchange text in %s now and did in %s before, and the outbox holds %d transactions read in %s that not every peer has acknowledged: "+
					"they would be taken for %s. Start with the setting as before; to change it, stop the applications' writes in every region, wait until no region has a backlog (status), "+
					"then stop every replicator, set the same client_encoding in every region and start them again", enc, before, waiting, before, enc)}
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO polyregion.text_encoding (encoding) VALUES ($1)
			ON CONFLICT (one) DO UPDATE SET encoding = EXCLUDED.encoding`, enc); err != nil {
			return fmt.Errorf("text encoding: %w", err)
		}
		return nil
	})
}
