package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/polyregion/polyregion/replicator/postgres"
)

func parkedCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "parked",
		Short: "List, retry or discard the changes parked in this region",
		Long: `A change from a peer that cannot be applied here is parked, with the reason,
in the region's polyregion.parked, and the rest of that peer's stream goes on.
Reasons: the change's shape differs from the local table (a column, a type,
the primary key: only changes of that shape are parked, changes in the
table's own shape go on), a child row before its parent, a clash on a
secondary unique index, a TOASTed value not sent for a row that is not here.

The replicator retries parked changes on its own with a growing delay (a
shape that differs is checked again every few seconds, and its changes are
applied as soon as the table matches it), and logs each reason once. A
retried change goes through the same version decision as any change: one a
later change of the same row superseded is skipped as older.

A change whose shape will never match again (made under a primary key the
table no longer has, say) stays parked until an operator discards it; see
the README, "Parked changes", for how to recover its effect.`,
	}
	cmd.AddCommand(parkedListCmd(), parkedRetryCmd(), parkedDiscardCmd())
	return cmd
}

// parkedSelection is the flags that pick parked changes.
type parkedSelection struct {
	ids           []int64
	all           bool
	source, table string
}

func (s *parkedSelection) flags(cmd *cobra.Command, verb string) {
	fl := cmd.Flags()
	fl.Int64SliceVar(&s.ids, "id", nil, "the parked change to "+verb+" (repeat or comma-separate for several)")
	fl.BoolVar(&s.all, "all", false, verb+" every open parked change (narrowed by --source and --table)")
	fl.StringVar(&s.source, "source", "", "only changes from this region")
	fl.StringVar(&s.table, "table", "", "only changes of this table (schema.table)")
}

// filter checks the selection and returns it as a filter of open changes.
func (s *parkedSelection) filter(verb string) (postgres.ParkedFilter, error) {
	if len(s.ids) == 0 && !s.all {
		return postgres.ParkedFilter{}, &exitError{exitConfig, fmt.Errorf("parked %s: give --id N or --all", verb)}
	}
	if len(s.ids) > 0 && s.all {
		return postgres.ParkedFilter{}, &exitError{exitConfig, fmt.Errorf("parked %s: give --id or --all, not both", verb)}
	}
	return postgres.ParkedFilter{IDs: s.ids, Source: s.source, Table: s.table}, nil
}

// selectParked reads the open parked changes a selection names; ids that
// name no open change are an error.
func selectParked(ctx context.Context, conn *pgx.Conn, verb string, f postgres.ParkedFilter) ([]postgres.Parked, error) {
	list, err := postgres.ListParked(ctx, conn, f)
	if err != nil {
		return nil, &exitError{exitRuntime, err}
	}
	var missing []string
	for _, id := range f.IDs {
		if !slices.ContainsFunc(list, func(p postgres.Parked) bool { return p.ID == id }) {
			missing = append(missing, strconv.FormatInt(id, 10))
		}
	}
	if len(missing) > 0 {
		return nil, &exitError{exitRuntime, fmt.Errorf("parked %s: no open parked change with id %s (see parked list)", verb, strings.Join(missing, ", "))}
	}
	return list, nil
}

// openSelected connects to the region's database and returns the open
// parked changes sel selects for verb (none: it says so, conn is nil).
func openSelected(ctx context.Context, path string, sel *parkedSelection, verb string) (*pgx.Conn, []postgres.Parked, error) {
	f, err := sel.filter(verb)
	if err != nil {
		return nil, nil, err
	}
	_, conn, err := configAndConn(ctx, path)
	if err != nil {
		return nil, nil, err
	}
	list, err := selectParked(ctx, conn, verb, f)
	if err == nil && len(list) == 0 {
		fmt.Printf("no parked changes to %s\n", verb)
	}
	if err != nil || len(list) == 0 {
		conn.Close(context.Background())
		return nil, nil, err
	}
	return conn, list, nil
}

func parkedIDs(list []postgres.Parked) []int64 {
	out := make([]int64, len(list))
	for i, p := range list {
		out[i] = p.ID
	}
	return out
}

func parkedListCmd() *cobra.Command {
	var (
		path          string
		f             postgres.ParkedFilter
		asJSON, withR bool
	)
	cmd := &cobra.Command{
		Use:   "list --config FILE [--source REGION] [--table TABLE] [--json]",
		Short: "List the parked changes",
		Long: `List this region's open parked changes, oldest first: id, source region and
its transaction's sequence number, table, operation, primary key, how many
times it was retried, when it was parked, when it is tried next, and why it
cannot be applied. --rows adds each change's row (it may hold personal
data). Works whether or not the replicator is running.`,
		Example: `  polyregion parked list --config eu.yaml
  polyregion parked list --config eu.yaml --table public.users --json --rows`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, conn, err := configAndConn(cmd.Context(), path)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			f.Rows = withR
			list, err := postgres.ListParked(cmd.Context(), conn, f)
			if err != nil {
				return &exitError{exitRuntime, err}
			}
			if asJSON {
				if list == nil {
					list = []postgres.Parked{}
				}
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(list)
			}
			return printParked(os.Stdout, list, withR)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&path, "config", "", "region config file (YAML)")
	fl.StringVar(&f.Source, "source", "", "only changes from this region")
	fl.StringVar(&f.Table, "table", "", "only changes of this table (schema.table)")
	fl.Int64SliceVar(&f.IDs, "id", nil, "only these parked changes")
	fl.BoolVar(&f.Resolved, "resolved", false, "also list changes applied since they were parked")
	fl.IntVar(&f.Limit, "limit", 100, "list at most this many, oldest first (0: all)")
	fl.BoolVar(&withR, "rows", false, "include each change's row")
	fl.BoolVar(&asJSON, "json", false, "print JSON")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func printParked(out io.Writer, list []postgres.Parked, withRows bool) error {
	if len(list) == 0 {
		_, err := fmt.Fprintln(out, "no parked changes")
		return err
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	head := "id\tsource\tseq\ttable\top\tkey\tretries\tparked at\tnext try\treason"
	if withRows {
		head += "\trow"
	}
	fmt.Fprintln(w, head)
	for _, p := range list {
		next := "next round"
		switch {
		case p.ResolvedAt != nil:
			next = "resolved " + p.ResolvedAt.UTC().Format(time.RFC3339)
		case p.NextRetryAt != nil:
			next = p.NextRetryAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(w, "%d\t%s\t%d\t%s\t%s\t%s\t%d\t%s\t%s\t%s", p.ID, p.Source, p.Seq, p.Table, p.Op, p.Key, p.Retries,
			p.ParkedAt.UTC().Format(time.RFC3339), next, oneLine(p.Reason))
		if withRows {
			b, _ := json.Marshal(p.Row)
			fmt.Fprintf(w, "\t%s", b)
		}
		fmt.Fprintln(w)
	}
	return w.Flush()
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func parkedRetryCmd() *cobra.Command {
	var (
		path string
		sel  parkedSelection
		wait time.Duration
	)
	cmd := &cobra.Command{
		Use:   "retry --config FILE (--id N | --all) [--wait 10s]",
		Short: "Retry parked changes now",
		Long: `Make parked changes due now: the region's running replicator tries them at
its next retry round (every 2s), through the same version decision as any
change (a change a later one of the same row superseded is skipped as older;
nothing is written blindly). Changes whose shape still differs from the
table are checked again and stay parked. The command waits up to --wait for
the outcome and prints it (0: do not wait). When the replicator is not
running, the changes are tried when it starts.`,
		Example: `  polyregion parked retry --config eu.yaml --id 42
  polyregion parked retry --config eu.yaml --all --table public.orders`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			conn, list, err := openSelected(ctx, path, &sel, "retry")
			if err != nil || len(list) == 0 {
				return err
			}
			defer conn.Close(context.Background())
			due, err := postgres.RetryParkedNow(ctx, conn, parkedIDs(list))
			if err != nil {
				return &exitError{exitRuntime, err}
			}
			fmt.Printf("%d parked change(s) made due; the replicator tries them at its next round\n", len(due))
			if wait <= 0 || len(due) == 0 {
				return nil
			}
			outcome, err := awaitRetry(ctx, conn, due, wait)
			if err != nil {
				return &exitError{exitRuntime, err}
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			for _, p := range outcome {
				switch {
				case p.ResolvedAt != nil:
					fmt.Fprintf(w, "%d\t%s\t%s\tresolved (applied, or skipped as older than the row here)\n", p.ID, p.Table, p.Key)
				case p.NextRetryAt != nil:
					fmt.Fprintf(w, "%d\t%s\t%s\tstill parked: %s\n", p.ID, p.Table, p.Key, oneLine(p.Reason))
				default:
					fmt.Fprintf(w, "%d\t%s\t%s\tnot tried yet (is the region's replicator running?)\n", p.ID, p.Table, p.Key)
				}
			}
			return w.Flush()
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&path, "config", "", "region config file (YAML)")
	sel.flags(cmd, "retry")
	fl.DurationVar(&wait, "wait", 10*time.Second, "how long to wait for the replicator's outcome (0: do not wait)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

// awaitRetry polls the changes made due until the replicator has tried
// every one (resolved, or put back with a next try) or wait passes, and
// returns their last state.
func awaitRetry(ctx context.Context, conn *pgx.Conn, due []int64, wait time.Duration) ([]postgres.Parked, error) {
	deadline := time.Now().Add(wait)
	for {
		list, err := postgres.ListParked(ctx, conn, postgres.ParkedFilter{IDs: due, Resolved: true})
		if err != nil {
			return nil, err
		}
		tried := true
		for _, p := range list {
			if p.ResolvedAt == nil && p.NextRetryAt == nil {
				tried = false
			}
		}
		if tried || time.Now().After(deadline) {
			return list, nil
		}
		select {
		case <-ctx.Done():
			return list, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func parkedDiscardCmd() *cobra.Command {
	var (
		path   string
		sel    parkedSelection
		yes    bool
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "discard --config FILE (--id N | --all) [--yes]",
		Short: "Discard parked changes for good",
		Long: `Delete parked changes: they are never applied in this region. Each discarded
change is printed (id, source, sequence number, table, operation, key,
reason): keep the output, it is the record of what was given up. A
discarded change no longer holds back the collection of tombstones.

Before discarding, make sure the change's effect is not needed here, or
recover it (see the README, "Parked changes"): the rows of this region may
otherwise stay different from its source's.

Asks for confirmation: --yes, or typing "discard" when standard input is a
terminal. Without either it refuses and discards nothing.`,
		Example: `  polyregion parked discard --config eu.yaml --id 42 --yes
  polyregion parked discard --config eu.yaml --all --source us --table public.users`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			conn, list, err := openSelected(ctx, path, &sel, "discard")
			if err != nil || len(list) == 0 {
				return err
			}
			defer conn.Close(context.Background())
			if !yes {
				if err := confirmDiscard(os.Stdin, os.Stderr, list); err != nil {
					return err
				}
			}
			gone, err := postgres.DiscardParked(ctx, conn, parkedIDs(list))
			if err != nil {
				return &exitError{exitRuntime, err}
			}
			if asJSON {
				if gone == nil {
					gone = []postgres.Parked{}
				}
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(gone)
			}
			for _, p := range gone {
				fmt.Printf("discarded parked change %d: from %s seq %d, %s %s key %s (retried %d times; reason: %s)\n",
					p.ID, p.Source, p.Seq, p.Op, p.Table, p.Key, p.Retries, oneLine(p.Reason))
			}
			if n := len(list) - len(gone); n > 0 {
				fmt.Printf("%d change(s) were applied or discarded meanwhile and were left as they are\n", n)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&path, "config", "", "region config file (YAML)")
	sel.flags(cmd, "discard")
	fl.BoolVar(&yes, "yes", false, "discard without asking")
	fl.BoolVar(&asJSON, "json", false, "print the discarded changes as JSON")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

// errNotConfirmed: a discard was not confirmed; nothing was discarded.
var errNotConfirmed = errors.New("parked discard: not confirmed; nothing discarded")

// confirmDiscard shows what would be discarded and asks for the word
// "discard" on in, which must be a terminal; anything else refuses.
func confirmDiscard(in *os.File, out io.Writer, list []postgres.Parked) error {
	if fi, err := in.Stat(); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return &exitError{exitConfig, fmt.Errorf("parked discard: refusing to discard %d parked change(s) without --yes (standard input is not a terminal to confirm on)", len(list))}
	}
	shown := list
	if len(shown) > 20 {
		shown = shown[:20]
	}
	if err := printParked(out, shown, false); err != nil {
		return err
	}
	if len(list) > len(shown) {
		fmt.Fprintf(out, "... and %d more\n", len(list)-len(shown))
	}
	fmt.Fprintf(out, "Discard these %d parked change(s) for good? They will never be applied in this region. Type \"discard\" to confirm: ", len(list))
	return readConfirmation(in, "discard")
}

// readConfirmation reads one line from in and accepts only word.
func readConfirmation(in io.Reader, word string) error {
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return &exitError{exitRuntime, fmt.Errorf("parked discard: read confirmation: %w", err)}
	}
	if strings.TrimSpace(line) != word {
		return &exitError{exitConfig, errNotConfirmed}
	}
	return nil
}
