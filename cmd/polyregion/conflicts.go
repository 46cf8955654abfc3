package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/polyregion/polyregion/replicator/audit"
)

func conflictsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "conflicts",
		Short: "Inspect the conflicts the regions resolved",
		Long: `Inspect the conflicts the regions resolved, as logged in each region's
polyregion.conflict_log.`,
	}
	cmd.AddCommand(conflictsReportCmd())
	return cmd
}

func conflictsReportCmd() *cobra.Command {
	var (
		configs                           []string
		since, until, table, region, pair string
		format, output                    string
		limit                             int
	)
	cmd := &cobra.Command{
		Use:   "report --config FILE [--config FILE ...] [filters]",
		Short: "Report the conflicts logged by one or more regions",
		Long: `Read the conflict log of every region whose config is given (each config's
database) and report the conflicts: a summary (counts by table, kind, policy,
region pair and winning region, the hottest keys, a trend over time) and one
detail row per conflict with both writes (origin, version vector, hybrid
timestamp, row image), the winner and the reason.

A conflict is one pair of concurrent writes to one row. Every region that
resolved it logged it from its own side; the report counts it once (the
identity is the table, the key and the unordered pair of writes). Write a is
the one with the lower hybrid timestamp; kind reads "what a did _ what b
did". Give every region's config to see every conflict: a pair of writes
from two regions is logged by both of them and by any region that received
both.

--since and --until take an RFC 3339 time (2026-11-26T17:00:00Z), a date
(2026-11-26) or a duration meaning that long ago (90m, 24h, 7d); since is
inclusive, until exclusive, and they apply to when a region logged the
conflict. --region eu keeps conflicts in which either write came from eu;
--pair eu,us those between a write from eu and one from us.

Formats: table (aligned text), csv (detail rows only, with a header), json
(the schema is in the README, "Conflict reports"), html (one self-contained
page). --limit caps the detail rows (newest first); the summary always
counts every conflict.

Exit codes: 0 ok, 1 a database could not be read, 2 bad flags or config.`,
		Example: `  polyregion conflicts report --config us.yaml --config eu.yaml --config ap.yaml --since 24h
  polyregion conflicts report --config us.yaml,eu.yaml --table public.orders --format csv --limit 0 --output orders.csv
  polyregion conflicts report --config us.yaml --pair eu,us --since 2026-11-01 --until 2026-12-01 --format html --output nov.html`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(configs) == 0 {
				return &exitError{exitConfig, fmt.Errorf("conflicts report: --config is required (one per region to read)")}
			}
			now := time.Now()
			f, err := reportFilters(now, since, until, table, region, pair, limit)
			if err != nil {
				return &exitError{exitConfig, fmt.Errorf("conflicts report: %w", err)}
			}
			if format, err = audit.ParseFormat(format); err != nil {
				return &exitError{exitConfig, fmt.Errorf("conflicts report: --%w", err)}
			}
			var src audit.Sources
			for _, path := range configs {
				cfg, conn, err := configAndConn(cmd.Context(), path)
				if err != nil {
					return err
				}
				defer conn.Close(context.Background())
				src = append(src, audit.DB{Name: "region " + string(cfg.Region), Q: conn})
			}
			rep, err := audit.Read(cmd.Context(), src, f, now)
			if err != nil {
				return &exitError{exitRuntime, err}
			}
			var buf bytes.Buffer
			if err := audit.Render(&buf, rep, format); err != nil {
				return &exitError{exitRuntime, err}
			}
			if output == "" || output == "-" {
				_, err = os.Stdout.Write(buf.Bytes())
			} else {
				// Row images may hold personal data: owner-only.
				err = os.WriteFile(output, buf.Bytes(), 0o600)
			}
			if err != nil {
				return &exitError{exitRuntime, fmt.Errorf("conflicts report: %w", err)}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringSliceVar(&configs, "config", nil, "region config file (YAML); repeat or comma-separate to read several regions")
	fl.StringVar(&since, "since", "", "only conflicts logged at or after this time (RFC 3339, date, or duration ago: 24h, 7d)")
	fl.StringVar(&until, "until", "", "only conflicts logged before this time (same forms as --since)")
	fl.StringVar(&table, "table", "", "only this table (schema.table)")
	fl.StringVar(&region, "region", "", "only conflicts in which either write came from this region")
	fl.StringVar(&pair, "pair", "", "only conflicts between writes of these two regions (a,b)")
	fl.StringVar(&format, "format", audit.FormatTable, "output format: "+strings.Join(audit.Formats, ", "))
	fl.IntVar(&limit, "limit", audit.DefaultLimit, "detail rows to show, lost writes first, then newest first (0: all)")
	fl.StringVarP(&output, "output", "o", "", "write the report to this file instead of standard output")
	return cmd
}

// reportFilters turns the report flags into filters.
func reportFilters(now time.Time, since, until, table, region, pair string, limit int) (audit.Filters, error) {
	f := audit.Filters{Table: table, Region: region, Limit: limit}
	var err error
	if since != "" {
		if f.Since, err = audit.ParseTime(since, now); err != nil {
			return f, fmt.Errorf("--since: %w", err)
		}
	}
	if until != "" {
		if f.Until, err = audit.ParseTime(until, now); err != nil {
			return f, fmt.Errorf("--until: %w", err)
		}
	}
	if pair != "" {
		if f.Pair, err = audit.ParsePair(pair); err != nil {
			return f, fmt.Errorf("--%w", err)
		}
	}
	return f, f.Validate()
}
