package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
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
}

// Store keeps token records in a JetStream key-value bucket, so every edge
// replica sees every token. It is safe for concurrent use.
type Store struct {
	kv  jetstream.KeyValue
	log *zap.Logger
	now func() time.Time
}

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
	return &Store{kv: kv, log: log.Named("tokens"), now: time.Now}, nil
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
	if _, err := s.kv.Create(ctx, id, data); err != nil {
		return Issued{}, fmt.Errorf("verify: store token %s: %w", id, err)
	}
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
	return rec, e.Revision(), nil
}

// Revoke marks a token revoked; later callbacks on it are refused.
// Revoking a revoked token is not an error.
func (s *Store) Revoke(ctx context.Context, id string) error {
	for range 8 {
		rec, rev, err := s.get(ctx, id)
		if err != nil {
			return err
		}
		if rec.State == StateRevoked {
			return nil
		}
		now := s.now().UTC()
		rec.State, rec.RevokedAt = StateRevoked, &now
		data, _ := json.Marshal(&rec)
		if _, err := s.kv.Update(ctx, id, data, rev); err != nil {
			if isConflict(err) {
				continue
			}
			return fmt.Errorf("verify: revoke %s: %w", id, err)
		}
		s.log.Info("token revoked", zap.String("token_id", id))
		return nil
	}
	return fmt.Errorf("verify: revoke %s: too much contention", id)
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
	rec, rev, err := s.get(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return Grant{}, ErrUnknown
	}
	if err != nil {
		return Grant{}, err
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
// by the bucket's compare-and-set: exactly one wins.
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
		rec.State, rec.ConsumedBy, rec.ConsumedAt = StateConsumed, callbackID, &now
		data, _ := json.Marshal(&rec)
		_, err := s.kv.Update(ctx, rec.ID, data, rev)
		if err == nil {
			return First, nil
		}
		if !isConflict(err) {
			return 0, fmt.Errorf("verify: consume %s: %w", rec.ID, err)
		}
		// Someone else wrote first: read again and decide on what they wrote.
		if rec, rev, err = s.get(ctx, rec.ID); err != nil {
			return 0, err
		}
	}
	return 0, fmt.Errorf("verify: consume %s: too much contention", g.Record.ID)
}

func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists)
}
