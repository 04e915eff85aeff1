// Command load measures daraja-edge against a baseline in one run, so the
// figures are ratios that hold on a noisy machine.
//
// It starts, in this process, an embedded NATS server with JetStream (the
// edge's own, synced as -sync says), a daraja-edge with every check on,
// logging as in production (JSON at info, to a file), and a baseline: a
// bare handler that reads the body, publishes it to one subject of a
// stream configured like the edge's, without conditions, waits for the ack
// and answers, behind the same TLS. Both sides are warmed, then loaded
// baseline, edge, baseline, -runs times; the ratio of each run uses the
// better of its two baselines, and the report gives the median and spread.
// Every side of every run is verified by transaction id on its stream.
//
//	go run ./bench/load -scenario keepalive -runs 3
//	go run ./bench/load -scenario rate -rate 2000 -runs 3
//	go run ./bench/load -scenario newconn -runs 3
//	go run ./bench/load -scenario durable -runs 3
//	go run ./bench/load -scenario refused     (edge in its own process: CPU per request)
//	go run ./bench/load -scenario memory -stored 1000000
//	go run ./bench/load -scenario soak -rate 20 -duration 30m
//	go run ./bench/load -scenario idle -idle 10000
//	go run ./bench/load -scenario forward -runs 3  (delivered to an app vs the edge alone)
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
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/certs"
	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/edge"
	"github.com/daraja-edge/daraja-edge/publish"
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
	runs     int
	sync     string
	ttl      time.Duration
	stored   int
	profile  string
	memprof  string
	// fwdConcurrency is the forward destination's concurrency (scenario
	// forward).
	fwdConcurrency int
}

func main() {
	var o options
	flag.StringVar(&o.scenario, "scenario", "keepalive", "keepalive | rate | newconn | durable | refused | memory | soak | idle | forward")
	flag.DurationVar(&o.duration, "duration", 6*time.Second, "how long each side is loaded (soak: the whole soak)")
	flag.IntVar(&o.conns, "conns", 16, "concurrent senders")
	flag.Float64Var(&o.rate, "rate", 0, "requests per second in total, both sides held to it (scenario rate; soak: tokens per second)")
	flag.IntVar(&o.sources, "sources", 4, "loopback source addresses to send from (127.0.0.2, .3, …)")
	flag.IntVar(&o.idle, "idle", 10000, "idle keep-alive connections (scenario idle)")
	flag.IntVar(&o.runs, "runs", 3, "baseline/edge/baseline rounds (throughput scenarios)")
	flag.StringVar(&o.sync, "sync", "", `nats.embedded.sync for the run: "always" or an interval (default: always for durable, soak, refused, idle, forward; 2m, NATS's own default, otherwise)`)
	flag.DurationVar(&o.ttl, "ttl", 2*time.Minute, "token lifetime (soak)")
	flag.IntVar(&o.stored, "stored", 1_000_000, "stored callbacks (scenario memory)")
	flag.StringVar(&o.profile, "cpuprofile", "", "write a CPU profile of the last run's edge load here (load generator labelled side=client)")
	flag.StringVar(&o.memprof, "memprofile", "", "write allocation profiles taken before and after the last run's edge load here (FILE.before, FILE): go tool pprof -sample_index=alloc_space -diff_base FILE.before FILE")
	flag.IntVar(&o.fwdConcurrency, "fwd-concurrency", 8, "the forward destination's concurrency (scenario forward; 8 is the default)")
	child := flag.String("child", "", "internal: run an edge from this JSON config (child-process scenarios)")
	flag.Parse()
	if *child != "" {
		if err := runChild(*child); err != nil {
			log.Fatal(err)
		}
		return
	}
	if o.sync == "" {
		o.sync = "2m"
		switch o.scenario {
		case "durable", "soak", "refused", "idle", "forward":
			o.sync = config.SyncEveryAck
		}
	}
	var err error
	switch o.scenario {
	case "idle", "soak", "refused":
		err = runSeparate(o)
	case "memory":
		err = runMemory(o)
	case "forward":
		err = runForward(o)
	default:
		err = run(o)
	}
	if err != nil {
		log.Fatal(err)
	}
}

// world is what both sides share: NATS, the streams, TLS.
type world struct {
	dir   string
	edge  *edge.Server
	cfg   config.Config
	base  string // baseline host:port
	equiv string // broker-equivalent baseline host:port
	nc    *nats.Conn
	js    jetstream.JetStream
	roots *x509.CertPool
	srcs  []string
}

// baselineStream and baselineSubject: the baseline's one subject, on a
// stream configured like the edge's.
const (
	baselineStream  = "BASELINE"
	baselineSubject = "baseline.cb"
	// equivalentSubjects are the broker-equivalent baseline's: one fresh
	// subject per request, as the edge's per-token subjects.
	equivalentSubjects = "baseline.tok.>"
	// headerBenchTx carries the transaction id to the baseline, which
	// parses nothing: it copies it to Daraja-Transaction-Id for the
	// verification.
	headerBenchTx = "X-Bench-Transaction"
)

func setup(o options, sync string) (*world, func(), error) {
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
	cfg.NATS.Embedded = config.Embedded{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "nats"), Sync: sync}
	cfg.Spool.Dir = filepath.Join(dir, "spool")
	cfg.Admin.Listen, cfg.Admin.APIKeys, cfg.Admin.KeyFile = "127.0.0.1:0", []string{adminKey}, filepath.Join(dir, "admin.key")
	cfg.Log.Level = "info"
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	w.cfg = cfg
	logger, closeLog, err := productionLogger(filepath.Join(dir, "edge.log"))
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	fail := func(err error) (*world, func(), error) {
		cancel()
		closeLog()
		return nil, nil, err
	}
	w.edge, err = edge.New(ctx, cfg, logger)
	if err != nil {
		return fail(err)
	}
	done := make(chan error, 1)
	go func() { done <- w.edge.Run(ctx) }()
	w.roots = x509.NewCertPool()
	w.roots.AddCert(w.edge.Certificate())
	if w.nc, err = nats.Connect(w.edge.NATSURL()); err != nil {
		return fail(err)
	}
	w.js, _ = jetstream.New(w.nc)
	// The baseline's own stream on the same server (so the same sync
	// setting), configured like the edge's by the edge's own function.
	if _, err := publish.EnsureStream(ctx, w.js, publish.StreamOptions{Name: baselineStream, Subjects: []string{"baseline.>"},
		Replicas: cfg.NATS.Stream.Replicas, DuplicateWindow: cfg.NATS.Stream.DuplicateWindow, MaxAge: cfg.NATS.Stream.MaxAge}); err != nil {
		return fail(err)
	}

	// The baseline: the edge's TLS policy, a certificate of the same kind.
	cert, err := certs.SelfSigned([]string{"localhost", "127.0.0.1"}, time.Hour)
	if err != nil {
		return fail(err)
	}
	w.roots.AddCert(cert.Leaf)
	// serve runs h behind the edge's TLS policy and limits on a port of
	// its own.
	serve := func(h http.Handler) (string, *http.Server, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", nil, err
		}
		srv := &http.Server{Handler: h, TLSConfig: baselineTLS(cert),
			ReadHeaderTimeout: cfg.Limits.ReadHeaderTimeout, ReadTimeout: cfg.Limits.ReadTimeout,
			WriteTimeout: cfg.Limits.WriteTimeout, IdleTimeout: cfg.Limits.IdleTimeout, MaxHeaderBytes: 16 << 10}
		go func() { _ = srv.ServeTLS(ln, "", "") }()
		return ln.Addr().String(), srv, nil
	}
	var base, equiv *http.Server
	if w.base, base, err = serve(baseline(w.js)); err != nil {
		return fail(err)
	}
	if w.equiv, equiv, err = serve(brokerEquivalent(w.js)); err != nil {
		_ = base.Close()
		return fail(err)
	}
	return w, func() {
		_ = base.Close()
		_ = equiv.Close()
		w.nc.Close()
		cancel()
		<-done
		closeLog()
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

// publishing reads each request's body, publishes the message msg makes of
// it (tx: the transaction id the request carries), waits for the ack and
// answers as the edge does. No source check, no token, no parsing, no log
// line.
func publishing(js jetstream.JetStream, msg func(tx string, body []byte) *nats.Msg) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 65536))
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if _, err := js.PublishMsg(r.Context(), msg(r.Header.Get(headerBenchTx), body)); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ResultCode":0,"ResultDesc":"Accepted"}`))
	})
}

// baseline is the least an edge could do: publish the body to one subject
// without conditions. The message id and transaction header come from the
// request (for de-duplication and the verification).
func baseline(js jetstream.JetStream) http.Handler {
	return publishing(js, func(tx string, body []byte) *nats.Msg {
		return &nats.Msg{Subject: baselineSubject, Data: body, Header: nats.Header{
			jetstream.MsgIDHeader:       {"baseline:" + tx},
			publish.HeaderTransactionID: {tx},
		}}
	})
}

// brokerEquivalent asks of the broker exactly what the edge asks, and
// nothing of the edge's own work: each body is published on a subject of
// its own with Nats-Expected-Last-Subject-Sequence: 0, a Nats-Msg-Id and the
// edge's eleven Daraja-* headers (values of the edge's sizes). The edge
// compared with it is the edge's own cost; it compared with the baseline
// is the broker's cost of single use in one write.
func brokerEquivalent(js jetstream.JetStream) http.Handler {
	received := time.Now().UTC().Format(time.RFC3339Nano)
	return publishing(js, func(tx string, body []byte) *nats.Msg {
		return &nats.Msg{Subject: "baseline.tok.stk.callback.174379." + tx, Data: body, Header: nats.Header{
			jetstream.MsgIDHeader:               {"stk.callback:" + tx},
			jetstream.ExpectedLastSubjSeqHeader: {"0"},
			publish.HeaderKind:                  {"stk.callback"},
			publish.HeaderShortcode:             {"174379"},
			publish.HeaderTransactionID:         {tx},
			publish.HeaderReceipt:               {"TKR0000001"},
			publish.HeaderResultCode:            {"0"},
			publish.HeaderReference:             {"ORDER-1042"},
			publish.HeaderTokenID:               {"tok_6v3r7ypjmnwrytos"},
			publish.HeaderSourceIP:              {"127.0.0.2"},
			publish.HeaderReceivedAt:            {received},
			publish.HeaderEdge:                  {"bench"},
		}}
	})
}

// sample is one callback to send.
type sample struct {
	kind  daraja.Kind
	token string
	body  []byte
	tx    string // transaction id in the body
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

// issue prepares n samples of every kind, each with a fresh single-use
// token through the NATS token service (C2B: one reusable token).
func (w *world) issue(n int, tag string) ([]sample, error) { return w.issueKinds(n, tag, kinds) }

// issueSingle is issue without C2B: every sample has its own single-use
// token.
func (w *world) issueSingle(n int, tag string) ([]sample, error) {
	return w.issueKinds(n, tag, soakKinds)
}

func (w *world) issueKinds(n int, tag string, ks []daraja.Kind) ([]sample, error) {
	out := make([]sample, n)
	var c2b verify.IssueResponse
	if slices.ContainsFunc(ks, daraja.Kind.IsC2B) {
		if err := w.request(verify.IssueRequest{Kinds: []daraja.Kind{daraja.C2BConfirmation}, Shortcode: "600638", Reusable: true}, &c2b); err != nil {
			return nil, err
		}
	}
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	sem := make(chan struct{}, 64)
	for i := range out {
		k := ks[i%len(ks)]
		id := fmt.Sprintf("%s_%08d", tag, i)
		out[i] = sample{kind: k, body: body(k, id), tx: id}
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

// plain prepares n baseline samples (no token).
func plain(n int, tag string) []sample {
	out := make([]sample, n)
	for i := range out {
		k := kinds[i%len(kinds)]
		id := fmt.Sprintf("%s_%08d", tag, i)
		out[i] = sample{kind: k, body: body(k, id), tx: id}
	}
	return out
}

func (w *world) request(req verify.IssueRequest, out *verify.IssueResponse) error {
	b, _ := json.Marshal(req)
	prefix := w.cfg.NATS.SubjectPrefix
	if prefix == "" {
		prefix = "daraja" // a world around a child edge holds no config
	}
	m, err := w.nc.Request(prefix+".tokens.issue", b, 10*time.Second)
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
	name           string
	sent, ok       int
	errors         map[string]int
	latencies      []time.Duration
	elapsed        time.Duration
	sentIDs, okIDs []string
	exhausted      bool
	rate           float64       // the rate it was held to (0: flat out)
	behindSchedule int           // requests sent more than 1 ms after they were due
	cpuPerReq      time.Duration // this process's CPU (load generator included) per request answered 200
	split          split         // the edge's own log lines: its own work and its wait for the stream
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
	s := fmt.Sprintf("%-11s sent=%-7d ok=%-7d %8.0f req/s  p50=%-9s p99=%-9s p999=%-9s errors=[%s]",
		r.name, r.sent, r.ok, r.rps(), r.pct(0.50).Round(time.Microsecond), r.pct(0.99).Round(time.Microsecond),
		r.pct(0.999).Round(time.Microsecond), strings.Join(errs, " "))
	if r.cpuPerReq > 0 {
		s += fmt.Sprintf(" cpu/req=%s", r.cpuPerReq.Round(time.Microsecond))
	}
	if r.rate > 0 {
		s += fmt.Sprintf(" held to %.0f/s: achieved %.0f/s, %d sent >1ms late", r.rate, float64(r.sent)/r.elapsed.Seconds(), r.behindSchedule)
	}
	if r.exhausted {
		s += " (ran out of samples)"
	}
	return s
}

func client(src string, tlsCfg *tls.Config, keepAlive bool) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext:         d.DialContext,
		TLSClientConfig:     tlsCfg,
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 1024,
		ForceAttemptHTTP2:   false, // one TLS connection per sender, as Daraja's clients do
	}}
}

func (w *world) tlsConfig() *tls.Config {
	return &tls.Config{RootCAs: w.roots, ServerName: "localhost"}
}

// load sends samples to addr for o.duration (or until they run out), from
// o.conns senders. With o.rate, request i is due at start + i/rate, so both
// sides are held to the same schedule (a sender that is late sends at
// once; late sends are counted).
func (w *world) load(name, addr string, o options, samples []sample, keepAlive, stranger bool) *result {
	return w.loadAt(name, addr, w.tlsConfig(), o, samples, keepAlive, stranger)
}

func (w *world) loadAt(name, addr string, tlsCfg *tls.Config, o options, samples []sample, keepAlive, stranger bool) *result {
	res := &result{name: name, errors: map[string]int{}, rate: o.rate}
	var next atomic.Int64
	var mu sync.Mutex
	start := time.Now()
	deadline := start.Add(o.duration)
	limit := len(samples)
	if o.rate > 0 {
		limit = min(limit, int(o.duration.Seconds()*o.rate))
	}
	var wg sync.WaitGroup
	var lastDone atomic.Int64
	for c := range o.conns {
		src := w.srcs[c%len(w.srcs)]
		if stranger {
			src = "127.0.0.1"
		}
		cl := client(src, tlsCfg, keepAlive)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cl.CloseIdleConnections()
			var lat []time.Duration
			var sentIDs, okIDs []string
			late := 0
			errs := map[string]int{}
			for time.Now().Before(deadline) {
				i := int(next.Add(1)) - 1
				if i >= limit {
					if i >= len(samples) {
						mu.Lock()
						res.exhausted = true
						mu.Unlock()
					}
					break
				}
				if o.rate > 0 {
					due := start.Add(time.Duration(float64(i) * float64(time.Second) / o.rate))
					if d := time.Until(due); d > 0 {
						time.Sleep(d)
					} else if d < -time.Millisecond {
						late++
					}
				}
				s := samples[i]
				t0 := time.Now()
				req, _ := http.NewRequest(http.MethodPost, "https://"+addr+s.kind.Path()+"?t="+s.token, bytes.NewReader(s.body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set(headerBenchTx, s.tx)
				sentIDs = append(sentIDs, s.tx)
				resp, err := cl.Do(req)
				if err != nil {
					errs["conn"]++
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat = append(lat, time.Since(t0))
				lastDone.Store(time.Now().UnixNano())
				if resp.StatusCode == http.StatusOK {
					okIDs = append(okIDs, s.tx)
				} else {
					errs[strconv.Itoa(resp.StatusCode)]++
				}
			}
			mu.Lock()
			defer mu.Unlock()
			res.sent += len(sentIDs)
			res.ok += len(okIDs)
			res.sentIDs = append(res.sentIDs, sentIDs...)
			res.okIDs = append(res.okIDs, okIDs...)
			res.behindSchedule += late
			res.latencies = append(res.latencies, lat...)
			for k, v := range errs {
				res.errors[k] += v
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	if o.rate > 0 {
		// Held to a schedule: the rate is over the scheduled span.
		res.elapsed = max(time.Duration(float64(limit)/o.rate*float64(time.Second)), time.Unix(0, lastDone.Load()).Sub(start))
	}
	slices.Sort(res.latencies)
	return res
}

// processCPU is this process's user + system CPU time (getrusage).
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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

// side loads one side and verifies it on its stream.
func (w *world) side(ctx context.Context, name string, isEdge bool, o options, samples []sample, keepAlive bool) (*result, error) {
	stream, filter, addr := baselineStream, baselineSubject, w.base
	switch {
	case isEdge:
		stream, filter, addr = w.cfg.NATS.Stream.Name, w.cfg.NATS.SubjectPrefix+".cb.>", w.edge.PublicAddr().String()
	case name == "equivalent":
		filter, addr = equivalentSubjects, w.equiv
	}
	after, err := lastSeq(ctx, w.js, stream)
	if err != nil {
		return nil, err
	}
	var logFrom int64
	if isEdge {
		logFrom = fileSize(filepath.Join(w.dir, "edge.log"))
	}
	c0 := processCPU()
	r := w.load(name, addr, o, samples, keepAlive, false)
	r.cpuPerReq = (processCPU() - c0) / time.Duration(max(1, r.ok))
	v, err := verifyStream(ctx, w.js, stream, filter, after, r.sentIDs, r.okIDs)
	if err != nil {
		return nil, err
	}
	fmt.Println(r)
	fmt.Printf("  %-9s %s\n", name, v)
	if isEdge {
		if r.split, err = splitLatency(filepath.Join(w.dir, "edge.log"), logFrom); err != nil {
			return nil, err
		}
		fmt.Printf("  %-9s %s\n", name, r.split)
	}
	return r, v.check(0.98)
}

// round is one baseline/equivalent/edge/baseline measurement.
type round struct {
	base, edge *result
	b1, b2     *result
	equiv      *result // the broker-equivalent baseline
}

func (r round) ratio() float64 { return r.edge.rps() / r.base.rps() }

func run(o options) error {
	switch o.scenario {
	case "keepalive", "rate", "newconn":
		_, err := rounds(o, o.sync)
		return err
	case "durable":
		always, err := rounds(o, config.SyncEveryAck)
		if err != nil {
			return err
		}
		interval, err := rounds(o, "1s")
		if err != nil {
			return err
		}
		var costs []float64
		for i := range always {
			costs = append(costs, always[i].edge.rps()/interval[i].edge.rps())
		}
		m, lo, hi := medianSpread(costs)
		fmt.Printf("DURABLE edge throughput, sync always / sync 1s: median %.2f (spread %.2f–%.2f; %s)\n", m, lo, hi, fmtList(costs, "%.2f"))
		return nil
	default:
		return fmt.Errorf("unknown scenario %q", o.scenario)
	}
}

// rounds runs o.runs baseline/edge/baseline rounds on one world with the
// embedded NATS synced as sync says, and reports the median and spread.
func rounds(o options, sync string) ([]round, error) {
	w, stop, err := setup(o, sync)
	if err != nil {
		return nil, err
	}
	defer stop()
	ctx := context.Background()
	keepAlive := o.scenario != "newconn"
	fmt.Printf("machine: %s/%s, %d CPUs, %s; scenario %s, nats.embedded.sync %s (both sides: one server), %d senders from %d sources, %s per side, %d rounds, rate %v\n",
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), o.scenario, sync, o.conns, len(w.srcs), o.duration, o.runs, o.rate)

	// Warm both sides (TLS, connection pools, JIT-free but caches, GC
	// pacing, the stream's first blocks) for two seconds each, flat out.
	warm := options{duration: 2 * time.Second, conns: o.conns}
	wb := w.load("warm-base", w.base, warm, plain(100_000, "warmb"), keepAlive, false)
	est := wb.rps()
	if o.rate > 0 {
		est = o.rate
	}
	warmEdge, err := w.issue(int(est*2*1.5)+1000, "warme")
	if err != nil {
		return nil, err
	}
	we := w.load("warm-edge", w.edge.PublicAddr().String(), warm, warmEdge, keepAlive, false)
	fmt.Printf("warmed: baseline %.0f req/s, edge %.0f req/s\n", wb.rps(), we.rps())

	var out []round
	for i := range o.runs {
		// Tokens for this round's edge load: enough for 1.5× the best
		// rate seen (a side that runs out is reported).
		n := int(max(est, we.rps())*o.duration.Seconds()*1.5) + 1000
		if o.rate > 0 {
			n = int(o.rate*o.duration.Seconds()) + 100
		}
		tag := fmt.Sprintf("r%d", i+1)
		samples, err := w.issue(n, tag+"e")
		if err != nil {
			return nil, err
		}
		bs := plain(4*n, tag+"b")
		fmt.Printf("round %d:\n", i+1)
		b1, err := w.side(ctx, "baseline", false, o, bs, keepAlive)
		if err != nil {
			return nil, err
		}
		eq, err := w.side(ctx, "equivalent", false, o, plain(4*n, tag+"q"), keepAlive)
		if err != nil {
			return nil, err
		}
		var prof *os.File
		if o.profile != "" && i == o.runs-1 {
			if prof, err = os.Create(o.profile); err != nil {
				return nil, err
			}
			_ = pprof.StartCPUProfile(prof)
		}
		if o.memprof != "" && i == o.runs-1 {
			if err := writeAllocs(o.memprof + ".before"); err != nil {
				return nil, err
			}
		}
		var e *result
		var eerr error
		// The load generator's goroutines (and the HTTP client's, which
		// they start) carry side=client; the edge and NATS carry none.
		pprof.Do(ctx, pprof.Labels("side", "client"), func(ctx context.Context) {
			e, eerr = w.side(ctx, "edge", true, o, samples, keepAlive)
		})
		if prof != nil {
			pprof.StopCPUProfile()
			prof.Close()
		}
		if eerr != nil {
			return nil, eerr
		}
		if o.memprof != "" && i == o.runs-1 {
			if err := writeAllocs(o.memprof); err != nil {
				return nil, err
			}
		}
		var b2 *result
		if o.profile != "" && i == o.runs-1 {
			// The baseline's profile, for comparison (pprof -diff_base).
			if prof, err = os.Create(o.profile + ".baseline"); err != nil {
				return nil, err
			}
			_ = pprof.StartCPUProfile(prof)
		}
		pprof.Do(ctx, pprof.Labels("side", "client"), func(ctx context.Context) {
			b2, err = w.side(ctx, "baseline", false, o, bs[b1.sent:], keepAlive)
		})
		if o.profile != "" && i == o.runs-1 {
			pprof.StopCPUProfile()
			prof.Close()
		}
		if err != nil {
			return nil, err
		}
		r := round{edge: e, base: b1, b1: b1, b2: b2, equiv: eq}
		if b2.rps() > b1.rps() {
			r.base = b2
		}
		est = r.base.rps()
		fmt.Printf("  RATIO round %d: throughput edge/baseline = %.2f; p99 edge %s vs baseline %s (%+.2f ms)\n", i+1,
			r.ratio(), e.pct(0.99).Round(time.Microsecond), r.base.pct(0.99).Round(time.Microsecond),
			float64(e.pct(0.99)-r.base.pct(0.99))/1e6)
		fmt.Printf("  RATIO round %d: throughput edge/equivalent = %.2f, equivalent/baseline = %.2f; p99 edge %s vs equivalent %s (%+.2f ms)\n", i+1,
			e.rps()/eq.rps(), eq.rps()/r.base.rps(), e.pct(0.99).Round(time.Microsecond), eq.pct(0.99).Round(time.Microsecond),
			float64(e.pct(0.99)-eq.pct(0.99))/1e6)
		out = append(out, r)
	}
	var ratios, erps, brps, p99d, ep99, bp99, cpuR []float64
	var eqR, brokerR, eqP99d, eqCPU []float64
	for _, r := range out {
		eqR = append(eqR, r.edge.rps()/r.equiv.rps())
		brokerR = append(brokerR, r.equiv.rps()/r.base.rps())
		eqP99d = append(eqP99d, float64(r.edge.pct(0.99)-r.equiv.pct(0.99))/1e6)
		eqCPU = append(eqCPU, float64(r.edge.cpuPerReq)/float64(r.equiv.cpuPerReq))
		cpuR = append(cpuR, float64(r.edge.cpuPerReq)/float64(min(r.b1.cpuPerReq, r.b2.cpuPerReq)))
		ratios = append(ratios, r.ratio())
		erps = append(erps, r.edge.rps())
		brps = append(brps, r.base.rps())
		// p99 compared with the baseline run right before the edge's.
		bp := min(r.b1.pct(0.99), r.b2.pct(0.99))
		p99d = append(p99d, float64(r.edge.pct(0.99)-bp)/1e6)
		ep99 = append(ep99, float64(r.edge.pct(0.99))/1e6)
		bp99 = append(bp99, float64(bp)/1e6)
	}
	m, lo, hi := medianSpread(ratios)
	em, elo, ehi := medianSpread(erps)
	bm, blo, bhi := medianSpread(brps)
	fmt.Printf("SUMMARY %s sync=%s: edge %.0f req/s (%.0f–%.0f), baseline %.0f req/s (%.0f–%.0f); RATIO median %.2f (spread %.2f–%.2f; %s)\n",
		o.scenario, sync, em, elo, ehi, bm, blo, bhi, m, lo, hi, fmtList(ratios, "%.2f"))
	cm, clo, chi := medianSpread(cpuR)
	fmt.Printf("SUMMARY %s sync=%s: CPU per request (whole process, load generator included) edge/baseline median %.2f (spread %.2f–%.2f)\n",
		o.scenario, sync, cm, clo, chi)
	pm, plo, phi := medianSpread(p99d)
	epm, _, _ := medianSpread(ep99)
	bpm, _, _ := medianSpread(bp99)
	fmt.Printf("SUMMARY %s sync=%s: p99 edge %.2f ms, baseline %.2f ms (the better of the round's two); edge − baseline median %+.2f ms (spread %+.2f – %+.2f)\n",
		o.scenario, sync, epm, bpm, pm, plo, phi)
	var own99, ack99, hand99 []float64
	for _, r := range out {
		own99 = append(own99, float64(r.edge.split.own[1])/1e6)
		ack99 = append(ack99, float64(r.edge.split.ack[1])/1e6)
		hand99 = append(hand99, float64(r.edge.split.handler[1])/1e6)
	}
	om, olo, ohi := medianSpread(own99)
	am, alo, ahi := medianSpread(ack99)
	hm, hlo, hhi := medianSpread(hand99)
	fmt.Printf("SUMMARY %s sync=%s: edge's log: handler p99 median %.2f ms (%.2f–%.2f), of it the stream's ack p99 %.2f ms (%.2f–%.2f), the edge's own work p99 %.2f ms (%.2f–%.2f)\n",
		o.scenario, sync, hm, hlo, hhi, am, alo, ahi, om, olo, ohi)
	qm, qlo, qhi := medianSpread(eqR)
	bkm, bklo, bkhi := medianSpread(brokerR)
	qpm, qplo, qphi := medianSpread(eqP99d)
	qcm, qclo, qchi := medianSpread(eqCPU)
	fmt.Printf("SUMMARY %s sync=%s: edge/broker-equivalent RATIO median %.2f (spread %.2f–%.2f; %s); broker-equivalent/baseline median %.2f (spread %.2f–%.2f); p99 edge − equivalent median %+.2f ms (spread %+.2f – %+.2f); CPU per request edge/equivalent median %.2f (spread %.2f–%.2f)\n",
		o.scenario, sync, qm, qlo, qhi, fmtList(eqR, "%.2f"), bkm, bklo, bkhi, qpm, qplo, qphi, qcm, qclo, qchi)
	if o.scenario == "keepalive" {
		if err := brokerOnly(ctx, w, o); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// writeAllocs writes the process's allocation profile (cumulative since
// start) to path.
func writeAllocs(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	runtime.GC()
	return pprof.Lookup("allocs").WriteTo(f, 0)
}
