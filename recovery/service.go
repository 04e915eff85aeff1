package recovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/publish"
	"github.com/daraja-edge/daraja-edge/verify"
)

// Header names on recovered messages, beside the callback headers.
const (
	HeaderRecoveredBy   = "Daraja-Recovered-By"      // stk-push-query | transaction-status | pull-transactions
	HeaderOutcome       = "Daraja-Recovery-Outcome"  // answered | acknowledged | unrecoverable
	HeaderError         = "Daraja-Recovery-Error"    // unrecoverable: why
	HeaderResultTokenID = "Daraja-Recovery-Token-Id" // transaction-status: the token its result callback arrives on
)

// Query names.
const (
	QuerySTK    = "stk-push-query"
	QueryStatus = "transaction-status"
	QueryPull   = "pull-transactions"
)

// Subject is <prefix>.recovered.<kind>.<shortcode>.<token id>.
func Subject(s publish.Subjects, kind, shortcode, tokenID string) string {
	return s.Prefix + ".recovered." + kind + "." + shortcode + "." + tokenID
}

// ConsumerName is the durable consumer every replica shares: JetStream
// hands each missing event to one of them.
const ConsumerName = "daraja-edge-recovery"

// Shortcode is one shortcode's query credentials, resolved.
type Shortcode struct {
	Client             *Client
	Passkey            string // "": no STK Push Query
	Initiator          string // "": no Transaction Status
	SecurityCredential string
	IdentifierType     string
	Pull               bool
}

// FromConfig resolves r's secrets (files read, the security credential
// computed) into per-shortcode credentials. Errors name keys, never
// secrets.
func FromConfig(r config.Recovery) (map[string]Shortcode, error) {
	hc := &http.Client{Timeout: r.Timeout}
	topKey, err := config.Secret(r.ConsumerKey, r.ConsumerKeyFile)
	if err != nil {
		return nil, fmt.Errorf("recovery.consumer_key: %w", err)
	}
	topSecret, err := config.Secret(r.ConsumerSecret, r.ConsumerSecretFile)
	if err != nil {
		return nil, fmt.Errorf("recovery.consumer_secret: %w", err)
	}
	clients := map[[2]string]*Client{}
	out := make(map[string]Shortcode, len(r.Shortcodes))
	for sc, c := range r.Shortcodes {
		key := "recovery.shortcodes." + sc + "."
		k, err := config.Secret(c.ConsumerKey, c.ConsumerKeyFile)
		if err != nil {
			return nil, fmt.Errorf("%sconsumer_key: %w", key, err)
		}
		s, err := config.Secret(c.ConsumerSecret, c.ConsumerSecretFile)
		if err != nil {
			return nil, fmt.Errorf("%sconsumer_secret: %w", key, err)
		}
		if k == "" {
			k, s = topKey, topSecret
		}
		app := [2]string{k, s}
		if clients[app] == nil { // one token cache per app
			clients[app] = NewClient(r.BaseURL, k, s, hc)
		}
		pk, err := config.Secret(c.Passkey, c.PasskeyFile)
		if err != nil {
			return nil, fmt.Errorf("%spasskey: %w", key, err)
		}
		cred, err := config.Secret(c.SecurityCredential, c.SecurityCredentialFile)
		if err != nil {
			return nil, fmt.Errorf("%ssecurity_credential: %w", key, err)
		}
		if c.InitiatorPasswordFile != "" {
			pw, err := config.Secret("", c.InitiatorPasswordFile)
			if err != nil {
				return nil, fmt.Errorf("%sinitiator_password_file: %w", key, err)
			}
			pemData, err := os.ReadFile(c.CertificateFile)
			if err != nil {
				return nil, fmt.Errorf("%scertificate_file: %w", key, err)
			}
			if cred, err = SecurityCredential(pw, pemData); err != nil {
				return nil, fmt.Errorf("%scertificate_file: %w", key, err)
			}
		}
		it := c.IdentifierType
		if it == "" {
			it = "4"
		}
		out[sc] = Shortcode{Client: clients[app], Passkey: pk, Initiator: c.InitiatorName, SecurityCredential: cred,
			IdentifierType: it, Pull: c.Pull}
	}
	return out, nil
}

// Records reads token records (verify.Store).
type Records interface {
	Get(ctx context.Context, id string) (verify.Record, error)
}

// Issuer issues tokens with their URLs (verify.Issuer).
type Issuer interface {
	Issue(ctx context.Context, req verify.IssueRequest) (verify.IssueResponse, error)
}

// Options configures a Service.
type Options struct {
	JS         jetstream.JetStream
	Stream     string
	Publisher  *publish.JetStream
	Subjects   publish.Subjects
	Edge       string
	Records    Records
	Issuer     Issuer
	Shortcodes map[string]Shortcode
	Rate       float64
	Burst      int
	Attempts   int
	Backoff    time.Duration
	MaxBackoff time.Duration
	ResultTTL  time.Duration
	// Registerer takes the metrics (nil: not registered).
	Registerer prometheus.Registerer
	Log        *zap.Logger
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// OptionsFrom fills the tunables of Options from r.
func OptionsFrom(r config.Recovery, o Options) Options {
	o.Rate, o.Burst, o.Attempts, o.Backoff, o.MaxBackoff, o.ResultTTL = r.Rate, r.Burst, r.Attempts, r.Backoff, r.MaxBackoff, r.ResultTTL
	return o
}

// Service answers missing events with Daraja queries.
type Service struct {
	o        Options
	log      *zap.Logger
	limit    *rate.Limiter
	consumer jetstream.Consumer

	attempts *prometheus.CounterVec
	outcomes *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// New creates (or joins) the shared durable consumer on
// <prefix>.missing.>. It delivers only events published after its first
// creation: switching recovery on does not query Daraja for every old
// missing event.
func New(ctx context.Context, o Options) (*Service, error) {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Attempts < 1 {
		o.Attempts = 1
	}
	st, err := o.JS.Stream(ctx, o.Stream)
	if err != nil {
		return nil, fmt.Errorf("recovery: stream %s: %w", o.Stream, err)
	}
	cons, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: ConsumerName, Description: "daraja-edge: missing callbacks recovered by Daraja queries",
		FilterSubject: o.Subjects.Prefix + ".missing.>", DeliverPolicy: jetstream.DeliverNewPolicy,
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: 2 * time.Minute, MaxDeliver: 10, MaxAckPending: 64,
	})
	if err != nil {
		return nil, fmt.Errorf("recovery: consumer %s: %w", ConsumerName, err)
	}
	s := &Service{o: o, log: o.Log.Named("recovery"), limit: rate.NewLimiter(rate.Limit(o.Rate), max(1, o.Burst)), consumer: cons,
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "daraja_edge_recovery_attempts_total",
			Help: "Daraja queries made to recover missing callbacks, by query and result (ok, retryable, failed)."}, []string{"query", "result"}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "daraja_edge_recovery_outcomes_total",
			Help: "Missing callbacks settled by recovery, by query and outcome (answered, acknowledged, unrecoverable)."}, []string{"query", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "daraja_edge_recovery_query_seconds",
			Help: "Latency of one Daraja recovery query.", Buckets: prometheus.ExponentialBuckets(0.05, 2, 10)}, []string{"query"}),
	}
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{s.attempts, s.outcomes, s.latency} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("recovery: metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Run handles missing events until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	cc, err := s.consumer.Consume(func(m jetstream.Msg) { s.handle(ctx, m) })
	if err != nil {
		return fmt.Errorf("recovery: consume: %w", err)
	}
	<-ctx.Done()
	cc.Stop()
	<-cc.Closed()
	return nil
}

type missingEvent struct {
	TokenID   string   `json:"token_id"`
	Kinds     []string `json:"kinds"`
	Shortcode string   `json:"shortcode"`
	Reference string   `json:"reference"`
	IssuedAt  string   `json:"issued_at"`
	ExpiresAt string   `json:"expires_at"`
}

// answer is what one recovery publishes.
type answer struct {
	query, outcome, reason string
	body                   []byte
	resultToken            string
}

func (s *Service) handle(ctx context.Context, m jetstream.Msg) {
	var ev missingEvent
	if err := json.Unmarshal(m.Data(), &ev); err != nil || !verify.ValidID(ev.TokenID) || len(ev.Kinds) == 0 {
		s.log.Warn("missing event not understood; dropped", zap.String("subject", m.Subject()))
		_ = m.Term()
		return
	}
	kind := ev.Kinds[0]
	subject := Subject(s.o.Subjects, kind, ev.Shortcode, ev.TokenID)
	if last, err := s.o.Publisher.Last(ctx, subject); err != nil {
		_ = m.NakWithDelay(5 * time.Second)
		return
	} else if last != nil { // settled before (a redelivery after a crash)
		_ = m.Ack()
		return
	}
	a := s.recover(ctx, m, ev, kind)
	if ctx.Err() != nil {
		return // stopping: redelivered to a replica that runs
	}
	if err := s.publish(ctx, ev, kind, subject, a); err != nil {
		s.log.Warn("recovered answer not stored; redelivered later", zap.String("token_id", ev.TokenID), zap.Error(err))
		_ = m.NakWithDelay(5 * time.Second)
		return
	}
	s.outcomes.WithLabelValues(a.query, a.outcome).Inc()
	fields := []zap.Field{zap.String("token_id", ev.TokenID), zap.String("kind", kind), zap.String("shortcode", ev.Shortcode),
		zap.String("query", a.query), zap.String("outcome", a.outcome)}
	if a.reason != "" {
		fields = append(fields, zap.String("reason", a.reason))
	}
	s.log.Info("missing callback recovery settled", fields...)
	_ = m.Ack()
}

func unrecoverable(query, format string, args ...any) answer {
	return answer{query: query, outcome: "unrecoverable", reason: fmt.Sprintf(format, args...)}
}

func (s *Service) recover(ctx context.Context, m jetstream.Msg, ev missingEvent, kind string) answer {
	sc, ok := s.o.Shortcodes[ev.Shortcode]
	k := daraja.Kind(kind)
	query := ""
	switch {
	case k == daraja.STKCallback:
		query = QuerySTK
	case strings.HasPrefix(kind, "b2c.") || strings.HasPrefix(kind, "b2b.") || strings.HasPrefix(kind, "reversal."):
		query = QueryStatus
	case k == daraja.C2BConfirmation:
		query = QueryPull
	default:
		return unrecoverable("none", "no Daraja query recovers a %s callback", kind)
	}
	if !ok {
		return unrecoverable(query, "shortcode %s is not in recovery.shortcodes", ev.Shortcode)
	}
	rec, err := s.o.Records.Get(ctx, ev.TokenID)
	if err != nil {
		return unrecoverable(query, "token record: %v", err)
	}
	var call func(ctx context.Context) ([]byte, error)
	var resultToken string
	switch query {
	case QuerySTK:
		if sc.Passkey == "" {
			return unrecoverable(query, "shortcode %s has no passkey", ev.Shortcode)
		}
		if rec.CheckoutRequestID == "" {
			return unrecoverable(query, "no checkout_request_id recorded on the token (PATCH /v1/tokens/{id})")
		}
		call = func(ctx context.Context) ([]byte, error) {
			ts := Timestamp(s.o.Now())
			return sc.Client.QuerySTK(ctx, STKQuery{BusinessShortCode: ev.Shortcode, Password: STKPassword(ev.Shortcode, sc.Passkey, ts),
				Timestamp: ts, CheckoutRequestID: rec.CheckoutRequestID})
		}
	case QueryStatus:
		if sc.Initiator == "" {
			return unrecoverable(query, "shortcode %s has no initiator_name", ev.Shortcode)
		}
		if rec.OriginatorConversationID == "" {
			return unrecoverable(query, "no originator_conversation_id recorded on the token (PATCH /v1/tokens/{id})")
		}
		iss, err := s.o.Issuer.Issue(ctx, verify.IssueRequest{Kinds: []daraja.Kind{daraja.StatusResult, daraja.StatusTimeout},
			Shortcode: ev.Shortcode, Reference: "recovers " + ev.TokenID, TTL: s.o.ResultTTL.String()})
		if err != nil {
			return unrecoverable(query, "result token: %v", err)
		}
		resultToken = iss.ID
		call = func(ctx context.Context) ([]byte, error) {
			return sc.Client.QueryStatus(ctx, StatusQuery{Initiator: sc.Initiator, SecurityCredential: sc.SecurityCredential,
				OriginalConversationID: rec.OriginatorConversationID, PartyA: ev.Shortcode, IdentifierType: sc.IdentifierType,
				ResultURL: iss.URLs[string(daraja.StatusResult)], QueueTimeOutURL: iss.URLs[string(daraja.StatusTimeout)],
				Remarks: "daraja-edge recovery", Occasion: ev.TokenID})
		}
	case QueryPull:
		if !sc.Pull {
			return unrecoverable(query, "shortcode %s is not registered for Pull Transactions (pull: true)", ev.Shortcode)
		}
		const layout = "2006-01-02 15:04:05"
		from, to := rec.IssuedAt.In(eat).Format(layout), rec.ExpiresAt.In(eat).Format(layout)
		call = func(ctx context.Context) ([]byte, error) {
			return sc.Client.QueryPull(ctx, PullQuery{ShortCode: ev.Shortcode, StartDate: from, EndDate: to, OffSetValue: "0"})
		}
	}
	body, err := s.retry(ctx, m, query, call)
	if err != nil {
		a := unrecoverable(query, "%v", err)
		a.resultToken = resultToken
		return a
	}
	if query == QueryStatus {
		return answer{query: query, outcome: "acknowledged", body: body, resultToken: resultToken}
	}
	return answer{query: query, outcome: "answered", body: body}
}

// retry tries call up to Attempts times, waiting Backoff, doubled each
// time up to MaxBackoff (±20 % jitter), after a retryable failure.
func (s *Service) retry(ctx context.Context, m jetstream.Msg, query string, call func(context.Context) ([]byte, error)) ([]byte, error) {
	wait := s.o.Backoff
	var err error
	for i := 0; i < s.o.Attempts; i++ {
		if i > 0 {
			d := time.Duration(float64(wait) * (0.8 + 0.4*rand.Float64()))
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, ctx.Err()
			case <-t.C:
			}
			wait = min(2*wait, s.o.MaxBackoff)
		}
		if err := s.limit.Wait(ctx); err != nil {
			return nil, err
		}
		_ = m.InProgress()
		start := time.Now()
		var body []byte
		body, err = call(ctx)
		s.latency.WithLabelValues(query).Observe(time.Since(start).Seconds())
		if err == nil {
			s.attempts.WithLabelValues(query, "ok").Inc()
			return body, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if !Retryable(err) {
			s.attempts.WithLabelValues(query, "failed").Inc()
			return nil, err
		}
		s.attempts.WithLabelValues(query, "retryable").Inc()
		s.log.Info("recovery query failed; retrying", zap.String("query", query), zap.Int("attempt", i+1), zap.Error(err))
	}
	return nil, fmt.Errorf("%d attempts: %w", s.o.Attempts, err)
}

func (s *Service) publish(ctx context.Context, ev missingEvent, kind, subject string, a answer) error {
	h := nats.Header{}
	set := func(k, v string) {
		if v != "" {
			h.Set(k, v)
		}
	}
	set(publish.HeaderMsgID, "recovered:"+ev.TokenID)
	set(publish.HeaderKind, kind)
	set(publish.HeaderShortcode, ev.Shortcode)
	set(publish.HeaderReference, ev.Reference)
	set(publish.HeaderTokenID, ev.TokenID)
	set(publish.HeaderReceivedAt, s.o.Now().UTC().Format(time.RFC3339Nano))
	set(publish.HeaderEdge, s.o.Edge)
	set(HeaderRecoveredBy, a.query)
	set(HeaderOutcome, a.outcome)
	set(HeaderResultTokenID, a.resultToken)
	body := a.body
	if a.outcome == "unrecoverable" {
		set(HeaderError, clip(a.reason))
		body, _ = json.Marshal(map[string]string{"token_id": ev.TokenID, "error": a.reason})
	} else {
		var r struct{ ResultCode, CheckoutRequestID, ConversationID, ResponseCode string }
		_ = json.Unmarshal(body, &r)
		set(publish.HeaderResultCode, r.ResultCode)
		set(publish.HeaderTransactionID, r.CheckoutRequestID+r.ConversationID)
	}
	_, err := s.o.Publisher.Store(ctx, &nats.Msg{Subject: subject, Header: h, Data: body}, true)
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return err
}

func clip(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 256 {
		return s[:256]
	}
	return s
}
