package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// logFile is the log: section of a region's or a witness's config file.
type logFile struct {
	Format string `yaml:"format"` // text | json
	Level  string `yaml:"level"`  // debug | info | warn | error
}

// validate names the first setting out of range. The loaders call it so
// that check, run and a reload refuse the same files.
func (l logFile) validate() error {
	if _, err := parseLevel(l.Level); err != nil {
		return err
	}
	return checkFormat(l.Format)
}

// parseLevel reads log.level.
func parseLevel(level string) (slog.Level, error) {
	switch strings.ToLower(level) {
	case "", "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("log.level: %q is not one of debug, info, warn, error", level)
}

// checkFormat checks log.format.
func checkFormat(format string) error {
	switch strings.ToLower(format) {
	case "", "text", "json":
		return nil
	}
	return fmt.Errorf("log.format: %q is not one of text, json", format)
}

// newLogger returns a logger writing to stderr in format (text or json);
// its level is lv's, which a reload may change.
func newLogger(format, level string, lv *slog.LevelVar) (*slog.Logger, error) {
	l, err := parseLevel(level)
	if err != nil {
		return nil, err
	}
	if err := checkFormat(format); err != nil {
		return nil, err
	}
	lv.Set(l)
	opts := &slog.HandlerOptions{Level: lv}
	if strings.EqualFold(format, "json") {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
}
