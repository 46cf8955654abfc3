package postgres

// Chunks of a table whose key is not in the order of its rows on disk
// (random keys: UUIDs, hashes). A chunk is a range of the key (see
// snapshot_units.go), and reading one range of such a key visits nearly
// every page of the table: here 94,000 rows of a 3M-row table with UUID
// keys lay on 32,048 of its 34,000 pages. Chunk by chunk, the source would
// so read the whole table once per chunk (500 times for 100M rows), which
// for a table larger than memory is that many passes over the disk.
//
// So such a table's chunks, when its statistics count more than a few
// (spoolAboveChunks), are read together: one pass over the table routes
// each row to its chunk (width_bucket over the chunks' first keys, in the
// key's collation), spooled to a file on the source's disk, and the chunks
// then go out one after the other from their files, each with its
// versions and commit as before. The bounds are those the chunks get
// anyway (chunkEnd; an index-only scan), so what a chunk holds, and how a
// cut load resumes, do not change. A pass spools about SpoolBytes
// (estimated from a sample of the rows' text, then from what the first
// pass wrote): a larger table takes several passes, each over the key
// range of its chunks. A pass sends empty data frames while it reads, in
// the part it opened first, so the joining region does not take the
// silence for a dead stream; where no spool directory can be made, the
// chunks go one by one.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/replicator"
)

// DefaultSpoolBytes is how much of a table one pass spools on the source's
// disk unless SnapshotConfig.SpoolBytes says otherwise.
const DefaultSpoolBytes = 1 << 30

// spoolCorrelation is the key-to-disk-order correlation (pg_stats) under
// which a table's key is taken as not in the order of its rows on disk:
// above it, a chunk's key range lies on a run of the table's pages and is
// read by itself.
const spoolCorrelation = 0.9

// spoolAboveChunks is how many chunks a table whose key is not in disk
// order may send one by one. Reading a chunk visits nearly every page, so
// chunk by chunk costs chunks x pages; spooling costs a write and a read
// of every row on the source's disk. With the table in memory (two cores,
// UUID keys) a 1M-row table (five chunks) loaded at 1.17 and 1.11 of
// pg_dump | psql chunk by chunk and 0.90 and 0.95 spooled, a 3M-row one
// (fifteen) within the spread either way; the reads saved grow with the
// table, and count most once it does not fit in memory.
const spoolAboveChunks = 8

// keyOutOfDiskOrder decides whether a table's key is not in the order of
// its rows on disk, for spooling its chunks: its key is one column of a
// type that is not an array (width_bucket routes one scalar value), and the
// statistics say its rows are not in key order. A table never analyzed
// keeps its chunks read one by one, as a key in disk order needs: its
// passes would each read the table.
func keyOutOfDiskOrder(keyColumns int, typ string, correlation *float64) bool {
	if keyColumns != 1 || strings.HasSuffix(typ, "]") || correlation == nil {
		return false
	}
	return *correlation < spoolCorrelation && *correlation > -spoolCorrelation
}

// chunksPerPass is how many chunks one pass spools within budget bytes,
// chunkBytes each: at least one.
func chunksPerPass(budget, chunkBytes int64) int {
	if chunkBytes <= 0 || budget/chunkBytes < 1 {
		return 1
	}
	return int(min(budget/chunkBytes, maxChunksPerPass))
}

// maxChunksPerPass bounds the files one pass keeps open.
const maxChunksPerPass = 1024

// keyCorrelation reads the statistics' correlation of the key column with
// the table's order on disk; nil when the table was never analyzed.
func keyCorrelation(ctx context.Context, tx pgx.Tx, table string, key chunkKey) (*float64, error) {
	var corr *float64
	err := tx.QueryRow(ctx, `SELECT (SELECT s.correlation::float8 FROM pg_catalog.pg_stats s
			WHERE s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = $2 AND NOT s.inherited)
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.oid = pg_catalog.to_regclass($1)`, qualified(table), key.name).Scan(&corr)
	if err != nil {
		return nil, fmt.Errorf("snapshot: key order of %s: %w", table, err)
	}
	return corr, nil
}

// tableRows is the statistics' estimate of table's rows (0: never
// analyzed).
func tableRows(ctx context.Context, tx pgx.Tx, table string) (int64, error) {
	var tuples float64
	if err := tx.QueryRow(ctx, `SELECT c.reltuples::float8 FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)`,
		qualified(table)).Scan(&tuples); err != nil {
		return 0, fmt.Errorf("snapshot: size of %s: %w", table, err)
	}
	return int64(max(tuples, 0)), nil
}

// chunkBytes estimates a chunk's size in COPY text from a sample of the
// table's pages (TABLESAMPLE SYSTEM: whole pages, about a thousandth of
// them), or when the sample holds too few rows, from the table's size on
// disk (TOAST included) per row: compressed values and bytea's hex make
// the text larger, so a pass measures what it spooled and the next passes
// go by that.
func chunkBytes(ctx context.Context, tx pgx.Tx, table string, rows int64) (int64, error) {
	var sampled, textBytes, size int64
	if err := tx.QueryRow(ctx, fmt.Sprintf(`SELECT count(*), coalesce(sum(pg_catalog.octet_length(t::text)), 0), pg_catalog.pg_table_size(%s::regclass)
		FROM ONLY %s t TABLESAMPLE SYSTEM (0.1) REPEATABLE (0)`, quoteLiteral(qualified(table)), qualified(table))).Scan(&sampled, &textBytes, &size); err != nil {
		return 0, fmt.Errorf("snapshot: size of %s: %w", table, err)
	}
	return estimateChunkBytes(sampled, textBytes, size, rows), nil
}

// estimateChunkBytes is chunkBytes's arithmetic: sampled rows of
// textBytes in all, or size bytes on disk for rows rows.
func estimateChunkBytes(sampled, textBytes, size, rows int64) int64 {
	switch {
	case sampled >= 100:
		return textBytes / sampled * snapshotChunkRows
	case rows > 0:
		return size / rows * snapshotChunkRows
	}
	return 0
}

// chunkBound is where one chunk ends: its last key, and the first key of
// the chunk after it (both nil for the last chunk: to the table's end).
type chunkBound struct{ last, next []string }

// chunkBounds reads the bounds of every chunk of table after lo.
func chunkBounds(ctx context.Context, tx pgx.Tx, table string, keys []chunkKey, lo []string) ([]chunkBound, error) {
	var out []chunkBound
	for {
		last, next, err := chunkEnd(ctx, tx, table, keys, lo)
		if err != nil {
			return nil, err
		}
		out = append(out, chunkBound{last: last, next: next})
		if last == nil {
			return out, nil
		}
		lo = last
	}
}

// spoolPass reads the rows of the chunks bounds (after lo) in one pass and
// writes each chunk's to a file of its own in dir, returning the files
// (rewound), each one's rows and the bytes spooled.
func spoolPass(ctx context.Context, tx pgx.Tx, dir string, t SnapshotTable, key chunkKey, lo []string, bounds []chunkBound) ([]*os.File, []int64, int64, error) {
	files := make([]*os.File, len(bounds))
	r := &chunkRouter{out: make([]*bufio.Writer, len(bounds)), rows: make([]int64, len(bounds))}
	fail := func(err error) ([]*os.File, []int64, int64, error) {
		for _, f := range files {
			if f != nil {
				f.Close()
			}
		}
		return nil, nil, 0, fmt.Errorf("snapshot: spool the chunks of %s: %w", t.Name, err)
	}
	for i := range files {
		f, err := os.CreateTemp(dir, "chunk-*")
		if err != nil {
			return fail(err)
		}
		files[i] = f
		r.out[i] = bufio.NewWriterSize(f, 64<<10)
	}
	col := "t." + quoteIdent(key.name)
	if key.collate != "" {
		col += " COLLATE " + key.collate
	}
	bucket := "0"
	if len(bounds) > 1 {
		firsts := make([]string, len(bounds)-1)
		for i, b := range bounds[:len(bounds)-1] {
			firsts[i] = quoteLiteral(b.next[0]) + "::" + key.typ
		}
		bucket = fmt.Sprintf("pg_catalog.width_bucket(%s, ARRAY[%s])", col, strings.Join(firsts, ", "))
	}
	keys := []chunkKey{key}
	q := fmt.Sprintf("COPY (SELECT %s, %s FROM ONLY %s t WHERE %s) TO STDOUT (FORMAT text)",
		bucket, strings.Join(rowColumns(t), ", "), qualified(t.Name), keyRange(keys, rowKeyExprs(keys), lo, bounds[len(bounds)-1].last))
	if _, err := tx.Conn().PgConn().CopyTo(ctx, r, q); err != nil {
		return fail(err)
	}
	if err := r.finish(); err != nil {
		return fail(err)
	}
	for _, f := range files {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return fail(err)
		}
	}
	return files, r.rows, r.bytes, nil
}

// chunkRouter takes COPY text rows, each led by its chunk's number and a
// tab, and writes each row without that field to its chunk's writer.
type chunkRouter struct {
	out     []*bufio.Writer
	rows    []int64
	bytes   int64  // written to the chunks
	partial []byte // a row whose end has not come yet
}

func (r *chunkRouter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		end := bytes.IndexByte(p, '\n')
		if end < 0 {
			r.partial = append(r.partial, p...)
			return n, nil
		}
		line := p[:end+1]
		if len(r.partial) > 0 {
			r.partial = append(r.partial, line...)
			line = r.partial
		}
		if err := r.route(line); err != nil {
			return 0, err
		}
		r.partial = r.partial[:0]
		p = p[end+1:]
	}
	return n, nil
}

// route writes one row (with its newline) to its chunk.
func (r *chunkRouter) route(line []byte) error {
	tab := bytes.IndexByte(line, '\t')
	if tab < 0 {
		return fmt.Errorf("a spooled row without its chunk number")
	}
	i, err := strconv.Atoi(string(line[:tab]))
	if err != nil || i < 0 || i >= len(r.out) {
		return fmt.Errorf("a spooled row for chunk %q of %d", line[:tab], len(r.out))
	}
	r.rows[i]++
	n, err := r.out[i].Write(line[tab+1:])
	r.bytes += int64(n)
	return err
}

// finish flushes every chunk's writer; a row left without its end is an
// error.
func (r *chunkRouter) finish() error {
	if len(r.partial) > 0 {
		return fmt.Errorf("a spooled row without its end")
	}
	for _, w := range r.out {
		if err := w.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// chunkReading is how the source reads chunks: how much one pass may
// spool, and where it says how it read a table.
type chunkReading struct {
	spoolBytes int64
	log        *slog.Logger
}

// spoolKeepalive is how often a pass under way sends an empty data frame
// in the part it opened: the joining region ends a stream silent for
// three minutes (link.SnapshotIdleTimeout), and a pass over a table larger
// than memory reads it from disk before sending anything.
var spoolKeepalive = 30 * time.Second

// trySpooled sends the chunks of t after lo spooled when its key (one
// column) is not in disk order and the statistics count more rows than
// spoolAboveChunks chunks hold, and reports whether it did. Nothing is sent
// when it does not (a spool directory that cannot be made is logged).
func trySpooled(ctx context.Context, tx pgx.Tx, w io.Writer, t SnapshotTable, key chunkKey, lo []string, how chunkReading, sum *SnapshotSummary) (bool, error) {
	corr, err := keyCorrelation(ctx, tx, t.Name, key)
	if err != nil || !keyOutOfDiskOrder(1, key.typ, corr) {
		return false, err
	}
	rows, err := tableRows(ctx, tx, t.Name)
	if err != nil || rows <= spoolAboveChunks*snapshotChunkRows {
		return false, err
	}
	per, err := chunkBytes(ctx, tx, t.Name, rows)
	if err != nil {
		return false, err
	}
	// Spooled one chunk a pass, a chunk is read as by itself.
	if chunksPerPass(how.spoolBytes, per) < 2 {
		how.log.Warn("the spool holds less than two chunks of a table whose key is not in the order of its rows on disk: sending them one by one, each reading the table; raise join.spool", "table", t.Name,
			"spool_bytes", how.spoolBytes, "chunk_bytes_estimate", per)
		return false, nil
	}
	dir, err := spoolDir()
	if err != nil {
		how.log.Warn("cannot spool the chunks of a table whose key is not in the order of its rows on disk: sending them one by one, each reading the table", "table", t.Name, "err", err)
		return false, nil
	}
	defer os.RemoveAll(dir)
	return true, sendSpooled(ctx, tx, w, t, key, lo, dir, per, how, sum)
}

// sendSpooled sends the chunks of t after lo in passes spooled in dir, of
// as many chunks as how.spoolBytes holds at per bytes a chunk, each chunk
// from its file with its versions and commit frame.
func sendSpooled(ctx context.Context, tx pgx.Tx, w io.Writer, t SnapshotTable, key chunkKey, lo []string, dir string, per int64, how chunkReading, sum *SnapshotSummary) error {
	keys := []chunkKey{key}
	// Each pass opens its first chunk's part before it reads, and keeps
	// the stream alive while it does (the first also reads the bounds and
	// the versions).
	open := func() (func() error, error) {
		if err := writeSnapshotJSON(w, frameTable, snapshotPart{Name: t.Name}); err != nil {
			return nil, fmt.Errorf("snapshot: send %s: %w", t.Name, err)
		}
		return keepAlive(w), nil
	}
	stop, err := open()
	if err != nil {
		return err
	}
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	bounds, err := chunkBounds(ctx, tx, t.Name, keys, lo)
	if err != nil {
		return err
	}
	if err := chunkVersions(ctx, tx, t.Name, keys); err != nil {
		return err
	}
	step := chunksPerPass(how.spoolBytes, per)
	how.log.Info("sending a table's chunks from passes over its rows: its key is not in the order of its rows on disk", "table", t.Name,
		"chunks", len(bounds), "passes", (len(bounds)+step-1)/step, "spool_bytes_estimate", per*int64(min(step, len(bounds))))
	for start := 0; start < len(bounds); {
		if stop == nil {
			if stop, err = open(); err != nil {
				return err
			}
		}
		group := bounds[start:min(start+step, len(bounds))]
		files, rows, spooled, err := spoolPass(ctx, tx, dir, t, key, lo, group)
		kept := stop()
		stop = nil
		if err != nil {
			return err
		}
		if kept != nil {
			closeSpool(files)
			return fmt.Errorf("snapshot: send %s: %w", t.Name, kept)
		}
		if err := sendPass(ctx, tx, w, t, keys, lo, group, files, rows, sum); err != nil {
			return err
		}
		lo = group[len(group)-1].last
		start += len(group)
		// The next passes go by what this one spooled.
		step = chunksPerPass(how.spoolBytes, spooled/int64(len(group)))
	}
	return dropChunkVersions(ctx, tx)
}

// sendPass sends the chunks group (after lo) from their files, the first
// one's part open already, and closes and removes the files.
func sendPass(ctx context.Context, tx pgx.Tx, w io.Writer, t SnapshotTable, keys []chunkKey, lo []string, group []chunkBound, files []*os.File, rows []int64, sum *SnapshotSummary) error {
	defer closeSpool(files)
	for i, b := range group {
		fill := func(fw io.Writer) (int64, error) {
			_, err := io.Copy(fw, files[i])
			return rows[i], err
		}
		var err error
		if i == 0 {
			_, err = continueFramed(w, snapshotPart{Name: t.Name}, t.Name, fill)
		} else {
			_, err = sendFramed(w, frameTable, snapshotPart{Name: t.Name}, t.Name, fill)
		}
		if err != nil {
			return err
		}
		sum.Rows[t.Name] += rows[i]
		if err := endChunk(ctx, tx, w, t.Name, keys, lo, b.last, true, sum); err != nil {
			return err
		}
		lo = b.last
	}
	return nil
}

// closeSpool closes and removes a pass's files.
func closeSpool(files []*os.File) {
	for _, f := range files {
		f.Close()
		os.Remove(f.Name())
	}
}

// keepAlive writes an empty data frame to w, flushed, every
// spoolKeepalive until the returned stop, which returns the first write's
// error, if any. Nothing else may write to w meanwhile.
func keepAlive(w io.Writer) (stop func() error) {
	flush(w)
	done, errc := make(chan struct{}), make(chan error, 1)
	go func() {
		t := time.NewTicker(spoolKeepalive)
		defer t.Stop()
		for {
			select {
			case <-done:
				errc <- nil
				return
			case <-t.C:
				if err := replicator.WriteFrame(w, frameData, nil); err != nil {
					errc <- err
					return
				}
				if err := flush(w); err != nil {
					errc <- err
					return
				}
			}
		}
	}()
	return func() error {
		close(done)
		return <-errc
	}
}

// flush sends what w holds, when it can.
func flush(w io.Writer) error {
	if f, ok := w.(interface{ Flush() error }); ok {
		return f.Flush()
	}
	return nil
}

// spoolDir makes a pass's directory in the temporary directory, named for
// this process (its id and start), and removes those of processes that
// are gone (a source killed while it spooled; the same id started again,
// as a container's first process is, counts as gone).
func spoolDir() (string, error) {
	removeStaleSpools(os.TempDir())
	pid := os.Getpid()
	return os.MkdirTemp("", fmt.Sprintf("%s%d-%d-*", spoolPrefix, pid, processStart(pid)))
}

// spoolPrefix begins the name of every spool directory, followed by the
// process's id and start.
const spoolPrefix = "polyregion-snapshot-"

// removeStaleSpools removes the spool directories in dir of processes
// that no longer run.
func removeStaleSpools(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), spoolPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		parts := strings.SplitN(rest, "-", 3)
		if len(parts) < 3 {
			continue
		}
		pid, err1 := strconv.Atoi(parts[0])
		start, err2 := strconv.ParseInt(parts[1], 10, 64)
		if err1 != nil || err2 != nil || pid <= 0 || (processRuns(pid) && processStart(pid) == start) {
			continue
		}
		os.RemoveAll(filepath.Join(dir, e.Name()))
	}
}

// processRuns reports whether a process of that id runs (one of another
// user counts).
func processRuns(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// processStart is when the process of that id started (clock ticks after
// boot, from /proc); 0 where that cannot be read.
func processStart(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command, in parentheses, may hold spaces: the fields after it
	// are the state (3rd) to the start time (22nd).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 {
		return 0
	}
	start, err := strconv.ParseInt(fields[19], 10, 64)
	if err != nil {
		return 0
	}
	return start
}
