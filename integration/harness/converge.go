package harness

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TableDigest is a table's content summarised: row count and a hash of every
// row in a canonical order.
type TableDigest struct {
	Rows int64
	Hash string
}

// Digest computes a table's digest in one region.
func Digest(ctx context.Context, conn *pgx.Conn, table string) (TableDigest, error) {
	var d TableDigest
	var h *string
	q := fmt.Sprintf(`SELECT count(*), md5(string_agg(t::text, E'\n' ORDER BY t::text)) FROM %s t`, table)
	if err := conn.QueryRow(ctx, q).Scan(&d.Rows, &h); err != nil {
		return d, fmt.Errorf("digest %s: %w", table, err)
	}
	if h != nil {
		d.Hash = *h
	}
	return d, nil
}

// Quiesced reports whether every region has applied everything every other
// region had written when it was called. It emits a barrier in each region
// and waits (briefly) for the reader to pass it, so local writes committed
// before the call are counted.
func (h *Harness) Quiesced(ctx context.Context) (bool, string, error) {
	shipped := map[string]int64{}
	for _, r := range h.Regions {
		next, why, err := r.readerPassedBarrier(ctx)
		if err != nil || why != "" {
			return false, why, err
		}
		shipped[r.Name] = next - 1
	}
	for _, r := range h.Regions {
		conn, err := r.Conn(ctx)
		if err != nil {
			return false, "", err
		}
		rows, err := conn.Query(ctx, `SELECT source, seq FROM polyregion.applied`)
		if err != nil {
			conn.Close(context.Background())
			return false, "", err
		}
		applied := map[string]int64{}
		for rows.Next() {
			var s string
			var q int64
			if err := rows.Scan(&s, &q); err != nil {
				rows.Close()
				conn.Close(context.Background())
				return false, "", err
			}
			applied[s] = q
		}
		rows.Close()
		conn.Close(context.Background())
		for _, src := range h.Regions {
			if src == r {
				continue
			}
			if applied[src.Name] < shipped[src.Name] {
				return false, fmt.Sprintf("%s has applied %d of %d transactions from %s", r.Name, applied[src.Name], shipped[src.Name], src.Name), nil
			}
		}
	}
	return true, "", nil
}

// readerPassedBarrier emits a barrier and waits briefly for the region's
// reader to version every local write before it. It returns the reader's next
// outbox sequence number, or why it is not there yet. The barrier is one the
// reader records passing (in reader_state), as it does only for barriers
// with that prefix.
func (r *Region) readerPassedBarrier(ctx context.Context) (int64, string, error) {
	conn, err := r.Conn(ctx)
	if err != nil {
		return 0, "", err
	}
	defer conn.Close(context.Background())
	var next int64
	var passed bool
	var barrier string
	err = conn.QueryRow(ctx, `SELECT pg_catalog.pg_logical_emit_message(false, 'polyregion.barrier-recorded', 'quiesce')::text`).Scan(&barrier)
	for i := 0; err == nil && i < 50; i++ {
		err = conn.QueryRow(ctx, `SELECT coalesce((SELECT lsn >= $1::pg_lsn FROM polyregion.reader_state LIMIT 1), false),
			coalesce((SELECT next_seq FROM polyregion.reader_state LIMIT 1), 1)`, barrier).Scan(&passed, &next)
		if passed {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42P01" {
		return 0, fmt.Sprintf("the replicator of %s has not installed its schema yet", r.Name), nil
	}
	if err != nil {
		return 0, "", err
	}
	if !passed {
		return 0, fmt.Sprintf("the reader of %s has not versioned local writes up to %s", r.Name, barrier), nil
	}
	return next, "", nil
}

// WaitReady waits until every region's reader is streaming.
func (h *Harness) WaitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, r := range h.Regions {
		if err := r.WaitReady(ctx, time.Until(deadline)); err != nil {
			return err
		}
	}
	return nil
}

// WaitReady waits until this region's reader is streaming.
func (r *Region) WaitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, why, err := r.readerPassedBarrier(ctx)
		if err != nil {
			return err
		}
		if why == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replicator not ready within %s: %s", timeout, why)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// WaitConverged waits until replication is quiet and every region holds the
// same rows in each table, or the timeout passes; then it returns an error
// naming the first differing keys.
func (h *Harness) WaitConverged(ctx context.Context, tables []string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	stable := 0
	for {
		ok, why, err := h.Quiesced(ctx)
		if err != nil {
			return err
		}
		if ok {
			same, report, err := h.Compare(ctx, tables)
			if err != nil {
				return err
			}
			if same {
				// Quiet and equal twice in a row: nothing was in flight.
				stable++
				if stable >= 2 {
					return nil
				}
			} else {
				stable = 0
				why = report
			}
		} else {
			stable = 0
		}
		last = why
		if time.Now().After(deadline) {
			return fmt.Errorf("regions did not converge within %s: %s\n%s", timeout, last, h.Describe())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// Compare compares every table across regions and describes differences.
func (h *Harness) Compare(ctx context.Context, tables []string) (bool, string, error) {
	var diffs []string
	for _, t := range tables {
		digests := map[string]TableDigest{}
		for _, r := range h.Regions {
			conn, err := r.Conn(ctx)
			if err != nil {
				return false, "", err
			}
			d, err := Digest(ctx, conn, t)
			conn.Close(context.Background())
			if err != nil {
				return false, "", err
			}
			digests[r.Name] = d
		}
		ref := digests[h.Regions[0].Name]
		for _, r := range h.Regions[1:] {
			if digests[r.Name] != ref {
				detail, err := h.firstDifferences(ctx, t, h.Regions[0], r, 5)
				if err != nil {
					return false, "", err
				}
				diffs = append(diffs, fmt.Sprintf("%s: %s has %d rows, %s has %d; %s", t, h.Regions[0].Name, ref.Rows, r.Name, digests[r.Name].Rows, detail))
			}
		}
	}
	return len(diffs) == 0, strings.Join(diffs, "\n"), nil
}

func (h *Harness) rows(ctx context.Context, r *Region, table string) (map[string]string, error) {
	conn, err := r.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	// Key every row by its primary key values.
	rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT (SELECT string_agg(quote_nullable(j->>a.attname), ',' ORDER BY array_position(i.indkey::int2[], a.attnum))
			FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
			WHERE i.indrelid = '%s'::regclass AND i.indisprimary), t::text
		FROM %s t, LATERAL to_jsonb(t) j`, table, table))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, rows.Err()
}

func (h *Harness) firstDifferences(ctx context.Context, table string, a, b *Region, n int) (string, error) {
	ra, err := h.rows(ctx, a, table)
	if err != nil {
		return "", err
	}
	rb, err := h.rows(ctx, b, table)
	if err != nil {
		return "", err
	}
	keys := map[string]bool{}
	for k := range ra {
		keys[k] = true
	}
	for k := range rb {
		keys[k] = true
	}
	var sorted []string
	for k := range keys {
		if ra[k] != rb[k] {
			sorted = append(sorted, k)
		}
	}
	sort.Strings(sorted)
	var out []string
	for i, k := range sorted {
		if i >= n {
			out = append(out, fmt.Sprintf("... %d more", len(sorted)-n))
			break
		}
		out = append(out, fmt.Sprintf("key (%s): %s=%q %s=%q", k, a.Name, ra[k], b.Name, rb[k]))
	}
	return strings.Join(out, "; "), nil
}
