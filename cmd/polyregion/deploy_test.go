package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/polyregion/polyregion/replicator/obs"
	"github.com/polyregion/polyregion/replicator/postgres"
)

const repoRoot = "../.."

// buildBinary builds the command the way the Makefile does.
func buildBinary(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "polyregion")
	cmd := exec.Command("go", "build", "-o", out, ".")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, b)
	}
	return out
}

// unitDirectives reads a systemd unit's Key=Value lines.
func unitDirectives(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: not Key=Value: %q", path, line)
		}
		out[k] = append(out[k], v)
	}
	return out
}

func TestDeploySystemdUnitRunsTheBinary(t *testing.T) {
	unit := filepath.Join(repoRoot, "deploy", "systemd", "polyregion.service")
	d := unitDirectives(t, unit)
	bin := buildBinary(t)
	for _, key := range []string{"ExecStart", "ExecStartPre"} {
		if len(d[key]) != 1 {
			t.Fatalf("%s: want one %s, got %v", unit, key, d[key])
		}
		args := strings.Fields(d[key][0])
		if filepath.Base(args[0]) != "polyregion" {
			t.Fatalf("%s runs %s, not polyregion", key, args[0])
		}
		// The same command line with --help: every subcommand and flag must
		// exist (cobra refuses unknown ones with exit code 2).
		out, err := exec.Command(bin, append(args[1:], "--help")...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v --help: %v\n%s", key, args[1:], err, out)
		}
		if !strings.Contains(string(out), "--config") {
			t.Errorf("%s: help does not mention --config:\n%s", key, out)
		}
	}
	if r := d["ExecReload"]; len(r) != 1 || !strings.Contains(r[0], "-HUP") || !strings.Contains(r[0], "$MAINPID") {
		t.Errorf("ExecReload must send SIGHUP to $MAINPID, got %v", r)
	}
	if d["KillSignal"][0] != "SIGTERM" {
		t.Errorf("KillSignal %v, want SIGTERM", d["KillSignal"])
	}
	stop, err := time.ParseDuration(d["TimeoutStopSec"][0])
	if err != nil || stop <= 30*time.Second {
		t.Errorf("TimeoutStopSec %v must exceed the default shutdown_timeout (30s)", d["TimeoutStopSec"])
	}
	for _, k := range []string{"NoNewPrivileges", "ProtectSystem", "PrivateTmp", "CapabilityBoundingSet", "RestrictAddressFamilies", "SystemCallFilter"} {
		if len(d[k]) == 0 {
			t.Errorf("hardening option %s missing", k)
		}
	}
	if sa, err := exec.LookPath("systemd-analyze"); err == nil {
		// Verify the unit as systemd reads it, with the binary where it is.
		b, _ := os.ReadFile(unit)
		copyPath := filepath.Join(t.TempDir(), "polyregion.service")
		if err := os.WriteFile(copyPath, bytes.ReplaceAll(b, []byte("/usr/local/bin/polyregion"), []byte(bin)), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(sa, "verify", copyPath).CombinedOutput()
		if err != nil || bytes.Contains(out, []byte("polyregion.service:")) {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
	}
}

var goBuild = regexp.MustCompile(`(?m)^\s*(?:RUN\s+|\t\$\(GO\)\s+)(?:go\s+)?(build\s.*)$`)

func TestDeployDockerfileBuildsLikeTheMakefile(t *testing.T) {
	mk, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	df, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^(\w+)\s*\?=\s*(.*)$`).FindAllStringSubmatch(string(mk), -1) {
		vars[m[1]] = strings.TrimSpace(m[2])
	}
	mm := goBuild.FindAllStringSubmatch(string(mk), -1)
	dm := goBuild.FindAllStringSubmatch(string(df), -1)
	if len(mm) != 1 || len(dm) != 1 {
		t.Fatalf("want one go build in each: Makefile %q, Dockerfile %q", mm, dm)
	}
	makeCmd := regexp.MustCompile(`\$\((\w+)\)`).ReplaceAllStringFunc(mm[0][1], func(v string) string { return vars[v[2:len(v)-1]] })
	if strings.TrimSpace(makeCmd) != strings.TrimSpace(dm[0][1]) {
		t.Errorf("Dockerfile builds %q, Makefile %q", dm[0][1], makeCmd)
	}
	for _, want := range []string{"USER nonroot", "FROM golang:", " AS build", "ENTRYPOINT"} {
		if !bytes.Contains(df, []byte(want)) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if m := regexp.MustCompile(`FROM golang:(\d+\.\d+)`).FindSubmatch(df); m != nil {
		gomod, _ := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
		if !bytes.Contains(gomod, []byte("\ngo "+string(m[1]))) {
			t.Errorf("Dockerfile's Go %s differs from go.mod's go directive", m[1])
		}
	}
}

type k8sObject struct {
	Kind     string            `yaml:"kind"`
	Data     map[string]string `yaml:"data"`
	Metadata struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	StringData map[string]string `yaml:"stringData"`
	Spec       struct {
		Replicas int `yaml:"replicas"`
		Template struct {
			Spec struct {
				TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
				Containers                    []struct {
					Args  []string `yaml:"args"`
					Ports []struct {
						Name          string `yaml:"name"`
						ContainerPort int    `yaml:"containerPort"`
					} `yaml:"ports"`
					LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
					ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
					VolumeMounts   []struct {
						Name      string `yaml:"name"`
						MountPath string `yaml:"mountPath"`
					} `yaml:"volumeMounts"`
				} `yaml:"containers"`
				Volumes []struct {
					Name     string `yaml:"name"`
					EmptyDir *struct {
						SizeLimit string `yaml:"sizeLimit"`
					} `yaml:"emptyDir"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type k8sProbe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

func TestDeployKubernetesProbesHitServedPaths(t *testing.T) {
	path := filepath.Join(repoRoot, "deploy", "kubernetes", "polyregion.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var objs []k8sObject
	for {
		var o k8sObject
		if err := dec.Decode(&o); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			t.Fatalf("%s: %v", path, err)
		}
		if o.Kind != "" {
			objs = append(objs, o)
		}
	}
	var config string
	var secrets map[string]string
	var set *k8sObject
	for i, o := range objs {
		switch o.Kind {
		case "ConfigMap":
			config = o.Data["region.yaml"]
		case "Secret":
			secrets = o.StringData
		case "StatefulSet", "Deployment":
			set = &objs[i]
		}
	}
	if config == "" || set == nil {
		t.Fatalf("%s: want a ConfigMap with region.yaml and a StatefulSet", path)
	}
	if set.Spec.Replicas != 1 {
		t.Errorf("replicas %d: a region runs exactly one replicator (its slot admits one consumer)", set.Spec.Replicas)
	}
	// The example config loads, with the secrets as the environment.
	for k, v := range secrets {
		t.Setenv(k, v)
	}
	cfgPath := filepath.Join(t.TempDir(), "region.yaml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := loadConfig(cfgPath)
	if err != nil {
		t.Fatalf("the ConfigMap's region.yaml does not load: %v", err)
	}
	_, httpPort, _ := net.SplitHostPort(cfg.HTTPListen)
	if grace := time.Duration(set.Spec.Template.Spec.TerminationGracePeriodSeconds) * time.Second; grace <= cfg.ShutdownTimeout {
		t.Errorf("terminationGracePeriodSeconds %s must exceed shutdown_timeout %s", grace, cfg.ShutdownTimeout)
	}

	// The temporary directory holds a pass of a join's spool, with room to
	// spare (a pass's size is estimated).
	spool := cfg.SpoolBytes
	if spool == 0 {
		spool = postgres.DefaultSpoolBytes
	}
	tmpLimit := int64(-1)
	for _, m := range set.Spec.Template.Spec.Containers[0].VolumeMounts {
		for _, v := range set.Spec.Template.Spec.Volumes {
			if m.MountPath == "/tmp" && v.Name == m.Name && v.EmptyDir != nil && v.EmptyDir.SizeLimit != "" {
				// Kubernetes writes binary units without the B.
				if tmpLimit, err = parseSize(v.EmptyDir.SizeLimit + "B"); err != nil {
					t.Fatalf("/tmp's sizeLimit: %v", err)
				}
			}
		}
	}
	if tmpLimit < 3*spool/2 {
		t.Errorf("/tmp holds %d bytes (an emptyDir with a sizeLimit is wanted there); a join's spool takes about %d a pass: give it half as much again", tmpLimit, spool)
	}

	// The paths the probes ask for, against the real operations handler.
	mon := obs.New(obs.Config{Region: cfg.Region, Probe: func(context.Context) (postgres.Probe, error) { return postgres.Probe{}, nil }})
	srv := httptest.NewServer(mon.Handler())
	defer srv.Close()
	c := set.Spec.Template.Spec.Containers[0]
	if strings.Join(c.Args, " ") != "run --config /etc/polyregion/region.yaml" {
		t.Errorf("container args %v", c.Args)
	}
	ports := map[string]int{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	for name, p := range map[string]*k8sProbe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil {
			t.Errorf("%s probe missing", name)
			continue
		}
		port := fmt.Sprint(p.HTTPGet.Port)
		if n, ok := ports[port]; ok {
			port = fmt.Sprint(n)
		}
		if port != httpPort {
			t.Errorf("%s probe on port %s, but http.listen is %s", name, port, cfg.HTTPListen)
		}
		resp, err := http.Get(srv.URL + p.HTTPGet.Path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed {
			t.Errorf("%s probe path %s is not served (HTTP %d)", name, p.HTTPGet.Path, resp.StatusCode)
		}
	}
	if c.LivenessProbe != nil && c.LivenessProbe.HTTPGet.Path != "/live" {
		t.Errorf("liveness must use /live (it does not depend on the database), got %s", c.LivenessProbe.HTTPGet.Path)
	}
	if c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet.Path != "/health" {
		t.Errorf("readiness must use /health, got %s", c.ReadinessProbe.HTTPGet.Path)
	}
}
