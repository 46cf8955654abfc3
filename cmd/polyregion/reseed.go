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
		path     string
		yes      bool
		slotLost bool
	)
	cmd := &cobra.Command{
		Use:   "reseed --config FILE --yes",
		Short: "Empty this region so that run --join loads it again from a peer",
		Long: `Prepare a region that already ran to be loaded again from a peer's snapshot:
one that fell past a peer's outbox cap (its stream from that peer is refused
as too far behind), was restored from a backup, or lost its replication slot.
Then start it with run --join PEER.

The replicator must be stopped, and every transaction this region wrote must
have reached every peer first (their confirmations are in this region's
database): the snapshot then holds them, and the region numbers its next
transactions after them. A region whose peers have not all confirmed its
transactions, or whose reader has not versioned all its local writes, is
refused with the counts: start its replicator (with writes to this region
stopped) until status shows no backlog, stop it, and run this again.

It deletes, in one transaction, every row of the replicated tables (as each
table's owner; delete triggers fire; the deletes are never shipped), their
versions, the applied positions, open parked changes and how the region
joined; then recreates its slot. The conflict log, the outbox and the
numbering of its own transactions stay.

With --slot-lost, a region whose slot is gone (a failover to a standby
without it) is emptied although local writes made after its reader's last
position cannot be counted: they were never shipped and are lost.

Asks for confirmation: --yes. Without it, it prints what stands in the way
and what it would delete, and changes nothing.`,
		Example: `  polyregion reseed --config eu.yaml --yes
  polyregion run --config eu.yaml --join us`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, conn, err := configAndConn(ctx, path)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			var peers []string
			for _, p := range cfg.Peers {
				peers = append(peers, string(p.ID))
			}
			chk, err := postgres.CheckReseed(ctx, conn, string(cfg.Region), peers)
			if err != nil {
				return &exitError{exitRuntime, err}
			}
			var behind []string
			for _, p := range sortedKeys(chk.NotApplied) {
				if n := chk.NotApplied[p]; n > 0 {
					behind = append(behind, fmt.Sprintf("%s has not confirmed %d", p, n))
				}
			}
			var problems []string
			if len(behind) > 0 {
				problems = append(problems, fmt.Sprintf("of the %d transactions region %s shipped, %s: they would be lost", chk.Shipped, cfg.Region, strings.Join(behind, ", ")))
			}
			switch {
			case chk.Unversioned > 0:
				problems = append(problems, fmt.Sprintf("%d local transactions in the WAL are not versioned (not shipped) yet: they would be lost", chk.Unversioned))
			case chk.Unversioned < 0 && !slotLost:
				problems = append(problems, fmt.Sprintf("the slot %s is gone, so local writes made after the reader's last position cannot be counted: pass --slot-lost to give them up", postgres.SlotName(string(cfg.Region))))
			}
			if len(problems) > 0 {
				return &exitError{exitRuntime, errors.New("reseed refused, nothing changed: " + strings.Join(problems, "; ") +
					" (start the replicator with writes to this region stopped until status shows no backlog, stop it, and try again)")}
			}
			if !yes {
				fmt.Printf("region %s: every one of its %d transactions reached every peer; reseed --yes deletes every row of %s here and its replicated state, then run --join PEER loads them again\n",
					cfg.Region, chk.Shipped, strings.Join(cfg.TableNames(), ", "))
				return &exitError{exitConfig, errors.New("reseed: pass --yes to go ahead")}
			}
			deleted, err := postgres.PrepareReseed(ctx, cfg.Database, string(cfg.Region), cfg.TableNames(), chk.Shipped)
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
	fl.BoolVar(&slotLost, "slot-lost", false, "the region's slot is gone: give up local writes its reader had not versioned")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}
