package node

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/regions/control"
	"github.com/polyregion/polyregion/replicator/obs"
	"github.com/polyregion/polyregion/replicator/postgres"
)

// The control plane's operations endpoints (on the operations server,
// beside /status; the polyregion CLI calls them):
//
//	GET  /control                     the control plane as this region sees it
//	POST /control/init                found the cluster from this region's configuration
//	POST /control/regions             add a region (or a witness)
//	POST /control/regions/{id}/remove remove a region (drain, or force)
//	POST /control/regions/{id}/reseed re-seed a region from another's snapshot
//
// A change is applied through the leader wherever it is asked. Answers:
// 200 with the control plane's result, 400 for bad input, 409 when the
// membership does not allow it now, 503 without a majority; the body names
// what is wrong.

// InitRequest founds the cluster.
type InitRequest struct {
	// URL is this region's link URL as the other regions reach it.
	URL string `json:"url"`
	// Members are the founding regions (default: this region alone); each
	// must be in regions: and run with the control plane enabled.
	Members []conflict.RegionID `json:"members"`
}

// AddRequest adds a region or a witness.
type AddRequest struct {
	ID      conflict.RegionID `json:"id"`
	URL     string            `json:"url"`
	From    conflict.RegionID `json:"from"`
	Witness bool              `json:"witness"`
}

// RemoveRequest removes a region.
type RemoveRequest struct {
	Force bool `json:"force"`
}

// ReseedRequest re-seeds a region.
type ReseedRequest struct {
	From conflict.RegionID `json:"from"`
}

// ConfigureRequest asks for a policy change: every replicated table's
// policy, as the next epoch.
type ConfigureRequest struct {
	Policies map[string]conflict.Policy `json:"policies"`
}

// ChangeAnswer is what a change returns: the result and the control plane
// after it, as this region sees it.
type ChangeAnswer struct {
	Result  regions.Result   `json:"result"`
	Control *obs.ControlView `json:"control"`
}

// applyTimeout bounds one change (below the operations server's write
// timeout).
const applyTimeout = 8 * time.Second

func controlRoutes(routes map[string]http.Handler, cfg Config, n *control.Node) {
	admin := cfg.adminToken()
	changeHandler := func(n *control.Node, do func(ctx context.Context, body []byte) (regions.Result, error)) http.Handler {
		return adminOnly(admin, "control changes", changeHandlerOf(n, cfg.Region, do))
	}
	routes["GET /control"] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, n.Status())
	})
	routes["POST /control/init"] = changeHandler(n, func(ctx context.Context, body []byte) (regions.Result, error) {
		var req InitRequest
		if err := decodeStrict(body, &req); err != nil {
			return regions.Result{}, err
		}
		c := regions.Command{Fingerprint: cfg.Cluster.Fingerprint(), Describe: cfg.Cluster.Describe(), Policies: cfg.Cluster.Policies()}
		urls := map[conflict.RegionID]string{cfg.Region: req.URL}
		for _, p := range cfg.Peers {
			urls[p.ID] = p.URL
		}
		founders := req.Members
		if len(founders) == 0 {
			founders = []conflict.RegionID{cfg.Region}
		}
		known := map[conflict.RegionID]bool{}
		for _, r := range cfg.Cluster.Regions {
			known[r] = true
		}
		self := false
		for _, r := range founders {
			if !known[r] {
				return regions.Result{}, fmt.Errorf("%w: founding member %q is not listed under regions", regions.ErrInvalid, r)
			}
			self = self || r == cfg.Region
			c.Members = append(c.Members, regions.Member{ID: r, URL: urls[r]})
		}
		if !self {
			return regions.Result{}, fmt.Errorf("%w: the founding members must include this region (%s)", regions.ErrInvalid, cfg.Region)
		}
		if p := cfg.Cluster.Sequences; p != nil {
			// The founders keep their configured offsets; regions added
			// later are given free ones by the control plane.
			c.Sequences = &regions.SequencePlan{Stride: p.Stride, Offsets: map[conflict.RegionID]int64{}}
			for _, m := range c.Members {
				c.Sequences.Offsets[m.ID] = p.Offsets[m.ID]
			}
		}
		return n.Init(ctx, c)
	})
	routes["POST /control/regions"] = changeHandler(n, func(ctx context.Context, body []byte) (regions.Result, error) {
		var req AddRequest
		if err := decodeStrict(body, &req); err != nil {
			return regions.Result{}, err
		}
		return n.Apply(ctx, regions.Command{Op: regions.OpAdd, Region: req.ID, URL: req.URL, From: req.From, Witness: req.Witness})
	})
	routes["POST /control/regions/{id}/remove"] = changeHandler(n, func(ctx context.Context, body []byte) (regions.Result, error) {
		var req RemoveRequest
		if err := decodeStrict(body, &req); err != nil {
			return regions.Result{}, err
		}
		id := conflict.RegionID(ctx.Value(pathID{}).(string))
		return n.Apply(ctx, regions.Command{Op: regions.OpRemove, Region: id, Force: req.Force})
	})
	routes["POST /control/configure"] = changeHandler(n, func(ctx context.Context, body []byte) (regions.Result, error) {
		var req ConfigureRequest
		if err := decodeStrict(body, &req); err != nil {
			return regions.Result{}, err
		}
		if cfg.Database == "" {
			// A witness: it holds no tables to check the change against.
			return regions.Result{}, fmt.Errorf("%w: %s is a witness, which has no tables: change the configuration through a region", regions.ErrInvalid, cfg.Region)
		}
		added, err := configurable(cfg.Cluster, n.Membership(), req.Policies)
		if err != nil {
			return regions.Result{}, err
		}
		if len(added) > 0 {
			// Each region checks its own copy when it learns of the
			// change; this one is checked before the change is agreed.
			if err := checkTables(ctx, cfg.Database, added); err != nil {
				return regions.Result{}, fmt.Errorf("%w: %v", regions.ErrRefused, err)
			}
		}
		return n.Apply(ctx, regions.Command{Op: regions.OpConfigure, Policies: req.Policies})
	})
	routes["POST /control/regions/{id}/reseed"] = changeHandler(n, func(ctx context.Context, body []byte) (regions.Result, error) {
		var req ReseedRequest
		if err := decodeStrict(body, &req); err != nil {
			return regions.Result{}, err
		}
		id := conflict.RegionID(ctx.Value(pathID{}).(string))
		return n.Apply(ctx, regions.Command{Op: regions.OpReseed, Region: id, From: req.From})
	})
}

// configurable checks a policy change against this region's tables as
// the data plane runs them (the control plane checks it against the
// founding policies it holds; a cluster founded by an earlier release
// holds none, and a change its data planes could not take must not be
// agreed).
// It returns the tables the change adds.
func configurable(c regions.Cluster, m regions.Membership, policies map[string]conflict.Policy) ([]string, error) {
	c.Tables, c.Changes = agreedPolicies(c.Tables, m.Epochs)
	c = c.WithTableChanges()
	var added []string
	for name := range policies {
		if _, ok := c.Table(name); !ok {
			if err := regions.ValidateTableName(name); err != nil {
				return nil, badInput{err}
			}
			added = append(added, name)
		}
	}
	slices.Sort(added)
	c.Changes = append(c.Changes, regions.Epoch{Number: c.KnownEpoch() + 1, Policies: policies})
	c = c.WithTableChanges()
	for _, t := range c.Tables {
		if _, err := c.TableEpochs(t.Name); err != nil {
			return nil, fmt.Errorf("%w: %v", regions.ErrRefused, err)
		}
	}
	return added, nil
}

// checkTables checks tables in the local database.
func checkTables(ctx context.Context, connString string, tables []string) error {
	conn, err := postgres.Connect(ctx, connString)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return postgres.CheckTables(ctx, conn, tables)
}

type pathID struct{}

// badInput marks an error in the request itself.
type badInput struct{ error }

func decodeStrict(body []byte, v any) error {
	if len(body) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badInput{err}
	}
	return nil
}

// adminToken is the token that lets control changes and conflict reports
// through from other machines ("" when none is configured).
func (c Config) adminToken() string {
	if c.Control == nil {
		return ""
	}
	return c.Control.AdminToken
}

// adminOnly lets a request for what (control changes, the conflict
// report) through when it presents the admin token, or, with none
// configured, when it comes from the machine itself: the operations server
// also answers DNS health checkers and scrapers, which must not be able to
// remove a region or read row images.
func adminOnly(token, what string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if token != "" {
			got, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
				http.Error(w, what+" need the admin token (control.admin_token)", http.StatusForbidden)
				return
			}
		} else if host, _, err := net.SplitHostPort(r.RemoteAddr); err != nil || !isLoopback(host) {
			http.Error(w, what+" are accepted from this machine only (loopback); set control.admin_token to accept them from elsewhere", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func changeHandlerOf(n *control.Node, self conflict.RegionID, do func(ctx context.Context, body []byte) (regions.Result, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ctx, cancel := context.WithTimeout(context.WithValue(r.Context(), pathID{}, r.PathValue("id")), applyTimeout)
		defer cancel()
		res, err := do(ctx, body)
		var bad badInput
		switch {
		case err == nil:
			writeJSON(w, http.StatusOK, ChangeAnswer{Result: res, Control: controlView(n, self)})
		case errors.As(err, &bad):
			http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		case errors.Is(err, regions.ErrRefused):
			http.Error(w, err.Error(), http.StatusConflict)
		case errors.Is(err, regions.ErrInvalid):
			http.Error(w, err.Error(), http.StatusBadRequest)
		case errors.Is(err, control.ErrNoQuorum):
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		default:
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
