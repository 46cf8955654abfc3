package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/polyregion/polyregion/replicator/postgres"
)

func reseedCmd() *cobra.Command {
	var (
		path string
		yes  bool
	)
	cmd := &cobra.Command{
		Use:   "reseed --config FILE --yes",
		Short: "Empty this region so that run --join loads it again from a peer",
		Long: `Prepare a region that already ran, and fell past a peer's outbox cap (its
stream from that peer is refused as too far behind), to be loaded again from
a peer's snapshot; then start it with run --join PEER.

The replicator must be stopped (no replicator session connected, its slot
not in use), and every transaction this region wrote must have reached every
peer (their confirmations are in this region's database): the snapshot then
holds them, and the region numbers its next transactions after them. It is
refused, with the counts and nothing changed, while a peer has not
confirmed some of its transactions or its reader has not versioned some
local write: start its replicator with writes to the region stopped until
status shows no backlog, stop it, and run this again. It is refused too
when tables that are not replicated reference replicated ones (the deletes
would change them), or the region's slot is gone.

It deletes, in one transaction, every row of the replicated tables (as each
table's owner; delete triggers fire; the deletes are never shipped), their
versions, the applied positions, open parked changes and how the region
joined; then recreates its slot. The conflict log, the outbox and the
numbering of its own transactions stay. It remembers how far the region had
applied each peer: the load waits for a snapshot at least that far.

Not for a region restored from a backup: its peers may have applied more of
its transactions than it remembers (the load then refuses).

Asks for confirmation: --yes. Without it, it prints what stands in the way
or what it would delete, and changes nothing.`,
		Example: `  polyregion reseed --config eu.yaml --yes
  polyregion run --config eu.yaml --join us`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, conn, err := configAndConn(ctx, path)
			if err != nil {
				return err
			}
			peers := cfg.PeerNames()
			chk, err := postgres.CheckReseed(ctx, conn, string(cfg.Region), cfg.TableNames(), peers, false)
			// Closed before the reseed: it refuses while other replicator
			// sessions are connected.
			conn.Close(context.Background())
			if err != nil {
				return &exitError{exitRuntime, err}
			}
			if !chk.Ready() {
				return &exitError{exitRuntime, errors.New("reseed refused, nothing changed: " + chk.Refusal(string(cfg.Region)))}
			}
			if !yes {
				fmt.Printf("region %s: every one of its %d transactions reached every peer; reseed --yes deletes every row of %s here and its replicated state, then run --join PEER loads them again\n",
					cfg.Region, chk.Shipped, strings.Join(cfg.TableNames(), ", "))
				return &exitError{exitConfig, errors.New("reseed: pass --yes to go ahead")}
			}
			deleted, err := postgres.PrepareReseed(ctx, postgres.ReseedPlan{ConnString: cfg.Database, Region: string(cfg.Region), Tables: cfg.TableNames(), Peers: peers, Shipped: chk.Shipped})
			if err != nil {
				return &exitError{exitRuntime, err}
			}
			for _, t := range sortedKeys(deleted) {
				fmt.Printf("deleted %d rows of %s\n", deleted[t], t)
			}
			fmt.Printf("region %s is ready to be loaded again: polyregion run --config %s --join PEER\n", cfg.Region, path)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&path, "config", "", "region config file (YAML)")
	fl.BoolVar(&yes, "yes", false, "go ahead (without it, only check)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}
