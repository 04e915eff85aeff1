// Package proxy is the public side of daraja-edge: the HTTP handler that
// vets each Daraja callback (source address, path, token, body, single use)
// and answers Daraja only once the callback is durable on NATS.
package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/daraja-edge/daraja-edge/allowlist"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/internal/redact"
	"github.com/daraja-edge/daraja-edge/publish"
	"github.com/daraja-edge/daraja-edge/verify"
)

// Tokens checks callback tokens.
type Tokens interface {
	Authorize(ctx context.Context, token string, kind daraja.Kind) (verify.Grant, error)
}

// Publisher makes a callback durable, on the stream or in the spool. first
// asks for the single-use condition: the publish succeeds only as the first
// message of its (token, kind) subject. An error means nothing was stored.
type Publisher interface {
	Store(ctx context.Context, msg *nats.Msg, first bool) (publish.Outcome, error)
}

// Requester asks a C2B validator and returns its reply.
type Requester interface {
	Request(ctx context.Context, msg *nats.Msg, timeout time.Duration) ([]byte, error)
}

// Validator answers a C2B validation request itself, or says it does not
// serve the shortcode (ok false). decision is accepted or rejected, by who
// decided (e.g. "app", "fallback").
type Validator interface {
	Validate(ctx context.Context, msg *nats.Msg) (answer []byte, decision, by string, ok bool)
}

// Limiter says whether a source may be refused (and logged) once more.
type Limiter interface {
	Allow(src netip.Addr, now time.Time) bool
}

// Notifier sends best-effort events (rejections).
type Notifier interface {
	Notify(msg *nats.Msg)
}

// Metrics observes outcomes. Every method must be cheap and safe for
// concurrent use.
type Metrics interface {
	Request(kind, outcome string, d time.Duration)
	Rejected(reason string)
	AllowlistMiss()
	Published(d time.Duration)
	Spooled()
	Validation(decision, by string)
}

// Policy is the part of the configuration a reload may change. A Policy is
// never modified after it is handed to the Handler.
type Policy struct {
	// Allow lists the sources that may deliver callbacks.
	Allow *allowlist.List
	// ReportOnly lets sources outside Allow through, counted and logged.
	ReportOnly bool
	// ClientIP resolves the real client behind trusted proxies.
	ClientIP *ClientIP
	// ProxyProtocol: the listener takes the client address from PROXY
	// headers (required from trusted proxies), so X-Forwarded-For is never
	// read: a trusted L4 balancer passes the client's headers through.
	ProxyProtocol bool
	// MaxBodyBytes caps a callback body.
	MaxBodyBytes int64
}

// Options are the Handler's fixed collaborators and settings.
type Options struct {
	Tokens    Tokens
	Publisher Publisher
	Requester Requester
	Notifier  Notifier // optional
	Metrics   Metrics  // optional
	// RejectLimiter bounds the refusals, log lines and rejection events
	// per source outside the allowlist; past it, the answer is a quiet 429
	// (optional).
	RejectLimiter Limiter
	Subjects      publish.Subjects
	// QueryParam carries the token.
	QueryParam string
	// Edge is this instance's name (Daraja-Edge header).
	Edge string
	// ValidationTimeout bounds the wait for a C2B validator.
	ValidationTimeout time.Duration
	// RejectOnTimeout answers C2B validation with a rejection when no
	// validator replies; otherwise it accepts. RejectFor, when set, decides
	// per shortcode instead (the ResponseType registered with Daraja).
	RejectOnTimeout bool
	RejectFor       func(shortcode string) bool
	// Validator, when set, may answer C2B validation for a shortcode (an
	// app's validation route through the forwarder); ok false means it
	// does not serve that shortcode and the NATS validator is asked.
	Validator Validator
	Log       *zap.Logger
}

// Handler serves the callback endpoints.
type Handler struct {
	o      Options
	log    *zap.Logger
	policy atomic.Pointer[Policy]
}

// New returns a Handler enforcing p.
func New(o Options, p *Policy) *Handler {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Metrics == nil {
		o.Metrics = nopMetrics{}
	}
	h := &Handler{o: o, log: o.Log.Named("callback")}
	h.policy.Store(p)
	return h
}

// Policy is the policy in force.
func (h *Handler) Policy() *Policy { return h.policy.Load() }

// SetPolicy swaps in a new policy; requests in flight finish on the old one.
func (h *Handler) SetPolicy(p *Policy) { h.policy.Store(p) }

// Answers to Daraja.
var (
	answerAccepted = []byte(`{"ResultCode":0,"ResultDesc":"Accepted"}`)
	// C2B validation answers when no validator decides in time.
	validationAccept = []byte(`{"ResultCode":"0","ResultDesc":"Accepted"}`)
	validationReject = []byte(`{"ResultCode":"C2B00016","ResultDesc":"Rejected"}`)
)

// Error is a refused request: Status and Reason drive the answer, the log and
// the metrics; Err is detail for the log only.
type Error struct {
	Status int
	Reason string
	Err    error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Reason + ": " + e.Err.Error()
	}
	return e.Reason
}

func (e *Error) Unwrap() error { return e.Err }

func refuse(status int, reason string, err error) *Error {
	return &Error{Status: status, Reason: reason, Err: err}
}

// drainLimit is the largest unread body a refusal leaves on a kept-alive
// connection.
const drainLimit = 4 << 10

// publicAnswer is all a refused caller learns: the status, in words.
func publicAnswer(status int) []byte {
	if a, ok := publicAnswers[status]; ok {
		return a
	}
	return publicAnswers[http.StatusServiceUnavailable]
}

// publicAnswers are built once: refusals are the path a flood takes.
var publicAnswers = func() map[int][]byte {
	m := map[int][]byte{}
	for status, word := range map[int]string{
		http.StatusForbidden: "forbidden", http.StatusNotFound: "not found",
		http.StatusMethodNotAllowed: "method not allowed", http.StatusRequestEntityTooLarge: "body too large",
		http.StatusBadRequest: "bad request", http.StatusTooManyRequests: "too many requests",
		http.StatusServiceUnavailable: "unavailable",
	} {
		m[status] = []byte(`{"error":"` + word + `"}` + "\n")
	}
	return m
}()

// ServeHTTP vets one callback. Checks run cheapest first; a refused request
// publishes nothing.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rl := &requestLog{method: r.Method, path: r.URL.Path}
	answer, err := h.serve(w, r, rl, start)
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "no-store")
	status := http.StatusOK
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			e = refuse(http.StatusServiceUnavailable, "internal", err)
		}
		status, rl.reason, rl.err = e.Status, e.Reason, e.Err
		rl.outcome = "rejected"
		if e.Status < 500 && !rl.allowlisted && h.o.RejectLimiter != nil {
			src := rl.source
			if !src.IsValid() {
				src = rl.peer
			}
			if !h.o.RejectLimiter.Allow(src, start) {
				// A scanner: answer cheaply, log nothing, publish nothing.
				status, rl.reason = http.StatusTooManyRequests, "rate_limited"
				rl.quiet = true
			}
		}
		answer = publicAnswer(status)
		if status == http.StatusMethodNotAllowed {
			hdr.Set("Allow", http.MethodPost)
		}
		if status >= 500 {
			rl.outcome = "failed"
		} else if !rl.quiet {
			h.notifyRejected(rl)
		}
		h.o.Metrics.Rejected(rl.reason)
		// A refusal never reads a body it does not need. A small unread
		// body is left to Go's server to skip, keeping the connection (so
		// refusing stays cheaper than accepting); a large or unbounded one
		// closes the connection instead of being read.
		if !rl.bodyRead && (r.ContentLength > drainLimit || r.ContentLength < 0) {
			hdr.Set("Connection", "close")
			// Go's server still reads up to 256 KiB of an unread body on
			// the way out; a read deadline in the past stops that.
			_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(-time.Second))
		}
	}
	// RFC 9112 §6.1: a request with Transfer-Encoding and Content-Length
	// must close the connection after the answer, or a proxy that framed
	// it by Content-Length could smuggle the next request (with its own
	// X-Forwarded-For) onto it. Go's server drops Content-Length before the
	// handler runs, so every request with Transfer-Encoding closes.
	closeAfterTransferEncoding(hdr, r)
	w.WriteHeader(status)
	_, _ = w.Write(answer)
	rl.status = status
	rl.latency = time.Since(start)
	h.o.Metrics.Request(string(rl.kind), rl.outcome, rl.latency)
	switch {
	case rl.quiet:
	case status >= 500:
		h.log.Error("callback", zap.Object("req", rl))
	case status >= 400:
		h.log.Warn("callback", zap.Object("req", rl))
	default:
		h.log.Info("callback", zap.Object("req", rl))
	}
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request, rl *requestLog, received time.Time) ([]byte, error) {
	p := h.policy.Load()

	// 1. Source address, after trusted proxies.
	peer, err := peerAddr(r.RemoteAddr)
	if err != nil {
		return nil, refuse(http.StatusForbidden, "bad_peer", err)
	}
	rl.peer = peer
	client := peer
	xff := r.Header.Values("X-Forwarded-For")
	switch {
	case len(xff) == 0:
	case p.ProxyProtocol:
		rl.xffIgnored = "PROXY protocol connection"
	case !p.ClientIP.Trusts(peer):
		rl.xffIgnored = "peer not in client_ip.trusted_proxies"
	default:
		if client, err = p.ClientIP.Resolve(peer, xff); err != nil {
			return nil, refuse(http.StatusForbidden, "bad_forwarded_for", err)
		}
	}
	rl.source = client
	rl.allowlisted = p.Allow.Contains(client)
	if !rl.allowlisted {
		if !p.ReportOnly {
			return nil, refuse(http.StatusForbidden, "source_not_allowed", nil)
		}
		rl.allowlistMiss = true
		h.o.Metrics.AllowlistMiss()
	}

	// 2. Path and method. The escaped path must be the plain one, so
	// encodings and dot segments name nothing.
	kind, ok := daraja.KindForPath(r.URL.Path)
	if !ok || r.URL.RawPath != "" || r.URL.EscapedPath() != r.URL.Path {
		return nil, refuse(http.StatusNotFound, "unknown_path", nil)
	}
	rl.kind = kind
	if r.Method != http.MethodPost {
		return nil, refuse(http.StatusMethodNotAllowed, "method_not_allowed", nil)
	}

	// 3. Token, before the body is read.
	token, ok := singleQueryValue(r.URL.RawQuery, h.o.QueryParam)
	if !ok {
		return nil, refuse(http.StatusForbidden, verify.ErrUnknown.Reason, errors.New("no single token in the query"))
	}
	ctx := r.Context()
	grant, err := h.o.Tokens.Authorize(ctx, token, kind)
	rl.tokenID, rl.reference = grant.ID, grant.Reference
	if err != nil {
		return nil, tokenError(err)
	}

	// 4. Body: bounded, then parsed for its kind.
	if r.ContentLength > p.MaxBodyBytes {
		return nil, refuse(http.StatusRequestEntityTooLarge, "body_too_large", nil)
	}
	rl.bodyRead = true
	body, err := readBody(w, r, p.MaxBodyBytes)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, refuse(http.StatusRequestEntityTooLarge, "body_too_large", nil)
		}
		return nil, refuse(http.StatusBadRequest, "body_unreadable", err)
	}
	cb, err := daraja.Parse(kind, body)
	if err != nil {
		return nil, refuse(http.StatusBadRequest, "malformed_body", err)
	}
	rl.transactionID, rl.msisdn = cb.TransactionID, cb.MSISDN
	if cb.Shortcode != "" && cb.Shortcode != grant.Shortcode {
		return nil, tokenError(verify.ErrWrongShortcode)
	}

	// 5. Durable and single use, in one write. From here on the work must
	// finish even if Daraja hangs up: what was stored must be answered
	// for, and a callback that was not stored used nothing up.
	ctx = context.WithoutCancel(ctx)
	msg := publish.Callback{
		Kind: string(kind), Shortcode: grant.Shortcode, TransactionID: cb.TransactionID,
		Receipt: cb.Receipt, ResultCode: cb.ResultCode, Reference: grant.Reference, TokenID: grant.ID,
		SourceIP: client.String(), ReceivedAt: received, Edge: h.o.Edge, Body: body,
	}
	answer := answerAccepted
	var decision, decidedBy string
	if kind == daraja.C2BValidation {
		answer, decision, decidedBy = h.validate(ctx, &msg)
		rl.decision = decision
	}
	nm := msg.Msg(h.o.Subjects.Callback(msg.Kind, msg.Shortcode, msg.TokenID))
	if decision != "" {
		nm.Header.Set(publish.HeaderDecision, decision)
		nm.Header.Set(publish.HeaderDecisionBy, decidedBy)
		nm.Header.Set(publish.HeaderDecisionAnswer, string(answer))
	}
	t0 := time.Now()
	out, err := h.o.Publisher.Store(ctx, nm, !grant.Reusable)
	rl.ack = time.Since(t0)
	if err != nil {
		return nil, refuse(http.StatusServiceUnavailable, "not_durable", err)
	}
	switch out {
	case publish.Replay:
		return nil, tokenError(verify.ErrReplay)
	case publish.Spooled:
		h.o.Metrics.Spooled()
	default:
		h.o.Metrics.Published(rl.ack)
	}
	rl.outcome = outcomeWords[out]
	if out == publish.Duplicate && decision != "" {
		// A repeated validation: Daraja is given the answer the stream
		// recorded the first time (Store put it back on nm).
		if first := nm.Header.Get(publish.HeaderDecisionAnswer); first != "" {
			answer, rl.decision = []byte(first), nm.Header.Get(publish.HeaderDecision)
		}
	}
	return answer, nil
}

// readBody reads the whole body, at most limit bytes: into one buffer of
// the announced length when there is one (io.ReadAll would grow its buffer
// four or five times for a callback), else as it comes.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	rd := http.MaxBytesReader(w, r.Body, limit)
	if n := r.ContentLength; n > 0 && n <= limit {
		b := make([]byte, n)
		if _, err := io.ReadFull(rd, b); err != nil {
			return nil, err
		}
		// Read to the end as io.ReadAll does: a stream reset before its
		// end (HTTP/2) is an unreadable body, not a callback.
		var one [1]byte
		if k, err := rd.Read(one[:]); k > 0 || err != io.EOF {
			if err == nil || err == io.EOF {
				err = errors.New("body longer than its Content-Length")
			}
			return nil, err
		}
		return b, nil
	}
	return io.ReadAll(rd)
}

// outcomeWords are the logged outcomes of a stored callback.
var outcomeWords = [...]string{publish.Stored: "accepted", publish.Duplicate: "duplicate",
	publish.Replay: "replay", publish.Spooled: "spooled"}

// validate asks the shortcode's validator and returns Daraja's answer.
func (h *Handler) validate(ctx context.Context, cb *publish.Callback) (answer []byte, decision, by string) {
	msg := cb.Msg(h.o.Subjects.Validate(cb.Shortcode))
	if h.o.Validator != nil {
		if answer, decision, by, ok := h.o.Validator.Validate(ctx, msg); ok {
			h.o.Metrics.Validation(decision, by)
			return answer, decision, by
		}
	}
	reply, err := h.o.Requester.Request(ctx, msg, h.o.ValidationTimeout)
	by = "validator"
	if err == nil {
		// Daraja gets the answer as read, rebuilt: what it acts on is what
		// Daraja-Decision records.
		if answer, accepted, ok := daraja.ValidationAnswer(reply); ok {
			decision = "rejected"
			if accepted {
				decision = "accepted"
			}
			h.o.Metrics.Validation(decision, by)
			return answer, decision, by
		}
		by = "invalid-reply"
		h.log.Warn("validator reply is not a Daraja answer; using on_timeout", zap.String("transaction_id", daraja.MaskTransactionID(daraja.Kind(cb.Kind), cb.TransactionID)))
	} else {
		by = "timeout"
	}
	answer, decision = validationAccept, "accepted"
	if reject := h.o.RejectOnTimeout; h.o.RejectFor != nil && h.o.RejectFor(cb.Shortcode) || h.o.RejectFor == nil && reject {
		answer, decision = validationReject, "rejected"
	}
	h.o.Metrics.Validation(decision, by)
	return answer, decision, by
}

func tokenError(err error) error {
	var rej *verify.Rejection
	if errors.As(err, &rej) {
		return refuse(http.StatusForbidden, rej.Reason, nil)
	}
	return refuse(http.StatusServiceUnavailable, "token_store_unavailable", err)
}

// singleQueryValue finds key in a raw query and returns its value when it
// appears exactly once and is not empty.
func singleQueryValue(rawQuery, key string) (string, bool) {
	var value string
	found := 0
	for rawQuery != "" {
		var part string
		part, rawQuery, _ = strings.Cut(rawQuery, "&")
		k, v, _ := strings.Cut(part, "=")
		if k != key {
			continue
		}
		if found++; found > 1 {
			return "", false
		}
		value = v
	}
	// Tokens are URL-safe: an escaped token is not one we issued.
	if found != 1 || value == "" || strings.ContainsAny(value, "%+") {
		return "", false
	}
	return value, true
}

func peerAddr(remote string) (netip.Addr, error) {
	ap, err := netip.ParseAddrPort(remote)
	if err == nil {
		return ap.Addr().Unmap(), nil
	}
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return netip.Addr{}, err
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, err
	}
	return a.Unmap().WithZone(""), nil
}

// rejection is what lands on <prefix>.rejected.<reason>: never the body,
// never the token.
type rejection struct {
	Reason   string `json:"reason"`
	SourceIP string `json:"source_ip,omitempty"`
	Path     string `json:"path"`
	TokenID  string `json:"token_id,omitempty"`
	At       string `json:"at"`
	Edge     string `json:"edge"`
}

func (h *Handler) notifyRejected(rl *requestLog) {
	if h.o.Notifier == nil {
		return
	}
	ev := rejection{Reason: rl.reason, Path: safePath(rl.path), TokenID: rl.tokenID,
		At: time.Now().UTC().Format(time.RFC3339Nano), Edge: h.o.Edge}
	if rl.source.IsValid() {
		ev.SourceIP = rl.source.String()
	}
	data, _ := json.Marshal(ev)
	h.o.Notifier.Notify(&nats.Msg{Subject: h.o.Subjects.Rejected(rl.reason), Data: data})
}

// safePath is a request path fit for logs and events, as on every
// listener (redact.Path).
func safePath(p string) string { return redact.Path(p) }

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// requestLog is one request's log line. It marshals only what is safe:
// no query (the token), no body, the MSISDN masked.
type requestLog struct {
	method, path  string
	peer, source  netip.Addr
	kind          daraja.Kind
	tokenID       string
	reference     string
	transactionID string
	msisdn        string
	decision      string
	allowlistMiss bool
	allowlisted   bool
	xffIgnored    string // why X-Forwarded-For was not believed
	quiet         bool   // rate limited: not logged, not published
	bodyRead      bool
	status        int
	outcome       string
	reason        string
	err           error
	latency       time.Duration
	ack           time.Duration // the wait for the stream's ack (or the spool)
}

func (l *requestLog) MarshalLogObject(e zapcore.ObjectEncoder) error {
	e.AddString("method", truncate(l.method, 16))
	e.AddString("path", safePath(l.path))
	if l.source.IsValid() {
		e.AddString("source_ip", l.source.String())
	}
	if l.peer.IsValid() && l.peer != l.source {
		e.AddString("peer_ip", l.peer.String())
	}
	if l.xffIgnored != "" && l.status >= 400 {
		e.AddString("x_forwarded_for_ignored", l.xffIgnored)
	}
	if l.kind != "" {
		e.AddString("kind", string(l.kind))
	}
	if l.tokenID != "" {
		e.AddString("token_id", l.tokenID)
	}
	if l.reference != "" {
		e.AddString("reference", l.reference)
	}
	if l.transactionID != "" {
		e.AddString("transaction_id", daraja.MaskTransactionID(l.kind, l.transactionID))
	}
	if l.msisdn != "" {
		e.AddString("msisdn", daraja.MaskMSISDN(l.msisdn))
	}
	if l.decision != "" {
		e.AddString("decision", l.decision)
	}
	if l.allowlistMiss {
		e.AddBool("allowlist_miss", true)
	}
	e.AddInt("status", l.status)
	e.AddString("outcome", l.outcome)
	if l.reason != "" {
		e.AddString("reason", l.reason)
	}
	if l.err != nil {
		e.AddString("error", l.err.Error())
	}
	e.AddDuration("latency", l.latency)
	if l.ack > 0 {
		// The part of latency spent waiting for the stream (or the spool):
		// what is left is the edge's own work.
		e.AddDuration("ack_latency", l.ack)
	}
	return nil
}

type nopMetrics struct{}

func (nopMetrics) Request(string, string, time.Duration) {}
func (nopMetrics) Rejected(string)                       {}
func (nopMetrics) AllowlistMiss()                        {}
func (nopMetrics) Published(time.Duration)               {}
func (nopMetrics) Spooled()                              {}
func (nopMetrics) Validation(string, string)             {}

// closeAfterTransferEncoding marks the answer to close the connection when
// r carried Transfer-Encoding (RFC 9112 §6.1, see ServeHTTP).
func closeAfterTransferEncoding(h http.Header, r *http.Request) {
	if len(r.TransferEncoding) > 0 {
		h.Set("Connection", "close")
	}
}

// CloseAfterTransferEncoding wraps next so that every answer to a request
// that carried Transfer-Encoding closes the connection, as the callback
// handler's own answers do: for listeners other than the public one (the
// admin API and console), so no listener keeps a connection a proxy may
// have framed differently.
func CloseAfterTransferEncoding(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		closeAfterTransferEncoding(w.Header(), r)
		next.ServeHTTP(w, r)
	})
}
