// Package postgres is the PostgreSQL side of the data plane: the schema the
// replicator owns, preflight checks, the change-stream reader that versions
// and ships local writes, and the applier of peers' transactions.
//
// Every statement it runs qualifies every name, and its sessions pin
// search_path to pg_catalog, so objects an application (or an attacker)
// places on a search path are never picked up by replication.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Schema is the schema the replicator owns in every regional database.
const Schema = "polyregion"

// schemaDDL creates the replicator's own tables. Idempotent.
//
//   - row_version: the version of every replicated row (tombstones included).
//     xid is the transaction whose write the version describes: a data row
//     whose xmin differs was written locally after the version was recorded.
//     src_seq is the outbox sequence number, in the origin region, of the
//     write that produced the version (tombstone collection uses it).
//   - outbox: local-origin transactions, versioned, in commit order, kept
//     until every peer has acknowledged them; a large transaction takes
//     several rows (parts) under one sequence number.
//   - reader_state: how far the change-stream reader has versioned.
//   - applied: per source region, the last transaction applied here; written
//     in the same transaction as the rows it covers.
//   - peer_ack: per peer, the last outbox transaction it durably applied.
//   - text_encoding: the encoding the region's sessions exchange text in.
//   - joined: whether and how the region joined from another's snapshot.
//   - reseeding: the region was emptied to be loaded again from a snapshot.
//   - slot_lost: the region's slot was found gone after its reader had
//     read from it: local writes committed in between were never shipped.
//   - conflict_log: every concurrent write that was resolved.
//   - parked: changes that could not be applied, with the reason, how often
//     they were retried and when they are tried next.
var schemaDDL = []string{
	`CREATE SCHEMA IF NOT EXISTS polyregion`,
	// tbl and key compare byte by byte (see rowVersionKeysInC).
	`CREATE TABLE IF NOT EXISTS polyregion.row_version (
		tbl      text COLLATE pg_catalog."C" NOT NULL,
		key      text COLLATE pg_catalog."C" NOT NULL,
		vv       text    NOT NULL,
		hlc      bigint  NOT NULL,
		origin   text    NOT NULL,
		deleted  boolean NOT NULL DEFAULT false,
		xid      xid,
		counters jsonb,
		src_seq  bigint NOT NULL DEFAULT 0,
		deleted_at timestamptz,
		PRIMARY KEY (tbl, key))`,
	`CREATE TABLE IF NOT EXISTS polyregion.outbox (
		seq       bigint NOT NULL,
		part      integer NOT NULL DEFAULT 0,
		more      boolean NOT NULL DEFAULT false,
		lsn       pg_lsn NOT NULL,
		commit_ts timestamptz NOT NULL,
		rows      integer NOT NULL,
		payload   bytea NOT NULL,
		PRIMARY KEY (seq, part))`,
	`CREATE TABLE IF NOT EXISTS polyregion.reader_state (
		slot     text PRIMARY KEY,
		lsn      pg_lsn NOT NULL,
		next_seq bigint NOT NULL,
		hlc      bigint NOT NULL)`,
	`CREATE TABLE IF NOT EXISTS polyregion.applied (
		source     text PRIMARY KEY,
		seq        bigint NOT NULL,
		lsn        pg_lsn,
		hlc        bigint NOT NULL DEFAULT 0,
		applied_at timestamptz NOT NULL DEFAULT now())`,
	// text_encoding: the encoding the region's sessions exchange text in
	// (see KeepTextEncoding); one row.
	`CREATE TABLE IF NOT EXISTS polyregion.text_encoding (
		one      boolean PRIMARY KEY DEFAULT true CHECK (one),
		encoding text NOT NULL)`,
	`CREATE TABLE IF NOT EXISTS polyregion.peer_ack (
		peer       text PRIMARY KEY,
		seq        bigint NOT NULL,
		updated_at timestamptz NOT NULL DEFAULT now())`,
	// joined: how this region joined, when it was loaded from another
	// region's snapshot (see LoadSnapshot); one row at most. caught_up_at:
	// when it had first applied all its peers advertised (NULL: catching up).
	`CREATE TABLE IF NOT EXISTS polyregion.joined (
		region     text PRIMARY KEY,
		source     text NOT NULL,
		source_seq bigint NOT NULL,
		rows       bigint NOT NULL,
		pause_ms   bigint NOT NULL,
		joined_at  timestamptz NOT NULL DEFAULT now(),
		caught_up_at timestamptz)`,
	// reseeding: the region was emptied for re-seeding (PrepareReseed)
	// once every peer had applied the transactions it shipped, so many;
	// applied: how far it had applied each source then ({"us": 990}). The
	// load from a peer's snapshot removes it.
	`CREATE TABLE IF NOT EXISTS polyregion.reseeding (
		region       text PRIMARY KEY,
		shipped      bigint NOT NULL,
		applied      jsonb NOT NULL DEFAULT '{}',
		prepared_at  timestamptz NOT NULL DEFAULT now())`,
	// The control plane's index of the reseed the region was emptied for,
	// kept in joined once it loaded: a reseed is carried out once.
	`ALTER TABLE polyregion.reseeding ADD COLUMN IF NOT EXISTS control_index bigint NOT NULL DEFAULT 0`,
	`ALTER TABLE polyregion.joined ADD COLUMN IF NOT EXISTS reseed_index bigint NOT NULL DEFAULT 0`,
	// join_units: the parts of a join's load committed so far (see
	// snapshot_units.go): the tables a part loaded whole, or one table's
	// rows up to the key after (the key columns' text forms; NULL once the
	// table is done), with the positions of the snapshot it came from. A
	// load cut short goes on after the last one. Kept once the region
	// joined: its applier tells by them which unit holds a row (see
	// apply_replay.go); a re-seed empties it.
	`CREATE TABLE IF NOT EXISTS polyregion.join_units (
		id        bigserial PRIMARY KEY,
		source    text NOT NULL,
		tables    text[] NOT NULL,
		after     text[],
		rows      bigint NOT NULL,
		positions jsonb NOT NULL,
		loaded_at timestamptz NOT NULL DEFAULT now())`,
	// join_replay: per source, the last transaction some unit of the load
	// held (the latest of its snapshots' positions), when the streams
	// start before it: up to there the applier drops the changes of rows
	// whose unit held them already (see apply_replay.go).
	`CREATE TABLE IF NOT EXISTS polyregion.join_replay (
		source text PRIMARY KEY,
		seq    bigint NOT NULL)`,
	// slot_lost: the slot was missing when the replicator started, after
	// its reader had versioned local writes up to versioned_to; it was
	// created again at recreated_at. Local transactions committed between
	// the two were never shipped. Kept (the earliest loss) until the region
	// is re-seeded.
	`CREATE TABLE IF NOT EXISTS polyregion.slot_lost (
		slot         text PRIMARY KEY,
		versioned_to pg_lsn NOT NULL,
		recreated_at pg_lsn NOT NULL,
		found_at     timestamptz NOT NULL DEFAULT now())`,
	`CREATE TABLE IF NOT EXISTS polyregion.conflict_log (
		id             bigserial PRIMARY KEY,
		logged_at      timestamptz NOT NULL DEFAULT now(),
		region         text NOT NULL,
		tbl            text NOT NULL,
		key            text NOT NULL,
		kind           text NOT NULL,
		policy         text NOT NULL,
		winner         text NOT NULL,
		winner_origin  text NOT NULL,
		local_origin   text NOT NULL,
		remote_origin  text NOT NULL,
		local_version  text NOT NULL,
		remote_version text NOT NULL,
		local_hlc      bigint NOT NULL,
		remote_hlc     bigint NOT NULL,
		local_row      jsonb,
		remote_row     jsonb,
		source_seq     bigint NOT NULL,
		reason         text NOT NULL)`,
	`CREATE INDEX IF NOT EXISTS conflict_log_time ON polyregion.conflict_log (logged_at)`,
	// outcome: 'overwritten' when the losing write's data is gone, 'merged'
	// when nothing of it is (see conflict.Outcome); NULL in records logged
	// before it existed. Added after the table, so it upgrades older schemas.
	`ALTER TABLE polyregion.conflict_log ADD COLUMN IF NOT EXISTS outcome text`,
	// epoch: the configuration epoch whose policy decided (NULL before
	// epochs existed; 0 under the founding configuration).
	`ALTER TABLE polyregion.conflict_log ADD COLUMN IF NOT EXISTS epoch bigint`,
	`CREATE TABLE IF NOT EXISTS polyregion.parked (
		id        bigserial PRIMARY KEY,
		parked_at timestamptz NOT NULL DEFAULT now(),
		source    text NOT NULL,
		seq       bigint NOT NULL,
		tbl       text NOT NULL,
		key       text NOT NULL,
		change    jsonb NOT NULL,
		shape     jsonb NOT NULL,
		reason    text NOT NULL,
		retries   integer NOT NULL DEFAULT 0,
		resolved_at timestamptz)`,
	`CREATE INDEX IF NOT EXISTS parked_open ON polyregion.parked (tbl) WHERE resolved_at IS NULL`,
	// next_retry_at: when a parked change is tried next (NULL: at the next
	// retry round); added after the table, so it upgrades older schemas.
	`ALTER TABLE polyregion.parked ADD COLUMN IF NOT EXISTS next_retry_at timestamptz`,
	// Tombstones only: tombstone collection and the status count read them
	// (without this they scan every version), and the reader looks up the
	// prior version of a key a local insert creates here (only a tombstone
	// can be there; anything else fails the insert of the new version).
	`CREATE INDEX IF NOT EXISTS row_version_tombstones ON polyregion.row_version (tbl, key) WHERE deleted`,
	// siblings: concurrent writes that lost to the row's and may win again
	// once it is superseded (see siblings.go); added after the table, so it
	// upgrades older schemas.
	`ALTER TABLE polyregion.row_version ADD COLUMN IF NOT EXISTS siblings jsonb`,
	// stamps: under column-level last-writer-wins, the write that last set
	// each column the version's own write did not (conflict.Version.Stamps).
	`ALTER TABLE polyregion.row_version ADD COLUMN IF NOT EXISTS stamps jsonb`,
	// own: the row of the version's own write, when the row holds more
	// (max and min columns merged from the writes kept as siblings).
	`ALTER TABLE polyregion.row_version ADD COLUMN IF NOT EXISTS own jsonb`,
	// epoch: the highest configuration epoch among the row's writes (its
	// conflicts are ranked under that epoch's policy; 0 under the founding
	// configuration, see conflict/epochs.go).
	`ALTER TABLE polyregion.row_version ADD COLUMN IF NOT EXISTS epoch bigint NOT NULL DEFAULT 0`,
	// epochs: the policy changes this region learned of. fence is the last
	// transaction it shipped before it learned of the epoch (everything
	// after is stamped as known under it); effective_lsn, once every region
	// applied what came before the epoch, the WAL position from which the
	// region's own writes are ranked under it.
	`CREATE TABLE IF NOT EXISTS polyregion.epochs (
		number        bigint PRIMARY KEY,
		fence         bigint NOT NULL,
		learned_at    timestamptz NOT NULL DEFAULT now(),
		effective_lsn pg_lsn)`,
	// policies: an epoch's tables' policies, recorded when the region
	// learned it from a peer, not from the control plane (see
	// regions/learn.go).
	`ALTER TABLE polyregion.epochs ADD COLUMN IF NOT EXISTS policies jsonb`,
	// seeded: the tables added at an epoch whose rows from before this
	// region replicated them were emitted into its change stream (see
	// seed.go), once each.
	`CREATE TABLE IF NOT EXISTS polyregion.seeded (
		tbl       text PRIMARY KEY,
		epoch     bigint NOT NULL,
		rows      bigint NOT NULL,
		seeded_at timestamptz NOT NULL DEFAULT now())`,
	// began_lsn and ended_lsn: the WAL positions that bound the seed's
	// transactions (a local write committed between them may touch a row
	// its seed had not reached: see Reader.unseeded).
	`ALTER TABLE polyregion.seeded ADD COLUMN IF NOT EXISTS began_lsn pg_lsn`,
	`ALTER TABLE polyregion.seeded ADD COLUMN IF NOT EXISTS ended_lsn pg_lsn`,
	// seeding: a seed begun and not finished (its table is published
	// already; see seed.go).
	`CREATE TABLE IF NOT EXISTS polyregion.seeding (
		tbl       text PRIMARY KEY,
		epoch     bigint NOT NULL,
		began_lsn pg_lsn NOT NULL,
		rows      bigint NOT NULL DEFAULT 0,
		began_at  timestamptz NOT NULL DEFAULT now())`,
	// tombstone_floor: per origin region, how far this region has settled
	// its deletes (see RaiseTombstoneFloors): every write concurrent with
	// one of them, or before it, has been applied here. It only rises.
	`CREATE TABLE IF NOT EXISTS polyregion.tombstone_floor (
		origin     text PRIMARY KEY,
		seq        bigint NOT NULL,
		updated_at timestamptz NOT NULL DEFAULT now())`,
	// unversioned_deletes: the deletes of counter-only rows the reader has
	// not versioned yet, marked by their transaction (see delete_marks.go).
	// key: the row's key columns in the change stream's text form, as a
	// JSON array (compared as jsonb with the appliers' keys), or JSON null
	// for every row of the table (its keys could not be read: a key column
	// renamed since the trigger was put on); xid: the low 32 bits of the
	// deleting transaction's id, as the stream's BEGIN carries it. The key
	// is indexed by hash: a btree entry has a size limit a long key's JSON
	// can pass, which would fail the application's delete.
	`CREATE TABLE IF NOT EXISTS polyregion.unversioned_deletes (
		tbl text NOT NULL,
		key jsonb NOT NULL,
		xid bigint NOT NULL)`,
	`CREATE INDEX IF NOT EXISTS unversioned_deletes_key_hash ON polyregion.unversioned_deletes USING hash (key)`,
	`CREATE INDEX IF NOT EXISTS unversioned_deletes_xid ON polyregion.unversioned_deletes (xid)`,
	// The few rows that keep siblings, for status (without it, a scan of
	// every version).
	`CREATE INDEX IF NOT EXISTS row_version_siblings ON polyregion.row_version (tbl, key) WHERE siblings IS NOT NULL`,
	// Every write to a replicated row rewrites its version: room left on
	// each page lets most of those updates stay on the page (HOT), with no
	// new index entry.
	`DO $$ BEGIN
		IF NOT EXISTS (SELECT FROM pg_catalog.pg_class c
		    WHERE c.oid = 'polyregion.row_version'::pg_catalog.regclass AND c.reloptions @> ARRAY['fillfactor=80']) THEN
			ALTER TABLE polyregion.row_version SET (fillfactor = 80);
		END IF;
	END $$`,
	// TRUNCATE of a replicated table is captured by a BEFORE TRUNCATE
	// trigger (see Prepare) that writes the keys of every row it removes to
	// the WAL, as transactional logical messages inside the truncating
	// transaction; the reader turns them into deletes, so other regions
	// delete exactly the rows the TRUNCATE saw, with versions like any
	// delete. Arguments: the table's name, its primary key columns each in
	// the change stream's text form, the quoted table. The settings match
	// the reader's replication session, so keys are byte-identical to the
	// ones the stream carries.
	`CREATE OR REPLACE FUNCTION polyregion.capture_truncate() RETURNS trigger` + keyTriggerHeader + `
	DECLARE
		keys text;
	BEGIN
		-- A snapshot older than the TRUNCATE's lock would miss rows it removes.
		IF pg_catalog.current_setting('transaction_isolation') <> 'read committed' THEN
			RAISE EXCEPTION 'TRUNCATE of replicated table % must run at READ COMMITTED isolation (this transaction is %): the rows it removes are deleted in every region, and an older snapshot would not list all of them', TG_ARGV[0], pg_catalog.current_setting('transaction_isolation')
				USING ERRCODE = 'feature_not_supported';
		END IF;
		-- The rows of a table taken in place are marked as deleted here
		-- until the reader versions this transaction (see delete_marks.go).
		IF EXISTS (SELECT FROM pg_catalog.pg_trigger g WHERE g.tgrelid = TG_RELID AND g.tgname = '` + DeleteMarkTrigger + `')
		   AND pg_catalog.current_setting('` + ExactMerges + `', true) IS DISTINCT FROM 'on' THEN
			EXECUTE pg_catalog.format('INSERT INTO polyregion.unversioned_deletes (tbl, key, xid) SELECT $1, pg_catalog.to_jsonb(ARRAY[%s]::pg_catalog.text[]), $2 FROM ONLY %s', TG_ARGV[1], TG_ARGV[2])
				USING TG_ARGV[0], pg_catalog.pg_current_xact_id()::text::bigint % 4294967296;
		END IF;
		FOR keys IN EXECUTE pg_catalog.format(
			'SELECT pg_catalog.json_agg(k)::text FROM (SELECT pg_catalog.json_build_array(%s) AS k, (pg_catalog.row_number() OVER () - 1) / 5000 AS part FROM ONLY %s) AS s GROUP BY part',
			TG_ARGV[1], TG_ARGV[2])
		LOOP
			PERFORM pg_catalog.pg_logical_emit_message(true, 'polyregion.truncate', TG_ARGV[0] || E'\n' || keys);
		END LOOP;
		RETURN NULL;
	END
	$fn$`,
	// mark_delete marks a deleted row of a table taken in place until the
	// reader versions its transaction (see delete_marks.go). Arguments: the
	// table's name, and its key columns read from the deleted row ($1) each
	// in the change stream's text form, as one text array. The appliers'
	// sessions are left alone: the reader does not version their writes.
	`CREATE OR REPLACE FUNCTION polyregion.mark_delete() RETURNS trigger` + keyTriggerHeader + `
	DECLARE
		k text[];
	BEGIN
		IF pg_catalog.current_setting('` + ExactMerges + `', true) = 'on' THEN
			RETURN NULL;
		END IF;
		BEGIN
			EXECUTE 'SELECT ' || TG_ARGV[1] INTO k USING OLD;
		EXCEPTION WHEN undefined_column OR undefined_object OR datatype_mismatch THEN
			k := NULL; -- every row of the table, rather than fail the application's write
		END;
		INSERT INTO polyregion.unversioned_deletes (tbl, key, xid)
			VALUES (TG_ARGV[0], coalesce(pg_catalog.to_jsonb(k), 'null'::pg_catalog.jsonb), pg_catalog.pg_current_xact_id()::text::bigint % 4294967296);
		RETURN NULL;
	END
	$fn$`,
	// mark_deletes is mark_delete once per DELETE statement, over the rows
	// it removed (the transition table ` + deletedRows + `); its key
	// columns are read from that table.
	`CREATE OR REPLACE FUNCTION polyregion.mark_deletes() RETURNS trigger` + keyTriggerHeader + `
	BEGIN
		IF pg_catalog.current_setting('` + ExactMerges + `', true) = 'on' THEN
			RETURN NULL;
		END IF;
		BEGIN
			EXECUTE pg_catalog.format('INSERT INTO polyregion.unversioned_deletes (tbl, key, xid) SELECT $1, pg_catalog.to_jsonb(%s), $2 FROM ` + deletedRows + `', TG_ARGV[1])
				USING TG_ARGV[0], pg_catalog.pg_current_xact_id()::pg_catalog.text::pg_catalog.int8 % 4294967296;
		EXCEPTION WHEN undefined_column OR undefined_object OR datatype_mismatch THEN
			-- Every row of the table, rather than fail the application's write.
			INSERT INTO polyregion.unversioned_deletes (tbl, key, xid)
				VALUES (TG_ARGV[0], 'null'::pg_catalog.jsonb, pg_catalog.pg_current_xact_id()::pg_catalog.text::pg_catalog.int8 % 4294967296);
		END;
		RETURN NULL;
	END
	$fn$`,
	// The trigger functions run their arguments as SQL with the
	// replicator's privileges: only the replicator may attach them
	// (firing a trigger needs no EXECUTE).
	`REVOKE EXECUTE ON FUNCTION polyregion.capture_truncate(), polyregion.mark_delete(), polyregion.mark_deletes() FROM PUBLIC`,
	// vv_merge merges two version vectors in their text form
	// ("region:count,..."), as conflict.Merge and Vector.String do: the
	// larger count per region, zero counts dropped, regions in byte order.
	// Appliers add peers' increments to counter-only rows with it, without
	// reading the row's version first.
	`CREATE OR REPLACE FUNCTION polyregion.vv_merge(a text, b text) RETURNS text
	LANGUAGE sql IMMUTABLE PARALLEL SAFE
	AS $fn$
		SELECT coalesce(pg_catalog.string_agg(s.r OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) s.n::pg_catalog.text, ',' ORDER BY s.r COLLATE pg_catalog."C"), '')
		FROM (SELECT pg_catalog.split_part(e, ':', 1) AS r, pg_catalog.max(pg_catalog.split_part(e, ':', 2)::pg_catalog.numeric) AS n
		      FROM pg_catalog.unnest(pg_catalog.string_to_array(a OPERATOR(pg_catalog.||) ',' OPERATOR(pg_catalog.||) b, ',')) AS e
		      WHERE e OPERATOR(pg_catalog.<>) ''
		      GROUP BY 1) AS s
		WHERE s.n OPERATOR(pg_catalog.>) 0
	$fn$`,
	// counters_add adds deltas ({"column": "delta", ...}, decimal text) to
	// a version's recorded counter sums; zero deltas leave a sum as it is
	// (NULL included), as conflict.MergeCounter does.
	`CREATE OR REPLACE FUNCTION polyregion.counters_add(c pg_catalog.jsonb, d pg_catalog.jsonb) RETURNS pg_catalog.jsonb
	LANGUAGE sql IMMUTABLE PARALLEL SAFE
	AS $fn$
		SELECT coalesce(c, '{}'::pg_catalog.jsonb) OPERATOR(pg_catalog.||) coalesce((
			SELECT pg_catalog.jsonb_object_agg(e.key,
				(coalesce(nullif(c OPERATOR(pg_catalog.->>) e.key, ''), '0')::pg_catalog.numeric OPERATOR(pg_catalog.+) e.value::pg_catalog.numeric)::pg_catalog.text)
			FROM pg_catalog.jsonb_each_text(d) AS e
			WHERE e.value::pg_catalog.numeric OPERATOR(pg_catalog.<>) 0), '{}'::pg_catalog.jsonb)
	$fn$`,
	rowVersionKeysInC,
	// Outbox payloads are compressed with lz4 where the server supports it:
	// several times cheaper than the default pglz, for both the reader that
	// writes them and the decoding that reads them back from the WAL. A
	// server built without lz4 stores them uncompressed (STORAGE EXTERNAL)
	// rather than by pglz: writing a 300,000-row backlog's 300 entries took
	// its reader's COPY 918 ms under pglz and 286 ms uncompressed
	// (PostgreSQL 17), for WAL and outbox pages the size of the payloads
	// until the peers acknowledge them. Whether the server has lz4 is read
	// from the settings, not tried, so that a start changes (and locks)
	// the table only when it must: when the server gained lz4, or lost it
	// (a payload over 2 kB would then fail to go in).
	`DO $$ DECLARE c "char"; s "char";
		lz4 boolean := coalesce((SELECT 'lz4' = ANY (g.enumvals) FROM pg_catalog.pg_settings g WHERE g.name = 'default_toast_compression'), false);
	BEGIN
		SELECT a.attcompression, a.attstorage INTO c, s FROM pg_catalog.pg_attribute a
		WHERE a.attrelid = 'polyregion.outbox'::pg_catalog.regclass AND a.attname = 'payload';
		IF lz4 AND (c <> 'l' OR s <> 'x') THEN
			ALTER TABLE polyregion.outbox ALTER COLUMN payload SET STORAGE EXTENDED, ALTER COLUMN payload SET COMPRESSION lz4;
		ELSIF NOT lz4 AND s <> 'e' THEN
			ALTER TABLE polyregion.outbox ALTER COLUMN payload SET STORAGE EXTERNAL;
		END IF;
	END $$`,
}

// rowVersionKeysInC gives row_version's key columns the C collation in a
// schema made before they had it (in the database's default collation).
// Keys are only ever looked up, never ranged over, so their order serves
// nothing, and in C it is the bytes': no collation library is called for
// each comparison (under ICU's en-US, writing versions took 10-20% longer
// here), and the index cannot go out of order when a new version of that
// library sorts differently, which would make lookups miss versions that
// are there. The table is not rewritten; its indexes on
// the keys are rebuilt, once, under the install's lock.
const rowVersionKeysInC = `DO $$ BEGIN
		IF ` + rowVersionKeysNotInC + ` THEN
			ALTER TABLE polyregion.row_version
				ALTER COLUMN tbl TYPE pg_catalog.text COLLATE pg_catalog."C",
				ALTER COLUMN key TYPE pg_catalog.text COLLATE pg_catalog."C";
		END IF;
	END $$`

// rowVersionKeysNotInC is true while a key column of row_version is in
// another collation than C (false before the table exists).
const rowVersionKeysNotInC = `EXISTS (SELECT FROM pg_catalog.pg_attribute a
		WHERE a.attrelid = pg_catalog.to_regclass('polyregion.row_version') AND a.attname IN ('tbl', 'key')
		AND a.attcollation OPERATOR(pg_catalog.<>) 'pg_catalog."C"'::pg_catalog.regcollation)`

// RowVersionKeysToConvert reports whether the next Install gives row
// versions' keys the C collation (see rowVersionKeysInC), rebuilding their
// indexes once, and how many versions the table holds by its statistics
// (0 when never analyzed).
func RowVersionKeysToConvert(ctx context.Context, conn *pgx.Conn) (bool, int64, error) {
	var convert bool
	var estimate int64
	err := conn.QueryRow(ctx, `SELECT `+rowVersionKeysNotInC+`, GREATEST(c.reltuples, 0)::int8
		FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass('polyregion.row_version')`).Scan(&convert, &estimate)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, fmt.Errorf("row versions' key collation: %w", err)
	}
	return convert, estimate, nil
}

// Install creates (or completes) the replicator's schema. It runs in one
// transaction and changes nothing of the application's.
func Install(ctx context.Context, conn *pgx.Conn) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("install schema: %w", err)
	}
	defer tx.Rollback(ctx)
	// Serialise concurrent installs (two replicators started at once).
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.pg_advisory_xact_lock(7340211)`); err != nil {
		return fmt.Errorf("install schema: %w", err)
	}
	for _, ddl := range schemaDDL {
		if _, err := tx.Exec(ctx, ddl); err != nil {
			return fmt.Errorf("install schema: %s: %w", firstLine(ddl), err)
		}
	}
	return tx.Commit(ctx)
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// quoteIdent quotes one SQL identifier.
func quoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }

// qualified quotes a "schema.table" name.
func qualified(name string) string {
	s, r, _ := strings.Cut(name, ".")
	return pgx.Identifier{s, r}.Sanitize()
}

// qualifiedNames quotes each "schema.table" name of tables.
func qualifiedNames(tables []string) []string {
	q := make([]string, len(tables))
	for i, t := range tables {
		q[i] = qualified(t)
	}
	return q
}

// SlotName is the replication slot a region's reader owns.
func SlotName(region string) string { return "polyregion_" + region }

// PublicationName is the publication a region's reader decodes.
func PublicationName(region string) string { return "polyregion_" + region }

// OriginName is the replication origin applied changes from source carry.
func OriginName(source string) string { return "polyregion_from_" + source }

// VersionsOrigin is the replication origin the reader's own writes (row
// versions, outbox entries) carry on servers whose pgoutput filters by
// origin, so that its walsender skips them instead of decoding them.
const VersionsOrigin = "polyregion_versions"

// keyTriggerHeader is what the trigger functions that render keys declare
// after their name: they run as the replicator (they write its tables),
// and with the settings of the reader's replication session, so the keys
// they render are byte-identical to the ones the change stream carries.
const keyTriggerHeader = `
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	SET datestyle = 'ISO' SET intervalstyle = 'postgres' SET extra_float_digits = '3'
	SET timezone = 'UTC' SET bytea_output = 'hex'
	AS $fn$`

// TruncatePrefix is the logical message prefix of the keys a TRUNCATE of a
// replicated table removed (see polyregion.capture_truncate).
const TruncatePrefix = "polyregion.truncate"

// TruncateTrigger is the BEFORE TRUNCATE trigger Prepare puts on every
// replicated table.
const TruncateTrigger = "polyregion_capture_truncate"

// BarrierPrefix is the logical message prefix of the barriers the
// replicator's own goroutines wait at (see EmitBarrier).
const BarrierPrefix = "polyregion.barrier"

// RecordedBarrierPrefix is the logical message prefix of the barriers a
// session of its own waits at (see EmitRecordedBarrier).
const RecordedBarrierPrefix = "polyregion.barrier-recorded"

// FlushWAL returns once every commit made before the call is durable: it
// commits a transaction of its own that writes to the WAL (a commit flushes
// only then) with synchronous_commit on, whatever the server's default, so
// the commit flushes the WAL past it (and waits for synchronous standbys,
// when there are any). What it writes is a logical decoding message the
// reader ignores. conn must not be inside a transaction.
func FlushWAL(ctx context.Context, conn interface {
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}) error {
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_logical_emit_message(true, $1, '')::text
		FROM (SELECT pg_catalog.set_config('synchronous_commit', 'on', true)) AS flush`, FlushPrefix); err != nil {
		return fmt.Errorf("flush the WAL: %w", err)
	}
	return nil
}

// FlushPrefix is the logical message prefix of FlushWAL's transactions.
const FlushPrefix = "polyregion.flush"

// EmitBarrier writes a barrier message to the WAL and returns its position;
// the reader passes it once every local commit before it is versioned, and
// tells only the waiters in its own process (Reader.WaitVersioned): passing
// it writes nothing. conn must not be inside a transaction. The message goes
// out in a transaction of its own that takes a transaction id and commits
// with synchronous_commit=local, so the commit flushes the WAL past the
// message: the walsender decodes only flushed WAL, and a bare message may
// wait for the WAL writer, seconds when the server is idle.
func EmitBarrier(ctx context.Context, conn *pgx.Conn) (pglogrepl.LSN, error) {
	return emitBarrierWith(ctx, conn, BarrierPrefix, nil)
}

// EmitRecordedBarrier is EmitBarrier for a waiter in another process or
// session: the reader also records that it passed the barrier, in
// reader_state.lsn (at or past the barrier's position once it has).
func EmitRecordedBarrier(ctx context.Context, conn *pgx.Conn) (pglogrepl.LSN, error) {
	return emitBarrierWith(ctx, conn, RecordedBarrierPrefix, nil)
}

// emitBarrierWith emits a barrier whose message carries content followed
// by the emitting transaction's id: a function result the query does not
// use would be planned away (pg_current_xact_id is stable), and the
// transaction would commit without a record to flush.
func emitBarrierWith(ctx context.Context, conn *pgx.Conn, prefix string, content []byte) (pglogrepl.LSN, error) {
	var lsn string
	err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_logical_emit_message(false, $1,
			coalesce($2::bytea, ''::bytea) OPERATOR(pg_catalog.||) pg_catalog.convert_to(pg_catalog.pg_current_xact_id()::text, 'UTF8'))::text
		FROM (SELECT pg_catalog.set_config('synchronous_commit', 'local', true)) AS flush`, prefix, content).Scan(&lsn)
	if err != nil {
		return 0, fmt.Errorf("emit barrier: %w", err)
	}
	l, err := pglogrepl.ParseLSN(lsn)
	if err != nil {
		return 0, fmt.Errorf("barrier position %q: %w", lsn, err)
	}
	return l, nil
}
