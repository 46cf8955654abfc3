package indexer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// The feed's durable state lives in the replicator's schema:
//   - index_generation: each build of the region's indices. A generation is
//     built (backfilled from a snapshot of the tables, resumably), becomes
//     ready, then live (aliases point at it and its slot feeds it), and is
//     retired when a newer one goes live. Its progress is the slot's
//     confirmed position: the slot advances only after the engine accepted
//     a batch. A ready generation streams its slot into its own indices
//     while the live one goes on serving, and goes live only once its slot
//     has confirmed catch_up_lsn (the WAL position when its copy ended):
//     the aliases never move to indices older than the ones they leave.
//   - index_dead_letter: documents the engine refused (mapping conflict,
//     too large) or that could not be rendered, with the reason.
var stateDDL = []string{
	`CREATE TABLE IF NOT EXISTS polyregion.index_generation (
		gen         integer PRIMARY KEY,
		state       text NOT NULL CHECK (state IN ('building', 'ready', 'live', 'retired')),
		slot        text NOT NULL,
		start_lsn   pg_lsn,
		indices     jsonb NOT NULL,
		fingerprint text NOT NULL,
		progress    jsonb NOT NULL DEFAULT '{}',
		created_at  timestamptz NOT NULL DEFAULT now(),
		updated_at  timestamptz NOT NULL DEFAULT now())`,
	// Checked first: ALTER TABLE takes its lock before it looks, and this
	// runs at every start of the feed (a backup's reads would hold it up).
	`DO $$ BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = 'polyregion.index_generation'::pg_catalog.regclass
				AND attname = 'catch_up_lsn' AND NOT attisdropped) THEN
			ALTER TABLE polyregion.index_generation ADD COLUMN catch_up_lsn pg_lsn;
		END IF;
	END $$`,
	`CREATE TABLE IF NOT EXISTS polyregion.index_dead_letter (
		id        bigserial PRIMARY KEY,
		logged_at timestamptz NOT NULL DEFAULT now(),
		index     text NOT NULL,
		tbl       text NOT NULL,
		key       text NOT NULL,
		doc_id    text NOT NULL,
		version   pg_lsn NOT NULL,
		status    integer NOT NULL,
		reason    text NOT NULL,
		doc       jsonb)`,
}

// Generation states.
const (
	stateBuilding = "building"
	stateReady    = "ready"
	stateLive     = "live"
	stateRetired  = "retired"
)

// tableProgress is how far a generation's backfill of one table got.
type tableProgress struct {
	After string `json:"after,omitempty"` // canonical key of the last row copied
	Rows  int64  `json:"rows"`
	Done  bool   `json:"done"`
}

type generation struct {
	Gen         int
	State       string
	Slot        string
	StartLSN    pglogrepl.LSN // 0 until the slot exists
	CatchUpLSN  pglogrepl.LSN // WAL position at the end of the copy, streamed up to before going live (0 until then)
	Indices     map[string]string
	Fingerprint string
	Progress    map[string]tableProgress
}

// PublicationName is the publication the feed decodes.
func PublicationName(region string) string { return "polyregion_idx_" + region }

func slotName(region string, gen int) string { return fmt.Sprintf("polyregion_idx_%s_%d", region, gen) }

// fingerprint identifies what a generation was built for; a different one
// means the indices must be rebuilt.
func fingerprint(kind string, specs []IndexSpec) string {
	s := append([]IndexSpec(nil), specs...)
	sort.Slice(s, func(i, j int) bool { return s[i].Index < s[j].Index })
	b, _ := json.Marshal(struct {
		Kind  string
		Specs []IndexSpec
	}{kind, s})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

func quoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }

func qualified(name string) string {
	s, r, _ := strings.Cut(name, ".")
	return pgx.Identifier{s, r}.Sanitize()
}

// prepare installs the state tables and keeps the publication in step with
// the configured tables.
func prepare(ctx context.Context, conn *pgx.Conn, region string, specs []IndexSpec) error {
	for _, stmt := range stateDDL {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("index state: %w", err)
		}
	}
	seen := map[string]bool{}
	var list []string
	for _, s := range specs {
		if !seen[s.Table] {
			seen[s.Table] = true
			list = append(list, qualified(s.Table))
		}
	}
	pub := PublicationName(region)
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)`, pub).Scan(&exists); err != nil {
		return fmt.Errorf("index publication: %w", err)
	}
	stmt := "CREATE PUBLICATION " + quoteIdent(pub) + " FOR TABLE " + strings.Join(list, ", ")
	if exists {
		stmt = "ALTER PUBLICATION " + quoteIdent(pub) + " SET TABLE " + strings.Join(list, ", ")
	}
	if _, err := conn.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("index publication %s: %w", pub, err)
	}
	return nil
}

// dropRetiredSlots drops the slots of retired generations that no session
// uses and returns their names: a retirement interrupted between marking
// the generation and dropping its slot (a kill, the slot still held) left
// them, holding WAL for ever. One in use is left to the next step.
func dropRetiredSlots(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT g.slot FROM polyregion.index_generation g
		JOIN pg_catalog.pg_replication_slots r ON r.slot_name = g.slot
		WHERE g.state = 'retired' AND NOT r.active ORDER BY g.gen`)
	if err != nil {
		return nil, fmt.Errorf("slots of retired index generations: %w", err)
	}
	slots, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("slots of retired index generations: %w", err)
	}
	for _, s := range slots {
		if err := dropSlot(ctx, conn, s); err != nil {
			return nil, err
		}
	}
	return slots, nil
}

func loadGenerations(ctx context.Context, conn *pgx.Conn) ([]*generation, error) {
	rows, err := conn.Query(ctx, `SELECT gen, state, slot, coalesce(start_lsn::text, ''), coalesce(catch_up_lsn::text, ''), indices, fingerprint, progress
		FROM polyregion.index_generation WHERE state <> 'retired' ORDER BY gen`)
	if err != nil {
		return nil, fmt.Errorf("load index generations: %w", err)
	}
	defer rows.Close()
	var out []*generation
	for rows.Next() {
		g := &generation{}
		var lsn, catchUp string
		if err := rows.Scan(&g.Gen, &g.State, &g.Slot, &lsn, &catchUp, &g.Indices, &g.Fingerprint, &g.Progress); err != nil {
			return nil, fmt.Errorf("load index generations: %w", err)
		}
		if lsn != "" {
			if g.StartLSN, err = pglogrepl.ParseLSN(lsn); err != nil {
				return nil, err
			}
		}
		if catchUp != "" {
			if g.CatchUpLSN, err = pglogrepl.ParseLSN(catchUp); err != nil {
				return nil, err
			}
		}
		if g.Progress == nil {
			g.Progress = map[string]tableProgress{}
		}
		out = append(out, g)
	}
	return out, rows.Err()
}

// newGeneration records a generation to build, with fresh physical index
// names (an engine may hold indices of an earlier installation).
func newGeneration(ctx context.Context, conn *pgx.Conn, region, fp string, specs []IndexSpec, suffix string) (*generation, error) {
	var gen int
	if err := conn.QueryRow(ctx, `SELECT coalesce(max(gen), 0) + 1 FROM polyregion.index_generation`).Scan(&gen); err != nil {
		return nil, fmt.Errorf("new index generation: %w", err)
	}
	g := &generation{Gen: gen, State: stateBuilding, Slot: slotName(region, gen), Indices: map[string]string{}, Fingerprint: fp, Progress: map[string]tableProgress{}}
	for _, s := range specs {
		g.Indices[s.Index] = fmt.Sprintf("%s-g%d-%s", s.Index, gen, suffix)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO polyregion.index_generation (gen, state, slot, indices, fingerprint) VALUES ($1, $2, $3, $4, $5)`,
		g.Gen, g.State, g.Slot, g.Indices, g.Fingerprint); err != nil {
		return nil, fmt.Errorf("new index generation: %w", err)
	}
	return g, nil
}

func (g *generation) save(ctx context.Context, conn *pgx.Conn) error {
	var lsn, catchUp any
	if g.StartLSN != 0 {
		lsn = g.StartLSN.String()
	}
	if g.CatchUpLSN != 0 {
		catchUp = g.CatchUpLSN.String()
	}
	_, err := conn.Exec(ctx, `UPDATE polyregion.index_generation SET state = $2, start_lsn = $3::pg_lsn, progress = $4, catch_up_lsn = $5::pg_lsn, updated_at = now() WHERE gen = $1`,
		g.Gen, g.State, lsn, g.Progress, catchUp)
	if err != nil {
		return fmt.Errorf("save index generation %d: %w", g.Gen, err)
	}
	return nil
}

// dropSlot removes a generation's slot; a missing slot is no error. A
// walsender of an earlier run still holding it is waited out.
func dropSlot(ctx context.Context, conn *pgx.Conn, slot string) error {
	err := postgres.WhileSlotHeld(ctx, slot, func() error {
		_, err := conn.Exec(ctx, `SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, slot)
		return err
	})
	if err != nil {
		return fmt.Errorf("drop slot %s: %w", slot, err)
	}
	return nil
}

// currentLSN is the server's current WAL write position.
func currentLSN(ctx context.Context, conn *pgx.Conn) (pglogrepl.LSN, error) {
	var s string
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_current_wal_lsn()::text`).Scan(&s); err != nil {
		return 0, fmt.Errorf("current WAL position: %w", err)
	}
	return pglogrepl.ParseLSN(s)
}

// buildLockKey serialises builders (the running feed and the rebuild
// command) on one database.
const buildLockKey = 0x706f6c79696478 // "polyidx"

func tryBuildLock(ctx context.Context, conn *pgx.Conn) (bool, error) {
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_try_advisory_lock($1)`, int64(buildLockKey)).Scan(&ok); err != nil {
		return false, fmt.Errorf("index build lock: %w", err)
	}
	return ok, nil
}

var errBuildElsewhere = errors.New("another process is building this generation of the indices")

// deadLetter records refused documents.
type deadLetter struct {
	index, table, key, id string
	version               pglogrepl.LSN
	status                int
	reason                string
	doc                   []byte
}

func saveDeadLetters(ctx context.Context, conn *pgx.Conn, dls []deadLetter) error {
	if len(dls) == 0 {
		return nil
	}
	err := insertDeadLetters(ctx, conn, dls, true)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && strings.HasPrefix(pe.Code, "22") {
		// A document the database still refuses (an escape its encoding
		// cannot hold, say): the records must be kept whatever the
		// documents hold, or the feed would stop at this change for ever.
		err = insertDeadLetters(ctx, conn, dls, false)
	}
	if err != nil {
		return fmt.Errorf("dead-letter table: %w", err)
	}
	return nil
}

// insertDeadLetters records dls, with their documents when withDocs and
// jsonb can store them; each reason says when its document is left out.
func insertDeadLetters(ctx context.Context, conn *pgx.Conn, dls []deadLetter, withDocs bool) error {
	b := &pgx.Batch{}
	for _, d := range dls {
		var doc any
		reason := storableText(d.reason)
		if len(d.doc) > 0 && len(d.doc) < 1<<20 {
			switch why := jsonbRefuses(d.doc); {
			case why != "":
				reason += " (the document is not kept here: " + why + ")"
			case !withDocs:
				reason += " (the document is not kept here: the database refused it)"
			default:
				doc = string(d.doc)
			}
		}
		b.Queue(`INSERT INTO polyregion.index_dead_letter (index, tbl, key, doc_id, version, status, reason, doc) VALUES ($1, $2, $3, $4, $5::pg_lsn, $6, $7, $8::jsonb)`,
			d.index, d.table, d.key, d.id, d.version.String(), d.status, reason, doc)
	}
	return conn.SendBatch(ctx, b).Close()
}

// storableText is s as a text column takes it: the engine's reason for a
// refusal may quote the refused value, and a NUL or bytes that are not
// UTF-8 there would fail the dead letter's insert.
func storableText(s string) string {
	return strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", `\u0000`), "\uFFFD")
}

// jsonbRefuses names what in a document's JSON text jsonb refuses to
// store, or returns "": an escaped NUL character (\u0000, which a json
// column's value may hold) and an escaped UTF-16 surrogate without its
// pair.
func jsonbRefuses(doc []byte) string {
	inString := false
	for i := 0; i < len(doc); i++ {
		c := doc[i]
		if !inString {
			inString = c == '"'
			continue
		}
		switch c {
		case '"':
			inString = false
		case '\\':
			if i+1 >= len(doc) {
				return ""
			}
			if doc[i+1] != 'u' {
				i++ // the escaped character
				continue
			}
			r, ok := hex4(doc, i+2)
			switch {
			case !ok:
				return ""
			case r == 0:
				return `it holds \u0000, which jsonb cannot store`
			case r >= 0xD800 && r <= 0xDBFF:
				lo, ok := rune(0), false
				if i+7 < len(doc) && doc[i+6] == '\\' && doc[i+7] == 'u' {
					lo, ok = hex4(doc, i+8)
				}
				if !ok || lo < 0xDC00 || lo > 0xDFFF {
					return "it holds a UTF-16 high surrogate without its low half, which jsonb cannot store"
				}
				i += 11
				continue
			case r >= 0xDC00 && r <= 0xDFFF:
				return "it holds a UTF-16 low surrogate without its high half, which jsonb cannot store"
			}
			i += 5
		}
	}
	return ""
}

// hex4 reads the four hex digits at doc[at:].
func hex4(doc []byte, at int) (rune, bool) {
	if at+4 > len(doc) {
		return 0, false
	}
	var r rune
	for _, c := range doc[at : at+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}
