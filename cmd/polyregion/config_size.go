package main

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeUnits are the suffixes parseSize takes, in bytes.
var sizeUnits = []struct {
	suffix string
	bytes  int64
}{
	// Longest first: "MiB" before "B".
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"kB", 1e3}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"B", 1},
}

// parseSize reads a size in bytes: a whole number, optionally followed by
// one of sizeUnits (binary KiB, MiB, GiB, TiB or decimal kB, MB, GB, TB),
// with or without a space between them.
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	unit := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, unit = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.bytes
			break
		}
	}
	if t == "" || t[0] < '0' || t[0] > '9' {
		return 0, fmt.Errorf("%q is not a size: want a whole number of bytes, or one followed by B, KiB, MiB, GiB, TiB (binary) or kB, KB, MB, GB, TB (decimal)", s)
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if errors.Is(err, strconv.ErrRange) || err == nil && n > math.MaxInt64/unit {
		return 0, fmt.Errorf("%q is too large", s)
	}
	if err != nil {
		return 0, fmt.Errorf("%q is not a size: want a whole number of bytes, or one followed by B, KiB, MiB, GiB, TiB (binary) or kB, KB, MB, GB, TB (decimal)", s)
	}
	return n * unit, nil
}
