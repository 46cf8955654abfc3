package control

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
)

// fsm is the raft state machine: the agreed Membership. Apply runs on
// raft's one FSM goroutine; readers take copies under the lock.
type fsm struct {
	mu sync.RWMutex
	m  regions.Membership
	// changed is signalled (without blocking) after every applied command.
	changed chan struct{}
}

func newFSM() *fsm { return &fsm{changed: make(chan struct{}, 1)} }

// applied is what Apply returns for one command.
type applied struct {
	Result regions.Result
	Err    error
}

// Apply implements raft.FSM.
func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	var c regions.Command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		// Entries are encoded by this package only; one that does not decode
		// was written by a newer version: refuse it the same way everywhere
		// (it still counts as applied: it changes nothing).
		f.mu.Lock()
		f.m.Applied = max(f.m.Applied, l.Index)
		f.mu.Unlock()
		return applied{Err: fmt.Errorf("control command at index %d does not decode: %w", l.Index, err)}
	}
	f.mu.Lock()
	res, err := f.m.Apply(l.Index, c)
	f.mu.Unlock()
	select {
	case f.changed <- struct{}{}:
	default:
	}
	return applied{Result: res, Err: err}
}

// membership returns a copy of the agreed membership.
func (f *fsm) membership() regions.Membership {
	f.mu.RLock()
	defer f.mu.RUnlock()
	b, _ := json.Marshal(&f.m)
	var out regions.Membership
	_ = json.Unmarshal(b, &out)
	return out
}

// applied is the log index of the last command applied (or restored from
// a snapshot).
func (f *fsm) applied() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.m.Applied
}

// state returns r's membership state ("" when not a member).
func (f *fsm) state(r conflict.RegionID) regions.MemberState {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.m.State(r)
}

// Snapshot implements raft.FSM.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	b, err := json.Marshal(&f.m)
	if err != nil {
		return nil, err
	}
	return snapshot(b), nil
}

// Restore implements raft.FSM.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var m regions.Membership
	if err := json.NewDecoder(rc).Decode(&m); err != nil {
		return fmt.Errorf("control snapshot: %w", err)
	}
	f.mu.Lock()
	f.m = m
	f.mu.Unlock()
	return nil
}

type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s snapshot) Release() {}
