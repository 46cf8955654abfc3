package main

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/polyregion/polyregion/replicator/postgres"
)

func TestParkedDiscardNeedsTheWordTyped(t *testing.T) {
	if err := readConfirmation(strings.NewReader("discard\n"), "discard"); err != nil {
		t.Fatalf("typed confirmation refused: %v", err)
	}
	for _, in := range []string{"", "\n", "y\n", "yes\n", "Discard\n", "discard it\n"} {
		err := readConfirmation(strings.NewReader(in), "discard")
		if !errors.Is(err, errNotConfirmed) {
			t.Errorf("input %q: %v, want not confirmed", in, err)
		}
	}
}

func TestParkedDiscardRefusesWithoutATerminal(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "stdin")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteString("discard\n")
	f.Seek(0, 0)
	err = confirmDiscard(f, &strings.Builder{}, []postgres.Parked{{ID: 1}})
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != exitConfig || !strings.Contains(err.Error(), "--yes") {
		t.Fatalf("confirmation from a file: %v, want a refusal naming --yes", err)
	}
}

func TestParkedSelectionNeedsIDOrAll(t *testing.T) {
	var s parkedSelection
	if _, err := s.filter("discard"); err == nil {
		t.Fatal("no --id and no --all accepted")
	}
	s = parkedSelection{ids: []int64{3}, all: true}
	if _, err := s.filter("discard"); err == nil {
		t.Fatal("--id with --all accepted")
	}
	s = parkedSelection{all: true, source: "us", table: "public.users"}
	f, err := s.filter("retry")
	if err != nil || f.Source != "us" || f.Table != "public.users" || len(f.IDs) != 0 || f.Resolved {
		t.Fatalf("filter %+v %v", f, err)
	}
}
