package recovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/internal/inprogress"
	"github.com/daraja-edge/daraja-edge/publish"
	"github.com/daraja-edge/daraja-edge/verify"
)

// Header names on recovered messages, beside the callback headers.
const (
	HeaderRecoveredBy   = "Daraja-Recovered-By"      // stk-push-query | transaction-status | pull-transactions
	HeaderOutcome       = "Daraja-Recovery-Outcome"  // answered | acknowledged | unrecoverable
	HeaderError         = "Daraja-Recovery-Error"    // unrecoverable: why
	HeaderResultTokenID = "Daraja-Recovery-Token-Id" // transaction-status: the token its result callback arrives on
	HeaderCount         = "Daraja-Recovery-Count"    // pull-transactions: the transactions found (one message each)
)

// Query names.
const (
	QuerySTK    = "stk-push-query"
	QueryStatus = "transaction-status"
	QueryPull   = "pull-transactions"
)

// Subject is <prefix>.recovered.<kind>.<shortcode>.<token id>, or
// <receipt> in place of the token id for a reconcile finding.
func Subject(s publish.Subjects, kind, shortcode, id string) string {
	return s.Prefix + ".recovered." + kind + "." + shortcode + "." + id
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

// Issuer issues tokens with their URLs, and revokes one no callback can
// come on (verify.Issuer).
type Issuer interface {
	Issue(ctx context.Context, req verify.IssueRequest) (verify.IssueResponse, error)
	Revoke(ctx context.Context, id string) error
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
	// Rate is Daraja queries per second across every replica (shared
	// through the RateBucket key-value bucket), Burst the queries one
	// replica may start at once.
	Rate       float64
	Burst      int
	Attempts   int
	Backoff    time.Duration
	MaxBackoff time.Duration
	ResultTTL  time.Duration
	// AckWait is the shared consumer's ack wait (default 2m). A replica
	// working on an event tells JetStream so every AckWait/4, through
	// retries and backoff, so the event is not handed to another replica
	// while it is being recovered.
	AckWait time.Duration
	// Workers is the events one replica recovers at a time (default 4).
	// Each fetches one event only when it is free: no event waits in a
	// replica's buffer while its ack wait runs.
	Workers int
	// PullWindow is how far around a reconcile finding's time Pull
	// Transactions looks for its receipt (default 30m either side).
	PullWindow time.Duration
	// RateBucket is the key-value bucket of the shared rate windows
	// (default RateBucket(Subjects.Prefix)); it is replicated like the
	// stream.
	RateBucket string
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

// Outcomes of a missing event (the outcome label and the
// Daraja-Recovery-Outcome header; skipped is never published).
const (
	OutcomeAnswered      = "answered"
	OutcomeAcknowledged  = "acknowledged"
	OutcomeUnrecoverable = "unrecoverable"
	OutcomeSkipped       = "skipped"
)

// SourceReconcile is the Daraja-Missing-Source (and the body's "source")
// of a missing event that `daraja-edge reconcile --publish` found in a
// statement: it names a receipt, not a token.
const SourceReconcile = "reconcile"

// HeaderMissingSource names where a missing event came from; recovered
// messages of reconcile findings carry it too.
const HeaderMissingSource = "Daraja-Missing-Source"

// Service answers missing events with Daraja queries.
type Service struct {
	o        Options
	log      *zap.Logger
	limit    *rate.Limiter
	shared   *sharedLimit
	stream   jetstream.Stream
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
	if o.AckWait <= 0 {
		o.AckWait = 2 * time.Minute
	}
	if o.Workers < 1 {
		o.Workers = 4
	}
	if o.PullWindow <= 0 {
		o.PullWindow = 30 * time.Minute
	}
	if o.RateBucket == "" {
		o.RateBucket = RateBucket(o.Subjects.Prefix)
	}
	st, err := o.JS.Stream(ctx, o.Stream)
	if err != nil {
		return nil, fmt.Errorf("recovery: stream %s: %w", o.Stream, err)
	}
	cons, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable: ConsumerName, Description: "daraja-edge: missing callbacks recovered by Daraja queries",
		FilterSubject: o.Subjects.Prefix + ".missing.>", DeliverPolicy: jetstream.DeliverNewPolicy,
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: o.AckWait, MaxDeliver: 10, MaxAckPending: 64,
	})
	if err != nil {
		return nil, fmt.Errorf("recovery: consumer %s: %w", ConsumerName, err)
	}
	shared, err := openSharedLimit(ctx, o.JS, o.RateBucket, st.CachedInfo().Config.Replicas, o.Rate)
	if err != nil {
		return nil, err
	}
	s := &Service{o: o, log: o.Log.Named("recovery"), limit: rate.NewLimiter(rate.Limit(o.Rate), max(1, o.Burst)), shared: shared,
		stream: st, consumer: cons,
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricAttempts,
			Help: "Daraja queries made to recover missing callbacks, by query and result (ok, retryable, failed)."}, []string{"query", "result"}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricOutcomes,
			Help: "Missing events settled by recovery, by query and outcome (answered, acknowledged, unrecoverable, skipped)."}, []string{"query", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: metricLatency,
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

// Run handles missing events until ctx ends, Workers at a time.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	for range s.o.Workers {
		wg.Add(1)
		go func() { defer wg.Done(); s.work(ctx) }()
	}
	wg.Wait()
	return nil
}

// work fetches one event at a time, only when it can start on it.
func (s *Service) work(ctx context.Context) {
	for ctx.Err() == nil {
		fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		batch, err := s.consumer.Fetch(1, jetstream.FetchContext(fctx))
		if err != nil {
			cancel()
			if ctx.Err() == nil {
				s.log.Warn("missing events not fetched; trying again", zap.Error(err))
				_ = sleepCtx(ctx, time.Second)
			}
			continue
		}
		for m := range batch.Messages() {
			s.handle(ctx, m)
		}
		cancel()
	}
}

// heartbeat tells JetStream every AckWait/4 that m is being worked on,
// until stop is called.
func (s *Service) heartbeat(m jetstream.Msg) (stop func()) {
	return inprogress.Keep(m, s.o.AckWait/4)
}

// missingEvent is a missing event's body: the edge's own (a token that
// expired) or reconcile's (a statement line with no callback).
type missingEvent struct {
	TokenID   string   `json:"token_id"`
	Kinds     []string `json:"kinds"`
	Shortcode string   `json:"shortcode"`
	Reference string   `json:"reference"`
	IssuedAt  string   `json:"issued_at"`
	ExpiresAt string   `json:"expires_at"`

	Source  string `json:"source"`
	Receipt string `json:"receipt"`
	Kind    string `json:"kind"`
	Time    string `json:"time"`
}

// job is one missing event to recover.
type job struct {
	kind, shortcode string
	tokenID         string // the edge's own event
	reference       string
	receipt         string    // a reconcile finding
	at              time.Time // the finding's time (zero: unknown)
	subject         string    // <prefix>.recovered.<kind>.<shortcode>.<token id or receipt>
	msgID           string    // Nats-Msg-Id of a single answer
}

func (j job) reconcile() bool { return j.receipt != "" }

// resultCodeRE is a ResultCode fit for the Daraja-Result-Code header.
var resultCodeRE = regexp.MustCompile(`^[0-9A-Za-z.]{1,32}$`)

// subjectID is the last token of the job's subject: the token id, or the
// receipt of a reconcile finding.
func (j job) subjectID() string {
	if j.reconcile() {
		return j.receipt
	}
	return j.tokenID
}

// name is what a log line names the event by.
func (j job) name() zap.Field {
	if j.reconcile() {
		return zap.String("receipt", j.receipt)
	}
	return zap.String("token_id", j.tokenID)
}

// answer is what one recovery publishes.
type answer struct {
	query, outcome, reason string
	body                   []byte
	resultToken            string
	txs                    []PullTransaction // pull-transactions: one message each
}

// result is what becomes of the event after the work.
type result int

const (
	ack result = iota
	nak
	term
	stopping
)

func (s *Service) handle(ctx context.Context, m jetstream.Msg) {
	stop := s.heartbeat(m)
	r := s.process(ctx, m)
	stop()
	switch r {
	case ack:
		_ = m.Ack()
	case nak:
		_ = m.NakWithDelay(5 * time.Second)
	case term:
		_ = m.Term()
	case stopping:
		_ = m.Nak() // another replica that runs takes it now
	}
}

// queryFor names the Daraja query that recovers a kind ("": none).
func queryFor(kind string) string {
	switch {
	case daraja.Kind(kind) == daraja.STKCallback:
		return QuerySTK
	case strings.HasPrefix(kind, "b2c.") || strings.HasPrefix(kind, "b2b.") || strings.HasPrefix(kind, "reversal."):
		return QueryStatus
	case daraja.Kind(kind) == daraja.C2BConfirmation:
		return QueryPull
	}
	return ""
}

// parse reads a missing event; ok false: not one this service knows.
func (s *Service) parse(m jetstream.Msg) (job, bool) {
	var ev missingEvent
	if err := json.Unmarshal(m.Data(), &ev); err != nil {
		return job{}, false
	}
	if m.Headers().Get(HeaderMissingSource) == SourceReconcile || ev.Source == SourceReconcile {
		rest := strings.TrimPrefix(m.Subject(), s.o.Subjects.Prefix+".missing.")
		kind, sc := rest, ""
		if i := strings.LastIndexByte(rest, '.'); i > 0 {
			kind, sc = rest[:i], rest[i+1:]
		}
		if ev.Kind != "" {
			kind = ev.Kind
		}
		if ev.Shortcode != "" {
			sc = ev.Shortcode
		}
		if !validReceipt(ev.Receipt) || !daraja.Kind(kind).Valid() || !validToken(sc) {
			return job{}, false
		}
		j := job{kind: kind, shortcode: sc, receipt: ev.Receipt,
			subject: Subject(s.o.Subjects, kind, sc, ev.Receipt), msgID: "recovered:" + kind + ":" + ev.Receipt}
		j.at, _ = time.Parse(time.RFC3339Nano, ev.Time)
		return j, true
	}
	if !verify.ValidID(ev.TokenID) || len(ev.Kinds) == 0 || !validToken(ev.Shortcode) {
		return job{}, false
	}
	kind := ev.Kinds[0] // the first kind a query recovers, else the first
	for _, k := range ev.Kinds {
		if queryFor(k) != "" {
			kind = k
			break
		}
	}
	if !daraja.Kind(kind).Valid() {
		return job{}, false
	}
	return job{kind: kind, shortcode: ev.Shortcode, tokenID: ev.TokenID, reference: ev.Reference,
		subject: Subject(s.o.Subjects, kind, ev.Shortcode, ev.TokenID), msgID: "recovered:" + ev.TokenID}, true
}

// validToken: a non-empty subject token (no wildcard, dot or space).
func validToken(s string) bool {
	return s != "" && len(s) <= 64 && !strings.ContainsAny(s, ".*> \t\r\n")
}

func (s *Service) process(ctx context.Context, m jetstream.Msg) result {
	j, ok := s.parse(m)
	if !ok {
		s.log.Warn("missing event not understood; dropped", zap.String("subject", m.Subject()))
		return term
	}
	done, err := s.settled(ctx, j.subject)
	if err != nil {
		s.log.Warn("recovered subject not read; redelivered later", j.name(), zap.Error(err))
		return nak
	} else if done { // settled before (a redelivery after a crash, or a finding published again)
		return ack
	}
	a := s.recover(ctx, j)
	if ctx.Err() != nil {
		return stopping
	}
	if a.outcome == OutcomeSkipped {
		s.outcomes.WithLabelValues(a.query, a.outcome).Inc()
		s.log.Debug("missing event skipped", j.name(), zap.String("kind", j.kind), zap.String("shortcode", j.shortcode),
			zap.String("reason", a.reason))
		return ack
	}
	if err := s.publish(ctx, j, a); err != nil {
		if ctx.Err() != nil {
			return stopping
		}
		s.log.Warn("recovered answer not stored; redelivered later", j.name(), zap.Error(err))
		return nak
	}
	s.outcomes.WithLabelValues(a.query, a.outcome).Inc()
	fields := []zap.Field{j.name(), zap.String("kind", j.kind), zap.String("shortcode", j.shortcode),
		zap.String("query", a.query), zap.String("outcome", a.outcome)}
	if a.txs != nil {
		fields = append(fields, zap.Int("transactions", len(a.txs)))
	}
	if a.reason != "" {
		fields = append(fields, zap.String("reason", a.reason))
	}
	s.log.Info("missing callback recovery settled", fields...)
	return ack
}

// maxSubjectMessages bounds the messages read back from one recovered
// subject.
const maxSubjectMessages = maxPullTransactions + 1

// subjectMessages reads the messages on a recovered subject, oldest first.
func (s *Service) subjectMessages(ctx context.Context, subject string) ([]*jetstream.RawStreamMsg, error) {
	var out []*jetstream.RawStreamMsg
	for seq := uint64(1); len(out) < maxSubjectMessages; {
		m, err := s.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("recovery: read %s: %w", subject, err)
		}
		out = append(out, m)
		seq = m.Sequence + 1
	}
	return out, nil
}

// settled reports whether subject holds the whole answer already: a
// single answer, or every transaction a Pull found (each message carries
// the count found, Daraja-Recovery-Count).
func (s *Service) settled(ctx context.Context, subject string) (bool, error) {
	last, err := s.o.Publisher.Last(ctx, subject)
	if err != nil || last == nil {
		return false, err
	}
	n, err := strconv.Atoi(last.Header.Get(HeaderCount))
	if err != nil {
		return true, nil
	}
	msgs, err := s.subjectMessages(ctx, subject)
	if err != nil {
		return false, err
	}
	return len(distinctIDs(msgs)) >= n, nil
}

func distinctIDs(msgs []*jetstream.RawStreamMsg) map[string]bool {
	ids := map[string]bool{}
	for _, m := range msgs {
		ids[m.Header.Get(publish.HeaderMsgID)] = true
	}
	return ids
}

func unrecoverable(query, format string, args ...any) answer {
	return answer{query: query, outcome: OutcomeUnrecoverable, reason: fmt.Sprintf(format, args...)}
}

func skipped(query, format string, args ...any) answer {
	return answer{query: query, outcome: OutcomeSkipped, reason: fmt.Sprintf(format, args...)}
}

// pullLayout is Pull Transactions' date format (EAT).
const pullLayout = "2006-01-02 15:04:05"

func (s *Service) recover(ctx context.Context, j job) answer {
	if j.reconcile() {
		return s.recoverReceipt(ctx, j)
	}
	query := queryFor(j.kind)
	if query == "" {
		return unrecoverable("none", "no Daraja query recovers a %s callback", j.kind)
	}
	sc, ok := s.o.Shortcodes[j.shortcode]
	if !ok {
		return unrecoverable(query, "shortcode %s is not in recovery.shortcodes", j.shortcode)
	}
	rec, err := s.o.Records.Get(ctx, j.tokenID)
	if err != nil {
		return unrecoverable(query, "token record: %v", err)
	}
	switch query {
	case QuerySTK:
		if sc.Passkey == "" {
			return unrecoverable(query, "shortcode %s has no passkey", j.shortcode)
		}
		if rec.CheckoutRequestID == "" {
			return unrecoverable(query, "no checkout_request_id recorded on the token (PATCH /v1/tokens/{id})")
		}
		body, err := s.retry(ctx, query, func(ctx context.Context) ([]byte, error) {
			ts := Timestamp(s.o.Now())
			return sc.Client.QuerySTK(ctx, STKQuery{BusinessShortCode: j.shortcode, Password: STKPassword(j.shortcode, sc.Passkey, ts),
				Timestamp: ts, CheckoutRequestID: rec.CheckoutRequestID})
		})
		if err != nil {
			return unrecoverable(query, "%v", err)
		}
		return answer{query: query, outcome: OutcomeAnswered, body: body}
	case QueryStatus:
		if sc.Initiator == "" {
			return unrecoverable(query, "shortcode %s has no initiator_name", j.shortcode)
		}
		if rec.OriginatorConversationID == "" {
			return unrecoverable(query, "no originator_conversation_id recorded on the token (PATCH /v1/tokens/{id})")
		}
		return s.status(ctx, j, sc, StatusQuery{OriginalConversationID: rec.OriginatorConversationID})
	default: // QueryPull
		if !sc.Pull {
			return unrecoverable(query, "shortcode %s is not registered for Pull Transactions (pull: true)", j.shortcode)
		}
		txs, err := s.pull(ctx, sc, j.shortcode, rec.IssuedAt, rec.ExpiresAt, "")
		if err != nil {
			return unrecoverable(query, "%v", err)
		}
		if len(txs) == 0 {
			return unrecoverable(query, "Pull Transactions found no transaction between %s and %s (EAT)",
				rec.IssuedAt.In(eat).Format(pullLayout), rec.ExpiresAt.In(eat).Format(pullLayout))
		}
		return answer{query: query, outcome: OutcomeAnswered, txs: txs}
	}
}

// recoverReceipt recovers a reconcile finding by its receipt: a C2B
// payment by Pull Transactions around its time where the shortcode is
// registered for it, anything else by Transaction Status with the
// receipt as TransactionID where the shortcode has an initiator. A
// finding no query can recover is skipped: the reconcile report already
// holds it.
func (s *Service) recoverReceipt(ctx context.Context, j job) answer {
	sc, ok := s.o.Shortcodes[j.shortcode]
	switch {
	case !ok:
		return skipped("none", "shortcode %s is not in recovery.shortcodes", j.shortcode)
	case daraja.Kind(j.kind) == daraja.C2BConfirmation && sc.Pull && !j.at.IsZero():
		from, to := j.at.Add(-s.o.PullWindow), j.at.Add(s.o.PullWindow)
		txs, err := s.pull(ctx, sc, j.shortcode, from, to, j.receipt)
		if err != nil {
			return unrecoverable(QueryPull, "%v", err)
		}
		for _, tx := range txs {
			if tx.Receipt == j.receipt {
				return answer{query: QueryPull, outcome: OutcomeAnswered, txs: []PullTransaction{tx}}
			}
		}
		return unrecoverable(QueryPull, "receipt %s is not in Pull Transactions between %s and %s (EAT)", j.receipt,
			from.In(eat).Format(pullLayout), to.In(eat).Format(pullLayout))
	case sc.Initiator != "":
		return s.status(ctx, j, sc, StatusQuery{TransactionID: j.receipt})
	}
	return skipped("none", "shortcode %s has neither pull: true nor an initiator_name", j.shortcode)
}

// status makes a Transaction Status query (q names the transaction) with
// a fresh token's status URLs as ResultURL and QueueTimeOutURL.
func (s *Service) status(ctx context.Context, j job, sc Shortcode, q StatusQuery) answer {
	of := j.tokenID
	if j.reconcile() {
		of = j.receipt
	}
	iss, err := s.o.Issuer.Issue(ctx, verify.IssueRequest{Kinds: []daraja.Kind{daraja.StatusResult, daraja.StatusTimeout},
		Shortcode: j.shortcode, Reference: "recovers " + of, TTL: s.o.ResultTTL.String()})
	if err != nil {
		return unrecoverable(QueryStatus, "result token: %v", err)
	}
	q.Initiator, q.SecurityCredential, q.PartyA, q.IdentifierType = sc.Initiator, sc.SecurityCredential, j.shortcode, sc.IdentifierType
	q.ResultURL, q.QueueTimeOutURL = iss.URLs[string(daraja.StatusResult)], iss.URLs[string(daraja.StatusTimeout)]
	q.Remarks, q.Occasion = "daraja-edge recovery", of
	body, err := s.retry(ctx, QueryStatus, func(ctx context.Context) ([]byte, error) { return sc.Client.QueryStatus(ctx, q) })
	if err != nil {
		a := unrecoverable(QueryStatus, "%v", err)
		a.resultToken = iss.ID
		// Refused outright, Daraja took no request: no result can come on
		// the token, which would otherwise expire into a missing event of
		// its own. After retryable failures one attempt may have been
		// taken, so the token stays for its result.
		if !Retryable(err) && ctx.Err() == nil {
			if rerr := s.o.Issuer.Revoke(ctx, iss.ID); rerr != nil {
				s.log.Warn("result token of a refused status query left issued", zap.String("token_id", iss.ID), zap.Error(rerr))
			}
		}
		return a
	}
	return answer{query: QueryStatus, outcome: OutcomeAcknowledged, body: body, resultToken: iss.ID}
}

// maxPullPages bounds the pages (OffSetValue steps) one Pull reads.
const maxPullPages = 20

// pull reads a shortcode's C2B transactions between from and to, page by
// page (OffSetValue) until a page brings nothing new, or until receipt
// (if given) is found.
func (s *Service) pull(ctx context.Context, sc Shortcode, shortcode string, from, to time.Time, receipt string) ([]PullTransaction, error) {
	q := PullQuery{ShortCode: shortcode, StartDate: from.In(eat).Format(pullLayout), EndDate: to.In(eat).Format(pullLayout)}
	seen := map[string]bool{}
	var out []PullTransaction
	offset := 0
	for range maxPullPages {
		q.OffSetValue = strconv.Itoa(offset)
		body, err := s.retry(ctx, QueryPull, func(ctx context.Context) ([]byte, error) { return sc.Client.QueryPull(ctx, q) })
		if err != nil {
			return nil, err
		}
		txs, err := PullTransactions(body)
		if err != nil {
			return nil, err
		}
		fresh := 0
		for _, tx := range txs {
			if !seen[tx.Receipt] {
				seen[tx.Receipt] = true
				out = append(out, tx)
				fresh++
			}
		}
		if fresh == 0 || (receipt != "" && seen[receipt]) || len(out) >= maxPullTransactions {
			break
		}
		offset += len(txs)
	}
	return out, nil
}

// retry tries call up to Attempts times, waiting Backoff, doubled each
// time up to MaxBackoff (±20 % jitter), after a retryable failure. Every
// try waits for the rate limits first.
func (s *Service) retry(ctx context.Context, query string, call func(context.Context) ([]byte, error)) ([]byte, error) {
	wait := s.o.Backoff
	var err error
	for i := 0; i < s.o.Attempts; i++ {
		if i > 0 {
			if err := sleepCtx(ctx, time.Duration(float64(wait)*(0.8+0.4*rand.Float64()))); err != nil {
				return nil, err
			}
			wait = min(2*wait, s.o.MaxBackoff)
		}
		if err := s.wait(ctx); err != nil {
			return nil, err
		}
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

// wait takes this replica's limiter, then a slot of the shared window; a
// shared window that cannot be read leaves this replica's limiter alone.
func (s *Service) wait(ctx context.Context) error {
	if err := s.limit.Wait(ctx); err != nil {
		return err
	}
	if err := s.shared.Wait(ctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.log.Warn("shared recovery rate not read; this replica's limit alone applies", zap.Error(err))
	}
	return nil
}

func (s *Service) header(j job, a answer) nats.Header {
	h := nats.Header{}
	set := func(k, v string) {
		if v != "" {
			h.Set(k, v)
		}
	}
	set(publish.HeaderMsgID, j.msgID)
	set(publish.HeaderKind, j.kind)
	set(publish.HeaderShortcode, j.shortcode)
	set(publish.HeaderReference, j.reference)
	set(publish.HeaderTokenID, j.tokenID)
	set(publish.HeaderReceipt, j.receipt)
	set(publish.HeaderReceivedAt, s.o.Now().UTC().Format(time.RFC3339Nano))
	set(publish.HeaderEdge, s.o.Edge)
	set(HeaderRecoveredBy, a.query)
	set(HeaderOutcome, a.outcome)
	set(HeaderResultTokenID, a.resultToken)
	if j.reconcile() {
		set(HeaderMissingSource, SourceReconcile)
		set(publish.HeaderTransactionID, j.receipt)
	}
	return h
}

// publish stores the answer: one message, or one per transaction a Pull
// found (those the subject does not hold yet).
func (s *Service) publish(ctx context.Context, j job, a answer) error {
	if a.outcome != OutcomeUnrecoverable && a.txs != nil {
		msgs, err := s.subjectMessages(ctx, j.subject)
		if err != nil {
			return err
		}
		have := distinctIDs(msgs)
		for _, tx := range a.txs {
			h := s.header(j, a)
			// Per subject: the same transaction found for another token
			// (overlapping windows) or a reconcile finding is stored on
			// its own subject too, not dropped as a duplicate.
			h.Set(publish.HeaderMsgID, "recovered:"+j.kind+":"+j.subjectID()+":"+tx.Receipt)
			h.Set(publish.HeaderTransactionID, tx.Receipt)
			h.Set(publish.HeaderReceipt, tx.Receipt)
			h.Set(HeaderCount, strconv.Itoa(len(a.txs)))
			if have[h.Get(publish.HeaderMsgID)] {
				continue
			}
			if _, err := s.o.Publisher.Store(ctx, &nats.Msg{Subject: j.subject, Header: h, Data: tx.Raw}, false); err != nil {
				return err
			}
		}
		return nil
	}
	h := s.header(j, a)
	body := a.body
	if a.outcome == OutcomeUnrecoverable {
		h.Set(HeaderError, clip(a.reason))
		e := map[string]string{"error": a.reason}
		if j.reconcile() {
			e["receipt"] = j.receipt
		} else {
			e["token_id"] = j.tokenID
		}
		body, _ = json.Marshal(e)
	} else {
		var r struct {
			ResultCode                        json.RawMessage // a string or a number
			CheckoutRequestID, ConversationID string
		}
		_ = json.Unmarshal(body, &r)
		if code := strings.Trim(string(r.ResultCode), `"`); code != "" && code != "null" && resultCodeRE.MatchString(code) {
			h.Set(publish.HeaderResultCode, code)
		}
		if id := r.CheckoutRequestID + r.ConversationID; id != "" && !j.reconcile() {
			h.Set(publish.HeaderTransactionID, id)
		}
	}
	_, err := s.o.Publisher.Store(ctx, &nats.Msg{Subject: j.subject, Header: h, Data: body}, true)
	return err
}

func clip(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 256 {
		return s[:256]
	}
	return s
}

// The recovery service's metric names.
const (
	metricAttempts = "daraja_edge_recovery_attempts_total"
	metricOutcomes = "daraja_edge_recovery_outcomes_total"
	metricLatency  = "daraja_edge_recovery_query_seconds"
)

// MetricNames are the names of the recovery service's metrics, which an
// edge exports only with recovery enabled (for checks of alert rules and
// dashboards against what really exists).
func MetricNames() []string { return []string{metricAttempts, metricOutcomes, metricLatency} }
