package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
	}{
		{"1073741824", 1 << 30},
		{"512MiB", 512 << 20},
		{"2GiB", 2 << 30},
		{"2 GiB", 2 << 30},
		{" 64KiB ", 64 << 10},
		{"1TiB", 1 << 40},
		{"500MB", 500e6},
		{"3GB", 3e9},
		{"10kB", 10e3},
		{"10KB", 10e3},
		{"4096B", 4096},
		{"0", 0},
	} {
		got, err := parseSize(c.in)
		if err != nil || got != c.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "GiB", "1.5GiB", "-1GiB", "+1GiB", "1 gigabyte", "1gib", "1e9", "9999999TiB", "99999999999999999999", "0x10"} {
		if n, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, n)
		} else if !strings.Contains(err.Error(), in) {
			t.Errorf("parseSize(%q): the error does not name the value: %v", in, err)
		}
	}
}

// join.spool reaches the data plane's config; a value that is no size, or
// under 1MiB, is refused naming the key.
func TestConfigJoinSpool(t *testing.T) {
	load := func(spool string) (int64, error) {
		t.Helper()
		body := "region: us\ndatabase: postgres://polyregion@localhost/app\nlisten: 127.0.0.1:7480\nregions: [us, eu]\n" +
			"peers:\n  - {id: eu, url: http://127.0.0.1:7490, token: a-long-enough-secret-token}\ntables:\n  - name: public.kv\n"
		if spool != "" {
			body += "join:\n  spool: " + spool + "\n"
		}
		path := filepath.Join(t.TempDir(), "us.yaml")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, _, err := loadConfig(path)
		return cfg.SpoolBytes, err
	}
	for spool, want := range map[string]int64{"": 0, "512MiB": 512 << 20, "2147483648": 2 << 30, "1MiB": 1 << 20} {
		got, err := load(spool)
		if err != nil || got != want {
			t.Errorf("join.spool %q: %d, %v; want %d", spool, got, err, want)
		}
	}
	for _, spool := range []string{"lots", "512KiB", "0", "-1"} {
		if _, err := load(spool); err == nil || !strings.Contains(err.Error(), "join.spool") {
			t.Errorf("join.spool %q: %v; want an error naming join.spool", spool, err)
		}
	}
}
