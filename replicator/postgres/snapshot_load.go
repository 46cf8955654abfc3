package postgres

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// LoadConfig configures LoadSnapshot.
type LoadConfig struct {
	// Region is the joining region.
	Region     string
	ConnString string
	// Tables are the replicated tables; the snapshot must hold exactly
	// these.
	Tables []string
	// From is the region the snapshot is asked from; a snapshot of another
	// region is refused.
	From string
	// Progress, when set, is called as tables are loaded.
	Progress func(LoadProgress)
	Logger   *slog.Logger
}

// LoadProgress is how far a load has got.
type LoadProgress struct {
	Source      string
	Table       string // the table being loaded ("" between tables)
	TablesDone  int
	TablesTotal int
	Rows        int64 // rows loaded so far (finished tables)
	Estimate    int64 // rows the source estimated for all tables
	Bytes       int64 // snapshot bytes received
}

// ErrAlreadyJoined is returned by LoadSnapshot when the region has applied
// other regions' transactions already (it joined, or it is one of the
// regions that started together): there is nothing to load.
var ErrAlreadyJoined = errors.New("this region already applies other regions' transactions")

// ErrCannotJoin marks the refusals of a load that trying again cannot
// change: the region is not new, or its tables or configuration differ
// from the source's.
var ErrCannotJoin = errors.New("the region cannot join from this snapshot")

type joinRefusal struct{ msg string }

func (e joinRefusal) Error() string        { return e.msg }
func (e joinRefusal) Is(target error) bool { return target == ErrCannotJoin }

func refuseJoin(format string, args ...any) error {
	return joinRefusal{fmt.Sprintf(format, args...)}
}

// JoinState is whether and how a region joined.
type JoinState struct {
	// Joined: the region was loaded from a snapshot, or applies peers'
	// transactions already (it needs no snapshot).
	Joined bool
	// CatchingUp names the region it loaded a snapshot from, while it has
	// not yet applied all its peers advertised ("" otherwise).
	CatchingUp string
	// Reseeding: the region was emptied to be loaded again (PrepareReseed)
	// and has not been yet.
	Reseeding bool
	// ReseedIndex is the control plane's log index of the last reseed the
	// region was emptied for (0 when none was): a reseed at a later index
	// has not been carried out.
	ReseedIndex uint64
}

// ReadJoinState reads whether and how the region joined.
func ReadJoinState(ctx context.Context, conn *pgx.Conn) (JoinState, error) {
	var st JoinState
	var idx int64
	err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM polyregion.joined) OR EXISTS (SELECT 1 FROM polyregion.applied),
		coalesce((SELECT source FROM polyregion.joined WHERE caught_up_at IS NULL), ''),
		EXISTS (SELECT 1 FROM polyregion.reseeding),
		GREATEST((SELECT max(control_index) FROM polyregion.reseeding), (SELECT max(reseed_index) FROM polyregion.joined), 0)`).Scan(&st.Joined, &st.CatchingUp, &st.Reseeding, &idx)
	if err != nil {
		return st, fmt.Errorf("joined: %w", err)
	}
	st.ReseedIndex = uint64(max(idx, 0))
	return st, nil
}

// MarkCaughtUp records that the joined region has caught up with its peers.
func MarkCaughtUp(ctx context.Context, connString string) error {
	conn, err := Connect(ctx, connString)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `UPDATE polyregion.joined SET caught_up_at = pg_catalog.now() WHERE caught_up_at IS NULL`); err != nil {
		return fmt.Errorf("record that the region caught up: %w", err)
	}
	return nil
}

// LoadSnapshot loads a snapshot (WriteSnapshot's stream) into a joining
// region, in one transaction: the rows, their versions, the parked changes
// and the positions from which every peer's stream resumes are all there
// or none is, so a load cut short (a kill, a broken link) leaves the region
// as it was and is simply run again.
//
// Loaded rows carry the replication origin of the snapshot's source, like
// applied rows: the region's reader never ships them, and its search feed
// indexes them. Rows go in with the privileges of each table's owner (as
// applied rows do), so application triggers fired by them cannot reach the
// replicator's tables.
//
// Errors the data itself causes (a value the table refuses, a constraint it
// breaks, a type or table that differs) cannot go away by trying again:
// they are refusals (errors.Is(err, ErrCannotJoin)).
func LoadSnapshot(ctx context.Context, cfg LoadConfig, r io.Reader) (SnapshotHeader, SnapshotSummary, error) {
	h, sum, err := loadSnapshot(ctx, cfg, r)
	var pe *pgconn.PgError
	if err != nil && errors.As(err, &pe) && permanentLoadError(pe.Code) {
		err = joinRefusal{err.Error() + " (the data or the schemas must be fixed: trying again cannot help)"}
	}
	return h, sum, err
}

// permanentLoadError reports whether a load failing with SQLSTATE code
// would fail again: data exceptions (22), integrity constraint violations
// (23), syntax errors or access rule violations (42), features not
// supported (0A).
func permanentLoadError(code string) bool {
	switch code[:min(2, len(code))] {
	case "22", "23", "42", "0A":
		return true
	}
	return false
}

func loadSnapshot(ctx context.Context, cfg LoadConfig, r io.Reader) (SnapshotHeader, SnapshotSummary, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var sum SnapshotSummary
	cr := &countingReader{r: r}
	br := bufio.NewReaderSize(cr, 1<<20)
	typ, payload, err := readSnapshotFrame(br)
	if err != nil {
		return SnapshotHeader{}, sum, err
	}
	var h SnapshotHeader
	if typ != frameHeader {
		return h, sum, fmt.Errorf("snapshot: starts with frame %q, want a header", typ)
	}
	if err := json.Unmarshal(payload, &h); err != nil {
		return h, sum, fmt.Errorf("snapshot: header: %w", err)
	}
	if cfg.From != "" && h.Source != cfg.From {
		return h, sum, refuseJoin("asked %s for a snapshot and got one of %s: check that peer's URL", cfg.From, h.Source)
	}
	if err := sameTables(h, cfg.Tables); err != nil {
		return h, sum, err
	}
	conn, err := connectOwnerRun(ctx, cfg.ConnString)
	if err != nil {
		return h, sum, fmt.Errorf("load snapshot: %w", err)
	}
	defer conn.Close(context.Background())
	own, floor, err := checkNew(ctx, conn, cfg.Region, h.Tables)
	if err != nil {
		return h, sum, err
	}
	positions, err := JoinPositions(h, cfg.Region, own, floor)
	if err != nil {
		return h, sum, err
	}
	if err := resetSlot(ctx, conn, cfg.Region); err != nil {
		return h, sum, err
	}
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_create($1)
		WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname = $1)`, OriginName(h.Source)); err != nil {
		return h, sum, fmt.Errorf("load snapshot: replication origin: %w", err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_replication_origin_session_setup($1)`, OriginName(h.Source)); err != nil {
		return h, sum, fmt.Errorf("load snapshot: replication origin: %w", err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return h, sum, fmt.Errorf("load snapshot: %w", err)
	}
	defer tx.Rollback(context.Background())
	// Deferrable constraints (foreign keys among the tables, above all) are
	// checked once everything is in, as the owner (see below). Rows staged
	// in temporary tables stay in this session's memory up to
	// temp_buffers (default 8 MB, then they go to disk and back).
	for _, set := range []string{`SET LOCAL synchronous_commit = on`, `SET CONSTRAINTS ALL DEFERRED`, `SET LOCAL temp_buffers = '256MB'`} {
		if _, err := tx.Exec(ctx, set); err != nil {
			return h, sum, fmt.Errorf("load snapshot: %w", err)
		}
	}
	if err := checkJoinable(ctx, tx, cfg.Region, h, own); err != nil {
		return h, sum, err
	}
	l := loader{tx: tx, br: br, cr: cr, cfg: cfg, h: h, owners: ownerRun{tx: tx}}
	for _, t := range h.Tables {
		l.progress(t.Name)
		if err := l.table(ctx, t); err != nil {
			return h, sum, err
		}
		l.done++
	}
	l.progress("")
	// Deferred triggers the rows queued (constraint triggers, deferred
	// foreign-key checks) run now, inside the owner's function: at commit
	// they would run as the replicator. With tables of several owners, as
	// the first (never as the replicator), as for applied transactions.
	if err := l.owners.deferred(ctx); err != nil {
		return h, sum, fmt.Errorf("load snapshot: check deferred constraints: %w", err)
	}
	if sum.Versions, err = l.versions(ctx, h.VersionColumns); err != nil {
		return h, sum, err
	}
	if sum.Parked, err = l.parked(ctx); err != nil {
		return h, sum, err
	}
	if typ, payload, err = readSnapshotFrame(br); err != nil {
		return h, sum, err
	}
	var sent SnapshotSummary
	if typ != frameDone {
		return h, sum, fmt.Errorf("snapshot: frame %q where its end was due", typ)
	}
	if err := json.Unmarshal(payload, &sent); err != nil {
		return h, sum, fmt.Errorf("snapshot: end: %w", err)
	}
	sum.Rows = l.rows
	if err := sameCounts(sent, sum); err != nil {
		return h, sum, err
	}
	for _, p := range positions {
		var lsn any
		if p.LSN != "" {
			lsn = p.LSN
		}
		if _, err := tx.Exec(ctx, `INSERT INTO polyregion.applied (source, seq, lsn, hlc) VALUES ($1, $2, $3::pg_lsn, $4)`, p.Region, p.Seq, lsn, p.HLC); err != nil {
			return h, sum, fmt.Errorf("load snapshot: record the position of %s: %w", p.Region, err)
		}
	}
	var total int64
	for _, n := range sum.Rows {
		total += n
	}
	if _, err := tx.Exec(ctx, `INSERT INTO polyregion.joined (region, source, source_seq, rows, pause_ms, reseed_index)
		VALUES ($1, $2, $3, $4, $5, coalesce((SELECT max(control_index) FROM polyregion.reseeding), 0))`,
		cfg.Region, h.Source, h.SourceSeq, total, h.PauseMillis); err != nil {
		return h, sum, fmt.Errorf("load snapshot: %w", err)
	}
	// The loaded rows replace whatever a lost slot left unshipped (and a
	// slot the load itself dropped and recreated is not a loss).
	for _, q := range []string{`DELETE FROM polyregion.reseeding`, `DELETE FROM polyregion.slot_lost`} {
		if _, err := tx.Exec(ctx, q); err != nil {
			return h, sum, fmt.Errorf("load snapshot: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return h, sum, fmt.Errorf("load snapshot: commit: %w", err)
	}
	return h, sum, nil
}

// checkNew refuses a load into a region that is not new: it applies peers'
// transactions already, or shipped transactions of its own (unless it was
// prepared for re-seeding after they all reached every peer: see
// PrepareReseed), or holds replicated rows or versions of rows. own is how
// many transactions of its own the region shipped and floor how far it had
// applied each source (both zero unless re-seeded).
func checkNew(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, region string, tables []SnapshotTable) (own int64, floor map[string]int64, err error) {
	var joined bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM polyregion.joined) OR EXISTS (SELECT 1 FROM polyregion.applied)`).Scan(&joined); err != nil {
		return 0, nil, fmt.Errorf("load snapshot: %w", err)
	}
	if joined {
		return 0, nil, ErrAlreadyJoined
	}
	var shipped, prepared int64
	var queued bool
	if err := q.QueryRow(ctx, `SELECT coalesce((SELECT next_seq - 1 FROM polyregion.reader_state WHERE slot = $1), 0),
		EXISTS (SELECT 1 FROM polyregion.outbox), coalesce((SELECT shipped FROM polyregion.reseeding WHERE region = $2), -1),
		coalesce((SELECT applied FROM polyregion.reseeding WHERE region = $2), '{}')`,
		SlotName(region), region).Scan(&shipped, &queued, &prepared, &floor); err != nil {
		return 0, nil, fmt.Errorf("load snapshot: %w", err)
	}
	switch {
	case prepared >= 0 && shipped != prepared:
		return 0, nil, refuseJoin("region %s shipped %d transactions of its own since it was prepared for re-seeding at %d: prepare it again (polyregion reseed)", region, shipped-prepared, prepared)
	case prepared < 0 && (shipped > 0 || queued):
		return 0, nil, refuseJoin("region %s has shipped transactions of its own to the replicated tables (%d): only a region that has not written to them can join from a snapshot, or one prepared for re-seeding (polyregion reseed)", region, shipped)
	}
	own = max(prepared, 0)
	names := make([]string, len(tables))
	for i, t := range tables {
		names[i] = t.Name
		var held bool
		if err := q.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM ONLY "+qualified(t.Name)+")").Scan(&held); err != nil {
			return 0, nil, fmt.Errorf("load snapshot: %w", err)
		}
		if held {
			return 0, nil, refuseJoin("table %s in region %s already holds rows: a region joins with its replicated tables empty (loading over rows would lose them or let the regions diverge); empty it, or let the rows reach the others another way", t.Name, region)
		}
	}
	var versions int64
	if err := q.QueryRow(ctx, `SELECT count(*) FROM polyregion.row_version WHERE tbl = ANY ($1::text[])`, names).Scan(&versions); err != nil {
		return 0, nil, fmt.Errorf("load snapshot: %w", err)
	}
	if versions > 0 {
		return 0, nil, refuseJoin("region %s holds %d row versions of the replicated tables (its own writes, since deleted): only a region that has not written to them can join from a snapshot", region, versions)
	}
	return own, floor, nil
}

// resetSlot recreates the region's replication slot at the current end of
// the WAL. The region is new: whatever its slot still holds (writes made to
// the tables before the join and removed since) must not be shipped after
// the load, where it would act on the loaded rows.
func resetSlot(ctx context.Context, conn *pgx.Conn, region string) error {
	slot := SlotName(region)
	var active bool
	err := conn.QueryRow(ctx, `SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return fmt.Errorf("load snapshot: slot %s: %w", slot, err)
	case active:
		return fmt.Errorf("load snapshot: slot %s is in use (is another replicator running for region %s?)", slot, region)
	default:
		if _, err := conn.Exec(ctx, `SELECT pg_catalog.pg_drop_replication_slot($1)`, slot); err != nil {
			return fmt.Errorf("load snapshot: recreate slot %s: %w", slot, err)
		}
	}
	if _, err := createSlot(ctx, conn, slot); err != nil {
		return fmt.Errorf("load snapshot: recreate slot %s: %w", slot, err)
	}
	return nil
}

// checkJoinable pauses the region's own writers to the tables until the
// load commits, and checks again, under that pause, that the region is new
// and that its tables have the source's columns.
func checkJoinable(ctx context.Context, tx pgx.Tx, region string, h SnapshotHeader, own int64) error {
	if _, err := tx.Exec(ctx, `LOCK TABLE polyregion.applied, polyregion.joined, polyregion.reseeding IN EXCLUSIVE MODE`); err != nil {
		return fmt.Errorf("load snapshot: %w", err)
	}
	list := make([]string, len(h.Tables))
	for i, t := range h.Tables {
		list[i] = qualified(t.Name)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE "+strings.Join(list, ", ")+" IN EXCLUSIVE MODE"); err != nil {
		return fmt.Errorf("load snapshot: pause this region's writes to the replicated tables: %w", err)
	}
	if again, _, err := checkNew(ctx, tx, region, h.Tables); err != nil {
		return err
	} else if again != own {
		return fmt.Errorf("load snapshot: region %s was prepared for re-seeding again meanwhile", region)
	}
	for _, t := range h.Tables {
		cols, err := copiedColumns(ctx, tx, t.Name)
		if err != nil {
			return fmt.Errorf("load snapshot: %w", err)
		}
		if diff := columnDifferences(t.Columns, cols); len(diff) > 0 {
			return refuseJoin("table %s differs between %s and %s: %s; make the schemas the same before joining", t.Name, h.Source, region, strings.Join(diff, "; "))
		}
	}
	return nil
}

// columnDifferences names what differs between the source's copied
// columns and the joining region's.
func columnDifferences(source, here []SnapshotColumn) []string {
	var out []string
	have := map[string]string{}
	for _, c := range here {
		have[c.Name] = c.Type
	}
	for _, c := range source {
		t, ok := have[c.Name]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("column %s (%s) is missing here", c.Name, c.Type))
		case t != c.Type:
			out = append(out, fmt.Sprintf("column %s is %s there and %s here", c.Name, c.Type, t))
		}
		delete(have, c.Name)
	}
	extra := make([]string, 0, len(have))
	for n := range have {
		extra = append(extra, n)
	}
	sort.Strings(extra)
	for _, n := range extra {
		out = append(out, fmt.Sprintf("column %s (%s) exists only here", n, have[n]))
	}
	return out
}

// sameTables checks that the snapshot holds exactly the tables this region
// replicates.
func sameTables(h SnapshotHeader, tables []string) error {
	var got []string
	for _, t := range h.Tables {
		got = append(got, t.Name)
	}
	want := append([]string(nil), tables...)
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		return refuseJoin("snapshot from %s holds tables %s; this region replicates %s: the regions' configurations differ", h.Source, strings.Join(got, ", "), strings.Join(want, ", "))
	}
	return nil
}

func sameCounts(sent, loaded SnapshotSummary) error {
	if sent.Versions != loaded.Versions {
		return fmt.Errorf("snapshot: the source sent %d row versions, %d were loaded", sent.Versions, loaded.Versions)
	}
	if sent.Parked != loaded.Parked {
		return fmt.Errorf("snapshot: the source sent %d parked changes, %d were loaded", sent.Parked, loaded.Parked)
	}
	for t, n := range sent.Rows {
		if loaded.Rows[t] != n {
			return fmt.Errorf("snapshot: the source sent %d rows of %s, %d were loaded", n, t, loaded.Rows[t])
		}
	}
	return nil
}

type loader struct {
	tx     pgx.Tx
	br     *bufio.Reader
	cr     *countingReader
	cfg    LoadConfig
	h      SnapshotHeader
	done   int
	rows   map[string]int64
	last   time.Time
	owners ownerRun
}

func (l *loader) progress(table string) {
	if l.cfg.Progress == nil {
		return
	}
	p := LoadProgress{Source: l.h.Source, Table: table, TablesDone: l.done, TablesTotal: len(l.h.Tables), Bytes: l.cr.n}
	for _, n := range l.rows {
		p.Rows += n
	}
	for _, t := range l.h.Tables {
		p.Estimate += t.Estimate
	}
	l.cfg.Progress(p)
}

// open reads the frame that opens the next part.
func (l *loader) open(want byte, name string) error {
	typ, payload, err := readSnapshotFrame(l.br)
	if err != nil {
		return err
	}
	var p snapshotPart
	if typ != want {
		return fmt.Errorf("snapshot: frame %q where %q was due", typ, want)
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if p.Name != name {
		return fmt.Errorf("snapshot: part %q where %q was due", p.Name, name)
	}
	return nil
}

// copyIn runs a COPY FROM STDIN fed with the current part's data, and
// checks its row count against the part's end.
func (l *loader) copyIn(ctx context.Context, what, copySQL string) (int64, error) {
	pr := &partReader{br: l.br, progress: func() {
		if time.Since(l.last) > time.Second {
			l.last = time.Now()
			l.progress(what)
		}
	}}
	tag, err := l.tx.Conn().PgConn().CopyFrom(ctx, pr, copySQL)
	if err != nil {
		if pr.err != nil {
			return 0, pr.err
		}
		return 0, fmt.Errorf("load snapshot: %s: %w", what, err)
	}
	if pr.end == nil {
		return 0, fmt.Errorf("snapshot: %s: data ended without the part's end", what)
	}
	if pr.end.Rows != tag.RowsAffected() {
		return 0, fmt.Errorf("snapshot: %s: the source sent %d rows, %d were loaded", what, pr.end.Rows, tag.RowsAffected())
	}
	return tag.RowsAffected(), nil
}

// table loads one table's rows: directly when applying as the owner takes
// no privilege away or the copy runs no code (copiesInert), else into a
// temporary table and from there through the owner's function.
func (l *loader) table(ctx context.Context, t SnapshotTable) error {
	if l.rows == nil {
		l.rows = map[string]int64{}
	}
	if err := l.open(frameTable, t.Name); err != nil {
		return err
	}
	cols := make([]string, len(t.Columns))
	defs := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		cols[i] = quoteIdent(c.Name)
		// The type as this region names it (checkJoinable compared them).
		defs[i] = quoteIdent(c.Name) + " " + c.Type
	}
	list := strings.Join(cols, ", ")
	fn, err := l.owners.fn(ctx, t.Name)
	if err != nil {
		return fmt.Errorf("load snapshot: %w", err)
	}
	if fn != "" {
		names := make([]string, len(t.Columns))
		for i, c := range t.Columns {
			names[i] = c.Name
		}
		target, err := copiesInert(ctx, l.tx, t.Name, names)
		if err != nil {
			return fmt.Errorf("load snapshot: %w", err)
		}
		if target.inert {
			fn = ""
		}
	}
	if fn == "" {
		n, err := l.copyIn(ctx, t.Name, "COPY "+qualified(t.Name)+" ("+list+") FROM STDIN (FORMAT text)")
		l.rows[t.Name] = n
		if err == nil {
			l.cfg.Logger.Info("snapshot: table loaded", "table", t.Name, "rows", n, "copied", "directly")
		}
		return err
	}
	if _, err := l.tx.Exec(ctx, "CREATE TEMPORARY TABLE polyregion_load ("+strings.Join(defs, ", ")+") ON COMMIT DROP"); err != nil {
		return fmt.Errorf("load snapshot: staging table for %s: %w", t.Name, err)
	}
	n, err := l.copyIn(ctx, t.Name, "COPY pg_temp.polyregion_load ("+list+") FROM STDIN (FORMAT text)")
	if err != nil {
		return err
	}
	var owner string
	if err := l.tx.QueryRow(ctx, `SELECT c.relowner::pg_catalog.regrole::text FROM pg_catalog.pg_class c WHERE c.oid = $1::pg_catalog.regclass`, qualified(t.Name)).Scan(&owner); err != nil {
		return fmt.Errorf("load snapshot: owner of %s: %w", t.Name, err)
	}
	if _, err := l.tx.Exec(ctx, "GRANT SELECT ON pg_temp.polyregion_load TO "+owner); err != nil {
		return fmt.Errorf("load snapshot: %w", err)
	}
	inserted, err := l.owners.exec(ctx, t.Name,
		"INSERT INTO "+qualified(t.Name)+" ("+list+") OVERRIDING SYSTEM VALUE SELECT "+list+" FROM pg_temp.polyregion_load")
	if err != nil {
		return fmt.Errorf("load snapshot: insert the rows of %s as its owner: %w", t.Name, err)
	}
	if inserted != n {
		return fmt.Errorf("load snapshot: %d rows of %s copied, %d inserted", n, t.Name, inserted)
	}
	if _, err := l.tx.Exec(ctx, "DROP TABLE pg_temp.polyregion_load"); err != nil {
		return fmt.Errorf("load snapshot: %w", err)
	}
	l.rows[t.Name] = n
	l.cfg.Logger.Info("snapshot: table loaded", "table", t.Name, "rows", n, "copied", "as its owner")
	return nil
}

// versions loads the rows' versions, the columns the source listed (sent
// is nil from a source that predates the list). A live row's version
// names the transaction that wrote the row here: this one.
func (l *loader) versions(ctx context.Context, sent []string) (int64, error) {
	if err := l.open(frameVersions, ""); err != nil {
		return 0, err
	}
	if sent == nil {
		sent = versionColumnsBefore
	}
	for _, c := range sent {
		if !slices.Contains(versionColumns, c) {
			return 0, refuseJoin("the snapshot carries row version column %q, which this release does not know: upgrade this region to the source's release", c)
		}
	}
	if _, err := l.tx.Exec(ctx, `CREATE TEMPORARY TABLE polyregion_load_versions (
		tbl text, key text, vv text, hlc bigint, origin text, deleted boolean, counters jsonb,
		src_seq bigint, deleted_at timestamptz, siblings jsonb, stamps jsonb, own jsonb, epoch bigint NOT NULL DEFAULT 0) ON COMMIT DROP`); err != nil {
		return 0, fmt.Errorf("load snapshot: %w", err)
	}
	cols := strings.Join(sent, ", ")
	n, err := l.copyIn(ctx, "row versions", "COPY pg_temp.polyregion_load_versions ("+cols+") FROM STDIN (FORMAT text)")
	if err != nil {
		return 0, err
	}
	all := strings.Join(versionColumns, ", ")
	if _, err := l.tx.Exec(ctx, "INSERT INTO polyregion.row_version ("+all+", xid) SELECT "+all+
		", CASE WHEN deleted THEN NULL ELSE pg_catalog.pg_current_xact_id()::xid END FROM pg_temp.polyregion_load_versions"); err != nil {
		return 0, fmt.Errorf("load snapshot: row versions: %w", err)
	}
	return n, nil
}

// parked loads the changes the source had parked: they are retried here as
// there.
func (l *loader) parked(ctx context.Context) (int64, error) {
	if err := l.open(frameParked, ""); err != nil {
		return 0, err
	}
	n, err := l.copyIn(ctx, "parked changes", "COPY polyregion.parked ("+strings.Join(parkedColumns, ", ")+") FROM STDIN (FORMAT text)")
	if err != nil {
		return n, err
	}
	// Changes are retried by their source's stream: this region has none
	// from itself, so its own changes the source parked would stay missing.
	var own int64
	if err := l.tx.QueryRow(ctx, `SELECT count(*) FROM polyregion.parked WHERE resolved_at IS NULL AND source = $1`, l.cfg.Region).Scan(&own); err != nil {
		return n, fmt.Errorf("load snapshot: %w", err)
	}
	if own > 0 {
		return n, refuseJoin("%s has %d changes this region wrote parked (not applied there): they would be missing here; resolve them there (polyregion parked) or join from another region", l.h.Source, own)
	}
	return n, nil
}

// partReader feeds a COPY with the data frames of the current part and
// stops at the part's end.
type partReader struct {
	br       *bufio.Reader
	buf      []byte
	end      *snapshotPart
	err      error
	progress func()
}

// Read fills b with as much of the part's data as has arrived (the COPY
// sends the server one message per Read), waiting only while it has none.
func (p *partReader) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		if len(p.buf) == 0 {
			if p.end != nil || p.err != nil || (n > 0 && p.br.Buffered() == 0) {
				break
			}
			p.next()
			continue
		}
		c := copy(b[n:], p.buf)
		p.buf = p.buf[c:]
		n += c
	}
	switch {
	case n > 0:
		return n, nil
	case p.err != nil:
		return 0, p.err
	}
	return 0, io.EOF
}

// next reads the next frame of the part: data, or its end.
func (p *partReader) next() {
	typ, payload, err := readSnapshotFrame(p.br)
	if err != nil {
		p.err = err
		return
	}
	switch typ {
	case frameData:
		p.buf = payload
		p.progress()
	case frameEnd:
		var e snapshotPart
		if err := json.Unmarshal(payload, &e); err != nil {
			p.err = fmt.Errorf("snapshot: %w", err)
			return
		}
		p.end = &e
	default:
		p.err = fmt.Errorf("snapshot: frame %q inside a part's data", typ)
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}
