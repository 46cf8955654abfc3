package postgres

import (
	"slices"
	"testing"
)

func TestServerMajorReadsEveryVersionForm(t *testing.T) {
	for v, want := range map[string]int{
		"15.8 (Debian 15.8-1.pgdg120+1)": 15,
		"16.4":                           16,
		"17.10":                          17,
		"18beta1":                        18,
		"9.6.24":                         9,
		"":                               0,
		"devel":                          0,
	} {
		if got := serverMajor(v); got != want {
			t.Errorf("serverMajor(%q) = %d, want %d", v, got, want)
		}
	}
}

func TestPgoutputArgsAskForOriginNoneOnlyWhenTheServerFilters(t *testing.T) {
	if args := PgoutputArgs("polyregion_us", true, false); slices.Contains(args, "origin 'none'") || !slices.Contains(args, "messages 'true'") {
		t.Fatalf("args %v: want messages and no origin option (a server before 16 refuses it)", args)
	}
	args := PgoutputArgs("polyregion_us", false, true)
	if !slices.Contains(args, "origin 'none'") || !slices.Contains(args, "publication_names 'polyregion_us'") || slices.Contains(args, "messages 'true'") {
		t.Fatalf("args %v: want the publication and origin 'none', no messages", args)
	}
}
