package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/regions/control"
	"github.com/polyregion/polyregion/replicator/link"
	"github.com/polyregion/polyregion/replicator/obs"
)

// A witness is a voter of the control plane with no database: the third
// voter of a two-region cluster, so that either region can fail and the
// other still changes the membership (removes the failed one, say). It
// takes no writes and replicates nothing; it serves the control plane on
// its link address (TLS and per-region tokens, like a region's link) and
// /health, /control and /metrics on its operations address.

// WitnessConfig configures a witness.
type WitnessConfig struct {
	ID     conflict.RegionID
	Listen string
	TLS    link.TLSFiles
	// Regions are the regions it votes with: their link URLs and the
	// token each shares with the witness.
	Regions    []Peer
	Control    ControlConfig
	HTTPListen string
	Logger     *slog.Logger
}

// Validate reports the first problem, naming the setting.
func (c *WitnessConfig) Validate() error {
	if err := c.ID.Validate(); err != nil {
		return fmt.Errorf("witness: %w", err)
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if c.HTTPListen != "" {
		if _, _, err := net.SplitHostPort(c.HTTPListen); err != nil {
			return fmt.Errorf("http.listen: %w", err)
		}
	}
	if c.Control.Dir == "" {
		return errors.New("control.dir: a directory for the control plane's log is required")
	}
	if len(c.Regions) == 0 {
		return errors.New("regions: a witness votes with at least one region")
	}
	seen := map[conflict.RegionID]bool{c.ID: true}
	for i, r := range c.Regions {
		if err := r.ID.Validate(); err != nil {
			return fmt.Errorf("regions[%d]: %w", i, err)
		}
		if seen[r.ID] {
			return fmt.Errorf("regions[%d]: %q listed twice (or the witness's own id)", i, r.ID)
		}
		seen[r.ID] = true
		if r.URL == "" {
			return fmt.Errorf("regions[%d] (%s): url is required", i, r.ID)
		}
		if err := link.CheckURL(r.URL, r.TLS); err != nil {
			return fmt.Errorf("regions[%d] (%s): %w", i, r.ID, err)
		}
		if len(r.Token) < 16 {
			return fmt.Errorf("regions[%d] (%s): token is required (a shared secret, at least 16 characters)", i, r.ID)
		}
	}
	return nil
}

// validateWitnesses checks a region's witnesses: entries.
func validateWitnesses(ws []Peer, regions map[conflict.RegionID]bool, control bool) error {
	if len(ws) > 0 && !control {
		return errors.New("witnesses: a witness votes in the control plane; set control: too")
	}
	seen := map[conflict.RegionID]bool{}
	for i, w := range ws {
		if err := w.ID.Validate(); err != nil {
			return fmt.Errorf("witnesses[%d]: %w", i, err)
		}
		if regions[w.ID] || seen[w.ID] {
			return fmt.Errorf("witnesses[%d]: %q is a region or listed twice", i, w.ID)
		}
		seen[w.ID] = true
		if w.URL == "" {
			return fmt.Errorf("witnesses[%d] (%s): url is required", i, w.ID)
		}
		if len(w.Token) < 16 {
			return fmt.Errorf("witnesses[%d] (%s): token is required (a shared secret, at least 16 characters)", i, w.ID)
		}
	}
	return nil
}

// RunWitness runs a witness until ctx ends.
func RunWitness(ctx context.Context, cfg WitnessConfig) (err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	secrets := []string{cfg.Control.AdminToken}
	for _, r := range cfg.Regions {
		secrets = append(secrets, r.Token)
	}
	red := obs.NewRedactor(secrets...)
	log := slog.New(red.Handler(cfg.Logger.Handler())).With("witness", string(cfg.ID))
	defer func() { err = red.Error(err) }()
	ccfg := cfg.Control
	n, err := openControl(Config{Region: cfg.ID, Control: &ccfg, Logger: log}, func() []Peer { return cfg.Regions }, nil)
	if err != nil {
		return err
	}
	defer n.Close()

	srvTLS, err := link.ServerTLS(cfg.TLS)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	tokens := map[conflict.RegionID]string{}
	for _, r := range cfg.Regions {
		tokens[r.ID] = r.Token
	}
	control := link.NewServer(link.ServerConfig{Region: cfg.ID, Tokens: tokens, Logger: log, Control: n}).Handler()
	srv := link.NewHTTPServer(cfg.Listen, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/v1/control/") {
			http.Error(w, "witness "+string(cfg.ID)+" holds no data: it serves the control plane only", http.StatusNotFound)
			return
		}
		control.ServeHTTP(w, r)
	}), srvTLS)
	go func() {
		if err := link.Serve(srv, ln); err != nil {
			log.Error("link server stopped: regions cannot reach this witness until it restarts", "err", err)
		}
	}()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()

	if cfg.HTTPListen != "" {
		stop, err := serveWitnessOps(cfg, n)
		if err != nil {
			return err
		}
		defer stop()
	}
	log.Info("witness running", "listen", cfg.Listen, "http", cfg.HTTPListen, "regions", len(cfg.Regions))
	go activateWitness(ctx, n, cfg.ID, log)
	n.Run(ctx)
	log.Info("witness stopped")
	return nil
}

// serveWitnessOps serves /health (200 while the witness reaches a leader,
// else 503 naming why), /control, the change endpoints and /metrics.
func serveWitnessOps(cfg WitnessConfig, n *control.Node) (stop func(), err error) {
	metrics := obs.NewControlMetrics(cfg.ID)
	routes := map[string]http.Handler{}
	ccfg := cfg.Control
	controlRoutes(routes, Config{Region: cfg.ID, Control: &ccfg}, n)
	mux := http.NewServeMux()
	for pattern, h := range routes {
		mux.Handle(pattern, h)
	}
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		v := controlView(n, cfg.ID)
		metrics.ObserveControl(v)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if v.Quorum {
			fmt.Fprintf(w, "serving\nwitness %s\n", cfg.ID)
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "unavailable\nwitness %s\n- control plane: no quorum (reaches no leader among the voters %s)\n", cfg.ID, strings.Join(v.Voters, ", "))
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(obs.Snapshot{Region: string(cfg.ID), Control: controlView(n, cfg.ID)})
	})
	metricsHandler := metrics.Handler()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		metrics.ObserveControl(controlView(n, cfg.ID))
		metricsHandler.ServeHTTP(w, r)
	})
	ln, err := net.Listen("tcp", cfg.HTTPListen)
	if err != nil {
		return nil, fmt.Errorf("http.listen %s: %w", cfg.HTTPListen, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}, nil
}

// activateWitness makes the witness a voter once the cluster added it and
// it follows the log: until then it does not count toward the majority.
func activateWitness(ctx context.Context, n *control.Node, id conflict.RegionID, log *slog.Logger) {
	for {
		switch n.Membership().State(id) {
		case regions.Joining:
			if err := n.Activate(ctx); err == nil {
				log.Info("control plane: this witness votes")
			}
			return
		case regions.Active, regions.Leaving, regions.Removed:
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}
