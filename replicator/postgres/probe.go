package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Probe is what one health probe learns from the local database.
type Probe struct {
	// InRecovery: the server is a standby (pg_is_in_recovery()).
	InRecovery bool
	// ReadOnly: new sessions default to read-only transactions
	// (default_transaction_read_only, as the replicator's role sees it).
	ReadOnly bool
	// WAL is the current WAL insert position (0 in recovery).
	WAL pglogrepl.LSN

	// Stats is false when the replication state below could not be read
	// (before the schema exists, say); StatsErr says why.
	Stats    bool
	StatsErr error
	// SlotRetainedBytes is the WAL the region's slot holds back;
	// SlotWALMaxBytes the server's max_slot_wal_keep_size (-1: no cap).
	SlotRetainedBytes int64
	SlotWALMaxBytes   int64
	// ParkedOpen counts changes parked and not yet resolved.
	ParkedOpen int64
	// Shipped is the last local transaction versioned; Acked, per peer, the
	// last of them the peer confirmed.
	Shipped int64
	Acked   map[string]int64
	// SlotLost, when set, says the region's slot was lost and what that
	// cost (see SlotLoss).
	SlotLost string
}

// ProbeLocal opens a new session (as an application would), checks that
// the server takes writes, and reads the replication state that metrics
// and health need. Every query is cheap: no table scans beyond the parked
// changes still open.
func ProbeLocal(ctx context.Context, connString, region string) (Probe, error) {
	var p Probe
	conn, err := Connect(ctx, connString)
	if err != nil {
		return p, err
	}
	defer conn.Close(context.Background())
	var wal *string
	err = conn.QueryRow(ctx, `SELECT pg_catalog.pg_is_in_recovery(),
		pg_catalog.current_setting('default_transaction_read_only')::bool,
		CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL ELSE pg_catalog.pg_current_wal_lsn()::text END`).Scan(&p.InRecovery, &p.ReadOnly, &wal)
	if err != nil {
		return p, fmt.Errorf("probe: %w", err)
	}
	if wal != nil {
		if p.WAL, err = pglogrepl.ParseLSN(*wal); err != nil {
			return p, fmt.Errorf("probe: %w", err)
		}
	}
	if p.InRecovery {
		return p, nil
	}
	p.StatsErr = probeStats(ctx, conn, region, &p)
	p.Stats = p.StatsErr == nil
	return p, nil
}

func probeStats(ctx context.Context, conn *pgx.Conn, region string, p *Probe) error {
	err := conn.QueryRow(ctx, `SELECT
		coalesce((SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::bigint
			FROM pg_catalog.pg_replication_slots WHERE slot_name = $1), 0),
		pg_catalog.pg_size_bytes(pg_catalog.current_setting('max_slot_wal_keep_size')),
		(SELECT count(*) FROM polyregion.parked WHERE resolved_at IS NULL),
		coalesce((SELECT next_seq - 1 FROM polyregion.reader_state WHERE slot = $1), 0)`, SlotName(region)).
		Scan(&p.SlotRetainedBytes, &p.SlotWALMaxBytes, &p.ParkedOpen, &p.Shipped)
	if err != nil {
		return fmt.Errorf("probe replication state: %w", err)
	}
	loss, err := ReadSlotLoss(ctx, conn, region)
	if err != nil {
		return err
	}
	if loss != nil {
		p.SlotLost = loss.Describe(region)
	}
	rows, err := conn.Query(ctx, `SELECT peer, seq FROM polyregion.peer_ack`)
	if err != nil {
		return fmt.Errorf("probe peer positions: %w", err)
	}
	defer rows.Close()
	p.Acked = map[string]int64{}
	for rows.Next() {
		var peer string
		var seq int64
		if err := rows.Scan(&peer, &seq); err != nil {
			return fmt.Errorf("probe peer positions: %w", err)
		}
		p.Acked[peer] = seq
	}
	return rows.Err()
}

// IsUnavailable reports whether err says the database could not be reached
// or went away (connection refused or lost, server shutting down, starting
// up or out of connection slots), as opposed to a refusal or a bug.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "57P01", "57P02", "57P03", "53300":
			return true
		}
		return len(pe.Code) == 5 && pe.Code[:2] == "08"
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return true // not a server error: the dial or the handshake failed
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}
