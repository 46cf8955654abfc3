package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/replicator/node"
)

// witnessFile is the YAML layout of a witness's configuration file.
type witnessFile struct {
	Witness string      `yaml:"witness"`
	Listen  string      `yaml:"listen"`
	TLS     tlsConfig   `yaml:"tls"`
	Regions []peerFile  `yaml:"regions"`
	Control controlFile `yaml:"control"`
	HTTP    struct {
		Listen string `yaml:"listen"`
	} `yaml:"http"`
	Log logFile `yaml:"log"`
}

// loadWitnessConfig reads, expands and validates a witness's config file.
func loadWitnessConfig(path string) (node.WitnessConfig, witnessFile, error) {
	var wf witnessFile
	raw, err := os.ReadFile(path)
	if err != nil {
		return node.WitnessConfig{}, wf, fmt.Errorf("config: %w", err)
	}
	if raw, err = expandEnv(raw); err != nil {
		return node.WitnessConfig{}, wf, fmt.Errorf("config %s: %w", path, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&wf); err != nil {
		return node.WitnessConfig{}, wf, fmt.Errorf("config %s: %w", path, err)
	}
	if err := wf.Log.validate(); err != nil {
		return node.WitnessConfig{}, wf, fmt.Errorf("config %s: %w", path, err)
	}
	cfg := node.WitnessConfig{ID: conflict.RegionID(wf.Witness), Listen: wf.Listen, TLS: wf.TLS.files(), HTTPListen: wf.HTTP.Listen}
	if cfg.Regions, err = peersOf("regions", wf.Regions); err != nil {
		return cfg, wf, fmt.Errorf("config %s: %w", path, err)
	}
	cc, err := wf.Control.toNode()
	if err != nil {
		return cfg, wf, fmt.Errorf("config %s: %w", path, err)
	}
	cfg.Control = *cc
	if err := cfg.Validate(); err != nil {
		return cfg, wf, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, wf, nil
}

func witnessCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "witness --config FILE",
		Short: "Run a control-plane voter with no database (the third voter of two regions)",
		Long: `Run a witness until SIGTERM or SIGINT: a voter of the control plane that holds
no data, so that a cluster of two regions keeps a majority when either
fails (and can remove the failed one). It serves the control plane on its
link address, with TLS and a token per region like a region's link, and
/health, /control, /status and /metrics on http.listen.

Each region lists it under witnesses: (url, token); then, from any region:
polyregion region add ID --witness --url URL --config FILE.

Configuration:

  witness: w1
  listen: 0.0.0.0:7480
  tls: {cert_file: ..., key_file: ..., ca_file: ...}
  regions:
    - {id: us, url: https://us.example.net:7480, token_file: /etc/polyregion/w1-us.token}
    - {id: eu, url: https://eu.example.net:7480, token_file: /etc/polyregion/w1-eu.token}
  control: {dir: /var/lib/polyregion/witness}
  http: {listen: 127.0.0.1:7481}`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, wf, err := loadWitnessConfig(path)
			if err != nil {
				return &exitError{exitConfig, err}
			}
			var level slog.LevelVar
			log, err := newLogger(wf.Log.Format, wf.Log.Level, &level)
			if err != nil {
				return &exitError{exitConfig, fmt.Errorf("config %s: %w", path, err)}
			}
			cfg.Logger = log
			exitOnSecondSignal(cmd.Context())
			if err := node.RunWitness(cmd.Context(), cfg); err != nil {
				return &exitError{exitRuntime, err}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "witness config file (YAML)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}
