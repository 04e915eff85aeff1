package forward

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/daraja-edge/daraja-edge/config"
)

// metric reads one series from a registry: a counter's or gauge's value,
// a histogram's sample count; labels are name, value pairs.
func metric(t *testing.T, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return -1 // no such series
}

// registered registers the forwarder's metrics on reg and reads the lag
// every 50 ms.
func registered(reg *prometheus.Registry) func(*Forwarder) {
	return func(f *Forwarder) {
		reg.MustRegister(f)
		f.lagEvery = 50 * time.Millisecond
	}
}

// TestBreakerInForwarder: the app goes down; after circuit.failures
// failures the circuit opens (metric 1), and while it is open the app sees
// one probe per interval and nothing else (no attempt made or counted,
// validation answered by the fallback without calling the app); when the
// app is back, the catch-up starts with one request in flight at a time,
// and every callback is delivered exactly once, none lost.
func TestBreakerInForwarder(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	a.delay = 100 * time.Millisecond
	var mu sync.Mutex
	up := false
	a.answer = func(_ int, r *http.Request) (int, map[string]string) {
		mu.Lock()
		defer mu.Unlock()
		if up {
			return http.StatusOK, nil
		}
		return http.StatusServiceUnavailable, nil
	}
	d := destination("shop", a.srv.URL)
	d.Concurrency = 4
	d.Circuit.Failures, d.Circuit.Probe = 3, 500*time.Millisecond
	d.Retry = slices.Repeat([]time.Duration{10 * time.Millisecond}, 60) // never a dead letter here
	d.ValidationURL, d.ValidationTimeout = a.srv.URL+"/validate", time.Second
	reg := prometheus.NewRegistry()
	f := e.startWith(nil, registered(reg), d)
	ctx := context.Background()
	const n = 10
	for i := range n {
		tx := "AG_" + strconv.Itoa(i)
		e.store("b2c.result", "600000", tx, "tok_abcdefghijklmnop", body("b2c.result", tx))
	}
	eventually(t, "circuit open", func() bool { return metric(t, reg, "daraja_edge_forward_circuit_open", "destination", "shop") == 1 })
	if hits := len(a.deliveries()); hits < d.Circuit.Failures || hits > d.Circuit.Failures+d.Concurrency-1 {
		t.Errorf("%d attempts before the circuit opened, want %d to %d", hits, d.Circuit.Failures, d.Circuit.Failures+d.Concurrency-1)
	}

	// Open: validation gets the fallback at once, the app is not asked.
	ans, _, by, ok := f.Validate(ctx, validationMsg("600000"))
	if !ok || by != "fallback" || string(ans) != `{"ResultCode":"0","ResultDesc":"Accepted"}` {
		t.Errorf("validation while open: %s by %s", ans, by)
	}
	eventually(t, "lag of all ten", func() bool { return metric(t, reg, "daraja_edge_forward_lag", "destination", "shop") == n })

	// Open for two seconds: at most one probe per 500 ms.
	h0 := len(a.deliveries())
	time.Sleep(2 * time.Second)
	if probes := len(a.deliveries()) - h0; probes > 5 {
		t.Errorf("%d requests in 2 s while open, probe interval 500 ms", probes)
	}
	if att := metric(t, reg, "daraja_edge_forward_attempts_total", "destination", "shop", "outcome", "http_error"); int(att) != len(a.deliveries()) {
		t.Errorf("%v failed attempts counted, the app saw %d", att, len(a.deliveries()))
	}

	// Back up.
	mu.Lock()
	up = true
	mu.Unlock()
	eventually(t, "all delivered", func() bool {
		ds, err := f.Deliveries(ctx, "shop", "", StateDelivered, 0)
		return err == nil && len(ds) == n
	})
	eventually(t, "circuit closed, lag 0", func() bool {
		return metric(t, reg, "daraja_edge_forward_circuit_open", "destination", "shop") == 0 &&
			metric(t, reg, "daraja_edge_forward_lag", "destination", "shop") == 0
	})
	got := a.deliveries()
	var good []delivery
	ok200 := map[string]int{}
	for _, g := range got {
		if g.path == "/validate" {
			t.Error("the app was asked to validate while the circuit was open")
		}
		if g.status == http.StatusOK {
			good = append(good, g)
			ok200[g.header.Get("webhook-id")]++
		}
	}
	if len(ok200) != n {
		t.Errorf("%d callbacks delivered, want %d", len(ok200), n)
	}
	for id, c := range ok200 {
		if c != 1 {
			t.Errorf("%s delivered %d times", id, c)
		}
	}
	slices.SortFunc(good, func(x, y delivery) int { return x.order - y.order })
	// The probe alone; then one in flight until it succeeds; then two...
	for i, limit := range []int{1, 1, 1, 2} {
		if g := good[i]; g.concurrent > limit {
			t.Errorf("catch-up request %d had %d in flight, want at most %d (the probe, one, then two)", i+1, g.concurrent, limit)
		}
	}
	if _, maxIn := a.stats(); maxIn > d.Concurrency {
		t.Errorf("%d in flight, concurrency %d", maxIn, d.Concurrency)
	}
	// Every attempt made is recorded, and none that was not.
	ds, _ := f.Deliveries(ctx, "shop", "", "", 0)
	recorded := 0
	for _, x := range ds {
		recorded += len(x.Attempts)
	}
	if recorded != len(got) {
		t.Errorf("%d attempts recorded, the app saw %d", recorded, len(got))
	}
	if r := metric(t, reg, "daraja_edge_forward_retries_total", "destination", "shop"); int(r) != len(got)-n {
		t.Errorf("retries metric %v, want %d (attempts after each callback's first)", r, len(got)-n)
	}
}

// TestMetrics: attempts by outcome, their durations, dead letters and the
// lag, per destination, as the registry serves them.
func TestMetrics(t *testing.T) {
	e := newEnv(t)
	a := newApp(t, secretA, secretB)
	release := make(chan struct{})
	var releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(free) // before the app's server closes, even on failure
	a.gate = func(r *http.Request) {
		if strings.HasPrefix(r.Header.Get("Daraja-Transaction-Id"), "SLOW") {
			<-release
		}
	}
	a.answer = func(_ int, r *http.Request) (int, map[string]string) {
		if strings.HasPrefix(r.Header.Get("Daraja-Transaction-Id"), "BAD") {
			return http.StatusBadRequest, nil
		}
		return http.StatusOK, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close() // connection refused from now on
	shop := destination("shop", a.srv.URL)
	shop.Shortcodes, shop.Concurrency = []string{"600000"}, 1
	gone := destination("gone", closed)
	gone.Shortcodes = []string{"600001"}
	reg := prometheus.NewRegistry()
	f := e.startWith(nil, registered(reg), shop, gone)
	ctx := context.Background()
	e.store("b2c.result", "600000", "OK1", "tok_abcdefghijklmnop", body("b2c.result", "OK1"))
	e.store("b2c.result", "600000", "BAD1", "tok_abcdefghijklmnop", body("b2c.result", "BAD1"))
	e.store("b2c.result", "600001", "GONE1", "tok_abcdefghijklmnop", body("b2c.result", "GONE1"))
	eventually(t, "one delivered, two dead", func() bool {
		d1, _ := f.Deliveries(ctx, "shop", "", StateDelivered, 0)
		d2, _ := f.Deliveries(ctx, "shop", "", StateDead, 0)
		d3, _ := f.Deliveries(ctx, "gone", "", StateDead, 0)
		return len(d1) == 1 && len(d2) == 1 && len(d3) == 1
	})
	eventually(t, "lag 0", func() bool {
		return metric(t, reg, "daraja_edge_forward_lag", "destination", "shop") == 0 &&
			metric(t, reg, "daraja_edge_forward_lag", "destination", "gone") == 0
	})
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"daraja_edge_forward_attempts_total", []string{"destination", "shop", "outcome", "delivered"}, 1},
		{"daraja_edge_forward_attempts_total", []string{"destination", "shop", "outcome", "http_error"}, 3},
		{"daraja_edge_forward_attempts_total", []string{"destination", "gone", "outcome", "network_error"}, 3},
		{"daraja_edge_forward_attempt_duration_seconds", []string{"destination", "shop"}, 4},
		{"daraja_edge_forward_dead_letters_total", []string{"destination", "shop"}, 1},
		{"daraja_edge_forward_dead_letters_total", []string{"destination", "gone"}, 1},
		{"daraja_edge_forward_retries_total", []string{"destination", "shop"}, 2},
		{"daraja_edge_forward_circuit_open", []string{"destination", "shop"}, 0},
		{"daraja_edge_forward_circuit_open", []string{"destination", "gone"}, 0},
	} {
		if got := metric(t, reg, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// Three held by a slow app (one in flight, two waiting): lag 3.
	for i := range 3 {
		tx := "SLOW" + strconv.Itoa(i)
		e.store("b2c.result", "600000", tx, "tok_abcdefghijklmnop", body("b2c.result", tx))
	}
	eventually(t, "lag 3", func() bool { return metric(t, reg, "daraja_edge_forward_lag", "destination", "shop") == 3 })
	free()
	eventually(t, "lag back to 0", func() bool { return metric(t, reg, "daraja_edge_forward_lag", "destination", "shop") == 0 })
}

// TestAnswerSizeCap: an app's answer is read up to a cap: a 2xx with an
// endless body is a delivery, not a hang until the attempt's timeout;
// a validation answer over 4 KiB gets the fallback.
func TestAnswerSizeCap(t *testing.T) {
	e := newEnv(t)
	endless := make(chan struct{})
	t.Cleanup(func() { close(endless) })
	mux := http.NewServeMux()
	mux.HandleFunc("/endless", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		chunk := []byte(strings.Repeat("x", 4096))
		for {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			select {
			case <-endless:
				return
			case <-r.Context().Done():
				return
			default:
			}
		}
	})
	mux.HandleFunc("/validate/big", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"ResultCode":"0","ResultDesc":"`+strings.Repeat("a", 5000)+`"}`)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	d := destination("shop", srv.URL+"/endless")
	d.Timeout = time.Minute
	d.Shortcodes, d.ValidationURL = []string{"600000"}, srv.URL+"/validate/big"
	f := e.start(nil, d)
	e.store("b2c.result", "600000", "AG_1", "tok_abcdefghijklmnop", body("b2c.result", "AG_1"))
	eventually(t, "delivered well before the one-minute timeout", func() bool {
		ds, err := f.Deliveries(context.Background(), "shop", "AG_1", StateDelivered, 0)
		return err == nil && len(ds) == 1
	})
	ans, _, by, ok := f.Validate(context.Background(), validationMsg("600000"))
	if !ok || by != "fallback" || string(ans) != `{"ResultCode":"0","ResultDesc":"Accepted"}` {
		t.Errorf("oversized validation answer: %s by %s", ans, by)
	}
}

// TestMetricNames: MetricNames lists every series the forwarder exports
// (what alert rules may name), and nothing else.
func TestMetricNames(t *testing.T) {
	reg := prometheus.NewRegistry()
	f, err := New(Options{Destinations: []config.Destination{destination("shop", "http://127.0.0.1:1")}})
	if err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(f)
	f.m.attempts.WithLabelValues("shop", "delivered").Inc()
	f.m.seconds.WithLabelValues("shop").Observe(1)
	f.m.lag.WithLabelValues("shop").Set(0)
	f.m.dead.WithLabelValues("shop").Inc()
	f.m.redelivered.WithLabelValues("shop").Inc()
	f.m.validations.WithLabelValues("shop", "app").Inc()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var gathered []string
	for _, mf := range mfs {
		gathered = append(gathered, mf.GetName())
	}
	names := MetricNames()
	slices.Sort(names)
	if !slices.Equal(gathered, names) {
		t.Errorf("MetricNames %v, the registry serves %v", names, gathered)
	}
}
