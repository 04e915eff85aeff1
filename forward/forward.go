// Package forward delivers vetted callbacks from the stream to the apps
// that handle them, over HTTP, signed as Standard Webhooks: one durable
// consumer per destination shared by every replica, retries on a
// schedule through JetStream redelivery, dead letters, a circuit breaker,
// and the apps' answers to C2B validation. The request path never waits
// for it.
package forward

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/publish"
	"github.com/daraja-edge/daraja-edge/verify"
)

// HeaderAttempts is the dead letter's attempt history (JSON array of
// Attempt); HeaderDestination and HeaderSequence name its destination and
// the callback's stream sequence.
const (
	HeaderAttempts    = "Daraja-Forward-Attempts"
	HeaderDestination = "Daraja-Forward-Destination"
	HeaderSequence    = "Daraja-Forward-Sequence"
)

// maxAnswerBytes is how much of an app's answer is read.
const maxAnswerBytes = 64 << 10

// Tokens reads a token record, for its forward_path (*verify.Store).
type Tokens interface {
	Get(ctx context.Context, id string) (verify.Record, error)
}

// Options configures a Forwarder.
type Options struct {
	JS jetstream.JetStream
	// Stream is the callback stream's name (nats.stream.name).
	Stream string
	// Prefix is nats.subject_prefix.
	Prefix       string
	Destinations []config.Destination
	// Tokens gives each token's forward_path; nil: paths only.
	Tokens Tokens
	// Fallback is the validation fallback of a shortcode, "accept" or
	// "reject" (config.Config.ValidationFallback).
	Fallback func(shortcode string) string
	// HistoryTTL is how long delivery records are kept. Default 720h.
	HistoryTTL time.Duration
	// Replicas of the deliveries bucket and the replay stream. Default 1.
	Replicas int
	Log      *zap.Logger
}

// Forwarder delivers callbacks to every configured destination. It is a
// prometheus.Collector of its metrics.
type Forwarder struct {
	o     Options
	log   *zap.Logger
	m     *metrics
	dests []*dest
	hist  history

	mu     sync.Mutex
	cancel context.CancelFunc
	wg     sync.WaitGroup // consumers and their attempts
	lag    sync.WaitGroup // lag watchers
	stops  []func()
}

// dest is one destination at run time.
type dest struct {
	f       *Forwarder
	cfg     config.Destination
	base    *url.URL
	client  *http.Client
	sign    signer
	circuit *circuit
	limit   *rate.Limiter // nil: unlimited
	ackWait time.Duration
	sem     chan struct{}
	cons    jetstream.Consumer
}

// New checks and prepares the destinations (secrets, TLS files, URLs); it
// does no network I/O.
func New(o Options) (*Forwarder, error) {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.HistoryTTL <= 0 {
		o.HistoryTTL = 720 * time.Hour
	}
	if o.Replicas < 1 {
		o.Replicas = 1
	}
	f := &Forwarder{o: o, log: o.Log.Named("forward"), m: newMetrics()}
	for _, c := range o.Destinations {
		u, err := url.Parse(c.URL)
		if err != nil {
			return nil, fmt.Errorf("forward: destination %s: url does not parse", c.Name)
		}
		cl, err := newClient(c)
		if err != nil {
			return nil, err
		}
		s, err := newSigner(c.Secrets)
		if err != nil {
			return nil, fmt.Errorf("forward: destination %s: %w", c.Name, err)
		}
		d := &dest{f: f, cfg: c, base: u, client: cl, sign: s, ackWait: c.Timeout + 15*time.Second,
			sem: make(chan struct{}, c.Concurrency)}
		name := c.Name
		d.circuit = newCircuit(c.Circuit.Failures, c.Circuit.Probe, c.Concurrency, func(open bool) {
			v := 0.0
			if open {
				v = 1
				f.log.Error("destination down: circuit open, attempts paused", zap.String("destination", name))
			} else {
				f.log.Info("destination back: circuit closed, catching up", zap.String("destination", name))
			}
			f.m.circuit.WithLabelValues(name).Set(v)
		})
		if c.Rate > 0 {
			d.limit = rate.NewLimiter(rate.Limit(c.Rate), 1)
		}
		f.m.circuit.WithLabelValues(name).Set(0)
		f.dests = append(f.dests, d)
	}
	return f, nil
}

// ConsumerName is the durable consumer of a destination.
func ConsumerName(dest string) string { return "forward_" + dest }

// DeadLetterSubject is <prefix>.dlq.<destination>.<kind>.<shortcode>.
func DeadLetterSubject(prefix, dest, kind, shortcode string) string {
	return prefix + ".dlq." + dest + "." + kind + "." + shortcode
}

// DeadLetterMsgID is dlq:<destination>:<the callback's Nats-Msg-Id>.
func DeadLetterMsgID(dest, msgID string) string { return "dlq:" + dest + ":" + msgID }

func (f *Forwarder) replayStream() string          { return f.o.Stream + "_FORWARD_REPLAY" }
func (f *Forwarder) replaySubject(d string) string { return f.o.Prefix + ".forward.replay." + d }

// filters are the consumer's filter subjects.
func (d *dest) filters() []string {
	scs := d.cfg.Shortcodes
	if len(scs) == 0 {
		scs = []string{"*"}
	}
	var out []string
	for _, k := range d.cfg.Kinds {
		if k == string(daraja.C2BValidation) {
			continue
		}
		for _, sc := range scs {
			out = append(out, d.f.o.Prefix+".cb."+k+"."+sc+".*")
		}
	}
	return out
}

// Start creates the deliveries bucket, the replay stream and each
// destination's durable consumers (new consumers start at new callbacks),
// and delivers until Stop or ctx ends.
func (f *Forwarder) Start(ctx context.Context) error {
	if len(f.dests) == 0 {
		return nil
	}
	js := f.o.JS
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucketName(f.o.Prefix),
		Description: "daraja-edge: delivery state and attempt history per destination", History: 1,
		TTL: f.o.HistoryTTL, Storage: jetstream.FileStorage, Replicas: f.o.Replicas})
	if err != nil {
		return fmt.Errorf("forward: deliveries bucket: %w", err)
	}
	f.hist = history{kv: kv}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: f.replayStream(),
		Description: "daraja-edge: replay requests for the forwarder", Subjects: []string{f.o.Prefix + ".forward.replay.>"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, Replicas: f.o.Replicas}); err != nil {
		return fmt.Errorf("forward: replay stream: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	lagCtx, lagCancel := context.WithCancel(ctx)
	f.mu.Lock()
	f.cancel = cancel
	f.stops = append(f.stops, lagCancel)
	f.mu.Unlock()
	for _, d := range f.dests {
		cc := jetstream.ConsumerConfig{Durable: ConsumerName(d.cfg.Name), Description: "daraja-edge forwarder: " + d.cfg.Name,
			FilterSubjects: d.filters(), AckPolicy: jetstream.AckExplicitPolicy, AckWait: d.ackWait,
			MaxAckPending: d.cfg.Concurrency, MaxDeliver: -1, DeliverPolicy: jetstream.DeliverNewPolicy}
		cons, err := js.CreateOrUpdateConsumer(ctx, f.o.Stream, cc)
		if err != nil {
			cancel()
			return fmt.Errorf("forward: consumer for %s: %w", d.cfg.Name, err)
		}
		d.cons = cons
		rc := jetstream.ConsumerConfig{Durable: ConsumerName(d.cfg.Name) + "_replay", FilterSubject: f.replaySubject(d.cfg.Name),
			AckPolicy: jetstream.AckExplicitPolicy, AckWait: d.ackWait, MaxAckPending: d.cfg.Concurrency, MaxDeliver: -1}
		rcons, err := js.CreateOrUpdateConsumer(ctx, f.replayStream(), rc)
		if err != nil {
			cancel()
			return fmt.Errorf("forward: replay consumer for %s: %w", d.cfg.Name, err)
		}
		for _, c := range []struct {
			cons   jetstream.Consumer
			replay bool
		}{{cons, false}, {rcons, true}} {
			it, err := c.cons.Messages(jetstream.PullMaxMessages(d.cfg.Concurrency))
			if err != nil {
				cancel()
				return fmt.Errorf("forward: consume for %s: %w", d.cfg.Name, err)
			}
			f.mu.Lock()
			f.stops = append(f.stops, it.Stop)
			f.mu.Unlock()
			f.wg.Add(1)
			go func() { defer f.wg.Done(); d.run(ctx, it, c.replay) }()
		}
		f.lag.Add(1)
		go func() { defer f.lag.Done(); d.watchLag(lagCtx) }()
	}
	return nil
}

// Stop stops fetching and waits for attempts in flight, at most until ctx
// ends; a callback left unacknowledged is redelivered (here or at another
// replica) after its ack wait. Safe twice.
func (f *Forwarder) Stop(ctx context.Context) {
	f.mu.Lock()
	stops, cancel := f.stops, f.cancel
	f.stops = nil
	f.mu.Unlock()
	for _, s := range stops {
		s()
	}
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	if cancel != nil {
		cancel()
	}
	<-done
	f.lag.Wait()
}

// run hands each message to a worker, at most concurrency at once.
func (d *dest) run(ctx context.Context, it jetstream.MessagesContext, replay bool) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		m, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				return
			}
			d.f.log.Warn("forward: fetch", zap.String("destination", d.cfg.Name), zap.Error(err))
			continue
		}
		select {
		case d.sem <- struct{}{}:
		case <-ctx.Done():
			_ = m.Nak()
			return
		}
		wg.Add(1)
		go func() {
			defer func() { <-d.sem; wg.Done() }()
			d.handle(ctx, m, replay)
		}()
	}
}

// callback is a stored callback being delivered.
type callback struct {
	seq    uint64
	header nats.Header
	body   []byte
	stored time.Time
	// replayID names the replay request that brought it, if any.
	replayID string
}

func (c *callback) get(k string) string { return c.header.Get(k) }

// load turns a consumer message into the callback it delivers: itself,
// or for a replay request the stream message it names.
func (d *dest) load(ctx context.Context, m jetstream.Msg, replay bool) (*callback, error) {
	if !replay {
		md, err := m.Metadata()
		if err != nil {
			return nil, fmt.Errorf("forward: metadata: %w", err)
		}
		return &callback{seq: md.Sequence.Stream, header: m.Headers(), body: m.Data(), stored: md.Timestamp}, nil
	}
	var rq replayRequest
	if err := json.Unmarshal(m.Data(), &rq); err != nil || rq.Sequence == 0 {
		return nil, fmt.Errorf("forward: replay request unreadable: %v", err)
	}
	seq := rq.Sequence
	s, err := d.f.o.JS.Stream(ctx, d.f.o.Stream)
	if err != nil {
		return nil, fmt.Errorf("forward: stream: %w", err)
	}
	raw, err := s.GetMsg(ctx, seq)
	if err != nil {
		return nil, fmt.Errorf("forward: replay of sequence %d: %w", seq, err)
	}
	return &callback{seq: seq, header: raw.Header, body: raw.Data, stored: raw.Time, replayID: rq.ID}, nil
}

// handle makes at most one attempt for m and settles it: ack when
// delivered, redelivery after the schedule's wait when not, a dead letter
// and term after the last attempt.
func (d *dest) handle(ctx context.Context, m jetstream.Msg, replay bool) {
	log := d.f.log.With(zap.String("destination", d.cfg.Name))
	cb, err := d.load(ctx, m, replay)
	if err != nil {
		log.Error("forward: cannot read callback; dropped", zap.Error(err))
		_ = m.Term()
		return
	}
	msgID := cb.get(publish.HeaderMsgID)
	kind := cb.get(publish.HeaderKind)
	tx := cb.get(publish.HeaderTransactionID)
	log = log.With(zap.Uint64("sequence", cb.seq), zap.String("kind", kind),
		zap.String("transaction_id", daraja.MaskTransactionID(daraja.Kind(kind), tx)))
	rec, found, err := d.f.hist.get(ctx, deliveryKey(d.cfg.Name, tx, cb.seq))
	if err != nil {
		log.Warn("forward: delivery record unreadable; retrying", zap.Error(err))
		_ = m.NakWithDelay(time.Second)
		return
	}
	if !found {
		rec = Delivery{Destination: d.cfg.Name, Sequence: cb.seq, MsgID: msgID, Kind: kind,
			Shortcode: cb.get(publish.HeaderShortcode), TransactionID: tx, State: StatePending}
	}
	if replay && rec.ReplayID != cb.replayID {
		// A new replay request starts a new round of the schedule.
		rec.RoundStart, rec.State, rec.Replays, rec.ReplayID = len(rec.Attempts), StatePending, rec.Replays+1, cb.replayID
	}
	switch rec.State {
	case StateDelivered:
		_ = m.Ack() // delivered before; the ack was lost
		return
	case StateDead:
		_ = m.Term()
		return
	}
	n := len(rec.Attempts) - rec.RoundStart
	retry := d.cfg.Retry
	if n >= len(retry) {
		d.deadLetter(ctx, m, cb, rec, log)
		return
	}
	if n == 0 && retry[0] > 0 && !replay {
		if wait := time.Until(cb.stored.Add(retry[0])); wait > 0 {
			_ = m.NakWithDelay(wait)
			return
		}
	}
	stop := d.keepAlive(m)
	probe, err := d.circuit.acquire(ctx)
	if err == nil && d.limit != nil {
		if err = d.limit.Wait(ctx); err != nil {
			d.circuit.release(true, probe) // no attempt made
		}
	}
	if err != nil {
		stop()
		_ = m.Nak() // shutting down: another replica takes it now
		return
	}
	att, retryAfter := d.attempt(ctx, cb)
	ok := att.Status >= 200 && att.Status < 300
	d.circuit.release(ok, probe)
	stop()
	if len(rec.Attempts) > 0 {
		d.f.m.redelivered.WithLabelValues(d.cfg.Name).Inc()
	}
	rec.Attempts = append(rec.Attempts, att)
	n++
	if ok {
		rec.State, rec.NextAt = StateDelivered, time.Time{}
		if err := d.f.hist.put(ctx, rec); err != nil {
			log.Warn("forward: delivered, record not written", zap.Error(err))
		}
		if err := m.DoubleAck(ctx); err != nil {
			log.Warn("forward: delivered, ack not confirmed (a redelivery finds the record)", zap.Error(err))
		}
		return
	}
	log.Warn("forward: attempt failed", zap.Int("attempt", n), zap.Int("status", att.Status), zap.String("error", att.Error))
	if n >= len(retry) {
		d.deadLetter(ctx, m, cb, rec, log)
		return
	}
	wait := jitter(retry[n])
	if retryAfter > wait {
		wait = min(retryAfter, max(d.cfg.RetryAfterCap, wait))
	}
	rec.NextAt = time.Now().Add(wait)
	if err := d.f.hist.put(ctx, rec); err != nil {
		log.Warn("forward: attempt not recorded", zap.Error(err))
	}
	_ = m.NakWithDelay(wait)
}

// jitter spreads a non-zero wait by ±20 %.
func jitter(w time.Duration) time.Duration {
	if w <= 0 {
		return 0
	}
	return time.Duration(float64(w) * (0.8 + 0.4*rand.Float64()))
}

// keepAlive tells the server the message is being worked on, every third
// of the ack wait, until stop.
func (d *dest) keepAlive(m jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	var once sync.Once
	go func() {
		t := time.NewTicker(d.ackWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = m.InProgress()
			}
		}
	}()
	return func() { once.Do(func() { close(done) }) }
}

// deadLetter publishes the callback to its dead-letter subject with its
// attempt history, then terms it; if the stream refuses, the message
// comes back later and tries again.
func (d *dest) deadLetter(ctx context.Context, m jetstream.Msg, cb *callback, rec Delivery, log *zap.Logger) {
	hist, _ := json.Marshal(rec.Attempts[rec.RoundStart:])
	h := nats.Header{}
	for k, v := range cb.header {
		if strings.HasPrefix(k, "Daraja-") {
			h[k] = v
		}
	}
	h.Set(publish.HeaderMsgID, DeadLetterMsgID(d.cfg.Name, rec.MsgID))
	h.Set(HeaderAttempts, string(hist))
	h.Set(HeaderDestination, d.cfg.Name)
	h.Set(HeaderSequence, strconv.FormatUint(cb.seq, 10))
	subj := DeadLetterSubject(d.f.o.Prefix, d.cfg.Name, rec.Kind, rec.Shortcode)
	if _, err := d.f.o.JS.PublishMsg(ctx, &nats.Msg{Subject: subj, Header: h, Data: cb.body}); err != nil {
		log.Error("forward: dead letter not stored; retrying", zap.Error(err))
		_ = m.NakWithDelay(5 * time.Second)
		return
	}
	rec.State, rec.NextAt = StateDead, time.Time{}
	if err := d.f.hist.put(ctx, rec); err != nil {
		log.Warn("forward: dead letter stored, record not written", zap.Error(err))
	}
	d.f.m.dead.WithLabelValues(d.cfg.Name).Inc()
	log.Error("forward: callback not delivered after every attempt; dead-lettered",
		zap.Int("attempts", len(rec.Attempts)-rec.RoundStart), zap.String("subject", subj))
	_ = m.Term()
}

// target is the URL of a callback: url + paths[kind], or + the token's
// forward_path (its path appended, its query merged).
func (d *dest) target(ctx context.Context, cb *callback) (string, error) {
	u := *d.base
	extra := d.cfg.Paths[cb.get(publish.HeaderKind)]
	var q url.Values
	if tid := cb.get(publish.HeaderTokenID); tid != "" && d.f.o.Tokens != nil {
		rec, err := d.f.o.Tokens.Get(ctx, tid)
		switch {
		case err == nil && rec.ForwardPath != "":
			fp, perr := url.Parse(rec.ForwardPath)
			if perr != nil {
				return "", fmt.Errorf("token forward_path does not parse")
			}
			extra, q = fp.Path, fp.Query()
		case err != nil && !errors.Is(err, verify.ErrNotFound):
			return "", fmt.Errorf("token store: %w", err)
		}
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + extra
	u.RawPath = ""
	if len(q) > 0 {
		base := u.Query()
		for k, vs := range q {
			base[k] = append(base[k], vs...)
		}
		u.RawQuery = base.Encode()
	}
	return u.String(), nil
}

// request builds a signed POST of body to target.
func (d *dest) request(ctx context.Context, target string, cb *callback) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(cb.body))
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	for k, v := range d.cfg.Headers {
		req.Header.Set(k, v)
	}
	for k, v := range cb.header {
		if strings.HasPrefix(k, "Daraja-") && k != publish.HeaderEdge {
			req.Header[k] = v
		}
	}
	id := WebhookID(cb.get(publish.HeaderMsgID))
	ts := time.Now().Unix()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "daraja-edge-forwarder")
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
	req.Header.Set("webhook-signature", d.sign.sign(id, ts, cb.body))
	if d.cfg.ForwardedFor {
		if ip := cb.get(publish.HeaderSourceIP); ip != "" {
			req.Header.Set("X-Forwarded-For", ip)
		}
	}
	return req, nil
}

// attempt POSTs the callback once; retryAfter is the answer's Retry-After.
func (d *dest) attempt(ctx context.Context, cb *callback) (Attempt, time.Duration) {
	att := Attempt{At: time.Now().UTC()}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	target, err := d.target(ctx, cb)
	if err != nil {
		att.Error = err.Error()
		d.f.m.attempts.WithLabelValues(d.cfg.Name, "network_error").Inc()
		return att, 0
	}
	req, err := d.request(ctx, target, cb)
	if err != nil {
		att.Error = err.Error()
		return att, 0
	}
	resp, err := d.client.Do(req)
	d.f.m.seconds.WithLabelValues(d.cfg.Name).Observe(time.Since(t0).Seconds())
	if err != nil {
		att.Error = errorText(err)
		d.f.m.attempts.WithLabelValues(d.cfg.Name, "network_error").Inc()
		return att, 0
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswerBytes))
	_ = resp.Body.Close()
	att.Status = resp.StatusCode
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		d.f.m.attempts.WithLabelValues(d.cfg.Name, "delivered").Inc()
		return att, 0
	}
	att.Error = "HTTP " + strconv.Itoa(resp.StatusCode)
	d.f.m.attempts.WithLabelValues(d.cfg.Name, "http_error").Inc()
	return att, retryAfter(resp.Header.Get("Retry-After"), time.Now())
}

// errorText is an error without the URL (a forward_path query may hold
// the app's own secrets).
func errorText(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	s := err.Error()
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// retryAfter reads a Retry-After value: seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
		if s <= 0 {
			return 0
		}
		return time.Duration(min(s, 1<<31)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// watchLag keeps the lag gauge: callbacks pending and in flight.
func (d *dest) watchLag(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		if info, err := d.cons.Info(ctx); err == nil {
			d.f.m.lag.WithLabelValues(d.cfg.Name).Set(float64(info.NumPending + uint64(info.NumAckPending)))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
