// Package admin serves the operator side of daraja-edge: the token API
// behind bearer API keys, health and readiness probes, and metrics.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/daraja-edge/daraja-edge/verify"
)

// Tokens is the token service the API fronts.
type Tokens interface {
	Issue(ctx context.Context, req verify.IssueRequest) (verify.IssueResponse, error)
	Status(ctx context.Context, id string) (verify.Status, error)
	Revoke(ctx context.Context, id string) error
	Rotate(ctx context.Context, req verify.RotateRequest) (verify.IssueResponse, error)
}

// Options configures the admin handler.
type Options struct {
	Tokens Tokens
	// APIKeys are the accepted bearer keys; an entry "sha256:<hex>" is the
	// SHA-256 of a key.
	APIKeys []string
	// Limiter bounds failed authentications per client address: once a
	// client has spent it, every request of its gets 429 until it refills,
	// so keys cannot be guessed at speed (optional).
	Limiter Limiter
	// Ready reports why the edge is not ready, or nil.
	Ready func(ctx context.Context) error
	// Metrics serves /metrics; nil serves 404.
	Metrics http.Handler
	Log     *zap.Logger
}

// Limiter counts failures per client address.
type Limiter interface {
	// Allow spends one failure, reporting whether one was left.
	Allow(src netip.Addr, now time.Time) bool
	// Blocked reports whether the client has none left.
	Blocked(src netip.Addr, now time.Time) bool
}

// maxRequestBytes bounds an admin request body.
const maxRequestBytes = 16 << 10

// Handler returns the admin API handler.
func Handler(o Options) http.Handler {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	a := &api{o: o, log: o.Log.Named("admin")}
	for _, k := range o.APIKeys {
		if h, ok := strings.CutPrefix(k, "sha256:"); ok {
			var sum [32]byte
			if b, err := hex.DecodeString(h); err == nil && len(b) == len(sum) {
				copy(sum[:], b)
				a.keys = append(a.keys, sum)
			}
			continue
		}
		a.keys = append(a.keys, sha256.Sum256([]byte(k)))
	}
	mux := http.NewServeMux()
	mux.Handle("POST /v1/tokens", a.auth(a.issue))
	mux.Handle("GET /v1/tokens/{id}", a.auth(a.status))
	mux.Handle("DELETE /v1/tokens/{id}", a.auth(a.revoke))
	mux.Handle("POST /v1/tokens/{id}/rotate", a.auth(a.rotate))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", a.ready)
	if o.Metrics != nil {
		mux.Handle("GET /metrics", o.Metrics)
	}
	return mux
}

type api struct {
	o    Options
	log  *zap.Logger
	keys [][32]byte
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

// auth admits requests bearing one of the API keys. Every key is compared,
// in constant time, whatever matched, and a missing key answers like a
// wrong one.
func (a *api) auth(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var client netip.Addr
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			client = ap.Addr().Unmap()
		}
		if a.o.Limiter != nil && a.o.Limiter.Blocked(client, time.Now()) {
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusTooManyRequests, "rate_limited", "too many failed requests; slow down")
			return
		}
		presented, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(presented))
		match := 0
		for i := range a.keys {
			match |= subtle.ConstantTimeCompare(sum[:], a.keys[i][:])
		}
		if !ok || presented == "" || match != 1 {
			if a.o.Limiter != nil {
				a.o.Limiter.Allow(client, time.Now())
			}
			a.log.Warn("admin request refused: bad or missing API key", zap.String("remote", r.RemoteAddr),
				zap.String("method", r.Method), zap.String("path", r.URL.Path))
			w.Header().Set("WWW-Authenticate", `Bearer realm="daraja-edge"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "a valid API key is required")
			return
		}
		next(w, r)
	})
}

func (a *api) issue(w http.ResponseWriter, r *http.Request) {
	var req verify.IssueRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request", "body must be a JSON token request: "+err.Error())
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
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil && !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, "invalid_request", "body must be a JSON rotate request: "+err.Error())
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
