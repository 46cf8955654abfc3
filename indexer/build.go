package indexer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/replicator"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// BuildProgress reports a backfill's progress, after every batch saved.
type BuildProgress struct {
	Generation int
	Table      string
	Index      string
	Rows       int64 // copied so far, this table
	Total      int64 // rows in the table when the copy started
	Elapsed    time.Duration
	DocsPerSec float64
	Done       bool
}

// build backfills a generation: its slot is created with an exported
// snapshot, the tables are copied from that snapshot in key order, and
// every copied document carries the slot's start position as its version,
// so the changes the slot then streams (all later) replace them. An
// interrupted build resumes after the last copied key from a newer
// snapshot: rows it reads may be newer than the start position, but the
// stream replays every change after it in order, so the index ends equal
// to the table all the same.
func build(ctx context.Context, cfg Config, be Backend, g *generation) error {
	conn, err := postgres.Connect(ctx, cfg.Database)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())

	var snapshot string
	if g.StartLSN == 0 {
		// A slot left by a build interrupted before its start was recorded
		// has fed nothing: start over.
		if err := dropSlot(ctx, conn, g.Slot); err != nil {
			return err
		}
		repl, err := postgres.OpenReplication(ctx, cfg.Database, "polyregion-index-build")
		if err != nil {
			return err
		}
		defer repl.Close(context.Background())
		res, err := pglogrepl.CreateReplicationSlot(ctx, repl, g.Slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
			Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT",
		})
		if err != nil {
			return fmt.Errorf("create slot %s: %w", g.Slot, err)
		}
		if g.StartLSN, err = pglogrepl.ParseLSN(res.ConsistentPoint); err != nil {
			return err
		}
		snapshot = res.SnapshotName
		if err := g.save(ctx, conn); err != nil {
			return err
		}
	}
	// The copy reads in one repeatable-read transaction on its own session
	// (importing the exported snapshot when there is one); progress is
	// saved on conn.
	rconn, err := postgres.Connect(ctx, cfg.Database)
	if err != nil {
		return err
	}
	defer rconn.Close(context.Background())
	rtx, err := rconn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer rtx.Rollback(context.Background())
	if snapshot != "" {
		if _, err := rtx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+snapshot+"'"); err != nil {
			return fmt.Errorf("import snapshot: %w", err)
		}
	}
	specs := append([]IndexSpec(nil), cfg.Indices...)
	sort.Slice(specs, func(i, j int) bool { return specs[i].Index < specs[j].Index })
	for _, spec := range specs {
		phys := g.Indices[spec.Index]
		shape, err := postgres.LoadShape(ctx, conn, spec.Table)
		if err != nil {
			return fmt.Errorf("index %s: %w", spec.Index, err)
		}
		tm, err := newTableMap(spec, shape)
		if err != nil {
			return err
		}
		if err := be.CreateIndex(ctx, phys, tm.Mapping()); err != nil {
			return err
		}
		if g.Progress[spec.Index].Done {
			continue
		}
		if err := copyTable(ctx, cfg, be, conn, rtx, g, spec, tm); err != nil {
			return err
		}
	}
	// The generation streams its slot up to where the WAL is now before
	// it may go live (Feed.prepareNext).
	if g.CatchUpLSN, err = currentLSN(ctx, conn); err != nil {
		return err
	}
	g.State = stateReady
	if err := g.save(ctx, conn); err != nil {
		return err
	}
	cfg.Logger.Info("index generation built", "generation", g.Gen, "start", g.StartLSN.String())
	return nil
}

func copyTable(ctx context.Context, cfg Config, be Backend, conn *pgx.Conn, rtx pgx.Tx, g *generation, spec IndexSpec, tm *tableMap) error {
	shape := tm.shape
	prog := g.Progress[spec.Index]
	var total int64
	if err := rtx.QueryRow(ctx, "SELECT count(*) FROM "+qualified(spec.Table)).Scan(&total); err != nil {
		return fmt.Errorf("backfill %s: %w", spec.Table, err)
	}
	// Every name is qualified by the table's alias: an output column
	// ("id"::text, named id) must not stand in for the key column in ORDER
	// BY, or pages would follow text order while the WHERE follows the
	// key's own.
	cols := selectColumns(tm, cfg.MaxDocumentBytes)
	keyCols := make([]string, len(shape.Key))
	keyParams := make([]string, len(shape.Key))
	for i, k := range shape.Key {
		keyCols[i] = "t." + quoteIdent(shape.Columns[k])
		keyParams[i] = fmt.Sprintf("$%d::%s", i+1, shape.Types[k])
	}
	order := strings.Join(keyCols, ", ")
	first := fmt.Sprintf("SELECT %s FROM %s t ORDER BY %s LIMIT %d", strings.Join(cols, ", "), qualified(spec.Table), order, cfg.BatchDocs)
	next := fmt.Sprintf("SELECT %s FROM %s t WHERE (%s) > (%s) ORDER BY %s LIMIT %d", strings.Join(cols, ", "), qualified(spec.Table), order, strings.Join(keyParams, ", "), order, cfg.BatchDocs)
	start := time.Now()
	startRows := prog.Rows
	lastReport := time.Now()
	report := func(done bool) {
		el := time.Since(start)
		p := BuildProgress{Generation: g.Gen, Table: spec.Table, Index: spec.Index, Rows: prog.Rows, Total: total, Elapsed: el, Done: done}
		if el > 0 {
			p.DocsPerSec = float64(prog.Rows-startRows) / el.Seconds()
		}
		if cfg.Progress != nil {
			cfg.Progress(p)
		}
		cfg.Logger.Info("index backfill", "generation", g.Gen, "index", spec.Index, "rows", p.Rows, "of", total, "docs_per_s", int64(p.DocsPerSec), "done", done)
	}
	phys := g.Indices[spec.Index]
	for {
		var rows pgx.Rows
		var err error
		if prog.After == "" {
			rows, err = rtx.Query(ctx, first)
		} else {
			var after []string
			if err := json.Unmarshal([]byte(prog.After), &after); err != nil {
				return fmt.Errorf("backfill %s: progress key %s: %w", spec.Table, prog.After, err)
			}
			args := make([]any, len(after))
			for i := range after {
				args[i] = after[i]
			}
			rows, err = rtx.Query(ctx, next, args...)
		}
		if err != nil {
			return fmt.Errorf("backfill %s: %w", spec.Table, err)
		}
		var ops []Op
		var dls []deadLetter
		var lastKey string
		n, size, full := 0, 0, false
		for rows.Next() {
			vals, lens, err := pageRow(tm, rows.RawValues())
			if err != nil {
				rows.Close()
				return fmt.Errorf("backfill %s: %w", spec.Table, err)
			}
			n++
			key, err := shape.KeyOf(vals)
			if err != nil {
				rows.Close()
				return err
			}
			lastKey = key
			id, err := tm.id(vals)
			if err != nil {
				rows.Close()
				return err
			}
			why := tm.oversize(cfg.MaxDocumentBytes, lens)
			var doc []byte
			if why == "" {
				if doc, err = tm.doc(vals); err != nil {
					why = err.Error()
				} else {
					why = docOversize(doc, cfg.MaxDocumentBytes)
				}
			}
			if why != "" {
				dls = append(dls, deadLetter{index: phys, table: spec.Table, key: key, id: id, version: g.StartLSN, reason: why})
			} else {
				ops = append(ops, Op{Index: phys, ID: id, Version: int64(g.StartLSN), Doc: doc, Table: spec.Table, Key: key})
				size += len(doc) + len(id) + len(key)
			}
			if size >= cfg.BatchBytes && n < cfg.BatchDocs {
				// The page holds as much as a batch may: write it, and
				// read on after its last key.
				full = true
				break
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("backfill %s: %w", spec.Table, err)
		}
		if len(ops) > 0 {
			rej, err := bulkRetry(ctx, cfg, be, ops, nil)
			if err != nil {
				return err
			}
			for _, r := range rej {
				op := ops[r.Op]
				dls = append(dls, deadLetter{index: phys, table: spec.Table, key: op.Key, id: op.ID, version: g.StartLSN, status: r.Status, reason: r.Reason, doc: op.Doc})
			}
		}
		if err := saveDeadLetters(ctx, conn, dls); err != nil {
			return err
		}
		prog.Rows += int64(n)
		if lastKey != "" {
			prog.After = lastKey
		}
		prog.Done = n < cfg.BatchDocs && !full
		g.Progress[spec.Index] = prog
		if err := g.save(ctx, conn); err != nil {
			return err
		}
		if prog.Done {
			report(true)
			return nil
		}
		if cfg.Progress != nil {
			cfg.Progress(BuildProgress{Generation: g.Gen, Table: spec.Table, Index: spec.Index, Rows: prog.Rows, Total: total,
				Elapsed: time.Since(start), DocsPerSec: float64(prog.Rows-startRows) / max(time.Since(start).Seconds(), 1e-9)})
		}
		if time.Since(lastReport) >= 2*time.Second {
			cfg.Logger.Info("index backfill", "generation", g.Gen, "index", spec.Index, "rows", prog.Rows, "of", total,
				"docs_per_s", int64(float64(prog.Rows-startRows)/time.Since(start).Seconds()), "done", false)
			lastReport = time.Now()
		}
	}
}

// selectColumns is the select list of a backfill page: every column in
// table order (c0, c1, ...) as text, key columns whole, indexed columns
// only when short enough to be rendered (NULL otherwise), the other columns
// as NULL; then the text length of each indexed column (l0, l1, ... in
// tm.cols order), so a row over the document limit is refused on its
// lengths without its values being read.
func selectColumns(tm *tableMap, maxDoc int) []string {
	readable := int64(renderFactor) * int64(maxDoc)
	shape := tm.shape
	cols := make([]string, len(shape.Columns), len(shape.Columns)+len(tm.cols))
	for i, c := range shape.Columns {
		cols[i] = fmt.Sprintf("NULL::text AS c%d", i)
		if shape.IsKey(i) {
			cols[i] = fmt.Sprintf("t.%s::text AS c%d", quoteIdent(c), i)
		}
	}
	for j, c := range tm.cols {
		v := fmt.Sprintf("t.%s::text", quoteIdent(shape.Columns[c.src]))
		if !shape.IsKey(c.src) {
			cols[c.src] = fmt.Sprintf("CASE WHEN octet_length(%s) <= %d THEN %s END AS c%d", v, readable, v, c.src)
		}
		cols = append(cols, fmt.Sprintf("coalesce(octet_length(%s), 0)::text AS l%d", v, j))
	}
	return cols
}

// pageRow splits a backfill page's row (selectColumns) into the row's
// values and the text length of each column.
func pageRow(tm *tableMap, raw [][]byte) ([]replicator.Value, []int, error) {
	n := len(tm.shape.Columns)
	if len(raw) != n+len(tm.cols) {
		return nil, nil, fmt.Errorf("page row has %d columns, want %d", len(raw), n+len(tm.cols))
	}
	vals := textValues(raw[:n])
	lens := make([]int, n)
	for j, c := range tm.cols {
		l, err := strconv.Atoi(string(raw[n+j]))
		if err != nil {
			return nil, nil, fmt.Errorf("length of column %q: %w", tm.shape.Columns[c.src], err)
		}
		lens[c.src] = l
	}
	return vals, lens, nil
}

// bulkRetry writes a batch, retrying the whole batch while the engine is
// away or overloaded; onDown (when set) hears of each failure.
func bulkRetry(ctx context.Context, cfg Config, be Backend, ops []Op, onDown func(error)) ([]Rejection, error) {
	backoff := 250 * time.Millisecond
	for {
		rej, err := be.Bulk(ctx, ops)
		if err == nil {
			return rej, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, errIndexMissing) {
			return nil, err
		}
		if onDown != nil {
			onDown(err)
		}
		cfg.Logger.Warn("search engine did not take the batch; retrying", "docs", len(ops), "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

// textValues turns a result row of ::text columns into values (SQL NULL as
// Null), the form the change stream carries.
func textValues(raw [][]byte) []replicator.Value {
	vals := make([]replicator.Value, len(raw))
	for i, r := range raw {
		if r == nil {
			vals[i] = replicator.Value{Null: true}
		} else {
			vals[i] = replicator.Value{Text: string(r)}
		}
	}
	return vals
}
