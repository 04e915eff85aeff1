package forward

import (
	"github.com/prometheus/client_golang/prometheus"

	edgemetrics "github.com/daraja-edge/daraja-edge/metrics"
)

const ns = "daraja_edge"

// metrics are the forwarder's, per destination.
type metrics struct {
	attempts    *prometheus.CounterVec   // destination, outcome: delivered | http_error | network_error
	seconds     *prometheus.HistogramVec // destination
	lag         *prometheus.GaugeVec     // destination: callbacks not yet delivered (pending + in flight)
	dead        *prometheus.CounterVec   // destination
	circuit     *prometheus.GaugeVec     // destination: 1 open
	redelivered *prometheus.CounterVec   // destination: attempts after the first (possible duplicates at the app)
	validations *prometheus.CounterVec   // destination, by: app | fallback
}

func newMetrics() *metrics {
	d := []string{"destination"}
	return &metrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "forward_attempts_total",
			Help: "Delivery attempts to an app, by outcome (delivered, http_error, network_error)."}, []string{"destination", "outcome"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "forward_attempt_duration_seconds",
			Help: "Duration of delivery attempts.", Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 10)}, d),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "forward_lag",
			Help: "Callbacks on the stream not yet delivered to the destination (pending and in flight)."}, d),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "forward_dead_letters_total",
			Help: "Callbacks that no attempt delivered, moved to the dead-letter subject."}, d),
		circuit: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "forward_circuit_open",
			Help: "1 while this replica's circuit breaker for the destination is open."}, d),
		redelivered: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "forward_retries_total",
			Help: "Attempts after a callback's first: each follows a failed attempt."}, d),
		validations: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "forward_validations_total",
			Help: "C2B validations for an app's validation_url, by who answered (app, fallback)."}, []string{"destination", "by"}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.attempts, m.seconds, m.lag, m.dead, m.circuit, m.redelivered, m.validations}
}

// Describe and Collect make the forwarder's metrics one
// prometheus.Collector.
func (f *Forwarder) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range f.m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (f *Forwarder) Collect(ch chan<- prometheus.Metric) {
	for _, c := range f.m.collectors() {
		c.Collect(ch)
	}
}

// MetricNames are the names of the forwarder's metrics, which an edge
// exports only when forward.destinations is set (for checks of alert
// rules and dashboards against what really exists).
func MetricNames() []string { return edgemetrics.Names(newMetrics().collectors()...) }
