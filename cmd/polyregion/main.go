// Command polyregion runs one region's active-active PostgreSQL replicator,
// checks a region's readiness, and runs a local multi-region demo.
//
// Exit codes: 0 success; 1 runtime failure; 2 bad usage or configuration;
// 3 preflight found problems (check).
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	_ "net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator"
	"github.com/polyregion/polyregion/replicator/node"
	"github.com/polyregion/polyregion/replicator/obs"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// defaultMemoryLimit is the replicator's soft heap limit unless GOMEMLIMIT
// is set.
const defaultMemoryLimit = 200 << 20

// defaultGCPercent is the replicator's GOGC unless GOGC is set: with the
// default (100) the collector took about a sixth of the replicator's CPU
// under the hot-row benchmark, where little of the heap is live.
const defaultGCPercent = 400

const (
	exitRuntime   = 1
	exitConfig    = 2
	exitPreflight = 3
)

type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	root := &cobra.Command{
		Use:   "polyregion",
		Short: "Active-active PostgreSQL replication across regions",
		Long: `polyregion keeps several regional PostgreSQL primaries in step. Every region
takes writes; one replicator per region ships its local changes to every peer
and applies theirs, resolving concurrent writes with per-row version vectors
and the table's policy, and logging every conflict.

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or configuration,
3 preflight problems (check).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(runCmd(), checkCmd(), statusCmd(), demoCmd(), conflictsCmd(), indexCmd(), parkedCmd(), reseedCmd(), clusterCmd(), regionCmd(), witnessCmd())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := root.ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "polyregion:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		if strings.Contains(err.Error(), "unknown command") || strings.Contains(err.Error(), "flag") {
			os.Exit(exitConfig)
		}
		os.Exit(exitRuntime)
	}
}

func runCmd() *cobra.Command {
	var path, joinFrom string
	cmd := &cobra.Command{
		Use:   "run --config FILE",
		Short: "Run this region's replicator",
		Long: `Run this region's replicator until SIGTERM or SIGINT: check the local
database, create the replicator's schema, publication, slot and origins if
missing, then read local changes, serve them to peers, and apply theirs.

With --join PEER, a new region (its replicated tables empty) first loads a
consistent snapshot of PEER over the link: the rows, their versions and how
far PEER had applied every region, in one transaction; then it streams from
every peer from there. /health answers 503 (joining) until the region has
caught up. A load cut short leaves nothing and starts again; a region that
joined or already applies its peers ignores the flag. Every other region's
configuration must list this region (and keep its outbox for it) before it
joins.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, fc, err := loadConfig(path)
			if err != nil {
				return &exitError{exitConfig, err}
			}
			var level slog.LevelVar
			log, err := newLogger(fc.Log.Format, fc.Log.Level, &level)
			if err != nil {
				return &exitError{exitConfig, fmt.Errorf("config %s: %w", path, err)}
			}
			// Run finds this redactor in the logger and adds to it the
			// tokens a reload brings, so slog's default redacts them too.
			_, log = obs.RedactLogger(log, cfg.Secrets()...)
			cfg.Logger = log
			cfg.JoinFrom = conflict.RegionID(joinFrom)
			slog.SetDefault(log)
			cfg.Reload = watchReload(cmd.Context(), path, fc, &level, log)
			exitOnSecondSignal(cmd.Context())
			if os.Getenv("GOMEMLIMIT") == "" {
				// A soft heap limit keeps the collector ahead of backlog
				// bursts; GOMEMLIMIT overrides it.
				debug.SetMemoryLimit(defaultMemoryLimit)
			}
			if os.Getenv("GOGC") == "" {
				// Under that limit the heap may grow to several times
				// what is live before a collection: the data plane
				// allocates fast and keeps little (GOGC overrides it).
				debug.SetGCPercent(defaultGCPercent)
			}
			if addr := os.Getenv("POLYREGION_PPROF"); addr != "" {
				// Profiling endpoints for diagnosis; bind to loopback.
				go func() { log.Warn("pprof server stopped", "err", http.ListenAndServe(addr, nil)) }()
			}
			if err := node.Run(cmd.Context(), cfg); err != nil {
				var probs postgres.Problems
				if errors.As(err, &probs) {
					return &exitError{exitPreflight, err}
				}
				return &exitError{exitRuntime, err}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "region config file (YAML)")
	cmd.Flags().StringVar(&joinFrom, "join", "", "a new region: load a snapshot of this peer first")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func checkCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "check --config FILE",
		Short: "Check that this region can be replicated; change nothing",
		Long: `Validate the config file and check the local database: wal_level,
track_commit_timestamp, the role's privileges, and that every replicated
table exists and has a primary key, and that column_lww tables have
REPLICA IDENTITY FULL. Prints every problem found and exits 3
if there is any. Names every replicated table whose key comes from a
sequence, with a warning when no sequences: plan gives each region its own
numbers. Says which encoding the region's sessions exchange text in (every
region must use the same), with a warning when it is not UTF8.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, conn, err := configAndConn(cmd.Context(), path)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			if err := postgres.Preflight(cmd.Context(), conn, cfg.TableNames()); err != nil {
				var probs postgres.Problems
				if errors.As(err, &probs) {
					return &exitError{exitPreflight, err}
				}
				return &exitError{exitRuntime, err}
			}
			if err := postgres.CheckColumnStamps(cmd.Context(), conn, cfg.Cluster.Tables); err != nil {
				return &exitError{exitPreflight, err}
			}
			seqs, err := postgres.KeySequences(cmd.Context(), conn, cfg.TableNames())
			if err != nil {
				return &exitError{exitRuntime, err}
			}
			for _, k := range seqs {
				if off, ok := cfg.Cluster.Sequences.Offset(cfg.Region); ok {
					fmt.Printf("key %s.%s comes from sequence %s: this region hands out the numbers equal to %d modulo %d\n",
						k.Table, k.Column, k.Sequence, off, cfg.Cluster.Sequences.Stride)
					continue
				}
				fmt.Printf("warning: key %s.%s comes from sequence %s, which hands out the same numbers in every region: "+
					"rows inserted in two regions under one key conflict and one is lost (set sequences: in the configuration)\n",
					k.Table, k.Column, k.Sequence)
			}
			enc := postgres.TextEncoding(conn.PgConn())
			if w := replicator.EncodingWarning(enc); w != "" {
				fmt.Printf("warning: %s\n", w)
			}
			fmt.Printf("region %s: ready (config fingerprint %s, text in %s)\n", cfg.Region, cfg.Cluster.Fingerprint(), enc)
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "region config file (YAML)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

// configAndConn loads a region's config and connects to its database, with
// the exit code each failure calls for.
func configAndConn(ctx context.Context, path string) (node.Config, *pgx.Conn, error) {
	cfg, _, err := loadConfig(path)
	if err != nil {
		return cfg, nil, &exitError{exitConfig, err}
	}
	conn, err := postgres.Connect(ctx, cfg.Database)
	if err != nil {
		return cfg, nil, &exitError{exitRuntime, err}
	}
	return cfg, conn, nil
}
