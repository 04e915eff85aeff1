// Command load measures daraja-edge against a baseline in one run, so the
// figures are ratios that hold on a noisy machine.
//
// It starts, in this process, an embedded NATS server with JetStream, a
// daraja-edge with every check on, and a baseline: a bare handler that
// reads the body, publishes it to JetStream, waits for the ack and answers,
// behind the same TLS settings. Then it sends realistic callbacks of every
// kind, each with a fresh single-use token (reusable ones for C2B), from
// chosen loopback source addresses, over keep-alive or new TLS connections,
// flat out or at a fixed rate, and checks that every accepted callback is on
// the stream exactly once.
//
//	go run ./bench/load -duration 10s -conns 32
//	go run ./bench/load -scenario newconn
//	go run ./bench/load -scenario rejected
//	go run ./bench/load -scenario idle -idle 10000
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/certs"
	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/edge"
	"github.com/daraja-edge/daraja-edge/verify"
)

const adminKey = "bench-admin-key-0123456789abcdef"

type options struct {
	scenario string
	duration time.Duration
	conns    int
	rate     float64
	sources  int
	idle     int
	profile  string
}

func main() {
	var o options
	flag.StringVar(&o.scenario, "scenario", "keepalive", "keepalive | newconn | rejected | idle")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "how long each side is loaded")
	flag.IntVar(&o.conns, "conns", 32, "concurrent senders")
	flag.Float64Var(&o.rate, "rate", 0, "requests per second in total (0: flat out)")
	flag.IntVar(&o.sources, "sources", 4, "loopback source addresses to send from (127.0.0.2, .3, …)")
	flag.IntVar(&o.idle, "idle", 10000, "idle keep-alive connections (scenario idle)")
	flag.StringVar(&o.profile, "cpuprofile", "", "write a CPU profile of the edge run here")
	child := flag.String("child", "", "internal: run an edge from this JSON config (scenarios idle and soak)")
	flag.Parse()
	if *child != "" {
		if err := runChild(*child); err != nil {
			log.Fatal(err)
		}
		return
	}
	var err error
	switch o.scenario {
	case "idle", "soak":
		err = runSeparate(o)
	default:
		err = run(o)
	}
	if err != nil {
		log.Fatal(err)
	}
}

// world is what both sides share: NATS, the stream, TLS.
type world struct {
	dir   string
	edge  *edge.Server
	base  string // baseline host:port
	nc    *nats.Conn
	js    jetstream.JetStream
	roots *x509.CertPool
	srcs  []string
}

func setup(o options) (*world, func(), error) {
	dir, err := os.MkdirTemp("", "daraja-load-")
	if err != nil {
		return nil, nil, err
	}
	w := &world{dir: dir}
	for i := range o.sources {
		w.srcs = append(w.srcs, "127.0.0."+strconv.Itoa(2+i))
	}
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.TLS.Storage = filepath.Join(dir, "certs")
	cfg.Allowlist.CIDRs = []string{"127.0.0.2/31", "127.0.0.4/30", "127.0.0.8/29"} // .2–.15: senders; 127.0.0.1 is a stranger
	cfg.NATS.Embedded = config.Embedded{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "nats")}
	cfg.Spool.Dir = filepath.Join(dir, "spool")
	cfg.Limits.RejectsPerSecond, cfg.Limits.RejectsBurst = 1e9, 1e9 // measure refusals, not the limiter
	cfg.Admin.Listen, cfg.Admin.APIKeys, cfg.Admin.KeyFile = "127.0.0.1:0", []string{adminKey}, filepath.Join(dir, "admin.key")
	cfg.Log.Level = "error"
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	w.edge, err = edge.New(ctx, cfg, nil)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	done := make(chan error, 1)
	go func() { done <- w.edge.Run(ctx) }()
	w.roots = x509.NewCertPool()
	w.roots.AddCert(w.edge.Certificate())
	if w.nc, err = nats.Connect(w.edge.NATSURL()); err != nil {
		cancel()
		return nil, nil, err
	}
	w.js, _ = jetstream.New(w.nc)
	// The baseline's own stream, configured like the edge's.
	if _, err := w.js.CreateStream(ctx, jetstream.StreamConfig{Name: "BASELINE", Subjects: []string{"baseline.>"},
		Storage: jetstream.FileStorage, Duplicates: cfg.NATS.Stream.DuplicateWindow, MaxAge: cfg.NATS.Stream.MaxAge}); err != nil {
		cancel()
		return nil, nil, err
	}

	// The baseline: same TLS policy, a certificate of the same kind.
	cert, err := certs.SelfSigned([]string{"localhost", "127.0.0.1"}, time.Hour)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	w.roots.AddCert(cert.Leaf)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cancel()
		return nil, nil, err
	}
	w.base = ln.Addr().String()
	base := &http.Server{Handler: baseline(w.js), TLSConfig: baselineTLS(cert),
		ReadHeaderTimeout: cfg.Limits.ReadHeaderTimeout, ReadTimeout: cfg.Limits.ReadTimeout,
		WriteTimeout: cfg.Limits.WriteTimeout, IdleTimeout: cfg.Limits.IdleTimeout}
	go func() { _ = base.ServeTLS(ln, "", "") }()
	return w, func() {
		_ = base.Close()
		w.nc.Close()
		cancel()
		<-done
		os.RemoveAll(dir)
	}, nil
}

// baselineTLS mirrors the edge's policy: TLS 1.2+, AEAD suites, h2.
func baselineTLS(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2", "http/1.1"},
		CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256},
	}
}

// baseline is the least an edge could do: read, publish, wait for the ack,
// answer. No source check, no token, no parsing.
func baseline(js jetstream.JetStream) http.Handler {
	var n atomic.Int64
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 65536))
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		kind := strings.Replace(strings.TrimPrefix(r.URL.Path, "/"), "/", ".", 1)
		msg := &nats.Msg{Subject: "baseline." + kind, Data: body, Header: nats.Header{}}
		msg.Header.Set(jetstream.MsgIDHeader, "baseline:"+strconv.FormatInt(n.Add(1), 10))
		if _, err := js.PublishMsg(r.Context(), msg); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ResultCode":0,"ResultDesc":"Accepted"}`))
	})
}

// sample is one callback to send: kind, body, and the message id the edge
// will give it.
type sample struct {
	kind  daraja.Kind
	token string
	body  []byte
	msgID string
}

var kinds = []daraja.Kind{daraja.STKCallback, daraja.C2BConfirmation, daraja.B2CResult, daraja.B2CTimeout,
	daraja.B2BResult, daraja.ReversalResult, daraja.StatusResult, daraja.BalanceResult}

func body(k daraja.Kind, id string) []byte {
	switch {
	case k == daraja.STKCallback:
		return []byte(`{"Body":{"stkCallback":{"MerchantRequestID":"29115-34620561-1","CheckoutRequestID":"` + id + `","ResultCode":0,"ResultDesc":"The service request is processed successfully.","CallbackMetadata":{"Item":[{"Name":"Amount","Value":1.00},{"Name":"MpesaReceiptNumber","Value":"NLJ7RT61SV"},{"Name":"TransactionDate","Value":20191219102115},{"Name":"PhoneNumber","Value":254708374149}]}}}}`)
	case k.IsC2B():
		return []byte(`{"TransactionType":"Pay Bill","TransID":"` + id + `","TransTime":"20191122063845","TransAmount":"10.00","BusinessShortCode":"600638","BillRefNumber":"invoice008","InvoiceNumber":"","OrgAccountBalance":"49197.00","ThirdPartyTransID":"","MSISDN":"254708374149","FirstName":"John","MiddleName":"","LastName":"Doe"}`)
	default:
		return []byte(`{"Result":{"ResultType":0,"ResultCode":0,"ResultDesc":"The service request is processed successfully.","OriginatorConversationID":"10571-7910404-1","ConversationID":"` + id + `","TransactionID":"NLJ41HAY6Q","ResultParameters":{"ResultParameter":[{"Key":"TransactionAmount","Value":10},{"Key":"TransactionReceipt","Value":"NLJ41HAY6Q"},{"Key":"ReceiverPartyPublicName","Value":"254708374149 - John Doe"}]},"ReferenceData":{"ReferenceItem":{"Key":"QueueTimeoutURL","Value":"https://internalsandbox.example/b2c/timeout"}}}}`)
	}
}

// issue prepares n samples with fresh tokens through the NATS token
// service (many at once).
func (w *world) issue(n int, tag string) ([]sample, error) {
	out := make([]sample, n)
	var c2b verify.IssueResponse
	if err := w.request(verify.IssueRequest{Kinds: []daraja.Kind{daraja.C2BConfirmation}, Shortcode: "600638", Reusable: true}, &c2b); err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	sem := make(chan struct{}, 64)
	for i := range out {
		k := kinds[i%len(kinds)]
		id := fmt.Sprintf("%s_%08d", tag, i)
		out[i] = sample{kind: k, body: body(k, id), msgID: string(k) + ":" + id}
		if k.IsC2B() {
			out[i].token = c2b.Token
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var resp verify.IssueResponse
			sc := "600000"
			if k == daraja.STKCallback {
				sc = "174379"
			}
			if err := w.request(verify.IssueRequest{Kinds: []daraja.Kind{k}, Shortcode: sc, TTL: "1h"}, &resp); err != nil {
				select {
				case errc <- err:
				default:
				}
				return
			}
			out[i].token = resp.Token
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return nil, err
	default:
	}
	return out, nil
}

func (w *world) request(req verify.IssueRequest, out *verify.IssueResponse) error {
	b, _ := json.Marshal(req)
	m, err := w.nc.Request("daraja.tokens.issue", b, 10*time.Second)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(m.Data, out); err != nil || out.Token == "" {
		return fmt.Errorf("issue: %s", m.Data)
	}
	return nil
}

// result is one side's figures.
type result struct {
	name      string
	sent, ok  int
	errors    map[string]int
	latencies []time.Duration
	elapsed   time.Duration
}

func (r *result) rps() float64 { return float64(r.ok) / r.elapsed.Seconds() }

func (r *result) pct(p float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	return r.latencies[min(len(r.latencies)-1, int(p*float64(len(r.latencies))))]
}

func (r *result) String() string {
	var errs []string
	for k, v := range r.errors {
		errs = append(errs, fmt.Sprintf("%s=%d", k, v))
	}
	slices.Sort(errs)
	return fmt.Sprintf("%-9s sent=%-7d ok=%-7d %8.0f req/s  p50=%-9s p99=%-9s p999=%-9s errors=[%s]",
		r.name, r.sent, r.ok, r.rps(), r.pct(0.50).Round(time.Microsecond), r.pct(0.99).Round(time.Microsecond),
		r.pct(0.999).Round(time.Microsecond), strings.Join(errs, " "))
}

func client(src string, roots *x509.CertPool, keepAlive bool) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext:         d.DialContext,
		TLSClientConfig:     &tls.Config{RootCAs: roots, ServerName: "localhost", ClientSessionCache: nil},
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 1024,
		ForceAttemptHTTP2:   false, // one TLS connection per sender, as Daraja's clients do
	}}
}

// load sends samples to addr for o.duration (or until they run out).
func load(name, addr string, w *world, o options, samples []sample, keepAlive, stranger bool) *result {
	res := &result{name: name, errors: map[string]int{}}
	var next atomic.Int64
	var mu sync.Mutex
	deadline := time.Now().Add(o.duration)
	var tick <-chan time.Time
	if o.rate > 0 {
		t := time.NewTicker(time.Duration(float64(time.Second) / o.rate))
		defer t.Stop()
		tick = t.C
	}
	start := time.Now()
	var wg sync.WaitGroup
	for c := range o.conns {
		src := w.srcs[c%len(w.srcs)]
		if stranger {
			src = "127.0.0.1"
		}
		cl := client(src, w.roots, keepAlive)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cl.CloseIdleConnections()
			var lat []time.Duration
			sent, ok := 0, 0
			errs := map[string]int{}
			for time.Now().Before(deadline) {
				if tick != nil {
					if _, open := <-tick; !open {
						break
					}
				}
				i := int(next.Add(1)) - 1
				if i >= len(samples) {
					break
				}
				s := samples[i]
				t0 := time.Now()
				resp, err := cl.Post("https://"+addr+s.kind.Path()+"?t="+s.token, "application/json", bytes.NewReader(s.body))
				sent++
				if err != nil {
					errs["conn"]++
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat = append(lat, time.Since(t0))
				if resp.StatusCode == http.StatusOK {
					ok++
				} else {
					errs[strconv.Itoa(resp.StatusCode)]++
				}
			}
			mu.Lock()
			defer mu.Unlock()
			res.sent += sent
			res.ok += ok
			res.latencies = append(res.latencies, lat...)
			for k, v := range errs {
				res.errors[k] += v
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	slices.Sort(res.latencies)
	return res
}

// verify checks every accepted sample is on the stream exactly once.
func (w *world) verify(samples []sample, accepted int) (onStream, dup int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := w.js.Stream(ctx, "DARAJA")
	if err != nil {
		return 0, 0, err
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"daraja.cb.>"}})
	if err != nil {
		return 0, 0, err
	}
	want := map[string]bool{}
	for _, smp := range samples {
		want[smp.msgID] = true
	}
	seen := map[string]int{}
	info, _ := s.Info(ctx)
	for read := uint64(0); read < info.State.Msgs; {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return 0, 0, err
		}
		for m := range batch.Messages() {
			read++
			if id := m.Headers().Get(jetstream.MsgIDHeader); want[id] {
				seen[id]++
			}
		}
		if batch.Error() != nil {
			return 0, 0, batch.Error()
		}
	}
	for _, n := range seen {
		onStream++
		if n > 1 {
			dup += n - 1
		}
	}
	if onStream != accepted {
		return onStream, dup, fmt.Errorf("%d callbacks accepted but %d on the stream", accepted, onStream)
	}
	return onStream, dup, nil
}

func rssKiB(pid int) int64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return n
		}
	}
	return 0
}

func run(o options) error {
	w, stop, err := setup(o)
	if err != nil {
		return err
	}
	defer stop()
	fmt.Printf("machine: %s/%s, %d CPUs, %s; scenario %s, %d senders from %d sources, %s per side, rate %v\n",
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), o.scenario, o.conns, len(w.srcs), o.duration, o.rate)

	switch o.scenario {
	case "keepalive", "newconn":
		keepAlive := o.scenario == "keepalive"
		// Enough samples for the whole run at a generous rate: tokens for
		// the edge, plain bodies for the baseline (twice: two runs).
		n := int(o.duration.Seconds() * 15000)
		if o.rate > 0 {
			n = int(o.duration.Seconds()*o.rate) + 100
		}
		samples, err := w.issue(n, "edge")
		if err != nil {
			return err
		}
		baseSamples := make([]sample, 4*n)
		for i := range baseSamples {
			k := kinds[i%len(kinds)]
			baseSamples[i] = sample{kind: k, body: body(k, fmt.Sprintf("base_%08d", i))}
		}
		// Warm both sides, then baseline, edge, baseline again: the
		// ratio uses the better baseline.
		load("warm", w.base, w, options{duration: time.Second, conns: o.conns}, baseSamples[len(baseSamples)-5000:], keepAlive, false)
		b1 := load("baseline", w.base, w, o, baseSamples, keepAlive, false)
		if o.profile != "" {
			f, err := os.Create(o.profile)
			if err != nil {
				return err
			}
			_ = pprof.StartCPUProfile(f)
			defer f.Close()
		}
		e := load("edge", w.edge.PublicAddr().String(), w, o, samples, keepAlive, false)
		if o.profile != "" {
			pprof.StopCPUProfile()
		}
		b2 := load("baseline", w.base, w, o, baseSamples[b1.sent:], keepAlive, false)
		b := b1
		if b2.rps() > b1.rps() {
			b = b2
		}
		fmt.Println(b1)
		fmt.Println(e)
		fmt.Println(b2)
		onStream, dup, verr := w.verify(samples[:e.sent], e.ok)
		fmt.Printf("verified: %d accepted callbacks on the stream, %d duplicated\n", onStream, dup)
		fmt.Printf("RATIO throughput edge/baseline = %.2f; p99 edge %s vs baseline %s (+%s)\n",
			e.rps()/b.rps(), e.pct(0.99).Round(time.Microsecond), b.pct(0.99).Round(time.Microsecond),
			(e.pct(0.99) - b.pct(0.99)).Round(time.Microsecond))
		return verr
	case "rejected":
		samples, err := w.issue(int(o.duration.Seconds()*15000), "rej")
		if err != nil {
			return err
		}
		acc := load("accepted", w.edge.PublicAddr().String(), w, o, samples, true, false)
		strangers := make([]sample, 1_000_000)
		for i := range strangers {
			strangers[i] = sample{kind: daraja.STKCallback, token: "not-a-token", body: body(daraja.STKCallback, "x")}
		}
		rej := load("refused", w.edge.PublicAddr().String(), w, o, strangers, true, true)
		fmt.Println(acc)
		fmt.Println(rej)
		fmt.Printf("RATIO refused/accepted throughput = %.2f (refused before the body is read, on kept-alive connections)\n",
			float64(rej.errors["403"])/rej.elapsed.Seconds()/acc.rps())
		return nil
	default:
		return fmt.Errorf("unknown scenario %q", o.scenario)
	}
}
