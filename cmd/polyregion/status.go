package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/polyregion/polyregion/replicator/postgres"
)

func statusCmd() *cobra.Command {
	var (
		path   string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "status --config FILE",
		Short: "Show this region's replication state",
		Long: `Show, from the local database: per source region the last transaction
applied here; per peer how many of this region's transactions it has not yet
confirmed (the outbox backlog); the WAL the region's slot holds back; and
counts of conflicts, parked changes and tombstones. Works whether or not the
replicator is running. When http.listen is set, also asks the running
replicator for its health, each peer link (up or down, for how long) with
its lag, and the search index's lag.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, conn, err := configAndConn(cmd.Context(), path)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			peers := cfg.PeerNames()
			st, err := postgres.ReadStatus(cmd.Context(), conn, string(cfg.Region), peers)
			if err != nil {
				return &exitError{exitRuntime, err}
			}
			live, liveErr := replicatorStatus(cmd.Context(), cfg.HTTPListen)
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(statusOutput{Status: st, Replicator: live, ReplicatorError: errText(liveErr)})
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "region\t%s\n", st.Region)
			if j := st.Joined; j != nil {
				fmt.Fprintf(w, "joined\tfrom %s's snapshot at %s (%d rows, as of its transaction %d; its writers paused %d ms)\n", j.Source, j.At, j.Rows, j.SourceSeq, j.PauseMillis)
			}
			fmt.Fprintf(w, "shipped (last local transaction versioned)\t%d\n", st.Shipped)
			fmt.Fprintf(w, "slot WAL held back\t%.1f MB (active=%v, wal_status=%s)\n", float64(st.SlotRetainedBytes)/(1<<20), st.SlotActive, st.SlotWALStatus)
			fmt.Fprintf(w, "outbox\t%d transactions, %.1f MB\n", st.OutboxRows, float64(st.OutboxBytes)/(1<<20))
			fmt.Fprintf(w, "conflicts logged\t%d\n", st.Conflicts)
			fmt.Fprintf(w, "parked changes (open)\t%d\n", st.ParkedOpen)
			fmt.Fprintf(w, "tombstones\t%d\n", st.Tombstones)
			fmt.Fprintf(w, "rows keeping siblings\t%d (concurrent writes that lost and may still win)\n", st.RowsWithSiblings)
			fmt.Fprintln(w)
			printReplicator(w, live, liveErr)
			fmt.Fprintln(w)
			fmt.Fprintln(w, "peer\tapplied from it (seq, at)\tit confirmed of ours\tbacklog\tlink\tlag")
			for _, p := range sortedKeys(st.Acked) {
				a := st.Applied[p]
				fmt.Fprintf(w, "%s\t%d, %s\t%d\t%d\t%s\n", p, a.Seq, orNone(a.AppliedAt), st.Acked[p], st.Backlog[p], peerLink(live, p))
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "region config file (YAML)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func sortedKeys(m map[string]int64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
