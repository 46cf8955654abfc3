package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator/node"
	"github.com/polyregion/polyregion/replicator/obs"
)

// The cluster and region commands change the membership through the
// control plane. They ask the region's running replicator (its operations
// server, http.listen), which applies the change through the control
// plane's leader wherever that is.

func clusterCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "cluster", Short: "Found the cluster's control plane"}
	var (
		path, url string
		members   []string
	)
	initCmd := &cobra.Command{
		Use:   "init --config FILE [--url URL] [--members ID,...]",
		Short: "Found the cluster from this region (run once, in the region that holds the data)",
		Long: `Found the control plane from this region's configuration: this region
becomes its first voting member (active), and the replicated tables and
their policies become epoch 1. That is the region that already holds the
data; the others are added with region add and join online.

--members founds it with several regions that already replicate in step
(an existing deployment taking up the control plane): each must be in
regions: and run with control: set; the cluster is founded once a majority
of them is up.

--url is this region's link URL as the other regions reach it (recorded in
the membership, for operators).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ans node.ChangeAnswer
			req := node.InitRequest{URL: url}
			for _, m := range members {
				req.Members = append(req.Members, conflict.RegionID(m))
			}
			if err := controlRequest(cmd.Context(), path, "/control/init", req, &ans); err != nil {
				return err
			}
			printChange(ans)
			return nil
		},
	}
	initCmd.Flags().StringVar(&path, "config", "", "region config file (YAML)")
	initCmd.Flags().StringVar(&url, "url", "", "this region's link URL, as the others reach it")
	initCmd.Flags().StringSliceVar(&members, "members", nil, "founding regions already replicating in step (default: this region alone)")
	_ = initCmd.MarkFlagRequired("config")
	cmd.AddCommand(initCmd, configureCmd())
	return cmd
}

func configureCmd() *cobra.Command {
	var (
		path string
		wait time.Duration
	)
	cmd := &cobra.Command{
		Use:   "configure --config FILE [--wait DURATION]",
		Short: "Change the tables' policies at the next epoch, while every region writes",
		Long: `Change conflict policies through the control plane: the policies of the
tables in FILE's tables: become the next configuration epoch, agreed by
every region. FILE is a region's configuration, edited; the other regions'
files need no edit (once the cluster holds the policies, the control
plane's are the ones that apply).

The change takes effect at the same point everywhere: every region learns
of the epoch and reports the last transaction it shipped before (its
fence); once every region applied every other's transactions up to that
one's fence, the epoch is in effect and each region ranks its new writes
under it. A row's conflicts are then decided under the policy of the
latest epoch any of its writes was made under, the same in every region,
so two regions never keep different rows. A region that is down holds
the change until it is back or removed (status names it).

A change may alter how writes rank (policy, priority, deletes, resolver),
not the tables nor which columns are counters, max or min or resolved
column by column; one change at a time.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, _, err := loadConfig(path)
			if err != nil {
				return &exitError{exitConfig, err}
			}
			var ans node.ChangeAnswer
			if err := controlRequest(cmd.Context(), path, "/control/configure", node.ConfigureRequest{Policies: cfg.Cluster.Policies()}, &ans); err != nil {
				return err
			}
			printChange(ans)
			if wait <= 0 || ans.Control == nil || !ans.Control.EpochPending {
				return nil
			}
			return waitEpoch(cmd.Context(), path, ans.Control.Epoch, wait)
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "region config file (YAML) holding the new policies")
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait this long for the epoch to be in effect (0: return once it is announced)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

// waitEpoch waits until epoch is in effect as the region of the config at
// path sees it, printing what it waits for when that changes.
func waitEpoch(ctx context.Context, path string, epoch uint64, within time.Duration) error {
	base, err := opsBase(path)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(within)
	last := ""
	for {
		st, ok := epochState(ctx, base)
		if ok && (st.Epoch.Number > epoch || (st.Epoch.Number == epoch && st.Epoch.Effective > 0)) {
			fmt.Printf("%s\tepoch %d in effect\n", time.Now().UTC().Format(time.RFC3339), epoch)
			return nil
		}
		if w := strings.Join(st.EpochWaits, "; "); ok && w != last {
			fmt.Printf("%s\tepoch %d waiting: %s\n", time.Now().UTC().Format(time.RFC3339), epoch, w)
			last = w
		}
		if time.Now().After(deadline) {
			return &exitError{exitRuntime, fmt.Errorf("epoch %d is not in effect after %s (waiting: %s)", epoch, within, orNone(last))}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// epochState reads the latest epoch and what it waits for from the
// control plane of the replicator at base.
func epochState(ctx context.Context, base string) (st struct {
	Epoch      regions.Epoch `json:"epoch"`
	EpochWaits []string      `json:"epoch_waits"`
}, ok bool) {
	return st, liveControl(ctx, base, &st)
}

// liveControl decodes the replicator's live GET /control at base into v
// (false when it cannot be read).
func liveControl(ctx context.Context, base string, v any) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/control", nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	return resp.StatusCode == http.StatusOK && json.NewDecoder(resp.Body).Decode(v) == nil
}

// opsBase is the operations server's URL of the region whose
// configuration is at path.
func opsBase(path string) (string, error) {
	cfg, _, err := loadConfig(path)
	if err != nil {
		return "", &exitError{exitConfig, err}
	}
	base, err := opsURL(cfg.HTTPListen)
	if err != nil {
		return "", &exitError{exitConfig, err}
	}
	return base, nil
}

func regionCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "region", Short: "Add, remove or re-seed regions of the cluster"}
	var (
		path, url, from string
		witness, force  bool
		wait            time.Duration
	)
	add := &cobra.Command{
		Use:   "add ID --url URL --from SOURCE --config FILE",
		Short: "Add a region (it then joins with run --join SOURCE)",
		Long: `Add region ID to the cluster, to be loaded from SOURCE's snapshot. It is a
member (joining) from then on: every region keeps its outbox for it, and it
follows the control plane's log without a vote. Then start its replicator
with run --join SOURCE; once it has loaded and caught up it becomes active
and votes. Every region's configuration must list it in regions: and
peers: (its URL and token) first.

With --witness, ID is a voter of the control plane only (no database): the
third voter of a two-region cluster.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var ans node.ChangeAnswer
			req := node.AddRequest{ID: conflict.RegionID(args[0]), URL: url, From: conflict.RegionID(from), Witness: witness}
			if err := controlRequest(cmd.Context(), path, "/control/regions", req, &ans); err != nil {
				return err
			}
			printChange(ans)
			return nil
		},
	}
	add.Flags().StringVar(&path, "config", "", "config file of any running region (YAML)")
	add.Flags().StringVar(&url, "url", "", "the new region's link URL")
	add.Flags().StringVar(&from, "from", "", "the region whose snapshot the new region loads")
	add.Flags().BoolVar(&witness, "witness", false, "add a control-plane voter with no database")
	_ = add.MarkFlagRequired("config")
	_ = add.MarkFlagRequired("url")
	remove := &cobra.Command{
		Use:   "remove ID --config FILE [--force] [--wait DURATION]",
		Short: "Remove a region once every other region has applied all it wrote",
		Long: `Remove region ID. Stop writes to it first. The region is leaving until every
other region has reported applying all the transactions it shipped; then it
is removed: its links are refused, outbox trimming and tombstone collection
stop waiting for it. --wait keeps asking until then (default 2m).

--force removes a region that is gone without waiting, and says how many of
its transactions no surviving region had reported applying (lost).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			deadline := time.Now().Add(wait)
			for {
				var ans node.ChangeAnswer
				if err := controlRequest(cmd.Context(), path, "/control/regions/"+args[0]+"/remove", node.RemoveRequest{Force: force}, &ans); err != nil {
					return err
				}
				if len(ans.Result.Waiting) == 0 || time.Now().After(deadline) {
					printChange(ans)
					if len(ans.Result.Waiting) > 0 {
						return &exitError{exitRuntime, fmt.Errorf("region %s is still leaving after %s: %s (run again, or --force for a region that is gone)", args[0], wait, strings.Join(ans.Result.Waiting, "; "))}
					}
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return cmd.Context().Err()
				case <-time.After(3 * time.Second):
				}
			}
		},
	}
	remove.Flags().StringVar(&path, "config", "", "config file of any running region (YAML)")
	remove.Flags().BoolVar(&force, "force", false, "remove a region that is gone, without waiting for its transactions")
	remove.Flags().DurationVar(&wait, "wait", 2*time.Minute, "how long to wait for the region's transactions to reach every other region")
	_ = remove.MarkFlagRequired("config")
	var (
		reseedFrom string
		reseedWait time.Duration
	)
	reseed := &cobra.Command{
		Use:   "reseed ID --from SOURCE --config FILE",
		Short: "Load a region again from another region's snapshot, online",
		Long: `Re-seed region ID from SOURCE's snapshot, without stopping the others: for a
region that fell past a peer's outbox cap (that peer's stream to it is
refused as too far behind), or whose rows cannot be trusted. Its
replicator carries it out on its own, and says how far it is in status
and /health (503, reseeding, until it caught up):

  1. its transactions reach every other region (its replicator runs on
     until every other region confirmed all it shipped, and its reader
     versioned every local write): stop writes to ID first, or it waits;
  2. it deletes every row of its replicated tables and their replicated
     state (as polyregion reseed does), once;
  3. it loads SOURCE's snapshot and catches up, then is active again.

ID keeps its vote in the control plane meanwhile. Every region's
configuration must list SOURCE in ID's peers: (it does, in a cluster that
replicates). Refused for a region that is not active, and while another
reseed of ID is under way.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var ans node.ChangeAnswer
			if err := controlRequest(cmd.Context(), path, "/control/regions/"+args[0]+"/reseed", node.ReseedRequest{From: conflict.RegionID(reseedFrom)}, &ans); err != nil {
				return err
			}
			printChange(ans)
			if reseedWait <= 0 {
				return nil
			}
			return waitActive(cmd.Context(), path, args[0], reseedWait)
		},
	}
	reseed.Flags().DurationVar(&reseedWait, "wait", 0, "wait this long for the region to be active again (0: return once the reseed is agreed)")
	reseed.Flags().StringVar(&path, "config", "", "config file of any running region (YAML)")
	reseed.Flags().StringVar(&reseedFrom, "from", "", "the region whose snapshot ID loads")
	_ = reseed.MarkFlagRequired("config")
	_ = reseed.MarkFlagRequired("from")
	cmd.AddCommand(add, remove, reseed)
	return cmd
}

// waitActive waits until the membership, as the region of the config at
// path has applied it (GET /control: live, and holding every change that
// region answered for), shows region id active, printing each state it
// passes.
func waitActive(ctx context.Context, path, id string, within time.Duration) error {
	base, err := opsBase(path)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(within)
	last := ""
	for {
		state := memberState(ctx, base, id)
		if state != "" && state != last {
			fmt.Printf("%s\tregion %s %s\n", time.Now().UTC().Format(time.RFC3339), id, state)
			last = state
		}
		if state == string(regions.Active) {
			return nil
		}
		if time.Now().After(deadline) {
			return &exitError{exitRuntime, fmt.Errorf("region %s is not active again after %s (it is %s; its own /health says how far it is)", id, within, orNone(last))}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// memberState reads id's state from the control plane of the replicator
// at base ("" when it cannot be read).
func memberState(ctx context.Context, base, id string) string {
	var st struct {
		Members []regions.Member `json:"members"`
	}
	if !liveControl(ctx, base, &st) {
		return ""
	}
	for _, m := range st.Members {
		if string(m.ID) == id {
			return string(m.State)
		}
	}
	return ""
}

// controlRequest posts a change to the region's replicator and decodes
// the answer.
func controlRequest(ctx context.Context, path, endpoint string, req, out any) error {
	cfg, _, err := loadConfig(path)
	if err != nil {
		return &exitError{exitConfig, err}
	}
	if cfg.Control == nil {
		return &exitError{exitConfig, fmt.Errorf("config %s: no control: section; the control plane is not enabled in region %s", path, cfg.Region)}
	}
	if cfg.HTTPListen == "" {
		return &exitError{exitConfig, fmt.Errorf("config %s: http.listen is not set; control commands reach the region's replicator through its operations server", path)}
	}
	base, err := opsURL(cfg.HTTPListen)
	if err != nil {
		return &exitError{exitConfig, err}
	}
	body, _ := json.Marshal(req)
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, base+endpoint, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", "application/json")
	if cfg.Control.AdminToken != "" {
		hreq.Header.Set("Authorization", "Bearer "+cfg.Control.AdminToken)
	}
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		return &exitError{exitRuntime, fmt.Errorf("region %s's replicator not reachable at %s: %w", cfg.Region, cfg.HTTPListen, err)}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	switch resp.StatusCode {
	case http.StatusOK:
		return json.Unmarshal(b, out)
	case http.StatusBadRequest, http.StatusForbidden:
		return &exitError{exitConfig, errors.New(strings.TrimSpace(string(b)))}
	default:
		return &exitError{exitRuntime, errors.New(strings.TrimSpace(string(b)))}
	}
}

func printChange(ans node.ChangeAnswer) {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	for _, r := range ans.Result.Waiting {
		fmt.Fprintf(w, "waiting\t%s\n", r)
	}
	if ans.Result.Lost > 0 {
		fmt.Fprintf(w, "lost\t%d transactions no surviving region had reported applying\n", ans.Result.Lost)
	}
	for _, u := range ans.Result.Uneven {
		fmt.Fprintf(w, "uneven\t%s\n", u)
	}
	if ans.Control != nil {
		printControl(w, ans.Control)
	}
	_ = w.Flush()
}

// printControl shows the control plane (status and the change commands).
func printControl(w io.Writer, c *obs.ControlView) {
	if !c.Initialised {
		fmt.Fprintf(w, "control plane\tnot initialised (polyregion cluster init in the region that holds the data; region add for the others)\n")
		return
	}
	q := "quorum"
	if !c.Quorum {
		q = "NO QUORUM (configuration changes refused; replication goes on)"
	}
	fmt.Fprintf(w, "control plane\tepoch %d, term %d, commit index %d, leader %s, this region %s, %s\n", c.Epoch, c.Term, c.CommitIndex, orNone(c.Leader), c.Role, q)
	fmt.Fprintf(w, "voters\t%s\n", strings.Join(c.Voters, ", "))
	if c.EpochPending {
		fmt.Fprintf(w, "epoch %d\tannounced, not in effect yet\n", c.Epoch)
		for _, r := range c.EpochWaits {
			fmt.Fprintf(w, "\twaiting: %s\n", r)
		}
	}
	if c.Sequences != "" {
		fmt.Fprintf(w, "sequence offsets\t%s\n", c.Sequences)
	}
	for _, m := range c.Members {
		extra := ""
		switch {
		case m.Witness:
			extra = " (witness)"
		case m.From != "" && m.State == "joining":
			extra = " (loading from " + m.From + ")"
		case m.From != "" && m.State == "reseeding":
			extra = " (from " + m.From + ")"
		case m.Lost > 0:
			extra = fmt.Sprintf(" (forced: %d transactions lost)", m.Lost)
		}
		fmt.Fprintf(w, "member %s\t%s%s %s%s\n", m.ID, m.State, extra, m.URL, releaseTakes(m))
	}
}

// releaseTakes says what a member's release takes of the changes made at
// an epoch ("" for a witness, which runs no data plane).
func releaseTakes(m obs.MemberView) string {
	switch {
	case m.Witness:
		return ""
	case m.Takes >= regions.TakesMembershipRules:
		return " (release takes policy and table changes, and the later membership rules)"
	case m.Takes >= regions.TakesTableChanges:
		return " (release takes policy and table changes)"
	case m.Takes >= regions.TakesPolicyChanges:
		return " (release takes policy changes, not table changes)"
	}
	return " (release takes no change at an epoch, or has not reported)"
}
