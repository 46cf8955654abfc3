package obs

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/polyregion/polyregion/conflict"
	"github.com/polyregion/polyregion/regions"
	"github.com/polyregion/polyregion/replicator/link"
)

// Error kinds counted by polyregion_errors_total. Every kind is exported
// from the start (at 0), so alerts and dashboards never see a missing
// series.
const (
	ErrLink           = "link"            // a peer link broke or could not be opened
	ErrApply          = "apply"           // applying a peer's transactions failed (the link restarts)
	ErrApplyRetry     = "apply_retry"     // a transient apply error, retried
	ErrConfigMismatch = "config_mismatch" // a peer's agreed configuration differs
	ErrUnauthorized   = "unauthorized"    // a peer refused this region's token
	ErrTooFarBehind   = "too_far_behind"  // a peer no longer holds what this region needs
	ErrDataPlane      = "data_plane"      // reader or link server failed; the data plane restarts
	ErrProbe          = "probe"           // the local database did not answer a health probe
	ErrTombstones     = "tombstones"      // a watermark/tombstone round failed
	ErrConflictLog    = "conflict_log"    // records past the conflict log's retention could not be deleted
)

// ErrorKinds lists every error kind.
var ErrorKinds = []string{ErrLink, ErrApply, ErrApplyRetry, ErrConfigMismatch, ErrUnauthorized, ErrTooFarBehind, ErrDataPlane, ErrProbe, ErrTombstones, ErrConflictLog}

// Health states as /health and polyregion_health_status name them.
const (
	StateServing     = "serving"
	StateDegraded    = "degraded"
	StateUnavailable = "unavailable"
)

var states = []string{StateServing, StateDegraded, StateUnavailable}

// Metrics is the replicator's Prometheus registry. It is private to the
// process (not the global default registry) and holds every series from
// the start: per-peer series for each configured peer, conflict series for
// each table, conflict kind and the table's policy, error series for each
// kind.
type Metrics struct {
	Registry *prometheus.Registry
	f        factory
	control  *controlMetrics // nil: no control plane

	lagSeconds  *prometheus.GaugeVec
	lagTxns     *prometheus.GaugeVec
	linkUp      *prometheus.GaugeVec
	shippedTxns *prometheus.CounterVec
	shippedRows *prometheus.CounterVec
	shippedB    *prometheus.CounterVec
	appliedTxns *prometheus.CounterVec
	appliedRows *prometheus.CounterVec
	applyDur    *prometheus.HistogramVec
	conflicts   *prometheus.CounterVec
	merged      *prometheus.CounterVec
	parkedTotal *prometheus.CounterVec
	errors      *prometheus.CounterVec
	backlog     *prometheus.GaugeVec
	health      *prometheus.GaugeVec
	refused     *prometheus.CounterVec
	readerWaits *prometheus.CounterVec
	readerWait  *prometheus.CounterVec
	claimWaits  *prometheus.CounterVec
	claimWait   *prometheus.CounterVec

	slotRetained prometheus.Gauge
	slotMax      prometheus.Gauge
	slotLost     prometheus.Gauge
	parkedOpen   prometheus.Gauge
	readerBehind prometheus.Gauge
	writable     prometheus.Gauge
	indexBytes   prometheus.Gauge
	indexSeconds prometheus.Gauge
	indexUp      prometheus.Gauge
	indexOn      prometheus.Gauge
	probeDur     prometheus.Histogram
	joining      prometheus.Gauge
	confirmed    prometheus.Gauge
	joinRows     prometheus.Gauge
	seedRows     prometheus.Gauge
	joinBytes    prometheus.Gauge
}

// NewMetrics builds the registry for a region with these peers and tables.
func NewMetrics(region conflict.RegionID, peers []conflict.RegionID, tables []regions.Table) *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := newFactory(reg, prometheus.Labels{"region": string(region)})
	m := &Metrics{Registry: reg, f: f}
	peer := []string{"peer"}
	m.lagSeconds = f.gaugeVec("polyregion_peer_lag_seconds", "How far behind the peer this region may be: 0 when it has applied everything the peer last advertised, else the age of the last applied transaction or the time since it was last caught up, whichever is less (grows while the link is down).", peer)
	m.lagTxns = f.gaugeVec("polyregion_peer_lag_transactions", "Transactions the peer has advertised and this region has not applied yet.", peer)
	m.linkUp = f.gaugeVec("polyregion_peer_link_up", "1 while this region's stream from the peer is connected, else 0.", peer)
	m.shippedTxns = f.counterVec("polyregion_shipped_transactions_total", "Local transactions sent to the peer (a large transaction counts once, at its last part).", peer)
	m.shippedRows = f.counterVec("polyregion_shipped_rows_total", "Row changes sent to the peer.", peer)
	m.shippedB = f.counterVec("polyregion_shipped_bytes_total", "Encoded transaction bytes sent to the peer.", peer)
	m.appliedTxns = f.counterVec("polyregion_applied_transactions_total", "Transactions from the peer applied here (committed).", peer)
	m.appliedRows = f.counterVec("polyregion_applied_rows_total", "Row changes from the peer taken in here (applied, skipped as older, or parked).", peer)
	m.applyDur = f.histogramVec("polyregion_apply_batch_duration_seconds", "Time from opening to committing one local apply transaction.", peer,
		[]float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30})
	m.readerWaits = f.counterVec("polyregion_apply_reader_waits_total", "Waits of the applier for the local reader to version local writes it found unversioned, by whether the apply transaction held application rows locked meanwhile (holding_rows=true: local writers of those rows waited too).", []string{"peer", "holding_rows"})
	m.readerWait = f.counterVec("polyregion_apply_reader_wait_seconds_total", "Time the applier waited for the local reader, by whether it held application rows locked meanwhile.", []string{"peer", "holding_rows"})
	m.claimWaits = f.counterVec("polyregion_apply_claim_waits_total", "Apply transactions that waited, before they began, for rows the applier of another peer held in an apply transaction of its own.", []string{"peer"})
	m.claimWait = f.counterVec("polyregion_apply_claim_wait_seconds_total", "Time the applier waited for rows the applier of another peer held, before its transactions began (holding no row meanwhile).", []string{"peer"})
	m.parkedTotal = f.counterVec("polyregion_parked_total", "Changes from the peer parked (could not be applied yet).", peer)
	m.backlog = f.gaugeVec("polyregion_outbox_backlog_transactions", "This region's transactions the peer has not confirmed yet.", peer)
	m.conflicts = f.counterVec("polyregion_conflicts_total", "Concurrent writes resolved here and logged, by table, what collided, the table's policy and outcome: overwritten (the losing write's data is gone) or merged (nothing of it is).", []string{"table", "kind", "policy", "outcome"})
	m.merged = f.counterVec("polyregion_merged_updates_total", "Concurrent updates of rows whose columns are all key or counter columns, resolved here with every increment kept and nothing overwritten (not logged as conflicts).", peer)
	m.errors = f.counterVec("polyregion_errors_total", "Errors by kind.", []string{"kind"})
	m.refused = f.counterVec("polyregion_link_refused_total", "Requests from the peer refused, and not recorded, because they claimed a position beyond what this region shipped to it (an acknowledgement or a resume position), by reason.", []string{"peer", "reason"})
	m.health = f.gaugeVec("polyregion_health_status", "1 for the status /health reports (serving, degraded, unavailable), 0 for the others.", []string{"state"})

	m.slotRetained = f.gauge("polyregion_slot_wal_retained_bytes", "WAL the region's replication slot holds back.")
	m.slotMax = f.gauge("polyregion_slot_wal_max_bytes", "The server's max_slot_wal_keep_size in bytes (-1: no cap).")
	m.slotLost = f.gauge("polyregion_slot_lost", "1 while a loss of the region's replication slot is recorded (it was dropped, missing after a failover, or invalidated, and created again: local writes in between may never have been shipped) until the region is re-seeded, else 0.")
	m.parkedOpen = f.gauge("polyregion_parked_changes", "Changes parked here and not yet resolved.")
	m.readerBehind = f.gauge("polyregion_reader_behind_bytes", "Local WAL written but not yet versioned by the reader.")
	m.writable = f.gauge("polyregion_local_postgres_writable", "1 while the local PostgreSQL answers the probe and takes writes, else 0.")
	m.indexBytes = f.gauge("polyregion_index_lag_bytes", "How far the regional search index is behind the local database, in WAL bytes (0 without an index).")
	m.indexSeconds = f.gauge("polyregion_index_lag_seconds", "How far the regional search index is behind the local database, in seconds (0 without an index).")
	m.indexUp = f.gauge("polyregion_index_lag_known", "1 when the index feed reports its lag, 0 when it cannot (or there is no index).")
	m.indexOn = f.gauge("polyregion_index_configured", "1 when a search index feed is configured in this region.")
	m.joining = f.gauge("polyregion_joining", "1 while the region loads a peer's snapshot or catches up after it (its /health answers 503), else 0.")
	m.confirmed = f.gauge("polyregion_membership_confirmed", "1 when the last watermark round confirmed through the control plane's leader that this region's data plane follows every member (always, without a control plane), so it trimmed its outbox and collected tombstones; 0 while it cannot (no leader reachable, or a member added and not followed yet): both wait.")
	m.confirmed.Set(1)
	m.joinRows = f.gauge("polyregion_join_loaded_rows", "Rows of the tables loaded so far from a peer's snapshot by the current or last join (0: never joined in this process).")
	m.joinBytes = f.gauge("polyregion_join_received_bytes", "Snapshot bytes received so far by the current or last join.")
	m.seedRows = f.gauge("polyregion_seed_rows", "Rows of a table the cluster added seeded so far into this region's change stream by the current or last seed (0: none in this process).")
	m.probeDur = f.histogram("polyregion_probe_duration_seconds", "Time one health probe of the local database took.",
		[]float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2})

	for _, p := range peers {
		for _, v := range []*prometheus.GaugeVec{m.lagSeconds, m.lagTxns, m.linkUp, m.backlog} {
			v.WithLabelValues(string(p))
		}
		for _, v := range []*prometheus.CounterVec{m.shippedTxns, m.shippedRows, m.shippedB, m.appliedTxns, m.appliedRows, m.parkedTotal, m.merged, m.claimWaits, m.claimWait} {
			v.WithLabelValues(string(p))
		}
		m.applyDur.WithLabelValues(string(p))
		for _, h := range []string{"true", "false"} {
			m.readerWaits.WithLabelValues(string(p), h)
			m.readerWait.WithLabelValues(string(p), h)
		}
		for _, r := range link.RefusalReasons {
			m.refused.WithLabelValues(string(p), r)
		}
	}
	kinds := []conflict.Kind{conflict.InsertInsert, conflict.UpdateUpdate, conflict.UpdateDelete, conflict.DeleteUpdate, conflict.DeleteDelete}
	for _, t := range tables {
		for _, k := range kinds {
			for _, o := range []conflict.Outcome{conflict.Overwritten, conflict.Merged} {
				m.conflicts.WithLabelValues(t.Name, string(k), t.Policy.Label(), string(o))
			}
		}
	}
	for _, k := range ErrorKinds {
		m.errors.WithLabelValues(k)
	}
	for _, s := range states {
		m.health.WithLabelValues(s)
	}
	return m
}

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// Shipped counts one outbox entry sent to peer.
func (m *Metrics) Shipped(peer string, rows, bytes int, lastPart bool) {
	if lastPart {
		m.shippedTxns.WithLabelValues(peer).Inc()
	}
	m.shippedRows.WithLabelValues(peer).Add(float64(rows))
	m.shippedB.WithLabelValues(peer).Add(float64(bytes))
}

// LinkRefused counts one request from peer the link server refused, for
// reason (one of link.RefusalReasons).
func (m *Metrics) LinkRefused(peer, reason string) {
	m.refused.WithLabelValues(peer, reason).Inc()
}

// Conflict is one logged conflict, as Applied counts it.
type Conflict struct{ Table, Kind, Policy, Outcome string }

// Applied counts one committed apply transaction from peer.
func (m *Metrics) Applied(peer string, txns, rows, parked int, conflicts []Conflict, merged int, d time.Duration) {
	m.appliedTxns.WithLabelValues(peer).Add(float64(txns))
	if merged > 0 {
		m.merged.WithLabelValues(peer).Add(float64(merged))
	}
	m.appliedRows.WithLabelValues(peer).Add(float64(rows))
	m.applyDur.WithLabelValues(peer).Observe(d.Seconds())
	if parked > 0 {
		m.parkedTotal.WithLabelValues(peer).Add(float64(parked))
	}
	for _, c := range conflicts {
		m.conflicts.WithLabelValues(c.Table, c.Kind, c.Policy, c.Outcome).Inc()
	}
}

// ReaderWait counts one wait of the peer's applier for the local reader.
func (m *Metrics) ReaderWait(peer string, d time.Duration, holdingRows bool) {
	h := strconv.FormatBool(holdingRows)
	m.readerWaits.WithLabelValues(peer, h).Inc()
	m.readerWait.WithLabelValues(peer, h).Add(d.Seconds())
}

// ClaimWait counts one wait of the peer's applier for rows another peer's
// applier held.
func (m *Metrics) ClaimWait(peer string, d time.Duration) {
	m.claimWaits.WithLabelValues(peer).Inc()
	m.claimWait.WithLabelValues(peer).Add(d.Seconds())
}

// MembershipConfirmed records whether the last watermark round confirmed
// the membership current.
func (m *Metrics) MembershipConfirmed(ok bool) { m.confirmed.Set(b2f(ok)) }

// Error counts one error of a kind (one of ErrorKinds).
func (m *Metrics) Error(kind string) { m.errors.WithLabelValues(kind).Inc() }

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// factory registers collectors with constant labels on one registry.
type factory struct {
	reg    *prometheus.Registry
	labels prometheus.Labels
}

func newFactory(reg *prometheus.Registry, l prometheus.Labels) factory { return factory{reg, l} }

func (f factory) gaugeVec(name, help string, labels []string) *prometheus.GaugeVec {
	v := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: f.labels}, labels)
	f.reg.MustRegister(v)
	return v
}

func (f factory) counterVec(name, help string, labels []string) *prometheus.CounterVec {
	v := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: f.labels}, labels)
	f.reg.MustRegister(v)
	return v
}

func (f factory) histogramVec(name, help string, labels []string, buckets []float64) *prometheus.HistogramVec {
	v := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, ConstLabels: f.labels, Buckets: buckets}, labels)
	f.reg.MustRegister(v)
	return v
}

func (f factory) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: f.labels})
	f.reg.MustRegister(g)
	return g
}

func (f factory) histogram(name, help string, buckets []float64) prometheus.Histogram {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, ConstLabels: f.labels, Buckets: buckets})
	f.reg.MustRegister(h)
	return h
}
