package regions

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/polyregion/polyregion/conflict"
)

// MemberState is where a region stands in the cluster's membership.
type MemberState string

// The states a member goes through: joining (added, loading or catching up)
// -> active -> leaving (its removal waits for its transactions to reach
// every other region) -> removed. An active region may be re-seeded:
// reseeding (its own transactions reach every peer, then it is emptied and
// loads a snapshot of another region, and catches up) -> active again. A
// removed region never comes back under the same id: its peers keep
// positions and versions under that id.
const (
	Joining   MemberState = "joining"
	Active    MemberState = "active"
	Reseeding MemberState = "reseeding"
	Leaving   MemberState = "leaving"
	Removed   MemberState = "removed"
)

// Member is one region (or witness) in the agreed membership.
type Member struct {
	ID conflict.RegionID `json:"id"`
	// URL is the region's link endpoint, as the operator gave it.
	URL   string      `json:"url"`
	State MemberState `json:"state"`
	// Witness: a voter of the control plane with no database; it takes no
	// writes and replicates nothing.
	Witness bool `json:"witness,omitempty"`
	// From is the region a joining or reseeding region loads its snapshot
	// from.
	From conflict.RegionID `json:"from,omitempty"`
	// Since is the control plane's log index of the last state change.
	Since uint64 `json:"since"`
	// Lost is set for a region removed by force: how many of its
	// transactions no surviving region had reported applying.
	Lost uint64 `json:"lost,omitempty"`
	// Unvoted is set for a region that began leaving while it was still
	// joining: it never had a vote, and draining it must not give it one
	// (a voter added then, typically a region whose host is gone, would
	// cost the cluster its majority for good).
	Unvoted bool `json:"unvoted,omitempty"`
}

// Voter reports whether the member votes in the control plane: active
// regions, regions being re-seeded or on their way out (unless they left
// before they ever voted), and witnesses. A
// joining region follows the log without voting until it has caught up,
// so adding it can never cost the cluster its majority; a region being
// re-seeded keeps its vote (its control plane does not depend on its
// rows), so re-seeding one never costs the majority either.
func (m Member) Voter() bool {
	return m.State == Active || m.State == Reseeding || (m.State == Leaving && !m.Unvoted)
}

// Loading reports whether the member loads (or is about to load) a
// snapshot of From: it is joining or being re-seeded.
func (m Member) Loading() bool {
	return !m.Witness && (m.State == Joining || m.State == Reseeding) && m.From != ""
}

// Epoch is one numbered version of the agreed configuration.
type Epoch struct {
	Number      uint64            `json:"number"`
	Fingerprint string            `json:"fingerprint"`
	Describe    map[string]string `json:"describe"`
	// Index is the control plane's log index at which it was announced
	// (epoch 1: at init, in effect from there).
	Index uint64 `json:"index"`
	// Policies are the tables' policies under this epoch (for epoch 1 only
	// when init carried them; see epochs.go).
	Policies map[string]conflict.Policy `json:"policies,omitempty"`
	// Fences, for an announced epoch: each region's last transaction
	// shipped before it learned of the epoch.
	Fences map[conflict.RegionID]uint64 `json:"fences,omitempty"`
	// Effective is the log index at which the epoch came into effect (0
	// while it is pending; see Pending).
	Effective uint64 `json:"effective,omitempty"`
}

// Progress is what one region last reported of its own positions: the
// newest transaction it shipped and how far it applied every other region.
type Progress struct {
	Shipped uint64                       `json:"shipped"`
	Applied map[conflict.RegionID]uint64 `json:"applied,omitempty"`
	Index   uint64                       `json:"index"`
	// Takes is what the region's release takes of the changes made at an
	// epoch (TakesPolicyChanges, TakesTableChanges; 0: a release from
	// before them). A change is refused until every region that
	// replicates reported taking it.
	Takes int `json:"takes,omitempty"`
}

// Membership is the state the control plane agrees on: who the members
// are, the configuration epochs, and each region's reported positions. It
// holds no rows and no secrets. Apply is deterministic: every region that
// applies the same commands in the same order holds the same Membership.
type Membership struct {
	Members  map[conflict.RegionID]*Member   `json:"members"`
	Epochs   []Epoch                         `json:"epochs"`
	Progress map[conflict.RegionID]*Progress `json:"progress"`
	// Sequences, when set, gives every region its own numbers from the
	// sequences that fill keys: the founders' offsets, and an offset for
	// each region added (the lowest never given to any member, removed
	// ones included: their numbers are in the tables).
	Sequences *SequencePlan `json:"sequences,omitempty"`
	// Applied is the log index of the last command applied (refused ones
	// and no-ops included): a region that holds a command's index has
	// applied everything committed before it.
	Applied uint64 `json:"applied,omitempty"`
}

// Command ops.
const (
	OpInit     = "init"
	OpAdd      = "add"
	OpActivate = "activate"
	OpRemove   = "remove"
	OpReseed   = "reseed"
	OpReport   = "report"
	// OpNoop changes nothing (the control plane writes one to move its
	// log past a voter change).
	OpNoop = "noop"
)

// Command is one change to the Membership, as the control plane's log
// carries it.
type Command struct {
	Op string `json:"op"`
	// init: the founding members (every region of the configuration the
	// cluster starts from, active) and its epoch-1 configuration.
	Members     []Member          `json:"members,omitempty"`
	Fingerprint string            `json:"fingerprint,omitempty"`
	Describe    map[string]string `json:"describe,omitempty"`
	// init: the sequences plan, with an offset for each founder.
	Sequences *SequencePlan `json:"sequences,omitempty"`
	// add, activate, remove, reseed, report: the region concerned.
	Region conflict.RegionID `json:"region,omitempty"`
	URL    string            `json:"url,omitempty"`
	From   conflict.RegionID `json:"from,omitempty"`
	// add: a witness instead of a region.
	Witness bool `json:"witness,omitempty"`
	// remove: do not wait for its transactions to reach every region.
	Force bool `json:"force,omitempty"`
	// report: the region's positions.
	Progress *Progress `json:"progress,omitempty"`
	// init (optionally), configure: every replicated table's policy.
	Policies map[string]conflict.Policy `json:"policies,omitempty"`
	// fence: the epoch and the region's fence for it.
	Epoch uint64 `json:"epoch,omitempty"`
	Fence uint64 `json:"fence,omitempty"`
}

// ErrRefused wraps every refusal of a command: the command was valid
// input but the membership does not allow it now. Nothing changed.
var ErrRefused = errors.New("refused")

// ErrInvalid wraps every command that is wrong in itself (a missing or
// malformed field). Nothing changed.
var ErrInvalid = errors.New("invalid")

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

func refuse(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, a...))
}

// Result is what applying a command says beyond success.
type Result struct {
	// Waiting, for a remove that must wait: what the region's removal
	// waits for (it is leaving meanwhile).
	Waiting []string `json:"waiting,omitempty"`
	// Lost, for a forced remove: transactions of the region no surviving
	// region reported applying (a lower bound: it may have shipped more
	// after its last report).
	Lost uint64 `json:"lost,omitempty"`
	// Uneven, for a forced remove: surviving regions that had applied
	// fewer of its transactions than another survivor (those rows are in
	// some regions only).
	Uneven []string `json:"uneven,omitempty"`
}

// Epoch returns the current epoch (zero before init).
func (m Membership) Epoch() Epoch {
	if len(m.Epochs) == 0 {
		return Epoch{}
	}
	return m.Epochs[len(m.Epochs)-1]
}

// Sorted returns the members ordered by id.
func (m Membership) Sorted() []Member {
	out := make([]Member, 0, len(m.Members))
	for _, mem := range m.Members {
		out = append(out, *mem)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// State returns the membership state of r ("" when not a member).
func (m Membership) State(r conflict.RegionID) MemberState {
	if mem := m.Members[r]; mem != nil {
		return mem.State
	}
	return ""
}

// Apply applies c at log index, or refuses it (wrapping ErrRefused) and
// changes nothing.
func (m *Membership) Apply(index uint64, c Command) (Result, error) {
	if m.Members == nil {
		m.Members = map[conflict.RegionID]*Member{}
	}
	if m.Progress == nil {
		m.Progress = map[conflict.RegionID]*Progress{}
	}
	// A membership restored from a snapshot (its JSON) lacks the maps that
	// were empty: a pending epoch's fences, a sequence plan's offsets.
	if e := m.latest(); e != nil && e.Fences == nil {
		e.Fences = map[conflict.RegionID]uint64{}
	}
	if m.Sequences != nil && m.Sequences.Offsets == nil {
		m.Sequences.Offsets = map[conflict.RegionID]int64{}
	}
	m.Applied = max(m.Applied, index)
	if c.Op == OpNoop {
		return Result{}, nil
	}
	if c.Op != OpInit && len(m.Epochs) == 0 {
		return Result{}, refuse("the cluster is not initialised (run polyregion cluster init in the region that holds the data)")
	}
	switch c.Op {
	case OpInit:
		return Result{}, m.init(index, c)
	case OpAdd:
		return Result{}, m.add(index, c)
	case OpActivate:
		return Result{}, m.activate(index, c)
	case OpRemove:
		return m.remove(index, c)
	case OpReseed:
		return Result{}, m.reseed(index, c)
	case OpReport:
		return Result{}, m.report(index, c)
	case OpConfigure:
		return Result{}, m.configure(index, c)
	case OpFence:
		return Result{}, m.fence(index, c)
	}
	return Result{}, invalid("unknown control command %q", c.Op)
}

func (m *Membership) init(index uint64, c Command) error {
	if len(m.Epochs) > 0 {
		return refuse("the cluster is already initialised (epoch %d)", m.Epoch().Number)
	}
	if len(c.Members) == 0 || c.Fingerprint == "" {
		return invalid("init: members and the configuration are required")
	}
	if p := c.Sequences; p != nil {
		if p.Stride < 2 || p.Stride > MaxSequenceStride {
			return invalid("init: sequences: stride %d must be 2 to %d", p.Stride, MaxSequenceStride)
		}
		owner := map[int64]conflict.RegionID{}
		for _, mem := range c.Members {
			off, ok := p.Offsets[mem.ID]
			if !ok || off < 0 || off >= p.Stride {
				return invalid("init: sequences: founder %q needs an offset from 0 to %d", mem.ID, p.Stride-1)
			}
			if o, dup := owner[off]; dup {
				return invalid("init: sequences: founders %q and %q both have offset %d", o, mem.ID, off)
			}
			owner[off] = mem.ID
		}
		if len(p.Offsets) != len(c.Members) {
			return invalid("init: sequences: offsets must be given for the founders only")
		}
	}
	founders := map[conflict.RegionID]*Member{}
	for _, mem := range c.Members {
		if err := mem.ID.Validate(); err != nil {
			return invalid("init: %v", err)
		}
		if founders[mem.ID] != nil {
			return invalid("init: region %q listed twice", mem.ID)
		}
		mem.State, mem.Since = Active, index
		mem.From = ""
		founders[mem.ID] = &mem
	}
	m.Members = founders
	for name, p := range c.Policies {
		if err := ValidateTableName(name); err != nil {
			return invalid("init: %v", err)
		}
		if err := p.Validate(); err != nil {
			return invalid("init: table %s: %v", name, err)
		}
	}
	m.Epochs = append(m.Epochs, Epoch{Number: 1, Fingerprint: c.Fingerprint, Describe: c.Describe, Index: index, Policies: c.Policies, Effective: index})
	if p := c.Sequences; p != nil {
		plan := &SequencePlan{Stride: p.Stride, Offsets: map[conflict.RegionID]int64{}}
		for r, off := range p.Offsets {
			plan.Offsets[r] = off
		}
		m.Sequences = plan
	}
	return nil
}

// freeOffset is the lowest sequence offset no member was ever given.
func (m *Membership) freeOffset() (int64, bool) {
	used := map[int64]bool{}
	for _, off := range m.Sequences.Offsets {
		used[off] = true
	}
	for off := int64(0); off < m.Sequences.Stride; off++ {
		if !used[off] {
			return off, true
		}
	}
	return 0, false
}

func (m *Membership) add(index uint64, c Command) error {
	if err := c.Region.Validate(); err != nil {
		return invalid("add: %v", err)
	}
	if c.URL == "" {
		return invalid("add: the region's link URL is required")
	}
	if cur := m.Members[c.Region]; cur != nil {
		if cur.URL == c.URL && cur.Witness == c.Witness && (c.Witness || cur.From == c.From) && cur.State != Removed {
			return nil // the same add again (a retry whose answer was lost)
		}
		if cur.State == Removed {
			return refuse("region %s was removed (at index %d); a removed region cannot come back under the same id, add it under a new one", c.Region, cur.Since)
		}
		return refuse("region %s is already a member (%s)", c.Region, cur.State)
	}
	mem := &Member{ID: c.Region, URL: c.URL, Witness: c.Witness, Since: index}
	if c.Witness {
		// It votes once it runs and says so (activate), like a region
		// that caught up: adding one never costs the majority.
		mem.State = Joining
	} else {
		src := m.Members[c.From]
		switch {
		case c.From == "":
			return invalid("add: the region to load the snapshot from is required (--from)")
		case src == nil || src.Witness:
			return refuse("source %q is not a region of the cluster", c.From)
		case src.State != Active:
			return refuse("source %s is %s; a snapshot comes from an active region", c.From, src.State)
		}
		mem.State, mem.From = Joining, c.From
		if m.Sequences != nil {
			off, ok := m.freeOffset()
			if !ok {
				return refuse("no sequence offset is free: a stride of %d leaves room for %d regions over the cluster's life, and all were given", m.Sequences.Stride, m.Sequences.Stride)
			}
			m.Sequences.Offsets[c.Region] = off
		}
	}
	m.Members[c.Region] = mem
	if e := m.latest(); e != nil && e.Pending() && !c.Witness {
		// It learns of the epoch before it ships anything.
		e.Fences[c.Region] = 0
	}
	return nil
}

func (m *Membership) activate(index uint64, c Command) error {
	cur := m.Members[c.Region]
	switch {
	case cur == nil:
		return refuse("region %q is not a member", c.Region)
	case cur.State == Active:
		return nil // a repeated report of having caught up
	case cur.State != Joining && cur.State != Reseeding:
		return refuse("region %s is %s, not joining or reseeding", c.Region, cur.State)
	}
	cur.State, cur.Since = Active, index
	return nil
}

// reseed asks an active region to be loaded again from source's snapshot:
// it fell past a peer's outbox cap, or its data cannot be trusted. The
// region itself carries it out (its transactions reach every peer first,
// then it is emptied and loads); it is active again once it caught up.
func (m *Membership) reseed(index uint64, c Command) error {
	cur, src := m.Members[c.Region], m.Members[c.From]
	switch {
	case c.From == "":
		return invalid("reseed: the region to load the snapshot from is required (--from)")
	case cur == nil || cur.Witness:
		return refuse("region %q is not a region of the cluster", c.Region)
	case cur.State == Reseeding && cur.From == c.From:
		return nil // the same reseed again (a retry whose answer was lost)
	case cur.State == Reseeding:
		return refuse("region %s is already being re-seeded from %s", c.Region, cur.From)
	case cur.State != Active:
		return refuse("region %s is %s; only an active region is re-seeded", c.Region, cur.State)
	case c.From == c.Region:
		return refuse("region %s cannot load a snapshot of itself: name another region with --from", c.Region)
	case src == nil || src.Witness:
		return refuse("source %q is not a region of the cluster", c.From)
	case src.State != Active:
		return refuse("source %s is %s; a snapshot comes from an active region", c.From, src.State)
	}
	// A region re-seeded is emptied and loaded again: one loading its
	// snapshot from it would resume from a region whose rows are gone.
	for _, o := range m.Sorted() {
		if o.Loading() && o.From == c.Region && m.rules() {
			return refuse("region %s is loading its snapshot from %s: wait until it %s, or remove it first", o.ID, c.Region, map[MemberState]string{Joining: "joined", Reseeding: "is re-seeded"}[o.State])
		}
	}
	cur.State, cur.From, cur.Since = Reseeding, c.From, index
	return nil
}

// remove drains or forces a region out. Without Force, the region is
// removed once every other region reported applying all it shipped; until
// then it is leaving and the result says what it waits for.
func (m *Membership) remove(index uint64, c Command) (Result, error) {
	cur := m.Members[c.Region]
	switch {
	case cur == nil:
		return Result{}, refuse("region %q is not a member", c.Region)
	case cur.State == Removed:
		return Result{Lost: cur.Lost}, nil // a retry whose answer was lost
	}
	for _, o := range m.Sorted() {
		if o.Loading() && o.From == c.Region {
			return Result{}, refuse("region %s is loading its snapshot from %s: remove %s first, or wait until it %s", o.ID, c.Region, o.ID, map[MemberState]string{Joining: "joined", Reseeding: "is re-seeded"}[o.State])
		}
	}
	if cur.Voter() && !cur.Witness {
		// Only an active region counts: one that is leaving can never be
		// active again, and a cluster left with none could never add or
		// re-seed a region. (Releases before the rule counted every
		// voter.)
		rules := m.rules()
		left := 0
		for _, o := range m.Members {
			if o.ID != c.Region && !o.Witness && (o.State == Active || !rules && o.Voter()) {
				left++
			}
		}
		if left == 0 {
			return Result{}, refuse("region %s is the last active region", c.Region)
		}
	}
	if p := m.Progress[c.Region]; cur.Witness || (cur.State == Joining && (p == nil || p.Shipped == 0)) {
		// Nothing of its own to wait for.
		cur.State, cur.Since = Removed, index
		m.settle(index)
		return Result{}, nil
	}
	waiting, lost := m.drain(c.Region)
	if !c.Force {
		// What it shipped counts from a report made after it began leaving
		// (its writes stopped by then): an older one may miss the last.
		if p := m.Progress[c.Region]; cur.State != Leaving || p == nil || p.Index < cur.Since {
			waiting = append([]string{fmt.Sprintf("%s has not reported its positions since it began leaving", c.Region)}, waiting...)
		}
		if len(waiting) > 0 {
			if cur.State != Leaving {
				cur.Unvoted = cur.State == Joining && m.rules()
				cur.State, cur.Since = Leaving, index
			}
			return Result{Waiting: waiting}, nil
		}
	}
	cur.State, cur.Since = Removed, index
	res := Result{Lost: lost}
	if c.Force {
		cur.Lost = lost
		res.Uneven = m.uneven(c.Region)
	}
	m.settle(index) // a pending epoch no longer waits for it
	return res, nil
}

// uneven names the surviving regions that applied fewer of r's
// transactions than the one that applied the most.
func (m *Membership) uneven(r conflict.RegionID) []string {
	applied := map[conflict.RegionID]uint64{}
	var best uint64
	var bestBy conflict.RegionID
	for _, o := range m.Sorted() {
		if o.ID == r || o.Witness || o.State == Removed {
			continue
		}
		if p := m.Progress[o.ID]; p != nil {
			applied[o.ID] = p.Applied[r]
		} else {
			applied[o.ID] = 0
		}
		if applied[o.ID] > best {
			best, bestBy = applied[o.ID], o.ID
		}
	}
	var out []string
	for _, o := range m.Sorted() {
		if got, ok := applied[o.ID]; ok && got < best {
			out = append(out, fmt.Sprintf("%s applied %d of %s's transactions, %s %d: rows of %s's transactions %d to %d are in some regions only (region reseed %s --from %s gives %s those rows)", o.ID, got, r, bestBy, best, r, got+1, best, o.ID, bestBy, o.ID))
		}
	}
	return out
}

// drain names every other region that has not reported applying all that
// r reported shipping, and how many of r's transactions no other region
// reported applying.
func (m *Membership) drain(r conflict.RegionID) (waiting []string, lost uint64) {
	var shipped uint64
	if p := m.Progress[r]; p != nil {
		shipped = p.Shipped
	}
	var best uint64
	for _, o := range m.Sorted() {
		if o.ID == r || o.Witness || o.State == Removed {
			continue
		}
		var got uint64
		if p := m.Progress[o.ID]; p != nil {
			got = p.Applied[r]
		}
		best = max(best, got)
		if got < shipped {
			waiting = append(waiting, fmt.Sprintf("%s has applied %d of %s's %d transactions", o.ID, got, r, shipped))
		}
	}
	if shipped > best {
		lost = shipped - best
	}
	return waiting, lost
}

func (m *Membership) report(index uint64, c Command) error {
	cur := m.Members[c.Region]
	if cur == nil || cur.Witness || cur.State == Removed {
		return refuse("region %q is not a member that replicates", c.Region)
	}
	if c.Progress == nil {
		return invalid("report: progress is required")
	}
	p := *c.Progress
	p.Index = index
	// Positions never move back in the agreed record: a report that is
	// older than one already applied keeps the larger values.
	// (What the release takes is the latest report's: a region runs
	// another release after a restart.)
	if old := m.Progress[c.Region]; old != nil {
		p.Shipped = max(p.Shipped, old.Shipped)
		merged := map[conflict.RegionID]uint64{}
		for k, v := range old.Applied {
			merged[k] = v
		}
		for k, v := range p.Applied {
			merged[k] = max(merged[k], v)
		}
		p.Applied = merged
	}
	m.Progress[c.Region] = &p
	m.settle(index)
	return nil
}

// Unfollowed names the members that replicate (neither witnesses nor
// removed) and are not among running: a data plane that runs with running
// does not wait for them, so it may trim its outbox or collect tombstones
// past what they still need.
func (m Membership) Unfollowed(running []conflict.RegionID) []string {
	var out []string
	for _, mem := range m.Sorted() {
		if !mem.Witness && mem.State != Removed && !slices.Contains(running, mem.ID) {
			out = append(out, string(mem.ID))
		}
	}
	return out
}

// Describe is a one-line summary of the members, for logs and errors.
func (m Membership) Describe() string {
	var parts []string
	for _, mem := range m.Sorted() {
		parts = append(parts, fmt.Sprintf("%s=%s", mem.ID, mem.State))
	}
	return strings.Join(parts, ",")
}
