package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// A region's slot can vanish under the replicator: dropped by hand, absent
// on a standby promoted after a failover (logical slots are not copied to
// physical standbys before PostgreSQL 17's failover slots), or invalidated
// when it held more WAL than max_slot_wal_keep_size (it stays, unusable).
// Created again, it starts at the current WAL position: local transactions
// committed after the reader's last position were never decoded, so never
// shipped, and never will be. That cannot be repaired by replication; it
// is recorded (polyregion.slot_lost), reported on /health until the region
// is re-seeded, and the slot is created again so the region's new writes
// ship.

// prepareSlot creates the region's slot when it is missing, recording a
// loss when the reader had read from a slot before (and the region was
// not emptied to be re-seeded, which recreates the slot itself).
func prepareSlot(ctx context.Context, conn *pgx.Conn, region string) error {
	slot := SlotName(region)
	var exists, invalidated bool
	var versionedTo *string
	err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1),
		EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND wal_status = 'lost'),
		(SELECT lsn::text FROM polyregion.reader_state WHERE slot = $1 AND lsn > '0/0'
			AND NOT EXISTS (SELECT 1 FROM polyregion.reseeding))`, slot).Scan(&exists, &invalidated, &versionedTo)
	if err != nil {
		return fmt.Errorf("prepare replication slot %s: %w", slot, err)
	}
	if exists && !invalidated {
		return nil
	}
	// The loss is recorded before the slot is created again (slots are not
	// transactional): a failure in between leaves the record, never a new
	// slot without it.
	if versionedTo != nil {
		if _, err := conn.Exec(ctx, `INSERT INTO polyregion.slot_lost (slot, versioned_to, recreated_at)
			VALUES ($1, $2::pg_lsn, pg_catalog.pg_current_wal_lsn()) ON CONFLICT (slot) DO NOTHING`, slot, *versionedTo); err != nil {
			return fmt.Errorf("prepare replication slot %s: record its loss: %w", slot, err)
		}
	}
	if invalidated {
		// PostgreSQL removed WAL it still needed (max_slot_wal_keep_size):
		// it can never be read from again.
		if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_drop_replication_slot($1)`, slot); err != nil {
			return fmt.Errorf("prepare replication slot %s: drop it (invalidated): %w", slot, err)
		}
	}
	created, err := createSlot(ctx, conn, slot)
	if err != nil {
		return fmt.Errorf("prepare replication slot %s: %w", slot, err)
	}
	if versionedTo != nil {
		if _, err := conn.Exec(ctx, `UPDATE polyregion.slot_lost SET recreated_at = $2::pg_lsn WHERE slot = $1 AND recreated_at < $2::pg_lsn`, slot, created); err != nil {
			return fmt.Errorf("prepare replication slot %s: record its loss: %w", slot, err)
		}
	}
	return nil
}

// failoverSlotMajor is the first major version whose logical slots can be
// kept in step on physical standbys (failover slots).
const failoverSlotMajor = 17

// createSlot creates the region's slot and returns where it starts. From
// PostgreSQL 17 it is a failover slot: a standby that synchronises slots
// (sync_replication_slots) holds it when promoted, so a failover does not
// lose it.
func createSlot(ctx context.Context, conn *pgx.Conn, slot string) (string, error) {
	q := `SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')`
	if serverMajor(conn.PgConn().ParameterStatus("server_version")) >= failoverSlotMajor {
		q = `SELECT lsn::text FROM pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)`
	}
	var lsn string
	err := conn.QueryRow(ctx, q, slot).Scan(&lsn)
	return lsn, err
}

// SlotLoss is a recorded loss of the region's slot.
type SlotLoss struct {
	Slot                   string
	VersionedTo, Recreated string
	FoundAt                string
}

// Describe says what was lost and what to do, for /health and the log.
func (l SlotLoss) Describe(region string) string {
	return fmt.Sprintf("the replication slot %s was lost (dropped, missing after a failover to a standby, or invalidated) and created again at %s (found %s): "+
		"local transactions committed after %s, before it was created again, if any, were never shipped and never will be; "+
		"re-seed region %s (polyregion region reseed %s --from PEER) once what matters of them is saved elsewhere "+
		"(or, if none were written, DELETE FROM polyregion.slot_lost)",
		l.Slot, l.Recreated, l.FoundAt, l.VersionedTo, region, region)
}

// ReadSlotLoss returns the recorded loss of the region's slot (nil when
// none is recorded).
func ReadSlotLoss(ctx context.Context, q reseedQuerier, region string) (*SlotLoss, error) {
	l := SlotLoss{Slot: SlotName(region)}
	err := q.QueryRow(ctx, `SELECT versioned_to::text, recreated_at::text, pg_catalog.to_char(found_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
		FROM polyregion.slot_lost WHERE slot = $1`, l.Slot).Scan(&l.VersionedTo, &l.Recreated, &l.FoundAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the slot's loss: %w", err)
	}
	return &l, nil
}
