package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"
)

// reloadConfig is a valid region config; each test adds log, health and
// shutdown settings (its database is never reached: port 1).
const reloadConfig = `region: us
database: postgres://polyregion@127.0.0.1:1/app
listen: 127.0.0.1:7480
regions: [us, eu]
peers: [{id: eu, url: "http://127.0.0.1:7490", token: 0123456789abcdef0123}]
tables: [{name: public.events}]
`

// A file that run would refuse (an invalid log.level or log.format) used
// to have its log change refused while its health settings and
// shutdown_timeout still went to the node: half a file applied. Now the
// whole file is refused: nothing is handed to the node, the level stays.
func TestReloadOfAnInvalidFileDeliversNothing(t *testing.T) {
	for key, bad := range map[string]string{
		"log.level":  "log: {level: verbose}\n",
		"log.format": "log: {format: xml}\n",
	} {
		t.Run(key, func(t *testing.T) {
			path := writeConfig(t, reloadConfig+"log: {level: info}\nhealth: {hold: 3s}\nshutdown_timeout: 10s\n")
			_, fc, err := loadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			var level slog.LevelVar
			var logged bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logged, nil))
			rewrite := func(text string) {
				t.Helper()
				if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
					t.Fatal(err)
				}
			}

			rewrite(reloadConfig + bad + "health: {hold: 9s}\nshutdown_timeout: 20s\n")
			if cfg, ok := reread(path, fc, &level, log); ok {
				t.Fatalf("a file with an invalid %s is handed to the node (hold %s, shutdown_timeout %s)", key, cfg.Health.Hold, cfg.ShutdownTimeout)
			}
			if level.Level() != slog.LevelInfo {
				t.Fatalf("log.level changed to %s", level.Level())
			}
			if !strings.Contains(logged.String(), key) {
				t.Fatalf("the refusal does not name %s: %s", key, logged.String())
			}

			// A valid file still applies: the level here, the rest in the node.
			rewrite(reloadConfig + "log: {level: debug}\nhealth: {hold: 9s}\nshutdown_timeout: 20s\n")
			cfg, ok := reread(path, fc, &level, log)
			if !ok || cfg.Health.Hold != 9*time.Second || cfg.ShutdownTimeout != 20*time.Second || level.Level() != slog.LevelDebug {
				t.Fatalf("valid reload: handed over %v, hold %s, shutdown_timeout %s, level %s", ok, cfg.Health.Hold, cfg.ShutdownTimeout, level.Level())
			}
		})
	}
}

// check and run read the file alike: a log section run refuses makes the
// file invalid for check too (it said "ready"), naming the setting and
// the value.
func TestCheckRefusesAnInvalidLogSection(t *testing.T) {
	for key, c := range map[string]struct{ section, value string }{
		"log.level":  {"log: {level: verbose}\n", "verbose"},
		"log.format": {"log: {format: xml}\n", "xml"},
	} {
		path := writeConfig(t, reloadConfig+c.section)
		_, _, err := loadConfig(path)
		if err == nil || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), c.value) {
			t.Errorf("loadConfig with an invalid %s: %v; want an error naming %s and %q", key, err, key, c.value)
		}
		cmd := checkCmd()
		cmd.SetArgs([]string{"--config", path})
		cmd.SetOut(&bytes.Buffer{})
		cmd.SetErr(&bytes.Buffer{})
		err = cmd.ExecuteContext(context.Background())
		if ee, ok := err.(*exitError); !ok || ee.code != exitConfig {
			t.Errorf("check with an invalid %s: %v; want exit code %d (configuration)", key, err, exitConfig)
		}
	}
}
