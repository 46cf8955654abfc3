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

	"github.com/polyregion/polyregion/replicator"
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
// region. A snapshot in units commits unit by unit, each with its
// snapshot's positions, and a load cut short (a kill, a broken link) is
// run again and goes on after the last unit committed (see
// snapshot_units.go); one from a source that sends no units is loaded in
// one transaction. Either way the positions from which every peer's stream
// resumes are recorded in the last transaction, once everything is in.
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
	if d := replicator.EncodingDifference(TextEncoding(conn.PgConn()), h.Encoding, h.Source); d != "" {
		return h, sum, refuseJoin("%s", d)
	}
	before, err := readJoinUnits(ctx, conn)
	if err != nil {
		return h, sum, err
	}
	if len(before) > 0 && before[0].Source != h.Source {
		return h, sum, refuseJoin("this region loaded part of a snapshot of %s before: join from %s to finish that load", before[0].Source, before[0].Source)
	}
	resume := resumeFrom(unitsOfJoin(before))
	own, floor, err := checkNew(ctx, conn, cfg.Region, h.Tables, resume.Loaded())
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
	if err := takeOrigin(ctx, conn, OriginName(h.Source)); err != nil {
		return h, sum, fmt.Errorf("load snapshot: replication origin: %w", err)
	}
	l := loader{conn: conn, br: br, cr: cr, cfg: cfg, h: h, own: own, positions: positions, resume: resume, rows: map[string]int64{}}
	for _, u := range before {
		l.before += u.Rows
	}
	if err := l.begin(ctx); err != nil {
		return h, sum, err
	}
	defer func() { l.tx.Rollback(context.Background()) }()
	if !h.Units && !resume.Empty() {
		// A source that predates loads in units sends everything again.
		var loaded []string
		for _, t := range h.Tables {
			if slices.Contains(resume.Loaded(), t.Name) {
				loaded = append(loaded, t.Name)
			}
		}
		if err := l.discard(ctx, loaded); err != nil {
			return h, sum, err
		}
	}
	var sent SnapshotSummary
	for done := false; !done; {
		if typ, payload, err = readSnapshotFrame(br); err != nil {
			return h, sum, err
		}
		switch typ {
		case frameTable:
			err = l.table(ctx, payload)
		case frameVersions:
			var n int64
			n, err = l.versions(ctx, h.VersionColumns)
			sum.Versions += n
		case frameParked:
			var n int64
			n, err = l.parked(ctx)
			sum.Parked += n
		case frameCommit:
			err = l.commitUnit(ctx, payload)
		case frameDone:
			if err := json.Unmarshal(payload, &sent); err != nil {
				return h, sum, fmt.Errorf("snapshot: end: %w", err)
			}
			done = true
		default:
			err = fmt.Errorf("snapshot: unexpected frame %q", typ)
		}
		if err != nil {
			return h, sum, err
		}
	}
	l.progress("")
	sum.Rows = l.rows
	if err := sameCounts(sent, sum); err != nil {
		return h, sum, err
	}
	if h.Units && l.pending {
		return h, sum, fmt.Errorf("snapshot: ended with a part not committed")
	}
	if err := l.finish(ctx); err != nil {
		return h, sum, err
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
}, region string, tables []SnapshotTable, loaded []string) (own int64, floor map[string]int64, err error) {
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
	var names []string
	for _, t := range tables {
		if slices.Contains(loaded, t.Name) {
			// Rows and versions of a load cut short, which goes on.
			continue
		}
		names = append(names, t.Name)
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
// load (or its unit) commits, and checks again, under that pause, that the region is new
// and that its tables have the source's columns.
func checkJoinable(ctx context.Context, tx pgx.Tx, region string, h SnapshotHeader, own int64, loaded []string) error {
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
	if again, _, err := checkNew(ctx, tx, region, h.Tables, loaded); err != nil {
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
	conn      *pgx.Conn
	tx        pgx.Tx
	br        *bufio.Reader
	cr        *countingReader
	cfg       LoadConfig
	h         SnapshotHeader
	own       int64
	positions []SnapshotPosition // this snapshot's (JoinPositions)
	resume    SnapshotResume     // what was committed before this unit
	done      int                // tables loaded whole from a source that sends no units
	before    int64              // rows committed (by this attempt and earlier ones)
	rows      map[string]int64   // rows loaded by this attempt
	unitRows  int64              // rows loaded since the last commit
	pending   bool               // something was loaded since the last commit
	last      time.Time
	owners    ownerRun
}

func (l *loader) progress(table string) {
	if l.cfg.Progress == nil {
		return
	}
	p := LoadProgress{Source: l.h.Source, Table: table, TablesDone: l.done + len(l.resume.Done), TablesTotal: len(l.h.Tables), Bytes: l.cr.n, Rows: l.before + l.unitRows}
	for _, t := range l.h.Tables {
		p.Estimate += t.Estimate
	}
	l.cfg.Progress(p)
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

// table loads the rows of the part payload opens (a table, or a chunk of
// one): directly when applying as the owner takes no privilege away or the
// copy runs no code (copiesInert), else into a temporary table and from
// there through the owner's function.
func (l *loader) table(ctx context.Context, payload []byte) error {
	var part snapshotPart
	if err := json.Unmarshal(payload, &part); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	i := slices.IndexFunc(l.h.Tables, func(t SnapshotTable) bool { return t.Name == part.Name })
	if i < 0 {
		return fmt.Errorf("snapshot: rows of %q, which its header does not list", part.Name)
	}
	t := l.h.Tables[i]
	if part.Restart {
		if err := l.discard(ctx, []string{t.Name}); err != nil {
			return err
		}
	}
	l.progress(t.Name)
	l.pending = true
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
		l.rows[t.Name] += n
		l.unitRows += n
		if err == nil && !l.h.Units {
			l.done++
		}
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
	l.rows[t.Name] += n
	l.unitRows += n
	if !l.h.Units {
		l.done++
	}
	l.cfg.Logger.Info("snapshot: table loaded", "table", t.Name, "rows", n, "copied", "as its owner")
	return nil
}

// versions loads the rows' versions, the columns the source listed (sent
// is nil from a source that predates the list). A live row's version
// names the transaction that wrote the row here: this one.
func (l *loader) versions(ctx context.Context, sent []string) (int64, error) {
	l.pending = true
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
	if _, err := l.tx.Exec(ctx, "DROP TABLE pg_temp.polyregion_load_versions"); err != nil {
		return 0, fmt.Errorf("load snapshot: %w", err)
	}
	return n, nil
}

// parked loads the changes the source had parked: they are retried here as
// there.
func (l *loader) parked(ctx context.Context) (int64, error) {
	l.pending = true
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
