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
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
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
	"github.com/daraja-edge/daraja-edge/internal/inprogress"
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

	// now is the clock of leases, schedules and the rate limit; lagEvery
	// how often the lag gauge is read (tests shorten it).
	now      func() time.Time
	lagEvery time.Duration

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
	// slots bound the attempts in flight (concurrency), the main and the
	// replay consumer together.
	slots chan struct{}
	cons  jetstream.Consumer
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
	f := &Forwarder{o: o, log: o.Log.Named("forward"), m: newMetrics(), now: time.Now, lagEvery: 5 * time.Second}
	for _, c := range o.Destinations {
		u, err := url.Parse(c.URL)
		if err != nil {
			return nil, fmt.Errorf("forward: destination %s: url does not parse", c.Name)
		}
		cl, err := newClient(c)
		if err != nil {
			return nil, err
		}
		secrets, err := c.SigningSecrets() // secrets, then secrets_file's
		if err != nil {
			return nil, fmt.Errorf("forward: destination %s: %w", c.Name, err)
		}
		s, err := newSigner(secrets)
		if err != nil {
			return nil, fmt.Errorf("forward: destination %s: %w", c.Name, err)
		}
		d := &dest{f: f, cfg: c, base: u, client: cl, sign: s, ackWait: c.Timeout + 15*time.Second,
			slots: make(chan struct{}, c.Concurrency)}
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
			MaxAckPending: d.maxAckPending(), MaxDeliver: -1, DeliverPolicy: jetstream.DeliverNewPolicy}
		cons, err := js.CreateOrUpdateConsumer(ctx, f.o.Stream, cc)
		if err != nil {
			cancel()
			return fmt.Errorf("forward: consumer for %s: %w", d.cfg.Name, err)
		}
		d.cons = cons
		rc := jetstream.ConsumerConfig{Durable: ConsumerName(d.cfg.Name) + "_replay", FilterSubject: f.replaySubject(d.cfg.Name),
			AckPolicy: jetstream.AckExplicitPolicy, AckWait: d.ackWait, MaxAckPending: d.maxAckPending(), MaxDeliver: -1}
		rcons, err := js.CreateOrUpdateConsumer(ctx, f.replayStream(), rc)
		if err != nil {
			cancel()
			return fmt.Errorf("forward: replay consumer for %s: %w", d.cfg.Name, err)
		}
		for _, c := range []struct {
			cons   jetstream.Consumer
			replay bool
		}{{cons, false}, {rcons, true}} {
			fetching, stopFetching := context.WithCancel(ctx)
			f.mu.Lock()
			f.stops = append(f.stops, stopFetching)
			f.mu.Unlock()
			f.wg.Add(1)
			sem := make(chan struct{}, d.cfg.Concurrency)
			go func() { defer f.wg.Done(); d.run(ctx, fetching, c.cons, c.replay, sem) }()
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

// run takes a worker slot, then fetches one message for it and keeps it
// alive (in-progress acks) from the moment it arrives: a message waiting
// for the breaker or the rate limit never passes its ack wait, and no
// message waits unheld in a client buffer while every slot is busy (the
// consumer's pending bound is far above concurrency, for the callbacks
// waiting for their next attempt), so the server never hands it to another
// worker while it is held here. Fetching stops when fetching ends; the
// attempts in flight go on until ctx ends.
func (d *dest) run(ctx, fetching context.Context, cons jetstream.Consumer, replay bool, sem chan struct{}) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case sem <- struct{}{}:
		case <-fetching.Done():
			return
		}
		m, err := d.fetchOne(fetching, cons)
		if m == nil {
			<-sem
			if fetching.Err() != nil {
				return
			}
			if err != nil {
				d.f.log.Warn("forward: fetch", zap.String("destination", d.cfg.Name), zap.Error(err))
				select {
				case <-time.After(time.Second):
				case <-fetching.Done():
					return
				}
			}
			continue
		}
		stop := d.keepAlive(m)
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			d.handle(ctx, m, replay, stop)
		}()
	}
}

// fetchOne waits for the next message (nil when none came before the pull
// request expired, or ctx ended).
func (d *dest) fetchOne(ctx context.Context, cons jetstream.Consumer) (jetstream.Msg, error) {
	batch, err := cons.Fetch(1, jetstream.FetchContext(ctx))
	if err != nil {
		return nil, err
	}
	for m := range batch.Messages() {
		return m, nil
	}
	if err := batch.Error(); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, nats.ErrTimeout) {
		return nil, err
	}
	return nil, nil
}

// maxWaiting is how many callbacks of a destination may wait for their
// next attempt (a delayed redelivery the server counts as pending) before
// the consumer stops handing out new ones.
const maxWaiting = 10000

// maxAckPending is the consumer's bound on unacknowledged messages: the
// attempts in flight (concurrency, which the worker slots bound) plus the
// callbacks waiting for their next attempt. Bounded to concurrency alone,
// a few callbacks the app keeps refusing held every slot through their
// schedule's waits and nothing else was delivered.
func (d *dest) maxAckPending() int { return d.cfg.Concurrency + maxWaiting }

// callback is a stored callback being delivered.
type callback struct {
	seq    uint64
	header nats.Header
	body   []byte
	stored time.Time
	// replayID names the replay request that brought it, if any.
	replayID string
}

// forwards reports whether subject is a callback d delivers: one its
// consumer's filter subjects take.
func (d *dest) forwards(subject string) bool {
	return slices.ContainsFunc(d.filters(), func(f string) bool { return subjectMatches(f, subject) })
}

// subjectMatches reports whether subject matches filter, whose "*" tokens
// match any one token (the filters here use no ">").
func subjectMatches(filter, subject string) bool {
	ft, st := strings.Split(filter, "."), strings.Split(subject, ".")
	if len(ft) != len(st) {
		return false
	}
	for i, t := range ft {
		if t != "*" && t != st[i] {
			return false
		}
	}
	return true
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
	if !d.forwards(raw.Subject) {
		return nil, fmt.Errorf("forward: replay of sequence %d: %w (%s)", seq, ErrNotForwarded, raw.Subject)
	}
	return &callback{seq: seq, header: raw.Header, body: raw.Data, stored: raw.Time, replayID: rq.ID}, nil
}

// action is what a worker does with a callback, given its record.
type action int

const (
	actAttempt action = iota // make an attempt now
	actAck                   // delivered before (the ack was lost)
	actTerm                  // dead-lettered before
	actDead                  // every attempt of the round made: dead-letter it
	actWait                  // not yet: redeliver after the wait
)

// newRecord is the record of a callback's first attempt.
func (d *dest) newRecord(cb *callback) Delivery {
	return Delivery{Destination: d.cfg.Name, Sequence: cb.seq, MsgID: cb.get(publish.HeaderMsgID), Kind: cb.get(publish.HeaderKind),
		Shortcode: cb.get(publish.HeaderShortcode), TransactionID: cb.get(publish.HeaderTransactionID), State: StatePending}
}

// decide reads rec at now: a replay request not seen before starts a new
// round of the schedule in rec, once a round under way has ended; a lease
// of another attempt, the first entry of the schedule and the next
// attempt's time (NextAt, kept across replicas) make it wait.
func (d *dest) decide(rec *Delivery, cb *callback, replay bool, holder string, now time.Time) (action, time.Duration) {
	if replay && rec.ReplayID != cb.replayID {
		if rec.State == StatePending && d.roundDriven(rec, holder, now) {
			// Another round is under way (an attempt in flight, or the
			// next one due): this replay's round starts after it ends.
			// Two requests for one callback took turns resetting each
			// other's round, which then never ended.
			return actWait, min(max(rec.NextAt.Sub(now), time.Second), 30*time.Second)
		}
		rec.RoundStart, rec.State, rec.Replays, rec.ReplayID = len(rec.Attempts), StatePending, rec.Replays+1, cb.replayID
		rec.NextAt = time.Time{}
	}
	switch rec.State {
	case StateDelivered:
		return actAck, 0
	case StateDead:
		return actTerm, 0
	}
	if rec.leased(holder, now) {
		// Polled: the lease ends early when its attempt does.
		return actWait, min(rec.Lease.Sub(now)+100*time.Millisecond, time.Second)
	}
	retry := d.cfg.Retry
	n := len(rec.Attempts) - rec.RoundStart
	switch {
	case n >= len(retry):
		return actDead, 0
	case n == 0 && !replay && retry[0] > 0:
		if w := cb.stored.Add(retry[0]).Sub(now); w > 0 {
			return actWait, w
		}
	case now.Before(rec.NextAt):
		return actWait, rec.NextAt.Sub(now)
	}
	return actAttempt, 0
}

// leaseMargin is how much longer than the attempt's own timeout its lease
// lasts.
const leaseMargin = 5 * time.Second

// claim decides again just before an attempt, on the record read at rev
// (0: none), and when the answer is still "attempt" writes it back holding
// a lease for holder, compare-and-set: of two workers with the same
// callback (a redelivery, a replay), one attempts and the other waits. A
// record changed since it was read is read again.
func (d *dest) claim(ctx context.Context, key string, cb *callback, replay bool, holder string, rec Delivery, rev uint64) (Delivery, uint64, action, time.Duration, error) {
	for i := range 5 {
		if i > 0 {
			var err error
			if rec, rev, err = d.f.hist.get(ctx, key); err != nil {
				return rec, 0, 0, 0, err
			}
		}
		if rev == 0 {
			rec = d.newRecord(cb)
		}
		now := d.f.now()
		act, wait := d.decide(&rec, cb, replay, holder, now)
		if act != actAttempt {
			return rec, rev, act, wait, nil
		}
		rec.Holder, rec.Lease = holder, now.Add(d.cfg.Timeout+leaseMargin)
		n, err := d.f.hist.write(ctx, rec, rev)
		if errors.Is(err, errConflict) {
			continue
		}
		return rec, n, act, 0, err
	}
	return Delivery{}, 0, 0, 0, errConflict
}

// record adds att to the record claimed at rev, frees the lease and sets
// the state (delivered) or the next attempt's time; when the record
// changed meanwhile (a takeover after the lease ran out) it adds att to
// what is there now, so no attempt is ever lost from the history.
func (d *dest) record(ctx context.Context, key string, cb *callback, rec Delivery, rev uint64, holder string, att Attempt, ok bool, wait time.Duration) (Delivery, uint64, error) {
	for i := 0; ; i++ {
		rec.Attempts = append(rec.Attempts, att)
		if rec.Holder == holder {
			rec.Holder, rec.Lease = "", time.Time{}
		}
		switch {
		case ok:
			rec.State, rec.NextAt = StateDelivered, time.Time{}
		case rec.State == StatePending:
			rec.NextAt = d.f.now().Add(wait)
		}
		n, err := d.f.hist.write(ctx, rec, rev)
		if !errors.Is(err, errConflict) || i == 4 {
			return rec, n, err
		}
		if rec, rev, err = d.f.hist.get(ctx, key); err != nil {
			return rec, 0, err
		}
		if rev == 0 {
			rec = d.newRecord(cb)
		}
	}
}

// roundDriven reports whether a pending record's round has a worker on it:
// another's attempt in flight (its lease), or the next attempt due soon
// enough that its message is still coming back for it. A pending record
// nobody came back to (its last write lost) is not: a replay takes it over.
func (d *dest) roundDriven(rec *Delivery, holder string, now time.Time) bool {
	return rec.leased(holder, now) || (!rec.NextAt.IsZero() && now.Before(rec.NextAt.Add(d.ackWait)))
}

// recordDelivered writes a delivered attempt whose first write failed
// (the bucket out of reach), trying again with backoff until it takes or
// ctx ends; a record already saying delivered (the failed write took
// after all) is left as it is.
func (d *dest) recordDelivered(ctx context.Context, key string, cb *callback, holder string, att Attempt) (Delivery, uint64, error) {
	var rec Delivery
	var rev uint64
	err := errors.New("not written")
	for wait := 100 * time.Millisecond; err != nil; wait = min(2*wait, 5*time.Second) {
		select {
		case <-ctx.Done():
			return rec, rev, err
		case <-time.After(wait):
		}
		if rec, rev, err = d.f.hist.get(ctx, key); err != nil {
			continue
		}
		if rev == 0 {
			rec = d.newRecord(cb)
		}
		if rec.State == StateDelivered {
			return rec, rev, nil
		}
		rec, rev, err = d.record(ctx, key, cb, rec, rev, holder, att, true, 0)
	}
	d.f.log.Info("forward: delivered attempt recorded after the bucket came back", zap.String("destination", d.cfg.Name),
		zap.Uint64("sequence", cb.seq))
	return rec, rev, nil
}

// newHolder names one attempt, for its lease.
func newHolder() string {
	var b [8]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// handle makes at most one attempt for m and settles it: ack when
// delivered, redelivery after the schedule's wait when not, a dead letter
// and term after the last attempt. stop ends m's in-progress acks; it is
// called before m is settled.
func (d *dest) handle(ctx context.Context, m jetstream.Msg, replay bool, stop func()) {
	defer stop()
	log := d.f.log.With(zap.String("destination", d.cfg.Name))
	cb, err := d.load(ctx, m, replay)
	if err != nil {
		log.Error("forward: cannot read callback; dropped", zap.Error(err))
		stop()
		_ = m.Term()
		return
	}
	tx := cb.get(publish.HeaderTransactionID)
	log = log.With(zap.Uint64("sequence", cb.seq), zap.String("kind", cb.get(publish.HeaderKind)),
		zap.String("transaction_id", daraja.MaskTransactionID(daraja.Kind(cb.get(publish.HeaderKind)), tx)))
	key := deliveryKey(d.cfg.Name, tx, cb.seq)
	holder := newHolder()
	rec, rev, err := d.f.hist.get(ctx, key)
	if err != nil {
		log.Warn("forward: delivery record unreadable; retrying", zap.Error(err))
		stop()
		_ = m.NakWithDelay(time.Second)
		return
	}
	if rev == 0 {
		rec = d.newRecord(cb)
	}
	// A first look, so that a callback with nothing to do now does not
	// wait for an attempt slot.
	first := rec // decide changes its argument; claim decides again from the record as read
	if act, wait := d.decide(&first, cb, replay, holder, d.f.now()); act != actAttempt {
		d.settle(ctx, m, cb, first, rev, act, wait, stop, log)
		return
	}
	select {
	case d.slots <- struct{}{}:
	case <-ctx.Done():
		stop()
		_ = m.Nak() // shutting down: another replica takes it now
		return
	}
	defer func() { <-d.slots }()
	probe, err := d.circuit.acquire(ctx)
	if err == nil {
		if err = d.pace(ctx); err != nil {
			d.circuit.cancel(probe)
		}
	}
	if err != nil {
		stop()
		_ = m.Nak()
		return
	}
	rec, rev, act, wait, err := d.claim(ctx, key, cb, replay, holder, rec, rev)
	if err != nil {
		d.circuit.cancel(probe)
		log.Warn("forward: delivery record not claimed; retrying", zap.Error(err))
		stop()
		_ = m.NakWithDelay(time.Second)
		return
	}
	if act != actAttempt {
		d.circuit.cancel(probe)
		d.settle(ctx, m, cb, rec, rev, act, wait, stop, log)
		return
	}
	att, retryAfter := d.attempt(ctx, cb)
	ok := att.Status >= 200 && att.Status < 300
	d.circuit.release(ok, probe)
	if len(rec.Attempts) > 0 {
		d.f.m.redelivered.WithLabelValues(d.cfg.Name).Inc()
	}
	retry := d.cfg.Retry
	n := len(rec.Attempts) + 1 - rec.RoundStart // this one included
	wait = 0
	if !ok && n < len(retry) {
		wait = nextWait(retry[n], retryAfter, d.cfg.RetryAfterCap, rand.Float64())
	}
	rec, rev, err = d.record(ctx, key, cb, rec, rev, holder, att, ok, wait)
	if err != nil {
		log.Warn("forward: attempt not recorded", zap.Bool("delivered", ok), zap.Error(err))
	}
	if ok && err != nil {
		// The app has it: until the record says so, a redelivery would
		// call it again. Keep the message (in-progress acks go on) and
		// write the record until it takes, or the forwarder stops.
		rec, rev, err = d.recordDelivered(ctx, key, cb, holder, att)
	}
	stop()
	if ok {
		if err := m.DoubleAck(ctx); err != nil {
			log.Warn("forward: delivered, ack not confirmed (a redelivery finds the record)", zap.Error(err))
		}
		return
	}
	log.Warn("forward: attempt failed", zap.Int("attempt", n), zap.Int("status", att.Status), zap.String("error", att.Error))
	if n >= len(retry) && err == nil {
		d.deadLetter(ctx, m, cb, rec, rev, log)
		return
	}
	if err != nil {
		wait = max(wait, time.Second)
	}
	_ = m.NakWithDelay(wait)
}

// settle carries out an action other than an attempt.
func (d *dest) settle(ctx context.Context, m jetstream.Msg, cb *callback, rec Delivery, rev uint64, act action, wait time.Duration, stop func(), log *zap.Logger) {
	stop()
	switch act {
	case actAck:
		_ = m.Ack()
	case actTerm:
		_ = m.Term()
	case actDead:
		d.deadLetter(ctx, m, cb, rec, rev, log)
	default:
		_ = m.NakWithDelay(wait)
	}
}

// nextWait is the wait before the next attempt: the schedule's entry with
// ±20 % jitter (u, in [0, 1), draws it), lengthened by a Retry-After up
// to retry_after_cap; neither shortens it.
func nextWait(entry, retryAfter, capAfter time.Duration, u float64) time.Duration {
	wait := jitterAt(entry, u)
	if retryAfter > wait {
		wait = min(retryAfter, max(capAfter, wait))
	}
	return wait
}

// jitterAt spreads a non-zero wait by ±20 %: u = 0 gives 0.8 w, u → 1
// gives 1.2 w.
func jitterAt(w time.Duration, u float64) time.Duration {
	if w <= 0 {
		return 0
	}
	return time.Duration(float64(w) * (0.8 + 0.4*u))
}

// reserve takes the rate limit's next turn at now and returns how long to
// wait for it (burst one: never two attempts closer than 1/rate).
func (d *dest) reserve(now time.Time) (*rate.Reservation, time.Duration) {
	r := d.limit.ReserveN(now, 1)
	return r, r.DelayFrom(now)
}

// pace waits for the rate limit, if the destination has one.
func (d *dest) pace(ctx context.Context) error {
	if d.limit == nil {
		return nil
	}
	r, delay := d.reserve(d.f.now())
	if delay <= 0 {
		return nil
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		r.CancelAt(d.f.now())
		return ctx.Err()
	}
}

// keepAlive tells the server the message is being worked on, every third
// of the ack wait, until stop; stop returns once no in-progress ack can
// follow (so none is sent after the message is settled). Safe twice.
func (d *dest) keepAlive(m jetstream.Msg) (stop func()) {
	return inprogress.Keep(m, d.ackWait/3)
}

// deadLetterMsgID is the dead letter's Nats-Msg-Id: DeadLetterMsgID for
// the first round of the schedule; a round started by a replay adds
// ":replay-<n>", or its dead letter would be dropped as a duplicate of the
// first one (within the stream's duplicate window) and the operator would
// not see that the callback failed again.
func deadLetterMsgID(dest, msgID string, replays int) string {
	id := DeadLetterMsgID(dest, msgID)
	if replays > 0 {
		id += ":replay-" + strconv.Itoa(replays)
	}
	return id
}

// deadLetter publishes the callback to its dead-letter subject with the
// attempt history of its last round, records it dead (compare-and-set
// from rev) and terms it; if the stream refuses, the message comes back
// later and tries again (the same Nats-Msg-Id: no second copy).
func (d *dest) deadLetter(ctx context.Context, m jetstream.Msg, cb *callback, rec Delivery, rev uint64, log *zap.Logger) {
	hist, _ := json.Marshal(rec.Attempts[rec.RoundStart:])
	h := nats.Header{}
	for k, v := range cb.header {
		if strings.HasPrefix(k, "Daraja-") {
			h[k] = v
		}
	}
	h.Set(publish.HeaderMsgID, deadLetterMsgID(d.cfg.Name, rec.MsgID, rec.Replays))
	h.Set(HeaderAttempts, string(hist))
	h.Set(HeaderDestination, d.cfg.Name)
	h.Set(HeaderSequence, strconv.FormatUint(cb.seq, 10))
	subj := DeadLetterSubject(d.f.o.Prefix, d.cfg.Name, rec.Kind, rec.Shortcode)
	if _, err := d.f.o.JS.PublishMsg(ctx, &nats.Msg{Subject: subj, Header: h, Data: cb.body}); err != nil {
		log.Error("forward: dead letter not stored; retrying", zap.Error(err))
		_ = m.NakWithDelay(5 * time.Second)
		return
	}
	key := deliveryKey(d.cfg.Name, rec.TransactionID, rec.Sequence)
	for i := 0; ; i++ {
		rec.State, rec.NextAt = StateDead, time.Time{}
		_, err := d.f.hist.write(ctx, rec, rev)
		if err == nil {
			break
		}
		var again Delivery
		if errors.Is(err, errConflict) && i < 4 {
			if again, rev, err = d.f.hist.get(ctx, key); err == nil && rev != 0 && again.State == StatePending {
				rec = again
				continue
			}
		}
		if err != nil {
			log.Warn("forward: dead letter stored, record not written", zap.Error(err))
		}
		break
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
	t := time.NewTicker(d.f.lagEvery)
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
