// Package admin serves the operator side of daraja-edge: the token API
// behind bearer API keys, health and readiness probes, and metrics.
package admin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"path"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/forward"
	"github.com/daraja-edge/daraja-edge/internal/redact"
	"github.com/daraja-edge/daraja-edge/verify"
)

// Tokens is the token service the API fronts.
type Tokens interface {
	Issue(ctx context.Context, req verify.IssueRequest) (verify.IssueResponse, error)
	Status(ctx context.Context, id string) (verify.Status, error)
	Revoke(ctx context.Context, id string) error
	Rotate(ctx context.Context, req verify.RotateRequest) (verify.IssueResponse, error)
	Annotate(ctx context.Context, id string, a verify.Annotation) (verify.Status, error)
	List(ctx context.Context, f verify.ListFilter) ([]verify.Status, string, error)
}

// Deliveries is the forwarder's operator side (*forward.Forwarder).
type Deliveries interface {
	Deliveries(ctx context.Context, destination, tx, state string, limit int) ([]forward.Delivery, error)
	Replay(ctx context.Context, r forward.ReplayRequest) (forward.ReplayResult, error)
}

// Options configures the admin handler.
type Options struct {
	Tokens Tokens
	// Deliveries serves /v1/deliveries; nil: forwarding is off (404).
	Deliveries Deliveries
	// APIKeys are the accepted bearer keys; an entry "sha256:<hex>" is the
	// SHA-256 of a key.
	APIKeys []string
	// ReadKeys (same forms) may call the routes that read (token status
	// and list, deliveries) and get 403 on every route that changes state.
	ReadKeys []string
	// Limiter bounds failures per client address: wrong or missing keys,
	// unknown routes and wrong methods. The key is checked first, so a
	// request with a valid key always passes and spends nothing; a failure
	// past the limit is answered without a log line (a wrong key with 429),
	// so keys cannot be guessed at speed and refusals cannot flood the log
	// (optional: without it, failures are neither limited nor counted).
	Limiter Limiter
	// Ready reports why the edge is not ready, or nil.
	Ready func(ctx context.Context) error
	// Metrics serves /metrics; nil serves 404.
	Metrics http.Handler
	Log     *zap.Logger
}

// Limiter counts failures per client address (*ratelimit.PerSource).
type Limiter interface {
	// Allow spends one failure, reporting whether one was left.
	Allow(src netip.Addr, now time.Time) bool
}

// maxRequestBytes bounds an admin request body.
const maxRequestBytes = 16 << 10

// Handler returns the admin API handler. Every answer it gives is JSON,
// errors as APIError, unknown routes (404) and wrong methods (405, with
// Allow) included. Its logs hold no query, no key and no token: paths go
// through redact.Path, token ids reach the token service only when they
// have the form of one (anything else is 404 on the spot).
func Handler(o Options) http.Handler {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	a := &api{o: o, log: o.Log.Named("admin"), keys: hashKeys(o.APIKeys), rkeys: hashKeys(o.ReadKeys)}
	mux := http.NewServeMux()
	for _, rt := range a.routes() {
		if rt.h == nil {
			continue // GET /metrics without Options.Metrics
		}
		var h http.Handler = rt.h
		switch rt.access {
		case AccessRead:
			h = a.auth(rt.h, false)
		case AccessWrite:
			h = a.auth(rt.h, true)
		}
		mux.Handle(rt.pattern, h)
	}
	a.mux = mux
	return a
}

type api struct {
	o     Options
	log   *zap.Logger
	keys  [][32]byte // full keys
	rkeys [][32]byte // read-only keys
	mux   *http.ServeMux
}

// Access is who may call a route.
type Access string

// The accesses of the routes.
const (
	// AccessOpen routes need no key (probes and metrics).
	AccessOpen Access = "open"
	// AccessRead routes take a full or a read-only key.
	AccessRead Access = "read"
	// AccessWrite routes change state and take a full key only: a
	// read-only key gets 403.
	AccessWrite Access = "write"
)

// Route is one route of the admin API: a net/http pattern ("GET
// /v1/tokens/{id}"; GET serves HEAD too) and who may call it.
type Route struct {
	Pattern string
	Access  Access
}

type route struct {
	pattern string
	access  Access
	h       http.HandlerFunc
}

// routes is the admin API, one line per route: Handler serves exactly
// these, and docs/openapi.yaml is checked against them.
func (a *api) routes() []route {
	var metrics http.HandlerFunc
	if a.o.Metrics != nil {
		metrics = a.o.Metrics.ServeHTTP
	}
	return []route{
		{"POST /v1/tokens", AccessWrite, a.issue},
		{"GET /v1/tokens", AccessRead, a.list},
		{"GET /v1/tokens/{id}", AccessRead, tokenID(a.status)},
		{"DELETE /v1/tokens/{id}", AccessWrite, tokenID(a.revoke)},
		{"PATCH /v1/tokens/{id}", AccessWrite, tokenID(a.annotate)},
		{"POST /v1/tokens/{id}/rotate", AccessWrite, tokenID(a.rotate)},
		{"GET /v1/deliveries", AccessRead, a.deliveries},
		{"POST /v1/deliveries/replay", AccessWrite, a.replay},
		{"GET /healthz", AccessOpen, func(w http.ResponseWriter, _ *http.Request) {
			writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		}},
		{"GET /readyz", AccessOpen, a.ready},
		{"GET /metrics", AccessOpen, metrics},
	}
}

// Routes lists every route Handler serves (GET /metrics only when
// Options.Metrics is set), in the order of the API's documentation.
func Routes() []Route {
	var out []Route
	for _, r := range (&api{}).routes() {
		out = append(out, Route{Pattern: r.pattern, Access: r.access})
	}
	return out
}

// hashKeys turns keys into the SHA-256 sums that validKey compares: a
// "sha256:<hex>" entry is a sum already; a malformed one is dropped.
func hashKeys(keys []string) [][32]byte {
	var out [][32]byte
	for _, k := range keys {
		if h, ok := strings.CutPrefix(k, "sha256:"); ok {
			var sum [32]byte
			if b, err := hex.DecodeString(h); err == nil && len(b) == len(sum) {
				copy(sum[:], b)
				out = append(out, sum)
			}
			continue
		}
		out = append(out, sha256.Sum256([]byte(k)))
	}
	return out
}

// ServeHTTP routes r. What the mux would answer in text (404, 405) or by
// redirect (an unclean path such as /v1//tokens) is answered here in JSON
// instead, and counted as a failure.
func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == path.Clean(r.URL.Path) {
		h, pattern := a.mux.Handler(r)
		if pattern != "" {
			a.mux.ServeHTTP(w, r) // again, so that r.PathValue is set
			return
		}
		// The mux's own 404 and 405 handlers: keep only the Allow they set.
		probe := headerOnly{}
		h.ServeHTTP(probe, r)
		if allow := probe.Header().Get("Allow"); allow != "" {
			w.Header().Set("Allow", allow)
			a.refuse(r, "admin request refused: method not allowed")
			writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "method not allowed; see Allow")
			return
		}
	}
	a.refuse(r, "admin request refused: no such route")
	writeError(w, http.StatusNotFound, "not_found", "no such route")
}

// headerOnly is a ResponseWriter that keeps the header and drops the rest.
type headerOnly http.Header

func (h headerOnly) Header() http.Header       { return http.Header(h) }
func (headerOnly) Write(b []byte) (int, error) { return len(b), nil }
func (headerOnly) WriteHeader(int)             {}

// refuse spends one failure of r's client, reporting whether one was left;
// if so, it logs msg with what of r is safe to log.
func (a *api) refuse(r *http.Request, msg string) bool {
	if a.o.Limiter != nil {
		var client netip.Addr
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			client = ap.Addr().Unmap()
		}
		if !a.o.Limiter.Allow(client, time.Now()) {
			return false
		}
	}
	a.log.Warn(msg, requestFields(r)...)
	return true
}

// requestFields is what of r may be logged: the peer, the method if it is
// a standard one (a method is any token, so it can be one), the path
// redacted; never the query or a header.
func requestFields(r *http.Request) []zap.Field {
	method := "other"
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		method = r.Method
	}
	return []zap.Field{zap.String("remote", r.RemoteAddr), zap.String("method", method), zap.String("path", redact.Path(r.URL.Path))}
}

// APIError is the error body of the admin API and of the NATS token
// service: {"error":{"code":…,"message":…}}.
type APIError struct {
	Error verify.RequestError `json:"error"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, APIError{Error: verify.RequestError{Code: code, Message: msg}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// auth admits requests bearing one of the API keys, checked before
// anything else: a valid key always passes, whatever failures its address
// has spent, so nothing sharing the address can lock the operator out. A
// read-only key passes where write is false and gets 403 where it is true
// (it spends nothing: it is a valid key). A missing or wrong key (answered
// alike) spends one failure: 401 and a log line while some are left, then
// a quiet 429.
func (a *api) auth(next http.HandlerFunc, write bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		full, read := a.validKey(r.Header.Get("Authorization"))
		switch {
		case full, read && !write:
			next(w, r)
			return
		case read:
			a.log.Info("admin request refused: read-only key on a route that changes state", requestFields(r)...)
			writeError(w, http.StatusForbidden, "forbidden", "this key may only read; changing state needs a key of admin.api_keys")
			return
		}
		if !a.refuse(r, "admin request refused: bad or missing API key") {
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusTooManyRequests, "rate_limited", "too many failed requests; slow down")
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="daraja-edge"`)
		writeError(w, http.StatusUnauthorized, "unauthorized", "a valid API key is required")
	})
}

// validKey reports whether an Authorization header value bears one of the
// full keys, or one of the read-only keys: its SHA-256 is compared with
// every key's, in constant time, whatever matched (the scheme is
// case-insensitive, RFC 9110 §11.1).
func (a *api) validKey(authorization string) (full, read bool) {
	scheme, presented, ok := strings.Cut(authorization, " ")
	sum := sha256.Sum256([]byte(presented))
	fm, rm := 0, 0
	for i := range a.keys {
		fm |= subtle.ConstantTimeCompare(sum[:], a.keys[i][:])
	}
	for i := range a.rkeys {
		rm |= subtle.ConstantTimeCompare(sum[:], a.rkeys[i][:])
	}
	ok = ok && strings.EqualFold(scheme, "Bearer") && presented != ""
	return ok && fm == 1, ok && rm == 1 && fm == 0
}

// tokenID answers 404 for an {id} that is not a token id, so whatever was
// pasted there (a token, say) never reaches the token service or its logs.
func tokenID(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !verify.ValidID(r.PathValue("id")) {
			writeError(w, http.StatusNotFound, "not_found", "no such token")
			return
		}
		next(w, r)
	}
}

// readRequest decodes the request body into v (verify.DecodeRequest: one
// JSON object, no unknown field, nothing after it) and answers the client
// itself when it cannot: 413 past maxRequestBytes, else 400 naming what
// the body must be. An empty body is v's zero value when optional.
func readRequest(w http.ResponseWriter, r *http.Request, v any, what string, optional bool) bool {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBytes))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("the body is larger than %d bytes", maxRequestBytes))
		return false
	case err != nil:
		writeError(w, http.StatusBadRequest, "invalid_request", "the body could not be read: "+err.Error())
		return false
	case optional && len(bytes.TrimSpace(data)) == 0:
		return true
	}
	if err := verify.DecodeRequest(data, v); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request", "body must be "+what+": "+err.Error())
		return false
	}
	return true
}

func (a *api) issue(w http.ResponseWriter, r *http.Request) {
	var req verify.IssueRequest
	if !readRequest(w, r, &req, "a JSON token request", false) {
		return
	}
	resp, err := a.o.Tokens.Issue(r.Context(), req)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, resp)
}

func (a *api) status(w http.ResponseWriter, r *http.Request) {
	st, err := a.o.Tokens.Status(r.Context(), r.PathValue("id"))
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// list answers GET /v1/tokens?reference=&shortcode=&kind=&state=&after=&limit=
// with {"tokens":[…],"next":"<cursor>"}.
func (a *api) list(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := verify.ListFilter{Reference: q.Get("reference"), Shortcode: q.Get("shortcode"), Kind: daraja.Kind(q.Get("kind")),
		State: q.Get("state"), After: q.Get("after")}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, "invalid_request", "limit must be a positive number")
			return
		}
		f.Limit = n
	}
	if f.After != "" && !verify.ValidID(f.After) {
		writeError(w, http.StatusBadRequest, "invalid_request", "after must be a token id")
		return
	}
	page, next, err := a.o.Tokens.List(r.Context(), f)
	if err != nil {
		a.fail(w, err)
		return
	}
	if page == nil {
		page = []verify.Status{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"tokens": page, "next": next})
}

func (a *api) revoke(w http.ResponseWriter, r *http.Request) {
	if err := a.o.Tokens.Revoke(r.Context(), r.PathValue("id")); err != nil {
		a.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// rotate issues a successor to a token; body (optional):
// {"ttl":"720h","overlap":"24h"}.
func (a *api) rotate(w http.ResponseWriter, r *http.Request) {
	var req verify.RotateRequest
	if !readRequest(w, r, &req, "a JSON rotate request", true) {
		return
	}
	req.ID = r.PathValue("id")
	resp, err := a.o.Tokens.Rotate(r.Context(), req)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, resp)
}

// annotate records what Daraja answered the business's request:
// {"checkout_request_id":"ws_CO_…"} or {"originator_conversation_id":"…"}.
func (a *api) annotate(w http.ResponseWriter, r *http.Request) {
	var req verify.Annotation
	if !readRequest(w, r, &req, "a JSON annotation", false) {
		return
	}
	st, err := a.o.Tokens.Annotate(r.Context(), r.PathValue("id"), req)
	if err != nil {
		a.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// deliveries lists a destination's deliveries:
// ?destination=shop[&tx=…][&state=pending|delivered|dead].
func (a *api) deliveries(w http.ResponseWriter, r *http.Request) {
	if a.o.Deliveries == nil {
		writeError(w, http.StatusNotFound, "not_found", "forwarding is not configured")
		return
	}
	q := r.URL.Query()
	dest, tx, state := q.Get("destination"), q.Get("tx"), q.Get("state")
	switch {
	case dest == "":
		writeError(w, http.StatusBadRequest, "invalid_request", "destination is required")
		return
	case len(tx) > 128:
		writeError(w, http.StatusBadRequest, "invalid_request", "tx is too long")
		return
	case state != "" && state != forward.StatePending && state != forward.StateDelivered && state != forward.StateDead:
		writeError(w, http.StatusBadRequest, "invalid_request", "state must be pending, delivered or dead")
		return
	}
	ds, err := a.o.Deliveries.Deliveries(r.Context(), dest, tx, state, 1000)
	if err != nil {
		a.failDelivery(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"deliveries": ds})
}

// replay queues callbacks for delivery again:
// {"destination":…,"sequence"|"tx"|"since"+"until"|"dlq":true}.
func (a *api) replay(w http.ResponseWriter, r *http.Request) {
	if a.o.Deliveries == nil {
		writeError(w, http.StatusNotFound, "not_found", "forwarding is not configured")
		return
	}
	var req forward.ReplayRequest
	if !readRequest(w, r, &req, "a JSON replay request", false) {
		return
	}
	res, err := a.o.Deliveries.Replay(r.Context(), req)
	if err != nil {
		a.failDelivery(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, res)
}

func (a *api) failDelivery(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, forward.ErrUnknownDestination):
		writeError(w, http.StatusNotFound, "not_found", "no such destination")
	case errors.Is(err, forward.ErrBadReplay), errors.Is(err, forward.ErrNotForwarded):
		writeError(w, http.StatusBadRequest, "invalid_request", err.Error())
	default:
		a.log.Error("deliveries failed", zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, "unavailable", "the delivery store is unavailable; try again")
	}
}

func (a *api) fail(w http.ResponseWriter, err error) {
	var re *verify.RequestError
	switch {
	case errors.As(err, &re):
		writeJSON(w, http.StatusBadRequest, APIError{Error: *re})
	case errors.Is(err, verify.ErrNotFound):
		writeError(w, http.StatusNotFound, "not_found", "no such token")
	default:
		a.log.Error("token store failed", zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, "unavailable", "the token store is unavailable; try again")
	}
}

func (a *api) ready(w http.ResponseWriter, r *http.Request) {
	if a.o.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := a.o.Ready(ctx); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": err.Error()})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
