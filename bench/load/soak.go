package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/publish"
	"github.com/daraja-edge/daraja-edge/verify"
)

// soakKinds are the single-use kinds the soak issues tokens for.
var soakKinds = []daraja.Kind{daraja.STKCallback, daraja.B2CResult, daraja.B2BResult, daraja.ReversalResult,
	daraja.StatusResult, daraja.BalanceResult}

// soak issues single-use tokens at o.rate a second for o.duration, each
// living o.ttl; three in four get their callback at once, one in four stays
// silent and expires (a missing-callback event). Every minute it samples
// the edge process's RSS, goroutines and heap. At the end it compares
// minutes 10–20 with the last ten and verifies the stream: every callback
// answered 200 stored once, every silent token that expired in time has
// exactly one missing event and no callback token has one.
func soak(o options, cfg config.Config, pid int, w *world, tlsCfg *tls.Config) error {
	if o.rate <= 0 {
		return fmt.Errorf("soak needs -rate (tokens issued per second)")
	}
	ctx := context.Background()
	js, err := jetstream.New(w.nc)
	if err != nil {
		return err
	}
	clients := make([]*http.Client, o.conns)
	for i := range clients {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(w.srcs[i%len(w.srcs)])}}
		clients[i] = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, TLSClientConfig: tlsCfg}}
	}
	var (
		mu                          sync.Mutex
		sent, answered              []string                 // transaction ids
		silent                      = map[string]time.Time{} // token id → expiry
		called                      = map[string]bool{}      // token ids that got a callback
		issueErrs, sendErrs, non200 atomic.Int64
	)
	sem := make(chan struct{}, o.conns)
	var inflight sync.WaitGroup
	start := time.Now()
	end := start.Add(o.duration)
	interval := time.Duration(float64(time.Second) / o.rate)
	samples := []soakSample{}
	nextSample := start.Add(soakSampleEvery)
	admin := cfg.Admin.Listen
	fmt.Printf("SOAK %s: %.0f tokens/s issued with ttl %s, 3 in 4 called back at once, 1 in 4 left to expire; %d keep-alive senders\n",
		o.duration, o.rate, o.ttl, o.conns)
	for i := 0; ; i++ {
		due := start.Add(time.Duration(i) * interval)
		if !due.Before(end) {
			break
		}
		if now := time.Now(); now.After(nextSample) || now.Equal(nextSample) {
			s := sampleEdge(pid, admin, time.Since(start))
			samples = append(samples, s)
			if len(samples)%soakPrintEvery == 0 {
				fmt.Println(s)
			}
			nextSample = nextSample.Add(soakSampleEvery)
		}
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		k := soakKinds[i%len(soakKinds)]
		sc := "600000"
		if k == daraja.STKCallback {
			sc = "174379"
		}
		var resp verify.IssueResponse
		if err := w.request(verify.IssueRequest{Kinds: []daraja.Kind{k}, Shortcode: sc}, &resp); err != nil {
			issueErrs.Add(1)
			continue
		}
		if i%4 == 3 {
			mu.Lock()
			silent[resp.ID] = time.Now().Add(o.ttl)
			mu.Unlock()
			continue
		}
		tx := fmt.Sprintf("soak_%09d", i)
		mu.Lock()
		sent = append(sent, tx)
		called[resp.ID] = true
		mu.Unlock()
		sem <- struct{}{}
		inflight.Add(1)
		go func(c *http.Client) {
			defer inflight.Done()
			defer func() { <-sem }()
			r, err := c.Post("https://"+cfg.Listen+k.Path()+"?t="+resp.Token, "application/json", bytes.NewReader(body(k, tx)))
			if err != nil {
				sendErrs.Add(1)
				return
			}
			_, _ = io.Copy(io.Discard, r.Body)
			r.Body.Close()
			if r.StatusCode != http.StatusOK {
				non200.Add(1)
				return
			}
			mu.Lock()
			answered = append(answered, tx)
			mu.Unlock()
		}(clients[i%len(clients)])
	}
	inflight.Wait()
	for len(samples) < int(o.duration/soakSampleEvery) {
		time.Sleep(time.Until(nextSample))
		s := sampleEdge(pid, admin, time.Since(start))
		samples = append(samples, s)
		if len(samples)%soakPrintEvery == 0 {
			fmt.Println(s)
		}
		nextSample = nextSample.Add(soakSampleEvery)
	}
	fmt.Printf("SOAK issued %d tokens (%d issue errors), %d callbacks sent, %d answered 200, %d other status, %d connection errors\n",
		len(called)+len(silent), issueErrs.Load(), len(sent), len(answered), non200.Load(), sendErrs.Load())
	soakWindows(samples)

	v, err := verifyStream(ctx, js, cfg.NATS.Stream.Name, cfg.NATS.SubjectPrefix+".cb.>", 0, sent, answered)
	if err != nil {
		return err
	}
	fmt.Println(v)
	// Missing events: every silent token expired with time to spare
	// (expiry + grace + two sweeps) has exactly one; no called token has any.
	events, err := missingEvents(ctx, js, cfg)
	if err != nil {
		return err
	}
	settledBy := time.Now().Add(-20 * time.Second)
	expected, got, dups, wrong := 0, 0, 0, 0
	for id, exp := range silent {
		if exp.Before(settledBy) {
			expected++
			switch events[id] {
			case 0:
			case 1:
				got++
			default:
				got++
				dups++
			}
		}
	}
	for id := range called {
		if events[id] > 0 {
			wrong++
		}
	}
	fmt.Printf("verified missing events: %d of %d expired silent tokens have one, %d have more than one, %d called tokens have one (%d silent tokens too recent to count)\n",
		got, expected, dups, wrong, len(silent)-expected)
	if err := v.check(0.99); err != nil {
		return err
	}
	if got != expected || dups > 0 || wrong > 0 {
		return fmt.Errorf("missing events wrong: %d of %d, %d duplicated, %d for called tokens", got, expected, dups, wrong)
	}
	return nil
}

type soakSample struct {
	at         time.Duration
	rssKiB     int64
	goroutines int
	heap       float64 // heap in use, bytes
	tokens     float64 // local token copy records
}

func (s soakSample) String() string {
	return fmt.Sprintf("SOAK t=%-6s edge RSS %4d MiB, %5d goroutines, heap in use %4.0f MiB, %7.0f tokens in the local copy",
		s.at.Round(time.Second), s.rssKiB>>10, s.goroutines, s.heap/(1<<20), s.tokens)
}

func sampleEdge(pid int, admin string, at time.Duration) soakSample {
	return soakSample{at: at, rssKiB: rssKiB(pid), goroutines: goroutines(admin),
		heap: metric(admin, "go_memstats_heap_inuse_bytes"), tokens: metric(admin, "daraja_edge_token_cache_records")}
}

// soakSampleEvery is how often the soak samples the edge: several samples
// per garbage-collection cycle's worth of heap, so a window's mean does not
// hang on where in its cycle each sample fell (a minute apart, RSS and heap
// samples swung by a third with the cycle alone). One a minute is printed.
const (
	soakSampleEvery = 10 * time.Second
	soakPrintEvery  = int(time.Minute / soakSampleEvery)
)

// soakWindows compares the samples of minutes 10–20 with those of the last
// ten minutes.
func soakWindows(samples []soakSample) {
	var mid, last []soakSample
	n := len(samples)
	if n == 0 {
		fmt.Println("SOAK no samples")
		return
	}
	end := samples[n-1].at
	for _, s := range samples {
		switch {
		case s.at > end-10*time.Minute:
			last = append(last, s)
		case s.at > 10*time.Minute && s.at <= 20*time.Minute:
			mid = append(mid, s)
		}
	}
	if len(mid) == 0 || len(last) == 0 {
		fmt.Printf("SOAK too short for the minutes 10–20 vs last 10 comparison (%d samples)\n", n)
		return
	}
	mean := func(ss []soakSample, f func(soakSample) float64) float64 {
		t := 0.0
		for _, s := range ss {
			t += f(s)
		}
		return t / float64(len(ss))
	}
	for _, m := range []struct {
		name string
		f    func(soakSample) float64
	}{
		{"RSS MiB", func(s soakSample) float64 { return float64(s.rssKiB) / 1024 }},
		{"goroutines", func(s soakSample) float64 { return float64(s.goroutines) }},
		{"heap in use MiB", func(s soakSample) float64 { return s.heap / (1 << 20) }},
		{"local token copy records", func(s soakSample) float64 { return s.tokens }},
	} {
		a, b := mean(mid, m.f), mean(last, m.f)
		fmt.Printf("SOAK %-24s minutes 10–20 mean %9.1f, last 10 minutes mean %9.1f: %+.1f%%\n", m.name, a, b, 100*(b-a)/a)
	}
}

// missingEvents counts the missing events on the stream by token id.
func missingEvents(ctx context.Context, js jetstream.JetStream, cfg config.Config) (map[string]int, error) {
	s, err := js.Stream(ctx, cfg.NATS.Stream.Name)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{cfg.NATS.SubjectPrefix + ".missing.>"}})
	if err != nil {
		return nil, err
	}
	for {
		batch, err := cons.Fetch(2000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			out[m.Headers().Get(publish.HeaderTokenID)]++
		}
		if n == 0 {
			return out, nil
		}
	}
}

// refusedCPU measures the edge process's CPU (utime + stime from
// /proc/<pid>/stat) per accepted callback, on kept-alive and on new TLS
// connections, and per connection from a source outside the allowlist
// (127.0.0.1, no trusted proxies).
func refusedCPU(o options, cfg config.Config, pid int, w *world, tlsCfg *tls.Config) error {
	ctx := context.Background()
	js, err := jetstream.New(w.nc)
	if err != nil {
		return err
	}
	n := int(o.duration.Seconds() * 6000)
	samples, err := w.issueSingle(n, "cpu")
	if err != nil {
		return err
	}
	// Warm: a second of accepted callbacks.
	warm := w.loadAt("warm", cfg.Listen, tlsCfg, options{duration: time.Second, conns: o.conns}, samples, true, false)
	rest := samples[warm.sent:]
	measure := func(name string, keepAlive, stranger bool, ss []sample) (*result, float64, error) {
		after, err := lastSeq(ctx, js, cfg.NATS.Stream.Name)
		if err != nil {
			return nil, 0, err
		}
		c0 := cpuTicks(pid)
		r := w.loadAt(name, cfg.Listen, tlsCfg, o, ss, keepAlive, stranger)
		c1 := cpuTicks(pid)
		count := r.ok
		if stranger {
			count = r.sent
			fmt.Println(r)
			return r, float64(c1-c0) * 1e6 / clockTicks / float64(max(1, count)), nil
		}
		v, err := verifyStream(ctx, js, cfg.NATS.Stream.Name, cfg.NATS.SubjectPrefix+".cb.>", after, r.sentIDs, r.okIDs)
		if err != nil {
			return nil, 0, err
		}
		fmt.Println(r)
		fmt.Println(v)
		if err := v.check(0.98); err != nil {
			return nil, 0, err
		}
		return r, float64(c1-c0) * 1e6 / clockTicks / float64(max(1, count)), nil
	}
	ka, kaCPU, err := measure("accepted", true, false, rest)
	if err != nil {
		return err
	}
	rest = rest[ka.sent:]
	nc, ncCPU, err := measure("acc-newconn", false, false, rest)
	if err != nil {
		return err
	}
	_ = nc
	strangers := make([]sample, 2_000_000)
	for i := range strangers {
		strangers[i] = sample{kind: daraja.STKCallback, token: "not-a-token", body: body(daraja.STKCallback, "x"), tx: "x"}
	}
	rej, rejCPU, err := measure("refused", false, true, strangers)
	if err != nil {
		return err
	}
	how := "answered 403 after the TLS handshake (not refused at accept: proxy.RefuseAtAccept is not wired into edge/edge.go)"
	if rej.errors["conn"] > rej.sent/2 {
		how = "closed at accept, before the TLS handshake"
	}
	fmt.Printf("CPU edge process per accepted callback: %.0f µs kept-alive, %.0f µs on a new TLS connection; per refused connection %.0f µs (%s)\n",
		kaCPU, ncCPU, rejCPU, how)
	fmt.Printf("RATIO refused/accepted CPU = %.3f (kept-alive accepted), %.3f (new-connection accepted); target ≤ 0.1\n",
		rejCPU/kaCPU, rejCPU/ncCPU)
	return nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times (100 on Linux).
const clockTicks = 100

// cpuTicks is the process's utime + stime in clock ticks.
func cpuTicks(pid int) int64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+2:])
	// fields after the name: state(0) ... utime(11) stime(12)
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}
