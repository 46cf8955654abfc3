package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/polyregion/polyregion/replicator/node"
)

// watchReload re-reads the config file on SIGHUP until ctx ends. It applies
// log.level itself, keeps log.format (logged: restart to change it), and
// hands the new config to the replicator, which applies what can change
// while running and logs the rest as kept. An invalid file changes nothing.
func watchReload(ctx context.Context, path string, fc fileConfig, level *slog.LevelVar, log *slog.Logger) <-chan node.Config {
	out := make(chan node.Config, 1)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			cfg, ok := reread(path, fc, level, log)
			if !ok {
				continue
			}
			select {
			case <-out: // an unread reload is superseded
			default:
			}
			out <- cfg
		}
	}()
	return out
}

// reread reads the config file again for a reload and returns the config
// for the replicator. Every part is checked before any is applied: a file
// with any invalid part changes nothing (ok false), as the README promises;
// a reload used to apply the health settings of a file whose log.level run
// would refuse. A valid setting that cannot change while running is not a
// refusal of the file: it is kept and named, and the rest applies.
func reread(path string, fc fileConfig, level *slog.LevelVar, log *slog.Logger) (node.Config, bool) {
	log.Info("SIGHUP: reloading the config", "path", path)
	cfg, next, err := loadConfig(path)
	if err != nil {
		log.Error("config reload refused: the file is invalid; keeping the running config", "err", err)
		return node.Config{}, false
	}
	// loadConfig checked the log section; this guards the promise above
	// should the two ever part.
	lv, err := parseLevel(next.Log.Level)
	if err != nil {
		log.Error("config reload refused: the file is invalid; keeping the running config", "err", err)
		return node.Config{}, false
	}
	if lv != level.Level() {
		log.Info("config reload: log.level applied", "from", level.Level().String(), "to", lv.String())
		level.Set(lv)
	}
	if next.Log.Format != fc.Log.Format {
		log.Warn("config reload: setting changed but cannot change while running; restart to apply it", "key", "log.format")
	}
	return cfg, true
}

// exitOnSecondSignal restores the default action of SIGTERM and SIGINT once
// ctx ends (the first signal started a graceful stop): a second one ends the
// process at once.
func exitOnSecondSignal(ctx context.Context) {
	context.AfterFunc(ctx, func() { signal.Reset(os.Interrupt, syscall.SIGTERM) })
}
