package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/polyregion/polyregion/indexer"
	"github.com/polyregion/polyregion/replicator/node"
	"github.com/polyregion/polyregion/replicator/postgres"
)

func indexCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "index",
		Short: "Build, check and inspect the regional search index",
		Long: `The replicator keeps the region's search index (the search: section of
its config) in step with the local tables. These commands rebuild it with
no downtime, compare it with the tables, and show its state.`,
	}
	cmd.AddCommand(indexRebuildCmd(), indexVerifyCmd(), indexStatusCmd())
	return cmd
}

// searchSetup loads a config that has a search: section, and the feed's
// settings for this region.
func searchSetup(path string) (node.Config, indexer.Config, *node.SearchConfig, error) {
	cfg, _, err := loadConfig(path)
	if err != nil {
		return cfg, indexer.Config{}, nil, &exitError{exitConfig, err}
	}
	if cfg.Search == nil {
		return cfg, indexer.Config{}, nil, &exitError{exitConfig, fmt.Errorf("config %s: no search: section", path)}
	}
	fc := cfg.Search.Feed
	fc.Region, fc.Database, fc.BackendKind = string(cfg.Region), cfg.Database, cfg.Search.Backend.Kind
	return cfg, fc, cfg.Search, nil
}

func indexRebuildCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "rebuild --config FILE",
		Short: "Build a new generation of the indices from the current tables",
		Long: `Copy every indexed table into new physical indices, from a snapshot
consistent with the position the new generation's change stream starts at,
printing progress. Searches keep using the current indices meanwhile; once
the new ones are built, the running replicator points the aliases at them
(within seconds) and drops the old ones. Interrupted, the command resumes
where it stopped when run again.

With the embedded index, run it while the replicator is stopped (the
replicator also builds the indices by itself on first start and whenever
the search: section changes).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, fc, sc, err := searchSetup(path)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			be, err := indexer.Open(ctx, sc.Backend)
			if err != nil {
				return &exitError{exitConfig, err}
			}
			defer be.Close()
			var last time.Time
			fc.Progress = func(p indexer.BuildProgress) {
				if !p.Done && time.Since(last) < 2*time.Second {
					return
				}
				last = time.Now()
				pct := 100.0
				if p.Total > 0 {
					pct = 100 * float64(p.Rows) / float64(p.Total)
				}
				state := "copying"
				if p.Done {
					state = "done"
				}
				fmt.Printf("generation %d  %-24s %10d / %-10d rows  %5.1f%%  %8.0f docs/s  %s\n",
					p.Generation, p.Index, p.Rows, p.Total, min(pct, 100), p.DocsPerSec, state)
			}
			fc.Logger = quietLogger()
			start := time.Now()
			gen, err := indexer.Rebuild(ctx, fc, be)
			if err != nil {
				return &exitError{exitRuntime, err}
			}
			fmt.Printf("generation %d built in %s; the replicator catches it up, then switches the aliases to it\n", gen, time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "region config file (YAML)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func indexVerifyCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "verify --config FILE",
		Short: "Compare each index with its table; exit 3 when they differ",
		Long: `Read every indexed table and every document of its index and compare
ids and content (a hash of each document against the row it renders to).
Prints one line per index and up to ten ids of each kind of difference.
A busy region's index trails by its lag: verify a quiet one, or expect the
latest writes to show as differences. Exit code 3 when an index differs.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, fc, sc, err := searchSetup(path)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if sc.Backend.Kind == indexer.KindEmbedded || sc.Backend.Kind == "" {
				return &exitError{exitConfig, errors.New("index verify reads external engines; for the embedded index use the replicator's /search endpoint")}
			}
			be, err := indexer.Open(ctx, sc.Backend)
			if err != nil {
				return &exitError{exitConfig, err}
			}
			defer be.Close()
			// The feed wrote the documents from text read in UTF-8.
			_, conn, err := configAndConn(postgres.WithUTF8Text(ctx), path)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			diffs, err := indexer.VerifyLimited(ctx, conn, be, fc.Indices, sc.Feed.MaxDocumentBytes)
			if err != nil {
				return &exitError{exitRuntime, err}
			}
			bad := 0
			for _, d := range diffs {
				fmt.Println(d.String())
				if !d.Equal() {
					bad++
				}
			}
			if bad > 0 {
				return &exitError{exitPreflight, fmt.Errorf("region %s: %d of %d indices differ from their tables", cfg.Region, bad, len(diffs))}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "region config file (YAML)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func indexStatusCmd() *cobra.Command {
	var path string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status --config FILE",
		Short: "Show index generations, their lag and the dead-letter table",
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, conn, err := configAndConn(cmd.Context(), path)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			rep, err := indexer.ReadReport(cmd.Context(), conn)
			if err != nil {
				return &exitError{exitRuntime, err}
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			printIndexReport(rep)
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "region config file (YAML)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func printIndexReport(rep indexer.Report) {
	if len(rep.Generations) == 0 {
		fmt.Println("index: not built yet")
	}
	for _, g := range rep.Generations {
		lag := "slot missing"
		if !g.SlotGone && g.LagBytes != nil {
			lag = fmt.Sprintf("%d bytes of WAL behind", *g.LagBytes)
		}
		fmt.Printf("index generation %d: %s, %s\n", g.Gen, g.State, lag)
		for _, alias := range slices.Sorted(maps.Keys(g.Indices)) {
			fmt.Printf("  %-24s -> %s (%d rows copied at build)\n", alias, g.Indices[alias], g.Progress[alias])
		}
	}
	fmt.Printf("dead letters: %d\n", rep.DeadLetters)
	for _, d := range rep.Recent {
		fmt.Printf("  %s  %s %s key %s: %d %s\n", d.At.Format(time.RFC3339), d.Index, d.Table, d.Key, d.Status, d.Reason)
	}
}

// quietLogger keeps a command's output to its own lines: warnings only.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
