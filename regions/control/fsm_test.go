package control

import (
	"testing"

	"github.com/hashicorp/raft"
)

// Every command the log holds counts as applied, one that does not decode
// (written by a newer version, refused the same way everywhere) too: a
// region waiting to hold a later command's index must not wait forever.
func TestEveryCommandCountsAsApplied(t *testing.T) {
	f := newFSM()
	f.Apply(&raft.Log{Index: 3, Type: raft.LogCommand, Data: []byte(`{"op":"noop"}`)})
	if got := f.applied(); got != 3 {
		t.Fatalf("applied %d after a no-op at 3", got)
	}
	if res, _ := f.Apply(&raft.Log{Index: 7, Type: raft.LogCommand, Data: []byte(`{not json`)}).(applied); res.Err == nil {
		t.Fatal("an undecodable command was not refused")
	}
	if got := f.applied(); got != 7 {
		t.Fatalf("applied %d after an undecodable command at 7", got)
	}
}
