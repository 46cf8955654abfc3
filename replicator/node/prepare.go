package node

// Preparing the local database for a run of the data plane: the check,
// the replication objects, the tables' triggers and publication, and the
// sequences that fill replicated tables' keys.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/polyregion/polyregion/replicator/postgres"
)

// Prepare checks the local database and creates what replication needs,
// seeds the tables the cluster added that are to be seeded here, and
// returns the tables the cluster added that cannot be replicated here yet
// (see waiting.go): the rest is prepared without them. It changes nothing
// when the check fails.
func Prepare(ctx context.Context, cfg Config) (tablesWaiting, error) {
	waiting, _, err := prepare(ctx, cfg, false)
	return waiting, err
}

// prepare is Prepare; with seedLater the tables to seed are not seeded
// but returned (table -> the epoch that added it) and among the waiting
// ones, for the data plane to seed while it runs (see seedWhileRunning).
func prepare(ctx context.Context, cfg Config, seedLater bool) (tablesWaiting, map[string]uint64, error) {
	conn, err := postgres.Connect(ctx, cfg.Database)
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close(context.Background())
	founding, added := cfg.addedTables()
	if err := postgres.Preflight(ctx, conn, founding); err != nil {
		return nil, nil, err
	}
	waiting := tablesWaiting{}
	for _, t := range slices.Sorted(maps.Keys(added)) {
		err := postgres.CheckTables(ctx, conn, []string{t})
		var probs postgres.Problems
		switch {
		case errors.As(err, &probs):
			waiting[t] = waitingTable{reason: strings.Join(probs, "; ")}
			delete(added, t)
		case err != nil:
			return nil, nil, err
		}
	}
	cfg = cfg.withoutTables(waiting)
	if convert, n, err := postgres.RowVersionKeysToConvert(ctx, conn); err != nil {
		return nil, nil, err
	} else if convert && cfg.Logger != nil {
		cfg.Logger.Info("row versions' keys move to the C collation, once: their indexes are rebuilt before replication starts", "versions_estimate", n)
	}
	pending, err := postgres.Prepare(ctx, conn, string(cfg.Region), cfg.TableNames(), added, cfg.PeerNames())
	if err != nil {
		return nil, nil, err
	}
	seeds := map[string]uint64{}
	for _, t := range pending {
		if seedLater {
			waiting[t] = waitingTable{reason: seedProgress(postgres.SeedStats{}, false), seedNow: true}
			seeds[t] = added[t]
			continue
		}
		began := time.Now()
		st, err := postgres.SeedTable(ctx, conn, string(cfg.Region), cfg.tableToSeed(t, added[t]), nil)
		var unfinished *postgres.SeedUnfinished
		switch {
		case errors.As(err, &unfinished):
			// Published already: nothing replicates here without it.
			return nil, nil, &tablesPending{err: err}
		case postgres.IsUnavailable(err):
			return nil, nil, err
		case err != nil:
			waiting[t] = waitingTable{reason: "seed: " + err.Error()}
			continue
		}
		if cfg.Logger != nil {
			cfg.Logger.Info("replicating a table added by the cluster: its rows here are shipped as this region's", "table", t, "epoch", added[t], "rows", st.Rows,
				"chunks", st.Chunks, "resumed", st.Resumed, "took_ms", time.Since(began).Milliseconds(), "writes_held_longest_ms", st.LongestHold.Milliseconds())
		}
	}
	if loss, err := postgres.ReadSlotLoss(ctx, conn, string(cfg.Region)); err != nil {
		return nil, nil, err
	} else if loss != nil && cfg.Logger != nil {
		cfg.Logger.Error("replication slot lost: " + loss.Describe(string(cfg.Region)))
	}
	// A table to seed gets its triggers from its seed, under the seed's
	// lock (it ran above, or runs with the data plane).
	if err := postgres.PrepareColumnMerges(ctx, conn, cfg.Cluster.Tables, pending); err != nil {
		return nil, nil, err
	}
	if err := postgres.PrepareDeleteMarks(ctx, conn, cfg.Cluster.Tables, pending); err != nil {
		return nil, nil, err
	}
	left, err := postgres.RemoveStaleTriggers(ctx, conn, cfg.Cluster.Tables)
	if err != nil {
		return nil, nil, err
	}
	for _, busy := range left {
		if cfg.Logger != nil {
			cfg.Logger.Warn("a trigger stays on a table that no longer needs it until a later start (the applications held the table)", "err", busy.Error())
		}
	}
	if err := postgres.CheckColumnStamps(ctx, conn, cfg.Cluster.Tables); err != nil {
		return nil, nil, err
	}
	if err := prepareSequences(ctx, conn, cfg); err != nil {
		return nil, nil, err
	}
	open, err := postgres.UnconfinedTables(ctx, conn, cfg.TableNames())
	if err != nil {
		return nil, nil, err
	}
	if len(open) > 0 && cfg.Logger != nil {
		cfg.Logger.Warn("peers' changes to these tables are applied with the privileges of their owner, which is not an application role: "+
			"triggers and defaults on them run with those privileges; give them an application role as owner (and GRANT it to the replicator's role)",
			"tables", strings.Join(open, "; "))
	}
	return waiting, seeds, nil
}

// prepareSequences sets up the sequences that fill replicated tables' keys
// under the cluster's plan, or, without one, warns about them: every region
// then hands out the same numbers, and each collision is an insert/insert
// conflict in which a row is lost.
func prepareSequences(ctx context.Context, conn *pgx.Conn, cfg Config) error {
	if cfg.Cluster.Sequences == nil {
		seqs, err := postgres.KeySequences(ctx, conn, cfg.TableNames())
		if err != nil {
			return err
		}
		if len(seqs) > 0 && cfg.Logger != nil {
			cfg.Logger.Warn("these replicated tables take keys from sequences, which hand out the same numbers in every region: "+
				"rows inserted in two regions under one key conflict and one is lost; set sequences: (stride and one offset per region) in the configuration",
				"keys", describeKeySequences(seqs))
		}
		return nil
	}
	changed, err := postgres.PrepareSequences(ctx, conn, cfg.TableNames(), cfg.Cluster.Sequences, cfg.Region)
	for _, c := range changed {
		if cfg.Logger != nil {
			cfg.Logger.Info("sequence set to hand out this region's numbers only", "table", c.Table, "column", c.Column,
				"sequence", c.Sequence, "stride", cfg.Cluster.Sequences.Stride, "next", c.Next)
		}
	}
	return err
}

// describeKeySequences is "public.orders.id (public.orders_id_seq); ...".
func describeKeySequences(seqs []postgres.KeySequence) string {
	parts := make([]string, len(seqs))
	for i, k := range seqs {
		parts[i] = fmt.Sprintf("%s.%s (%s)", k.Table, k.Column, k.Sequence)
	}
	return strings.Join(parts, "; ")
}
