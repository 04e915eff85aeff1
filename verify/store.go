package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/daraja-edge/daraja-edge/daraja"
)

// Rejection is why a token does not admit a callback. Every Rejection
// answers the caller the same way; Reason is for logs and metrics only.
type Rejection struct{ Reason string }

func (r *Rejection) Error() string { return "token rejected: " + r.Reason }

// The token rejections, comparable with errors.Is.
var (
	ErrUnknown        = &Rejection{"token_unknown"} // missing, malformed, not issued, or wrong secret
	ErrExpired        = &Rejection{"token_expired"}
	ErrRevoked        = &Rejection{"token_revoked"}
	ErrWrongKind      = &Rejection{"token_wrong_kind"}
	ErrWrongShortcode = &Rejection{"token_wrong_shortcode"}
	ErrReplay         = &Rejection{"token_replay"}
)

// ErrNotFound is returned by Get and Revoke for an id with no record.
var ErrNotFound = errors.New("token not found")

// Outcome of consuming a token with a callback.
type Outcome int

const (
	// First: this callback consumed the token (or the token is reusable).
	First Outcome = iota
	// Duplicate: the token was consumed by this same callback before.
	Duplicate
	// Deferred: the bucket was unreachable; the token is consumed in this
	// replica's memory and written to the bucket once it is back (Settle).
	Deferred
)

// StoreOptions configures a Store.
type StoreOptions struct {
	// Bucket is the key-value bucket name.
	Bucket string
	// Replicas of the bucket.
	Replicas int
	// Retain is how long a record is kept after it was last written, so
	// its state can still be read after expiry. It must exceed the
	// longest token lifetime.
	Retain time.Duration
	// Observer, if set, is told of token events.
	Observer Observer
}

// Observer is told of token events: issued, consumed, expired (missing
// event sent), revoked, rotated.
type Observer interface {
	TokenEvent(event string)
}

type nopObserver struct{}

func (nopObserver) TokenEvent(string) {}

// Store keeps token records in a JetStream key-value bucket, so every edge
// replica sees every token, and a local copy fed by a watch of the bucket,
// so a check needs no round trip and survives a NATS outage. It is safe for
// concurrent use.
type Store struct {
	kv  jetstream.KeyValue
	log *zap.Logger
	now func() time.Time
	obs Observer

	mu    sync.RWMutex
	cache map[string]cached
	// offline holds consumptions made while the bucket was unreachable:
	// token id → callback id. Settle writes them to the bucket.
	offline map[string]string
	synced  chan struct{} // closed once the watch delivered every record
}

type cached struct {
	rec Record
	rev uint64
}

// maxCached bounds the local copy; past it, lookups fall back to the bucket.
const maxCached = 1 << 20

// opTimeout bounds each bucket operation on the request path.
const opTimeout = 2 * time.Second

// NewStore opens the bucket, creating it if missing.
func NewStore(ctx context.Context, js jetstream.JetStream, o StoreOptions, log *zap.Logger) (*Store, error) {
	if log == nil {
		log = zap.NewNop()
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      o.Bucket,
		Description: "daraja-edge callback tokens (hashed)",
		History:     1,
		TTL:         o.Retain,
		Replicas:    o.Replicas,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("verify: token bucket %s: %w", o.Bucket, err)
	}
	obs := o.Observer
	if obs == nil {
		obs = nopObserver{}
	}
	return &Store{
		kv: kv, log: log.Named("tokens"), now: time.Now, obs: obs,
		cache: map[string]cached{}, offline: map[string]string{}, synced: make(chan struct{}),
	}, nil
}

// Watch keeps the local copy in step with the bucket until ctx ends. It
// returns once the watch has started; Synced closes when the bucket's
// records are all loaded.
func (s *Store) Watch(ctx context.Context) error {
	w, err := s.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("verify: watch token bucket: %w", err)
	}
	go func() {
		defer func() { _ = w.Stop() }()
		initial := true
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil {
					if initial {
						close(s.synced)
						initial = false
					}
					continue
				}
				s.apply(e)
			}
		}
	}()
	return nil
}

// Synced is closed once the watch has loaded every record.
func (s *Store) Synced() <-chan struct{} { return s.synced }

func (s *Store) apply(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		s.mu.Lock()
		delete(s.cache, e.Key())
		s.mu.Unlock()
		return
	}
	// This replica's own writes come back through the watch: they are
	// already remembered, so skip decoding them again.
	s.mu.RLock()
	c, ok := s.cache[e.Key()]
	s.mu.RUnlock()
	if ok && c.rev >= e.Revision() {
		return
	}
	var rec Record
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		s.log.Error("token record is corrupt", zap.String("token_id", e.Key()), zap.Error(err))
		return
	}
	s.remember(rec, e.Revision())
}

// remember stores rec in the local copy unless a newer revision is there.
func (s *Store) remember(rec Record, rev uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.cache[rec.ID]; ok && c.rev >= rev {
		return
	}
	if _, ok := s.cache[rec.ID]; !ok && len(s.cache) >= maxCached {
		return
	}
	s.cache[rec.ID] = cached{rec, rev}
}

func (s *Store) lookup(id string) (cached, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok := s.cache[id]
	return c, ok
}

// IssueRequest asks for a token. It is the JSON of the admin API and of the
// NATS token service.
type IssueRequest struct {
	Kinds     []daraja.Kind `json:"kinds"`
	Shortcode string        `json:"shortcode"`
	Reference string        `json:"reference,omitempty"`
	TTL       string        `json:"ttl,omitempty"`
	Reusable  bool          `json:"reusable,omitempty"`
}

// RequestError is an issue request the store refuses; Code is stable for
// programs, Message is for people.
type RequestError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *RequestError) Error() string { return e.Code + ": " + e.Message }

func badRequest(format string, args ...any) error {
	return &RequestError{Code: "invalid_request", Message: fmt.Sprintf(format, args...)}
}

var (
	shortcodeRE = regexp.MustCompile(`^[0-9]{4,12}$`)
	referenceRE = regexp.MustCompile(`^[\x20-\x7e]{0,64}$`)
)

// Issued is a new token with its record.
type Issued struct {
	Token  string
	Record Record
}

// Limits bounds issue requests.
type Limits struct {
	DefaultTTL, MaxTTL time.Duration
}

// Issue validates req, creates a token and stores its record.
func (s *Store) Issue(ctx context.Context, req IssueRequest, lim Limits) (Issued, error) {
	if len(req.Kinds) == 0 {
		return Issued{}, badRequest("kinds: name at least one callback kind")
	}
	for i, k := range req.Kinds {
		if !k.Valid() {
			return Issued{}, badRequest("kinds[%d]: %q is not a callback kind", i, k)
		}
		if req.Reusable && !k.IsC2B() {
			return Issued{}, badRequest("reusable: only C2B kinds (registered URLs) take reusable tokens, not %s", k)
		}
		for _, other := range req.Kinds[:i] {
			if other == k {
				return Issued{}, badRequest("kinds[%d]: %s is named twice", i, k)
			}
		}
	}
	if !shortcodeRE.MatchString(req.Shortcode) {
		return Issued{}, badRequest("shortcode: must be 4 to 12 digits")
	}
	if !referenceRE.MatchString(req.Reference) {
		return Issued{}, badRequest("reference: at most 64 printable ASCII characters")
	}
	ttl := lim.DefaultTTL
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 {
			return Issued{}, badRequest("ttl: %q is not a positive duration like 15m or 24h", req.TTL)
		}
		ttl = d
	}
	if ttl > lim.MaxTTL {
		return Issued{}, badRequest("ttl: %s is longer than the maximum %s", ttl, lim.MaxTTL)
	}
	token, id := newToken()
	now := s.now().UTC()
	rec := Record{
		ID:        id,
		Hash:      hashToken(token),
		Kinds:     append([]daraja.Kind(nil), req.Kinds...),
		Shortcode: req.Shortcode,
		Reference: req.Reference,
		Reusable:  req.Reusable,
		IssuedAt:  now,
		ExpiresAt: now.Add(ttl),
		State:     StateIssued,
	}
	data, _ := json.Marshal(&rec)
	rev, err := s.kv.Create(ctx, id, data)
	if err != nil {
		return Issued{}, fmt.Errorf("verify: store token %s: %w", id, err)
	}
	s.remember(rec, rev)
	s.obs.TokenEvent("issued")
	s.log.Info("token issued", zap.String("token_id", id), zap.Strings("kinds", kindStrings(rec.Kinds)),
		zap.String("shortcode", rec.Shortcode), zap.Bool("reusable", rec.Reusable), zap.Time("expires_at", rec.ExpiresAt))
	return Issued{Token: token, Record: rec}, nil
}

func kindStrings(ks []daraja.Kind) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = string(k)
	}
	return out
}

// Get returns the record for id.
func (s *Store) Get(ctx context.Context, id string) (Record, error) {
	rec, _, err := s.get(ctx, id)
	return rec, err
}

func (s *Store) get(ctx context.Context, id string) (Record, uint64, error) {
	if !ValidID(id) {
		return Record{}, 0, ErrNotFound
	}
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Record{}, 0, ErrNotFound
	}
	if err != nil {
		return Record{}, 0, fmt.Errorf("verify: read token %s: %w", id, err)
	}
	var rec Record
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return Record{}, 0, fmt.Errorf("verify: token %s record is corrupt: %w", id, err)
	}
	s.remember(rec, e.Revision())
	return rec, e.Revision(), nil
}

// update writes rec over revision rev and remembers the result.
func (s *Store) update(ctx context.Context, rec Record, rev uint64) error {
	data, _ := json.Marshal(&rec)
	newRev, err := s.kv.Update(ctx, rec.ID, data, rev)
	if err != nil {
		return err
	}
	s.remember(rec, newRev)
	return nil
}

// modify reads token id, lets change edit the record, and writes it back
// with compare-and-set, reading again and retrying when another writer got
// there first. change returns false to leave the record as it is.
func (s *Store) modify(ctx context.Context, op, id string, change func(*Record) bool) (rec Record, written bool, err error) {
	for range 8 {
		var rev uint64
		if rec, rev, err = s.get(ctx, id); err != nil {
			return rec, false, err
		}
		if !change(&rec) {
			return rec, false, nil
		}
		err = s.update(ctx, rec, rev)
		if err == nil {
			return rec, true, nil
		}
		if !isConflict(err) {
			return rec, false, fmt.Errorf("verify: %s %s: %w", op, id, err)
		}
	}
	return rec, false, fmt.Errorf("verify: %s %s: too much contention", op, id)
}

// Revoke marks a token revoked; later callbacks on it are refused.
// Revoking a revoked token is not an error.
func (s *Store) Revoke(ctx context.Context, id string) error {
	_, written, err := s.modify(ctx, "revoke", id, func(rec *Record) bool {
		if rec.State == StateRevoked {
			return false
		}
		now := s.now().UTC()
		rec.State, rec.RevokedAt = StateRevoked, &now
		return true
	})
	if written {
		s.obs.TokenEvent("revoked")
		s.log.Info("token revoked", zap.String("token_id", id))
	}
	return err
}

// Grant is a token found valid for a kind, ready to be consumed.
type Grant struct {
	Record   Record
	revision uint64
}

// Authorize checks that token is known, matches its stored hash, is neither
// expired nor revoked, and was issued for kind. A consumed single-use token
// passes here: whether the callback is a duplicate or a replay is decided by
// Consume, once the body names its transaction.
func (s *Store) Authorize(ctx context.Context, token string, kind daraja.Kind) (Grant, error) {
	id, err := ParseToken(token)
	if err != nil {
		return Grant{}, ErrUnknown
	}
	c, ok := s.lookup(id)
	rec, rev := c.rec, c.rev
	if !ok {
		// Not seen by the watch yet (issued a moment ago elsewhere), or
		// past the local copy's bound: ask the bucket.
		ctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		rec, rev, err = s.get(ctx, id)
		if errors.Is(err, ErrNotFound) {
			return Grant{}, ErrUnknown
		}
		if err != nil {
			return Grant{}, err
		}
	}
	if !rec.matches(token) {
		return Grant{}, ErrUnknown
	}
	switch rec.StateAt(s.now()) {
	case StateRevoked:
		return Grant{}, ErrRevoked
	case StateExpired:
		return Grant{}, ErrExpired
	}
	if !rec.Allows(kind) {
		return Grant{}, ErrWrongKind
	}
	return Grant{Record: rec, revision: rev}, nil
}

// Consume spends a single-use token on the callback identified by
// callbackID (kind:transaction id). The first callback consumes it; the same
// callback again is a Duplicate; any other callback is ErrReplay. Reusable
// tokens are never consumed. Two replicas racing on one token are settled
// by the bucket's compare-and-set: exactly one wins. When the bucket cannot
// be reached the consumption is Deferred: held in this replica's memory and
// written by Settle later.
func (s *Store) Consume(ctx context.Context, g Grant, callbackID string) (Outcome, error) {
	rec, rev := g.Record, g.revision
	if rec.Reusable {
		return First, nil
	}
	for range 8 {
		switch rec.State {
		case StateConsumed:
			if rec.ConsumedBy == callbackID {
				return Duplicate, nil
			}
			return 0, ErrReplay
		case StateRevoked:
			return 0, ErrRevoked
		}
		now := s.now().UTC()
		if !now.Before(rec.ExpiresAt) {
			return 0, ErrExpired
		}
		s.mu.RLock()
		held, deferred := s.offline[rec.ID]
		s.mu.RUnlock()
		if deferred {
			if held == callbackID {
				return Duplicate, nil
			}
			return 0, ErrReplay
		}
		rec.State, rec.ConsumedBy, rec.ConsumedAt = StateConsumed, callbackID, &now
		uctx, cancel := context.WithTimeout(ctx, opTimeout)
		err := s.update(uctx, rec, rev)
		cancel()
		if err == nil {
			s.obs.TokenEvent("consumed")
			return First, nil
		}
		if !isConflict(err) {
			return s.deferConsume(rec.ID, callbackID, err)
		}
		// Someone else wrote first: read again and decide on what they wrote.
		gctx, cancel := context.WithTimeout(ctx, opTimeout)
		rec, rev, err = s.get(gctx, rec.ID)
		cancel()
		if err != nil {
			return 0, err
		}
	}
	return 0, fmt.Errorf("verify: consume %s: too much contention", g.Record.ID)
}

func (s *Store) deferConsume(id, callbackID string, cause error) (Outcome, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if held, ok := s.offline[id]; ok {
		if held == callbackID {
			return Duplicate, nil
		}
		return 0, ErrReplay
	}
	s.offline[id] = callbackID
	s.obs.TokenEvent("consumed")
	s.log.Warn("token bucket unreachable: consumption held locally until it is back",
		zap.String("token_id", id), zap.Error(cause))
	return Deferred, nil
}

// Settle writes a consumption made while the bucket was unreachable (or
// replayed from the spool after a restart) to the bucket. It is a no-op for
// reusable tokens and for a token already consumed by the same callback; a
// token consumed meanwhile by another callback is logged as a conflict.
func (s *Store) Settle(ctx context.Context, id, callbackID string) error {
	_, _, err := s.modify(ctx, "settle", id, func(rec *Record) bool {
		switch {
		case rec.Reusable || rec.ConsumedBy == callbackID:
			return false
		case rec.State != StateIssued:
			s.log.Error("token used while the bucket was unreachable was consumed elsewhere meanwhile",
				zap.String("token_id", id), zap.String("state", rec.State),
				zap.String("here", callbackID), zap.String("there", rec.ConsumedBy))
			return false
		}
		now := s.now().UTC()
		rec.State, rec.ConsumedBy, rec.ConsumedAt = StateConsumed, callbackID, &now
		return true
	})
	if errors.Is(err, ErrNotFound) {
		err = nil
	}
	if err == nil {
		s.forget(id)
	}
	return err
}

// DeferredCount is how many consumptions are held locally.
func (s *Store) DeferredCount() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.offline)
}

func (s *Store) forget(id string) {
	s.mu.Lock()
	delete(s.offline, id)
	s.mu.Unlock()
}

// SettleDeferred settles every consumption held locally; it returns the
// first error and how many remain.
func (s *Store) SettleDeferred(ctx context.Context) (remaining int, err error) {
	s.mu.RLock()
	pending := make(map[string]string, len(s.offline))
	for id, cb := range s.offline {
		pending[id] = cb
	}
	s.mu.RUnlock()
	for id, cb := range pending {
		if err := s.Settle(ctx, id, cb); err != nil {
			return len(pending), err
		}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.offline), nil
}

// Sweep finds single-use tokens that expired unconsumed and hands each to
// emit once (emit must be idempotent across replicas: publish with a
// Msg-Id); after emit succeeds the record is marked so no replica emits it
// again. It also drops long-finished records from the local copy.
func (s *Store) Sweep(ctx context.Context, emit func(context.Context, Record) error) (emitted int, err error) {
	now := s.now()
	var due []cached
	s.mu.Lock()
	for id, c := range s.cache {
		r := &c.rec
		switch {
		case r.State == StateIssued && !r.Reusable && !r.MissingSent && !now.Before(r.ExpiresAt):
			if _, held := s.offline[id]; !held {
				due = append(due, c)
			}
		case now.After(r.ExpiresAt.Add(time.Hour)) && (r.State != StateIssued || r.Reusable || r.MissingSent):
			delete(s.cache, id)
		}
	}
	s.mu.Unlock()
	for _, c := range due {
		if err := emit(ctx, c.rec); err != nil {
			return emitted, err
		}
		emitted++
		s.obs.TokenEvent("expired")
		rec := c.rec
		rec.MissingSent = true
		if err := s.update(ctx, rec, c.rev); err != nil && !isConflict(err) {
			return emitted, fmt.Errorf("verify: mark %s missing: %w", rec.ID, err)
		}
	}
	return emitted, nil
}

func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists)
}

// Rotate issues a successor to token id with the same kinds, shortcode,
// reference and reusability, and shortens the old token's life to overlap
// from now (if it would live longer), so both are valid while Daraja's
// registered URLs are switched over. ttl "" gives the successor the old
// token's lifetime, capped by the limits.
func (s *Store) Rotate(ctx context.Context, id string, ttl string, overlap time.Duration, lim Limits) (Issued, error) {
	if overlap < 0 {
		return Issued{}, badRequest("overlap: must not be negative")
	}
	old, _, err := s.get(ctx, id)
	if err != nil {
		return Issued{}, err
	}
	if st := old.StateAt(s.now()); st != StateIssued {
		return Issued{}, &RequestError{Code: "not_rotatable", Message: "token is " + st + "; only a live token can be rotated"}
	}
	if ttl == "" {
		life := old.ExpiresAt.Sub(old.IssuedAt)
		ttl = min(life, lim.MaxTTL).String()
	}
	next, err := s.Issue(ctx, IssueRequest{
		Kinds: old.Kinds, Shortcode: old.Shortcode, Reference: old.Reference, TTL: ttl, Reusable: old.Reusable,
	}, lim)
	if err != nil {
		return Issued{}, err
	}
	rec, _, err := s.modify(ctx, "rotate", id, func(rec *Record) bool {
		rec.RotatedTo = next.Record.ID
		if end := s.now().UTC().Add(overlap); end.Before(rec.ExpiresAt) {
			rec.ExpiresAt = end
		}
		return true
	})
	if err != nil {
		return Issued{}, err
	}
	s.obs.TokenEvent("rotated")
	s.log.Info("token rotated", zap.String("token_id", id), zap.String("successor", next.Record.ID),
		zap.Time("old_expires_at", rec.ExpiresAt))
	return next, nil
}
