package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/polyregion/polyregion/replicator/node"
)

const sequencesConfig = `region: us
database: postgres://polyregion@127.0.0.1:5432/app
listen: 127.0.0.1:7480
regions: [us, eu]
peers: [{id: eu, url: "http://127.0.0.1:7490", token: 0123456789abcdef0123}]
tables: [{name: public.events}]
`

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "us.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigSequencesPlan(t *testing.T) {
	cfg, _, err := loadConfig(writeConfig(t, sequencesConfig+"sequences: {stride: 8, offsets: {us: 1, eu: 2}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if off, ok := cfg.Cluster.Sequences.Offset("us"); !ok || off != 1 || cfg.Cluster.Sequences.Stride != 8 {
		t.Fatalf("plan %+v", cfg.Cluster.Sequences)
	}
	_, _, err = loadConfig(writeConfig(t, sequencesConfig+"sequences: {stride: 8, offsets: {us: 2, eu: 2}}\n"))
	if err == nil || !strings.Contains(err.Error(), `regions "us" and "eu" both have offset 2`) && !strings.Contains(err.Error(), `regions "eu" and "us" both have offset 2`) {
		t.Fatalf("equal offsets: %v", err)
	}
	cfg, _, err = loadConfig(writeConfig(t, sequencesConfig))
	if err != nil || cfg.Cluster.Sequences != nil {
		t.Fatalf("no plan: %v, %+v", err, cfg.Cluster.Sequences)
	}
}

// conflict_log.retention: 30 days when absent, 0s keeps every record, a
// negative duration is refused naming the key.
func TestConfigConflictLogRetention(t *testing.T) {
	for _, c := range []struct {
		extra string
		want  time.Duration
	}{
		{"", node.DefaultConflictRetention},
		{"conflict_log: {retention: 0s}\n", 0},
		{"conflict_log: {retention: 36h}\n", 36 * time.Hour},
	} {
		cfg, _, err := loadConfig(writeConfig(t, sequencesConfig+c.extra))
		if err != nil {
			t.Fatalf("%q: %v", c.extra, err)
		}
		if cfg.ConflictRetention != c.want {
			t.Errorf("%q: retention %s, want %s", c.extra, cfg.ConflictRetention, c.want)
		}
	}
	_, _, err := loadConfig(writeConfig(t, sequencesConfig+"conflict_log: {retention: -1h}\n"))
	if err == nil || !strings.Contains(err.Error(), "conflict_log.retention: must be 0") {
		t.Fatalf("negative retention: %v", err)
	}
}
