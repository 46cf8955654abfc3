package postgres

// The change stream: one logical replication session decoding a slot with
// pgoutput. It opens the session, starts streaming, hands out what the
// server sends (keepalives and pgoutput messages) and reports the position
// its consumer has made durable. The reader (which versions and ships local
// writes) and the search feed (which indexes every write) each consume one;
// what to do with a message, and when a position is durable, is theirs.

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// OpenReplication opens a replication-protocol session to the database of
// connString, named app in pg_stat_activity, with the text forms every
// session that reads rows uses (SetTextForms) and no session timeouts
// (pinTimeouts).
func OpenReplication(ctx context.Context, connString, app string) (*pgconn.PgConn, error) {
	rc, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("parse connection string: %w", err)
	}
	rc.RuntimeParams["replication"] = "database"
	SetTextForms(rc.RuntimeParams)
	textInUTF8(ctx, rc.RuntimeParams)
	rc.RuntimeParams["application_name"] = app
	pinTimeouts(rc)
	c, err := pgconn.ConnectConfig(ctx, rc)
	if err != nil {
		return nil, fmt.Errorf("replication connection: %w", err)
	}
	return c, nil
}

// ChangeStream is a started replication session. It is not safe for
// concurrent use.
type ChangeStream struct {
	conn       *pgconn.PgConn
	who        string // names the consumer in errors: "reader", "index feed"
	lastStatus time.Time

	// Receive bounds its wait with the connection's read deadline, moved
	// only when it drifts, and ends it early when the caller's context
	// ends (one callback per context, not per message): a context with a
	// timeout per message cost a timer, a watcher and their garbage for
	// every row streamed, about a seventh of the reader's CPU.
	deadline  time.Time
	watched   context.Context
	stopWatch func() bool
}

// StreamEvent is one message from the server: a keepalive, or WAL data
// carrying one pgoutput message.
type StreamEvent struct {
	Keepalive bool
	// WALEnd is the server's WAL end (a keepalive's), and ReplyRequested
	// whether the server asks for a status report at once.
	WALEnd         pglogrepl.LSN
	ReplyRequested bool
	// WALStart is where the WAL data starts, Data the pgoutput message.
	WALStart pglogrepl.LSN
	Data     []byte
}

// PgoutputArgs are pgoutput's options: the publication, whether to send
// logical decoding messages, and whether to drop changes that carry a
// replication origin (servers that filter by origin only; see
// reader_origin.go).
func PgoutputArgs(publication string, messages, originNone bool) []string {
	args := []string{"proto_version '1'", "publication_names '" + publication + "'"}
	if messages {
		args = append(args, "messages 'true'")
	}
	if originNone {
		args = append(args, "origin 'none'")
	}
	return args
}

// StartChangeStream opens a replication session and starts decoding slot
// from position from with pgoutput over publication: with logical decoding
// messages when messages is set, and without changes that carry a
// replication origin when skipApplied is set and the server can filter them
// (see reader_origin.go). who names the consumer in errors.
func StartChangeStream(ctx context.Context, connString, app, who, slot string, from pglogrepl.LSN, publication string, messages, skipApplied bool) (*ChangeStream, error) {
	conn, err := OpenReplication(ctx, connString, app)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", who, err)
	}
	if serverMajor(conn.ParameterStatus("server_version")) >= failoverSlotMajor {
		// A slot created by an earlier release becomes a failover slot
		// (see createSlot); it changes nothing where no standby syncs it.
		err := WhileSlotHeld(ctx, slot, func() error {
			_, err := conn.Exec(ctx, "ALTER_REPLICATION_SLOT "+quoteIdent(slot)+" ( FAILOVER true )").ReadAll()
			return err
		})
		if err != nil {
			conn.Close(context.Background())
			return nil, fmt.Errorf("%s: make slot %s a failover slot: %w", who, slot, err)
		}
	}
	args := PgoutputArgs(publication, messages, skipApplied && filtersOrigins(conn))
	err = WhileSlotHeld(ctx, slot, func() error {
		return pglogrepl.StartReplication(ctx, conn, slot, from, pglogrepl.StartReplicationOptions{PluginArgs: args})
	})
	if err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("%s: start replication on slot %s: %w", who, slot, err)
	}
	return &ChangeStream{conn: conn, who: who, lastStatus: time.Now()}, nil
}

// FiltersOrigins reports whether the server's pgoutput takes origin 'none'.
func (s *ChangeStream) FiltersOrigins() bool { return filtersOrigins(s.conn) }

// ServerVersion is the server's version string.
func (s *ChangeStream) ServerVersion() string { return s.conn.ParameterStatus("server_version") }

// Receive waits up to wait for the next message. ok is false when none came
// in time. An error ends the stream, except that a ctx ended meanwhile
// returns ctx's error (the session stays usable: the caller may go on).
func (s *ChangeStream) Receive(ctx context.Context, wait time.Duration) (ev StreamEvent, ok bool, err error) {
	s.watch(ctx)
	for {
		if err := ctx.Err(); err != nil {
			return ev, false, err
		}
		s.bound(wait)
		if ctx.Err() != nil { // ended before the deadline was set: end the wait now
			s.conn.Conn().SetReadDeadline(time.Now())
		}
		raw, err := s.conn.ReceiveMessage(context.Background())
		if err != nil {
			s.deadline = time.Time{} // a cancellation may have moved it: set it again next time
			if ctx.Err() != nil {
				return ev, false, ctx.Err()
			}
			if pgconn.Timeout(err) {
				return ev, false, nil
			}
			return ev, false, fmt.Errorf("%s: receive: %w", s.who, err)
		}
		switch m := raw.(type) {
		case *pgproto3.ErrorResponse:
			return ev, false, fmt.Errorf("%s: server error: %w", s.who, pgconn.ErrorResponseToPgError(m))
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
				if err != nil {
					return ev, false, fmt.Errorf("%s: keepalive: %w", s.who, err)
				}
				return StreamEvent{Keepalive: true, WALEnd: ka.ServerWALEnd, ReplyRequested: ka.ReplyRequested}, true, nil
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(m.Data[1:])
				if err != nil {
					return ev, false, fmt.Errorf("%s: WAL data: %w", s.who, err)
				}
				return StreamEvent{WALStart: xld.WALStart, Data: xld.WALData}, true, nil
			}
		}
		// Anything else (a notice, an unknown CopyData kind) carries
		// nothing for the consumer: wait on.
	}
}

// bound makes the connection's reads wait up to wait from now: the
// deadline is moved when it would end the wait more than a quarter early
// or later than asked.
func (s *ChangeStream) bound(wait time.Duration) {
	now := time.Now()
	if want := now.Add(wait); s.deadline.Before(want.Add(-wait/4)) || s.deadline.After(want) {
		s.deadline = want
		s.conn.Conn().SetReadDeadline(want)
	}
}

// watch ends the wait of a read in progress when ctx ends.
func (s *ChangeStream) watch(ctx context.Context) {
	if ctx == s.watched {
		return
	}
	s.unwatch()
	s.deadline = time.Time{} // the last context's end may have moved it
	s.watched = ctx
	s.stopWatch = context.AfterFunc(ctx, func() { s.conn.Conn().SetReadDeadline(time.Now()) })
}

func (s *ChangeStream) unwatch() {
	if s.stopWatch != nil {
		s.stopWatch()
		s.stopWatch, s.watched = nil, nil
	}
}

// Confirm reports lsn as written, flushed and applied: the server may
// recycle the WAL before it and restarts the slot from there.
func (s *ChangeStream) Confirm(ctx context.Context, lsn pglogrepl.LSN) error {
	s.lastStatus = time.Now()
	if err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: lsn, WALFlushPosition: lsn, WALApplyPosition: lsn,
	}); err != nil {
		return fmt.Errorf("%s: send status: %w", s.who, err)
	}
	return nil
}

// SinceStatus is the time since the last Confirm (or the start).
func (s *ChangeStream) SinceStatus() time.Duration { return time.Since(s.lastStatus) }

// Close ends the session.
func (s *ChangeStream) Close() {
	s.unwatch()
	s.conn.Close(context.Background())
}
