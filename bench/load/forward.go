package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/edge"
	"github.com/daraja-edge/daraja-edge/publish"
)

// forwardPrefix and forwardStream are the forwarding edge's: it shares the
// NATS server (and so its sync setting) with the plain edge, not its
// stream, tokens or consumers.
const (
	forwardPrefix = "fwd"
	forwardStream = "FWD"
)

var benchSecret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("bench-forward-secret-0123456789"))

// benchApp is the app behind the forwarder: it verifies each signature
// with the Standard Webhooks reference library, as an app would, and
// records when each transaction first arrived and how often.
type benchApp struct {
	wh   *standardwebhooks.Webhook
	mu   sync.Mutex
	seen map[string]int       // transaction id → 2xx answers
	at   map[string]time.Time // transaction id → first arrival
	bad  int                  // signatures that did not verify
	last time.Time            // last first arrival
}

func (a *benchApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if err := a.wh.Verify(body, r.Header); err != nil {
		a.mu.Lock()
		a.bad++
		a.mu.Unlock()
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	tx := r.Header.Get(publish.HeaderTransactionID)
	now := time.Now()
	a.mu.Lock()
	if a.seen[tx] == 0 {
		a.at[tx] = now
		a.last = now
	}
	a.seen[tx]++
	a.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// delivered counts the transactions of ids the app has, those it got more
// than once, and the time the last of them arrived.
func (a *benchApp) delivered(ids []string) (n, dup int, last time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range ids {
		switch c := a.seen[id]; {
		case c == 0:
			continue
		case c > 1:
			dup++
		}
		n++
		if t := a.at[id]; t.After(last) {
			last = t
		}
	}
	return n, dup, last
}

// startForwardEdge starts a second edge on w's NATS server, under its own
// prefix and stream, forwarding every kind to app with the destination's
// defaults but concurrency.
func startForwardEdge(ctx context.Context, w *world, appURL string, concurrency int) (*world, func(), error) {
	cfg := w.cfg
	cfg.NATS.URL = w.edge.NATSURL()
	cfg.NATS.SubjectPrefix = forwardPrefix
	cfg.NATS.Stream.Name = forwardStream
	cfg.TLS.Storage = filepath.Join(w.dir, "fwd-certs")
	cfg.Spool.Dir = filepath.Join(w.dir, "fwd-spool")
	cfg.Admin.KeyFile = filepath.Join(w.dir, "fwd-admin.key")
	d := config.DefaultDestination()
	d.Name, d.URL, d.Secrets, d.Concurrency = "app", appURL, []string{benchSecret}, concurrency
	cfg.Forward.Destinations = []config.Destination{d}
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	logger, closeLog, err := productionLogger(filepath.Join(w.dir, "fwd-edge.log"))
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	srv, err := edge.New(ctx, cfg, logger)
	if err != nil {
		cancel()
		closeLog()
		return nil, nil, err
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	w.roots.AddCert(srv.Certificate())
	fw := *w
	fw.edge, fw.cfg = srv, cfg
	return &fw, func() { cancel(); <-done; closeLog() }, nil
}

// forwardSide loads the forwarding edge and waits until the app has every
// callback answered 200: the delivered rate runs from the load's start to
// the last first arrival.
func forwardSide(ctx context.Context, fw *world, app *benchApp, o options, samples []sample) (*result, float64, error) {
	after, err := lastSeq(ctx, fw.js, forwardStream)
	if err != nil {
		return nil, 0, err
	}
	t0 := time.Now()
	r := fw.load("fwd-edge", fw.edge.PublicAddr().String(), o, samples, true, false)
	loadEnd := time.Now()
	v, err := verifyStream(ctx, fw.js, forwardStream, forwardPrefix+".cb.>", after, r.sentIDs, r.okIDs)
	if err != nil {
		return nil, 0, err
	}
	fmt.Println(r)
	fmt.Printf("  %-9s %s\n", "fwd-edge", v)
	if err := v.check(0.98); err != nil {
		return nil, 0, err
	}
	atEnd, _, _ := app.delivered(r.okIDs)
	deadline := time.Now().Add(10 * time.Minute)
	var n, dup int
	var last time.Time
	for {
		n, dup, last = app.delivered(r.okIDs)
		if n == len(r.okIDs) {
			break
		}
		if time.Now().After(deadline) {
			return nil, 0, fmt.Errorf("forward: %d of %d callbacks delivered after 10 minutes", n, len(r.okIDs))
		}
		time.Sleep(20 * time.Millisecond)
	}
	app.mu.Lock()
	bad := app.bad
	app.mu.Unlock()
	if dup > 0 || bad > 0 {
		return nil, 0, fmt.Errorf("forward: %d callbacks delivered twice, %d signatures refused", dup, bad)
	}
	rate := float64(n) / last.Sub(t0).Seconds()
	fmt.Printf("  %-9s delivered=%d (%d by the end of the load, the rest %s after it) %8.0f callbacks/s delivered end to end; duplicates=0\n",
		"app", n, atEnd, last.Sub(loadEnd).Round(time.Millisecond), rate)
	return r, rate, nil
}

// runForward measures, in one run, the plain edge's accepted rate and the
// rate at which a forwarding edge gets callbacks to an app (edge → stream
// → forwarder → app), o.runs rounds of one each.
func runForward(o options) error {
	w, stop, err := setup(o, o.sync)
	if err != nil {
		return err
	}
	defer stop()
	ctx := context.Background()
	wh, err := standardwebhooks.NewWebhook(benchSecret)
	if err != nil {
		return err
	}
	app := &benchApp{wh: wh, seen: map[string]int{}, at: map[string]time.Time{}}
	appSrv := httptest.NewServer(app)
	defer appSrv.Close()
	fw, stopFwd, err := startForwardEdge(ctx, w, appSrv.URL, o.fwdConcurrency)
	if err != nil {
		return err
	}
	defer stopFwd()
	fmt.Printf("machine: %s/%s, %d CPUs, %s; scenario forward, nats.embedded.sync %s (both edges: one server), %d senders from %d sources, %s per side, %d rounds, destination concurrency %d\n",
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), o.sync, o.conns, len(w.srcs), o.duration, o.runs, o.fwdConcurrency)

	warm := options{duration: 2 * time.Second, conns: o.conns}
	warmEdge, err := w.issue(20000, "warme")
	if err != nil {
		return err
	}
	we := w.load("warm-edge", w.edge.PublicAddr().String(), warm, warmEdge, true, false)
	warmFwd, err := fw.issue(int(we.rps()*2*1.5)+1000, "warmf")
	if err != nil {
		return err
	}
	if _, _, err := forwardSide(ctx, fw, app, warm, warmFwd); err != nil {
		return err
	}
	fmt.Printf("warmed: edge %.0f req/s\n", we.rps())

	var alone, fwdAccepted, delivered, ratios []float64
	est := we.rps()
	for i := range o.runs {
		n := int(est*o.duration.Seconds()*1.5) + 1000
		tag := fmt.Sprintf("r%d", i+1)
		edgeSamples, err := w.issue(n, tag+"e")
		if err != nil {
			return err
		}
		fwdSamples, err := fw.issue(n, tag+"f")
		if err != nil {
			return err
		}
		fmt.Printf("round %d:\n", i+1)
		e, err := w.side(ctx, "edge", true, o, edgeSamples, true)
		if err != nil {
			return err
		}
		r, rate, err := forwardSide(ctx, fw, app, o, fwdSamples)
		if err != nil {
			return err
		}
		est = max(est, e.rps())
		alone, fwdAccepted, delivered = append(alone, e.rps()), append(fwdAccepted, r.rps()), append(delivered, rate)
		ratios = append(ratios, rate/e.rps())
		fmt.Printf("  RATIO round %d: delivered to the app / accepted by the edge alone = %.2f (%.0f/s vs %.0f req/s); the forwarding edge accepted %.0f req/s meanwhile\n",
			i+1, rate/e.rps(), rate, e.rps(), r.rps())
	}
	m, lo, hi := medianSpread(ratios)
	dm, dlo, dhi := medianSpread(delivered)
	am, alo, ahi := medianSpread(alone)
	fm, flo, fhi := medianSpread(fwdAccepted)
	fmt.Printf("SUMMARY forward sync=%s: delivered to the app %.0f callbacks/s (%.0f–%.0f), edge alone %.0f req/s (%.0f–%.0f), forwarding edge accepted %.0f req/s (%.0f–%.0f); RATIO delivered/edge alone median %.2f (spread %.2f–%.2f; %s)\n",
		o.sync, dm, dlo, dhi, am, alo, ahi, fm, flo, fhi, m, lo, hi, fmtList(ratios, "%.2f"))
	return nil
}
