package postgres

// Chunks of a table whose key is not in the order of its rows on disk
// (random keys: UUIDs, hashes). A chunk is a range of the key (see
// snapshot_units.go), and reading one range of such a key visits nearly
// every page of the table: here 94,000 rows of a 3M-row table with UUID
// keys lay on 32,048 of its 34,000 pages. Chunk by chunk, the source would
// so read the whole table once per chunk (500 times for 100M rows), which
// for a table larger than memory is that many passes over the disk.
//
// So such a table's chunks, when there are more than a few
// (spoolAboveChunks), are read together: one pass over the table
// routes each row to its chunk (width_bucket over the chunks' first keys,
// in the key's collation), spooled to a file on the source's disk, and the
// chunks then go out one after the other from their files, each with its
// versions and commit as before. The bounds are those the chunks get
// anyway (chunkEnd; an index-only scan), so what a chunk holds, and how a
// cut load resumes, do not change. A pass spools at most SpoolBytes (by
// the table's size on disk per row): a larger table takes several passes, each
// over the key range of its chunks.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
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
// UUID keys) a 1M-row table (five chunks) loaded at 1.14 of pg_dump | psql
// chunk by chunk and 0.93 spooled; spooling wins from about eight chunks
// there, and by far once the table does not fit in memory.
const spoolAboveChunks = 8

// keyOutOfDiskOrder decides whether a table's key is not in the order of
// its rows on disk, for spooling its chunks: its key is one column
// (width_bucket routes one value), and the statistics say its rows are not
// in key order, or say nothing (never analyzed: one pass is linear
// whatever the order).
func keyOutOfDiskOrder(keyColumns int, correlation *float64) bool {
	if keyColumns != 1 {
		return false
	}
	return correlation == nil || (*correlation < spoolCorrelation && *correlation > -spoolCorrelation)
}

// chunksPerPass is how many chunks one pass spools within budget bytes,
// chunkBytes each: at least one.
func chunksPerPass(budget, chunkBytes int64) int {
	if chunkBytes <= 0 || budget/chunkBytes < 1 {
		return 1
	}
	return int(min(budget/chunkBytes, 1<<16))
}

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

// chunkBytes estimates a chunk's size from the table's size on disk
// (TOAST included) per row: the rows by the statistics, or when the table
// was never analyzed, chunks full chunks (those the load still sends; a
// resumed load so overestimates, and spools less per pass).
func chunkBytes(ctx context.Context, tx pgx.Tx, table string, chunks int) (int64, error) {
	var size int64
	var tuples float64
	if err := tx.QueryRow(ctx, `SELECT pg_catalog.pg_table_size(c.oid), c.reltuples::float8 FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)`,
		qualified(table)).Scan(&size, &tuples); err != nil {
		return 0, fmt.Errorf("snapshot: size of %s: %w", table, err)
	}
	return estimateChunkBytes(size, tuples, chunks), nil
}

// estimateChunkBytes is chunkBytes's arithmetic: size bytes over tuples
// rows (negative: never analyzed), chunks chunks still to send.
func estimateChunkBytes(size int64, tuples float64, chunks int) int64 {
	if tuples < 1 {
		tuples = float64(chunks) * float64(snapshotChunkRows)
	}
	if tuples < 1 {
		return 0
	}
	return int64(float64(size) / tuples * float64(snapshotChunkRows))
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
// (rewound) and each one's rows.
func spoolPass(ctx context.Context, tx pgx.Tx, dir string, t SnapshotTable, key chunkKey, lo []string, bounds []chunkBound) ([]*os.File, []int64, error) {
	files := make([]*os.File, len(bounds))
	r := &chunkRouter{out: make([]*bufio.Writer, len(bounds)), rows: make([]int64, len(bounds))}
	fail := func(err error) ([]*os.File, []int64, error) {
		for _, f := range files {
			if f != nil {
				f.Close()
			}
		}
		return nil, nil, fmt.Errorf("snapshot: spool the chunks of %s: %w", t.Name, err)
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
	cols := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		cols[i] = "t." + quoteIdent(c.Name)
	}
	keys := []chunkKey{key}
	q := fmt.Sprintf("COPY (SELECT %s, %s FROM ONLY %s t WHERE %s) TO STDOUT (FORMAT text)",
		bucket, strings.Join(cols, ", "), qualified(t.Name), keyRange(keys, rowKeyExprs(keys), lo, bounds[len(bounds)-1].last))
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
	return files, r.rows, nil
}

// chunkRouter takes COPY text rows, each led by its chunk's number and a
// tab, and writes each row without that field to its chunk's writer.
type chunkRouter struct {
	out     []*bufio.Writer
	rows    []int64
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
	_, err = r.out[i].Write(line[tab+1:])
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

// sendSpooled sends the chunks bounds of t (after lo), read in passes of
// as many chunks as how.spoolBytes holds, each chunk from its file with
// its versions and commit frame.
func sendSpooled(ctx context.Context, tx pgx.Tx, w io.Writer, t SnapshotTable, key chunkKey, lo []string, bounds []chunkBound, how chunkReading, sum *SnapshotSummary) error {
	keys := []chunkKey{key}
	if err := chunkVersions(ctx, tx, t.Name, keys); err != nil {
		return err
	}
	per, err := chunkBytes(ctx, tx, t.Name, len(bounds))
	if err != nil {
		return err
	}
	step := chunksPerPass(how.spoolBytes, per)
	passes := (len(bounds) + step - 1) / step
	how.log.Info("sending a table's chunks from passes over its rows: its key is not in the order of its rows on disk", "table", t.Name,
		"chunks", len(bounds), "passes", passes, "spool_bytes_estimate", per*int64(min(step, len(bounds))))
	dir, err := os.MkdirTemp("", "polyregion-snapshot-*")
	if err != nil {
		return fmt.Errorf("snapshot: spool the chunks of %s: %w", t.Name, err)
	}
	defer os.RemoveAll(dir)
	for start := 0; start < len(bounds); start += step {
		group := bounds[start:min(start+step, len(bounds))]
		files, rows, err := spoolPass(ctx, tx, dir, t, key, lo, group)
		if err != nil {
			return err
		}
		err = func() error {
			defer func() {
				for _, f := range files {
					f.Close()
					os.Remove(f.Name())
				}
			}()
			for i, b := range group {
				if _, err := sendFramed(w, frameTable, snapshotPart{Name: t.Name}, t.Name, func(fw io.Writer) (int64, error) {
					_, err := io.Copy(fw, files[i])
					return rows[i], err
				}); err != nil {
					return err
				}
				sum.Rows[t.Name] += rows[i]
				if err := endChunk(ctx, tx, w, t.Name, keys, lo, b.last, true, sum); err != nil {
					return err
				}
				lo = b.last
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	return dropChunkVersions(ctx, tx)
}
