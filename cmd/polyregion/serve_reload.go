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
// log.level itself, refuses log.format (logged), and hands the new config to
// the replicator, which applies what can change while running and logs the
// rest as refused. An invalid file changes nothing.
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
			log.Info("SIGHUP: reloading the config", "path", path)
			cfg, next, err := loadConfig(path)
			if err != nil {
				log.Error("config reload refused: the file is invalid; keeping the running config", "err", err)
				continue
			}
			if lv, err := parseLevel(next.Log.Level); err != nil {
				log.Error("config reload: log.level refused", "err", err)
			} else if lv != level.Level() {
				log.Info("config reload: log.level applied", "from", level.Level().String(), "to", lv.String())
				level.Set(lv)
			}
			if next.Log.Format != fc.Log.Format {
				log.Warn("config reload: setting changed but cannot change while running; restart to apply it", "key", "log.format")
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

// exitOnSecondSignal restores the default action of SIGTERM and SIGINT once
// ctx ends (the first signal started a graceful stop): a second one ends the
// process at once.
func exitOnSecondSignal(ctx context.Context) {
	context.AfterFunc(ctx, func() { signal.Reset(os.Interrupt, syscall.SIGTERM) })
}
