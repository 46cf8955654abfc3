package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// PGBinDir finds the PostgreSQL server binaries: $PG_BINDIR, then
// `pg_config --bindir`, then the Debian locations.
func PGBinDir() (string, error) {
	if d := os.Getenv("PG_BINDIR"); d != "" {
		return d, nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(matches) > 0 {
		return filepath.Dir(matches[len(matches)-1]), nil
	}
	return "", errors.New("PostgreSQL server binaries not found: install postgresql (Debian: apt-get install postgresql-15) or set PG_BINDIR")
}

// Cluster is one local PostgreSQL cluster.
type Cluster struct {
	Name    string
	Dir     string // data directory
	Port    int
	BinDir  string
	LogFile string
	cred    *syscall.Credential
	uid     int
	gid     int

	// Env is extra environment for the server processes, applied when the
	// server (re)starts. The harness sets none; tests may (package
	// integration preloads libfaketime through it for a clock offset).
	Env []string
}

// ClusterOptions tunes a new cluster.
type ClusterOptions struct {
	// Settings are extra postgresql.conf lines.
	Settings map[string]string
	// WalLevel overrides wal_level (default logical).
	WalLevel string
}

// RequestedLocale is the locale $POLYREGION_TEST_LOCALE asks the test databases
// for, as pg_database records it: the provider ('c' for the operating
// system's, 'i' for ICU) and the locale. Empty or "C": the C locale (the
// default); "icu:TAG": an ICU collation (as many production databases
// use; "icu:en-US"); anything else an operating-system locale
// ("C.UTF-8").
func RequestedLocale() (provider byte, locale string) {
	l := os.Getenv("POLYREGION_TEST_LOCALE")
	switch {
	case l == "":
		return 'c', "C"
	case strings.HasPrefix(l, "icu:"):
		return 'i', strings.TrimPrefix(l, "icu:")
	default:
		return 'c', l
	}
}

// localeArgs are initdb's options for RequestedLocale.
func localeArgs() []string {
	provider, locale := RequestedLocale()
	if provider == 'i' {
		return []string{"--locale=C.UTF-8", "--locale-provider=icu", "--icu-locale=" + locale}
	}
	return []string{"--locale=" + locale}
}

// runAs returns the credential to run server binaries with: PostgreSQL
// refuses to run as root, so as root the harness uses $POLYREGION_PG_USER
// (default "postgres").
func runAs() (*syscall.Credential, int, int, error) {
	if os.Geteuid() != 0 {
		return nil, os.Getuid(), os.Getgid(), nil
	}
	name := os.Getenv("POLYREGION_PG_USER")
	if name == "" {
		name = "postgres"
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("running as root, PostgreSQL needs an unprivileged user: %q: %w (create it, or set POLYREGION_PG_USER)", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, uid, gid, nil
}

// handedOut holds every port FreePort returned in this process: a port is
// closed again before its user binds it, so the kernel may offer it twice
// (two regions of one harness were once given the same port).
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// FreePort returns a TCP port on loopback that was free a moment ago and
// that it has not returned before in this process.
func FreePort() (int, error) {
	handedOut.Lock()
	defer handedOut.Unlock()
	for attempt := 0; attempt < 100; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port, nil
		}
	}
	return 0, errors.New("no loopback port that was not handed out already")
}

// NewCluster runs initdb in dir/name and starts the server on a free
// loopback port.
func NewCluster(ctx context.Context, dir, name string, opt ClusterOptions) (*Cluster, error) {
	bin, err := PGBinDir()
	if err != nil {
		return nil, err
	}
	cred, uid, gid, err := runAs()
	if err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	c := &Cluster{Name: name, Dir: filepath.Join(dir, name), Port: port, BinDir: bin, cred: cred, uid: uid, gid: gid}
	c.LogFile = filepath.Join(dir, name+".log")
	for _, d := range []string{dir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		if cred != nil {
			_ = os.Chown(d, uid, gid)
		}
	}
	args := append([]string{"-D", c.Dir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"}, localeArgs()...)
	if err := c.run(ctx, "initdb", args...); err != nil {
		return nil, err
	}
	wal := opt.WalLevel
	if wal == "" {
		wal = "logical"
	}
	settings := map[string]string{
		"listen_addresses":          "'127.0.0.1'",
		"port":                      strconv.Itoa(port),
		"unix_socket_directories":   "'" + c.Dir + "'",
		"wal_level":                 wal,
		"track_commit_timestamp":    "on",
		"max_replication_slots":     "20",
		"max_wal_senders":           "20",
		"max_connections":           "100",
		"shared_buffers":            "128MB",
		"fsync":                     "off",
		"full_page_writes":          "off",
		"logical_decoding_work_mem": "64MB",
		"log_min_messages":          "warning",
		"log_line_prefix":           "'%m [%p] %a '",
	}
	for k, v := range opt.Settings {
		settings[k] = v
	}
	var conf strings.Builder
	conf.WriteString("\n# polyregion harness\n")
	for k, v := range settings {
		fmt.Fprintf(&conf, "%s = %s\n", k, v)
	}
	f, err := os.OpenFile(filepath.Join(c.Dir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	_, err = f.WriteString(conf.String())
	f.Close()
	if err != nil {
		return nil, err
	}
	if err := c.Start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Cluster) run(ctx context.Context, prog string, args ...string) error {
	return c.runEnv(ctx, nil, prog, args...)
}

// runEnv is run with extra environment variables.
func (c *Cluster) runEnv(ctx context.Context, env []string, prog string, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, prog), args...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", prog, strings.Join(args, " "), err, out)
	}
	return nil
}

// Start starts the server and waits until it accepts connections.
func (c *Cluster) Start(ctx context.Context) error {
	if c.cred != nil {
		f, err := os.OpenFile(c.LogFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err == nil {
			f.Close()
			_ = os.Chown(c.LogFile, c.uid, c.gid)
		}
	}
	if err := c.runEnv(ctx, c.Env, "pg_ctl", "-D", c.Dir, "-l", c.LogFile, "-w", "-t", "60", "start"); err != nil {
		return fmt.Errorf("start cluster %s: %w", c.Name, err)
	}
	return nil
}

// Stop stops the server (mode: smart, fast or immediate).
func (c *Cluster) Stop(ctx context.Context, mode string) error {
	if mode == "" {
		mode = "fast"
	}
	return c.run(ctx, "pg_ctl", "-D", c.Dir, "-m", mode, "-w", "-t", "60", "stop")
}

// PID returns the postmaster's process id.
func (c *Cluster) PID() (int, error) {
	b, err := os.ReadFile(filepath.Join(c.Dir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(line))
}

// Running reports whether pg_ctl finds the server running.
func (c *Cluster) Running(ctx context.Context) bool {
	return c.run(ctx, "pg_ctl", "-D", c.Dir, "status") == nil
}

// URL returns a connection string for database db as user.
func (c *Cluster) URL(user, db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", user, c.Port, db)
}

// Connect opens a session as the superuser.
func (c *Cluster) Connect(ctx context.Context, db string) (*pgx.Conn, error) {
	return pgx.Connect(ctx, c.URL("postgres", db))
}

// Exec runs SQL statements as the superuser on db.
func (c *Cluster) Exec(ctx context.Context, db string, stmts ...string) error {
	conn, err := c.Connect(ctx, db)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("%s: %s: %w", c.Name, firstLine(s), err)
		}
	}
	return nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	l, _, _ := strings.Cut(s, "\n")
	if len(l) > 120 {
		l = l[:120] + "..."
	}
	return l
}

// Destroy stops the server immediately and removes its files.
func (c *Cluster) Destroy() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = c.Stop(ctx, "immediate")
	_ = os.RemoveAll(c.Dir)
}
