// Package metrics exposes daraja-edge's Prometheus metrics: every name
// starts with daraja_edge_ and carries its unit.
package metrics

import (
	"net/http"
	"runtime"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const ns = "daraja_edge"

// Metrics is the edge's registry. Its methods are safe for concurrent use
// and cheap enough for the request path.
type Metrics struct {
	reg             *prometheus.Registry
	collectors      []prometheus.Collector // the edge's own, for Names
	requests        *prometheus.CounterVec
	requestSeconds  *prometheus.HistogramVec
	rejections      *prometheus.CounterVec
	publishSeconds  prometheus.Histogram
	spooled         prometheus.Counter
	allowlistMisses prometheus.Counter
	validations     *prometheus.CounterVec
	tokens          *prometheus.CounterVec
	reloads         *prometheus.CounterVec
	replayed        *prometheus.CounterVec
	tokenWatchUp    prometheus.Gauge
	tokenCache      prometheus.Gauge
	tokenCacheFull  prometheus.Gauge
	reusableExpiry  prometheus.Gauge
	ackedLost       prometheus.Gauge
	reloadOK        prometheus.Gauge
	reloadOKAt      prometheus.Gauge
}

// Gauges are read when /metrics is scraped.
type Gauges struct {
	// SpoolBytes and SpoolRecords report the spool.
	Spool func() (bytes, records int64)
	// SpoolStuck reports a replay that cannot progress; SpoolCorrupt and
	// SpoolReplayFailures count damaged stretches skipped and failed
	// replay attempts.
	SpoolStuck          func() bool
	SpoolCorrupt        func() int64
	SpoolReplayFailures func() int64
	// CertificateExpiry is the served certificate's NotAfter (zero: none).
	CertificateExpiry func() time.Time
	// NATSConnected reports the NATS connection state.
	NATSConnected func() bool
	// Version and Commit label daraja_edge_build_info.
	Version, Commit string
}

// New registers every metric, plus Go and process collectors.
func New(g Gauges) *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{reg: reg}
	f := func(c prometheus.Collector) { reg.MustRegister(c); m.collectors = append(m.collectors, c) }
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "requests_total",
		Help: "Callback requests by kind and outcome (accepted, duplicate, spooled, rejected, failed)."}, []string{"kind", "outcome"})
	m.requestSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "request_duration_seconds",
		Help: "Time from request start to answer, by kind.", Buckets: latencyBuckets}, []string{"kind"})
	m.rejections = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "rejections_total",
		Help: "Refused callback requests by reason."}, []string{"reason"})
	m.publishSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "publish_duration_seconds",
		Help: "Time from JetStream publish to ack.", Buckets: latencyBuckets})
	m.spooled = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "spooled_total",
		Help: "Callbacks written to the spool because JetStream did not ack."})
	m.allowlistMisses = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "allowlist_misses_total",
		Help: "Requests from sources outside the allowlist let through in report mode."})
	m.validations = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "validation_decisions_total",
		Help: "C2B validation answers by decision and by whom (validator, timeout, invalid-reply)."}, []string{"decision", "by"})
	m.tokens = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "tokens_total",
		Help: "Token events: issued, expired (missing event sent), revoked, rotated."}, []string{"event"})
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "config_reloads_total",
		Help: "SIGHUP reloads by result (applied, refused)."}, []string{"result"})
	m.replayed = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "spool_replayed_total",
		Help: "Spooled callbacks replayed to the stream by outcome: stored, duplicate (already there, dropped), replay (another callback used the token and kind while this replica was cut off: see <prefix>.rejected.replay_after_outage)."}, []string{"outcome"})
	m.tokenWatchUp = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "token_watch_up",
		Help: "1 while the watch feeding the local token copy runs and is up to date, else 0 (tokens are then read from the bucket)."})
	m.tokenCache = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "token_cache_records",
		Help: "Token records in the local copy."})
	m.tokenCacheFull = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "token_cache_full",
		Help: "1 once the local token copy reached its bound: tokens past it get no missing-callback events."})
	m.reusableExpiry = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "reusable_tokens_expiring",
		Help: "Reusable (C2B registered URL) tokens that expire within 14 days: rotate them and re-register the URLs."})
	m.ackedLost = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "stream_acknowledged_lost",
		Help: "Stream sequences this edge saw acknowledged before its start that the embedded store no longer has (0: none): acknowledged callbacks were lost, e.g. a power cut with nats.embedded.sync set to an interval."})
	m.reloadOK = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "config_last_reload_successful",
		Help: "1 when the last SIGHUP reload was applied (or none was tried), 0 when it was refused."})
	m.reloadOK.Set(1)
	m.reloadOKAt = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "config_last_reload_success_timestamp_seconds",
		Help: "When the configuration was last loaded or reloaded successfully, as a Unix time."})
	m.reloadOKAt.SetToCurrentTime()
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "build_info",
		Help: "Always 1; labelled with the running version, commit and Go version."}, []string{"version", "commit", "goversion"})
	build.WithLabelValues(g.Version, g.Commit, runtime.Version()).Set(1)
	for _, c := range []prometheus.Collector{build, m.reloadOK, m.reloadOKAt, m.ackedLost, m.requests, m.requestSeconds, m.rejections, m.publishSeconds, m.spooled,
		m.allowlistMisses, m.validations, m.tokens, m.reloads, m.replayed, m.tokenWatchUp, m.tokenCache,
		m.tokenCacheFull, m.reusableExpiry} {
		f(c)
	}
	if g.Spool != nil {
		f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "spool_bytes",
			Help: "Bytes in the spool."}, func() float64 { b, _ := g.Spool(); return float64(b) }))
		f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "spool_records",
			Help: "Callbacks in the spool, not yet on NATS."}, func() float64 { _, r := g.Spool(); return float64(r) }))
	}
	if g.SpoolStuck != nil {
		f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "spool_stuck",
			Help: "1 while the spool's replay cannot progress (the oldest record keeps failing), else 0."},
			func() float64 { return b2f(g.SpoolStuck()) }))
	}
	if g.SpoolCorrupt != nil {
		f(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Name: "spool_corrupt_total",
			Help: "Damaged spool stretches skipped (never replayed as another callback) since start."},
			func() float64 { return float64(g.SpoolCorrupt()) }))
	}
	if g.SpoolReplayFailures != nil {
		f(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Name: "spool_replay_failures_total",
			Help: "Failed spool replay attempts since start."},
			func() float64 { return float64(g.SpoolReplayFailures()) }))
	}
	if g.CertificateExpiry != nil {
		f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "certificate_expiry_timestamp_seconds",
			Help: "NotAfter of the served certificate, as a Unix time (0: none)."}, func() float64 {
			if t := g.CertificateExpiry(); !t.IsZero() {
				return float64(t.Unix())
			}
			return 0
		}))
	}
	if g.NATSConnected != nil {
		f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "nats_connected",
			Help: "1 while connected to NATS, else 0."}, func() float64 {
			if g.NATSConnected() {
				return 1
			}
			return 0
		}))
	}
	return m
}

var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Names lists the name of every metric the registry can export, whether or
// not it has a sample yet (a labelled counter has none until counted):
// alert rules and dashboards are checked against it.
func (m *Metrics) Names() []string { return Names(m.collectors...) }

// Names lists the names of the metrics cs describe.
func Names(cs ...prometheus.Collector) []string {
	var out []string
	for _, c := range cs {
		ch := make(chan *prometheus.Desc, 64)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			// Desc has no accessor for its name; its String form is
			// Desc{fqName: "…", …}.
			s := d.String()
			if i := strings.Index(s, `fqName: "`); i >= 0 {
				s = s[i+len(`fqName: "`):]
				if j := strings.IndexByte(s, '"'); j >= 0 {
					out = append(out, s[:j])
				}
			}
		}
	}
	return out
}

// Registerer is the registry, for components that bring metrics of their
// own (recovery, forward).
func (m *Metrics) Registerer() prometheus.Registerer { return m.reg }

// Gatherer is the registry, for readers of the edge's own metrics (the
// console).
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.reg }

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Request counts one answered callback request.
func (m *Metrics) Request(kind, outcome string, d time.Duration) {
	if kind == "" {
		kind = "unknown"
	}
	m.requests.WithLabelValues(kind, outcome).Inc()
	m.requestSeconds.WithLabelValues(kind).Observe(d.Seconds())
}

// Rejected counts a refusal.
func (m *Metrics) Rejected(reason string) { m.rejections.WithLabelValues(reason).Inc() }

// AllowlistMiss counts a source let through in report mode.
func (m *Metrics) AllowlistMiss() { m.allowlistMisses.Inc() }

// Published observes a JetStream ack latency.
func (m *Metrics) Published(d time.Duration) { m.publishSeconds.Observe(d.Seconds()) }

// Spooled counts a callback written to the spool.
func (m *Metrics) Spooled() { m.spooled.Inc() }

// Validation counts a C2B validation answer.
func (m *Metrics) Validation(decision, by string) { m.validations.WithLabelValues(decision, by).Inc() }

// TokenEvent counts a token event.
func (m *Metrics) TokenEvent(event string) { m.tokens.WithLabelValues(event).Inc() }

// Replayed counts a spooled callback replayed, by outcome.
func (m *Metrics) Replayed(outcome string) { m.replayed.WithLabelValues(outcome).Inc() }

// TokenWatch records whether the token watch is up.
func (m *Metrics) TokenWatch(up bool) { m.tokenWatchUp.Set(b2f(up)) }

// TokenCache records the local token copy's size and whether it is full.
func (m *Metrics) TokenCache(size int, full bool) {
	m.tokenCache.Set(float64(size))
	m.tokenCacheFull.Set(b2f(full))
}

// ReusableExpiring records how many reusable tokens expire within 14 days.
func (m *Metrics) ReusableExpiring(n int) { m.reusableExpiry.Set(float64(n)) }

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// AckedLost records how many acknowledged stream sequences a start found
// missing.
func (m *Metrics) AckedLost(n uint64) { m.ackedLost.Set(float64(n)) }

// Reload counts a configuration reload.
func (m *Metrics) Reload(applied bool) {
	result := "refused"
	m.reloadOK.Set(b2f(applied))
	if applied {
		result = "applied"
		m.reloadOKAt.SetToCurrentTime()
	}
	m.reloads.WithLabelValues(result).Inc()
}
