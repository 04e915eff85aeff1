package verify

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
	// MaxCached bounds the local copy (default 1<<22 tokens, about
	// 150 bytes each). Past it, checks of tokens not in the copy read the
	// bucket, and those tokens get no missing-callback event: an error is
	// logged and the observer told.
	MaxCached int
	// MissingGrace is how long after a token's expiry the missing-callback
	// question is asked, so a callback accepted just before expiry has
	// landed (default 10s).
	MissingGrace time.Duration
}

// Observer is told of token events and of the local copy's health.
type Observer interface {
	// TokenEvent: issued, revoked, rotated, expired (missing event sent).
	TokenEvent(event string)
	// TokenWatch: the watch feeding the local copy is running and synced.
	TokenWatch(up bool)
	// TokenCache: records in the local copy, and whether it is full.
	TokenCache(size int, full bool)
	// ReusableExpiring: reusable tokens that expire within ExpiryWarning.
	ReusableExpiring(n int)
}

type nopObserver struct{}

func (nopObserver) TokenEvent(string)    {}
func (nopObserver) TokenWatch(bool)      {}
func (nopObserver) TokenCache(int, bool) {}
func (nopObserver) ReusableExpiring(int) {}

// ExpiryWarning is how long before a reusable token's expiry the edge
// starts warning (a metric and a daily log line): changing a registered C2B
// URL in production takes days.
const ExpiryWarning = 14 * 24 * time.Hour

// Store keeps token records in a JetStream key-value bucket, so every edge
// replica sees every token, and a compact local copy fed by a watch of the
// bucket, so a check needs no round trip and survives a NATS outage. The
// bucket is written only by the token API (issue, revoke, rotate): whether
// a token was used is the stream's business (package publish). It is safe
// for concurrent use.
type Store struct {
	kv        jetstream.KeyValue
	log       *zap.Logger
	now       func() time.Time
	obs       Observer
	maxCached int
	grace     time.Duration

	// cache is the local copy, in shards with a lock each, so a sweep or a
	// listing over a million tokens holds up the callbacks of one shard at
	// a time, for a sixty-fourth of the walk, never all of them at once.
	cache  [cacheShards]cacheShard
	cached atomic.Int64 // records in the local copy
	full   atomic.Bool  // the local copy reached maxCached (logged once)
	// sweeping, when set (tests), is called by Sweep while it holds shard
	// n's lock.
	sweeping func(n int)

	synced chan struct{} // closed once the first watch delivered every record
	live   atomic.Bool   // a watch is running and has delivered every record

	warnMu sync.Mutex
	warned map[string]time.Time // reusable token id → last expiry warning
}

// tokenKey is a token id's 80 bits.
type tokenKey [idBytes]byte

// cacheShards is how many shards hold the local copy; a token's shard is
// chosen by a byte of its random id.
const cacheShards = 64

type cacheShard struct {
	mu sync.RWMutex
	m  map[tokenKey]entry
}

func (s *Store) shard(key tokenKey) *cacheShard { return &s.cache[key[0]%cacheShards] }

// initCache makes the local copy's shards.
func (s *Store) initCache() {
	for i := range s.cache {
		s.cache[i].m = map[tokenKey]entry{}
	}
}

// entry is what a check needs of a record, 48 bytes plus the reference's
// bytes: the local copy holds every live token (a map slot with its key is
// 64 bytes).
type entry struct {
	hash      [16]byte // first half of SHA-256(token): 128 bits to compare
	reference string
	// meta packs the expiry (Unix milliseconds, 42 bits, 0: never), the
	// kinds (bit i: daraja.Kinds[i]) and the flags.
	meta      uint64
	rev       uint32 // the record's revision, low 32 bits (compared as serial numbers)
	shortcode uint16 // index into shortcodes
}

const (
	kindBits    = 16
	flagBits    = 6
	expiryShift = kindBits + flagBits // 42 bits of milliseconds remain: until the year 2109
)

func (e *entry) expiresMs() int64  { return int64(e.meta >> expiryShift) }
func (e *entry) kinds() uint16     { return uint16(e.meta) }
func (e *entry) flags() uint8      { return uint8(e.meta >> kindBits) }
func (e *entry) has(f uint8) bool  { return e.flags()&f != 0 }
func (e *entry) set(f uint8)       { e.meta |= uint64(f) << kindBits }
func (e *entry) setKinds(k uint16) { e.meta |= uint64(k) }
func (e *entry) setExpiry(ms int64) {
	e.meta |= uint64(max(0, min(ms, 1<<(64-expiryShift)-1))) << expiryShift
}

// newer reports whether revision a (low 32 bits) is after b: a record's
// revisions are close together, so serial-number order is exact.
func newer(a, b uint32) bool { return int32(a-b) > 0 }

// shortcodes interns the shortcodes tokens name: a business has a handful.
var shortcodes = struct {
	sync.RWMutex
	index map[string]uint16
	names []string
}{index: map[string]uint16{}}

func shortcodeIndex(sc string) (uint16, bool) {
	shortcodes.RLock()
	i, ok := shortcodes.index[sc]
	shortcodes.RUnlock()
	if ok {
		return i, true
	}
	shortcodes.Lock()
	defer shortcodes.Unlock()
	if i, ok := shortcodes.index[sc]; ok {
		return i, true
	}
	if len(shortcodes.names) > 0xffff {
		return 0, false
	}
	i = uint16(len(shortcodes.names))
	shortcodes.names = append(shortcodes.names, sc)
	shortcodes.index[sc] = i
	return i, true
}

func shortcodeName(i uint16) string {
	shortcodes.RLock()
	defer shortcodes.RUnlock()
	return shortcodes.names[i]
}

func (e *entry) expiresAt() time.Time { return time.UnixMilli(e.expiresMs()) }

const (
	flagReusable uint8 = 1 << iota
	flagRevoked
	flagSettled // the missing-callback question is answered
	flagRotated // a successor replaces it (Rotate shortened its life to the overlap)
)

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
	if o.MaxCached <= 0 {
		o.MaxCached = 1 << 22
	}
	if o.MissingGrace <= 0 {
		o.MissingGrace = 10 * time.Second
	}
	s := &Store{
		kv: kv, log: log.Named("tokens"), now: time.Now, obs: obs, maxCached: o.MaxCached, grace: o.MissingGrace,
		synced: make(chan struct{}), warned: map[string]time.Time{},
	}
	s.initCache()
	return s, nil
}

// Watch keeps the local copy in step with the bucket until ctx ends,
// restarting the watch (with a log line and the observer told) whenever it
// stops. It returns once the first watch has started; Synced closes when
// the bucket's records are all loaded.
func (s *Store) Watch(ctx context.Context) error {
	w, err := s.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("verify: watch token bucket: %w", err)
	}
	go func() {
		backoff := 100 * time.Millisecond
		first := true
		for {
			s.follow(ctx, w, first)
			first = false
			s.live.Store(false)
			s.obs.TokenWatch(false)
			if ctx.Err() != nil {
				return
			}
			for {
				s.log.Error("token watch stopped; restarting it (tokens issued meanwhile are read from the bucket)",
					zap.Duration("retry_in", backoff))
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 10*time.Second)
				if w, err = s.kv.WatchAll(ctx); err == nil {
					break
				}
			}
			s.log.Info("token watch restarted")
			backoff = 100 * time.Millisecond
		}
	}()
	return nil
}

// follow applies one watch's updates until it stops.
func (s *Store) follow(ctx context.Context, w jetstream.KeyWatcher, first bool) {
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				if first {
					close(s.synced)
					first = false
				}
				s.live.Store(true)
				s.obs.TokenWatch(true)
				continue
			}
			s.apply(e)
		}
	}
}

// Synced is closed once the watch has loaded every record.
func (s *Store) Synced() <-chan struct{} { return s.synced }

// Live reports whether the watch is running and up to date.
func (s *Store) Live() bool { return s.live.Load() }

func (s *Store) apply(e jetstream.KeyValueEntry) {
	key, ok := keyOf(e.Key())
	if !ok {
		return
	}
	if e.Operation() != jetstream.KeyValuePut {
		sh := s.shard(key)
		sh.mu.Lock()
		if _, ok := sh.m[key]; ok {
			delete(sh.m, key)
			s.cached.Add(-1)
		}
		sh.mu.Unlock()
		return
	}
	// This replica's own writes come back through the watch: they are
	// already remembered, so skip decoding them again.
	c, ok := s.lookup(key)
	if ok && !newer(uint32(e.Revision()), c.rev) {
		return
	}
	var rec Record
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		s.log.Error("token record is corrupt", zap.String("token_id", e.Key()), zap.Error(err))
		return
	}
	s.remember(&rec, e.Revision())
}

// remember stores rec in the local copy unless a newer revision is there.
func (s *Store) remember(rec *Record, rev uint64) {
	key, ok := keyOf(rec.ID)
	if !ok {
		return
	}
	en, ok := s.compact(rec, rev)
	if !ok {
		s.log.Error("token record cannot be held locally (malformed hash, or too many shortcodes)", zap.String("token_id", rec.ID))
		return
	}
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	old, had := sh.m[key]
	if had && !newer(en.rev, old.rev) {
		return
	}
	// A new token reserves its place in the count before it is held: a
	// check under this shard's lock and a later count would let every
	// shard take the last place at once.
	if !had && s.cached.Add(1) > int64(s.maxCached) {
		s.cached.Add(-1)
		if s.full.CompareAndSwap(false, true) {
			s.log.Error("local token copy is full: tokens past it are checked against the bucket and get no missing-callback events",
				zap.Int("max_cached", s.maxCached))
			s.obs.TokenCache(int(s.cached.Load()), true)
		}
		return
	}
	if old.has(flagSettled) {
		en.set(flagSettled)
	}
	sh.m[key] = en
}

// rotatable says why rec cannot be rotated at now, or nil: only a live
// token without a successor can (a second rotation would leave the first
// successor live with nothing pointing at it).
func rotatable(rec Record, now time.Time) error {
	if st := rec.StateAt(now); st != StateIssued {
		return &RequestError{Code: "not_rotatable", Message: "token is " + st + "; only a live token can be rotated"}
	}
	if rec.RotatedTo != "" {
		return &RequestError{Code: "not_rotatable", Message: "token was already rotated to " + rec.RotatedTo + "; rotate that one"}
	}
	return nil
}

func (s *Store) compact(rec *Record, rev uint64) (entry, bool) {
	sc, ok := shortcodeIndex(rec.Shortcode)
	if !ok {
		return entry{}, false
	}
	en := entry{rev: uint32(rev), shortcode: sc, reference: rec.Reference}
	if !decodeHashPrefix(rec.Hash, &en.hash) {
		return entry{}, false
	}
	if !rec.ExpiresAt.IsZero() {
		en.setExpiry(max(1, rec.ExpiresAt.UnixMilli()))
	}
	for i, k := range daraja.Kinds {
		if rec.Allows(k) {
			en.setKinds(1 << i)
		}
	}
	if rec.Reusable {
		en.set(flagReusable)
	}
	if rec.State == StateRevoked {
		en.set(flagRevoked)
	}
	if rec.RotatedTo != "" {
		en.set(flagRotated)
	}
	return en, true
}

func (s *Store) lookup(key tokenKey) (entry, bool) {
	sh := s.shard(key)
	sh.mu.RLock()
	c, ok := sh.m[key]
	sh.mu.RUnlock()
	return c, ok
}

// IssueRequest asks for a token. It is the JSON of the admin API and of the
// NATS token service.
type IssueRequest struct {
	Kinds     []daraja.Kind `json:"kinds"`
	Shortcode string        `json:"shortcode"`
	Reference string        `json:"reference,omitempty"`
	// TTL of a single-use token (default tokens.default_ttl, at most
	// tokens.max_ttl). A reusable token has no expiry unless TTL is set.
	TTL      string `json:"ttl,omitempty"`
	Reusable bool   `json:"reusable,omitempty"`
	// ForwardPath is a relative path, with an optional query, that the
	// forwarder appends to a destination's URL for this token's callbacks.
	ForwardPath string `json:"forward_path,omitempty"`
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
	// forwardPathRE: a relative reference that is a path (one leading
	// slash, not two: "//host" would name another host) with an optional
	// query, in URL characters, no fragment.
	forwardPathRE = regexp.MustCompile(`^/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@%][A-Za-z0-9\-._~!$&'()*+,;=:@%/]*)?(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*)?$`)
	// darajaIDRE: what Daraja answers a request with (CheckoutRequestID,
	// OriginatorConversationID): printable ASCII without spaces.
	darajaIDRE = regexp.MustCompile(`^[\x21-\x7e]{1,128}$`)
)

// validForwardPath reports whether p is a forward_path the forwarder can
// append safely. The checks run on the path as the forwarder uses it
// (url.Parse's decoded Path, sent as it is): "/%2e%2e/admin" is "/../admin"
// on the wire, "/%2fhost" starts with two slashes, "%5c" is a backslash
// that some servers read as a slash.
func validForwardPath(p string) bool {
	if len(p) > 512 || !forwardPathRE.MatchString(p) {
		return false
	}
	u, err := url.Parse(p)
	if err != nil || u.Scheme != "" || u.Host != "" || u.Fragment != "" {
		return false
	}
	path := u.Path
	if !strings.HasPrefix(path, "/") || strings.HasPrefix(path, "//") || strings.Contains(path, "\\") {
		return false
	}
	for seg := range strings.SplitSeq(path, "/") {
		if seg == ".." {
			return false
		}
	}
	return true
}

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
	if req.ForwardPath != "" && !validForwardPath(req.ForwardPath) {
		return Issued{}, badRequest("forward_path: a relative path starting with one \"/\", an optional query, at most 512 URL characters, no \"..\" segment or backslash (encoded or not), no fragment")
	}
	var ttl time.Duration
	if !req.Reusable {
		ttl = lim.DefaultTTL
	}
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil || d <= 0 {
			return Issued{}, badRequest("ttl: %q is not a positive duration like 15m or 24h", req.TTL)
		}
		ttl = d
	}
	if !req.Reusable && ttl > lim.MaxTTL {
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
		State:     StateIssued,

		ForwardPath: req.ForwardPath,
	}
	if ttl > 0 {
		rec.ExpiresAt = now.Add(ttl)
	}
	data, _ := json.Marshal(&rec)
	rev, err := s.kv.Create(ctx, id, data)
	if err != nil {
		return Issued{}, fmt.Errorf("verify: store token %s: %w", id, err)
	}
	s.remember(&rec, rev)
	s.obs.TokenEvent("issued")
	fields := []zap.Field{zap.String("token_id", id), zap.Strings("kinds", daraja.KindStrings(rec.Kinds)),
		zap.String("shortcode", rec.Shortcode), zap.Bool("reusable", rec.Reusable)}
	if !rec.ExpiresAt.IsZero() {
		fields = append(fields, zap.Time("expires_at", rec.ExpiresAt))
	}
	s.log.Info("token issued", fields...)
	return Issued{Token: token, Record: rec}, nil
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
	s.remember(&rec, e.Revision())
	return rec, e.Revision(), nil
}

// update writes rec over revision rev and remembers the result.
func (s *Store) update(ctx context.Context, rec Record, rev uint64) error {
	data, _ := json.Marshal(&rec)
	newRev, err := s.kv.Update(ctx, rec.ID, data, rev)
	if err != nil {
		return err
	}
	s.remember(&rec, newRev)
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

// Annotation is what Daraja answered the business's request, recorded on
// the token (PATCH /v1/tokens/{id}) so a missing callback can be recovered
// by a query. Empty fields are left as they are.
type Annotation struct {
	CheckoutRequestID        string `json:"checkout_request_id,omitempty"`
	OriginatorConversationID string `json:"originator_conversation_id,omitempty"`
}

// Annotate records a on token id.
func (s *Store) Annotate(ctx context.Context, id string, a Annotation) (Record, error) {
	if a.CheckoutRequestID == "" && a.OriginatorConversationID == "" {
		return Record{}, badRequest("name checkout_request_id or originator_conversation_id")
	}
	for name, v := range map[string]string{"checkout_request_id": a.CheckoutRequestID, "originator_conversation_id": a.OriginatorConversationID} {
		if v != "" && !darajaIDRE.MatchString(v) {
			return Record{}, badRequest("%s: 1 to 128 printable ASCII characters without spaces", name)
		}
	}
	rec, _, err := s.modify(ctx, "annotate", id, func(rec *Record) bool {
		changed := false
		if a.CheckoutRequestID != "" && rec.CheckoutRequestID != a.CheckoutRequestID {
			rec.CheckoutRequestID, changed = a.CheckoutRequestID, true
		}
		if a.OriginatorConversationID != "" && rec.OriginatorConversationID != a.OriginatorConversationID {
			rec.OriginatorConversationID, changed = a.OriginatorConversationID, true
		}
		return changed
	})
	return rec, err
}

// Grant is a token found valid for a kind: what the callback path needs of
// its record.
type Grant struct {
	ID        string
	Shortcode string
	Reference string
	// Reusable tokens are not single use.
	Reusable bool
}

// Authorize checks that token is known, matches its stored hash, is neither
// expired nor revoked, and was issued for kind. A refusal of a proven token
// (revoked, expired, wrong kind) still returns its Grant, for the log. Whether this (token, kind)
// was used already is decided by the stream when the callback is stored.
//
// A token missing from the local copy (issued a moment ago elsewhere, or
// past the copy's bound) is read from the bucket; so is a known token whose
// secret is wrong, so that an unknown id and a wrong secret cost the same.
func (s *Store) Authorize(ctx context.Context, token string, kind daraja.Kind) (Grant, error) {
	key, ok := parseKey(token)
	if !ok {
		return Grant{}, ErrUnknown
	}
	sum := sha256.Sum256([]byte(token))
	en, ok := s.lookup(key)
	if !ok || subtle.ConstantTimeCompare(sum[:16], en.hash[:]) != 1 {
		id := idFromBytes(key[:])
		ctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		rec, rev, err := s.get(ctx, id)
		if errors.Is(err, ErrNotFound) || err == nil && ok {
			return Grant{}, ErrUnknown
		}
		if err != nil {
			return Grant{}, err
		}
		if en, ok = s.compact(&rec, rev); !ok || subtle.ConstantTimeCompare(sum[:16], en.hash[:]) != 1 {
			return Grant{}, ErrUnknown
		}
	}
	// From here the token is proven: its id and reference go with a
	// refusal too, for the log.
	g := Grant{ID: idFromBytes(key[:]), Shortcode: shortcodeName(en.shortcode), Reference: en.reference,
		Reusable: en.has(flagReusable)}
	switch {
	case en.has(flagRevoked):
		return g, ErrRevoked
	case en.expiresMs() != 0 && s.now().UnixMilli() >= en.expiresMs():
		return g, ErrExpired
	case en.kinds()&kindBit(kind) == 0:
		return g, ErrWrongKind
	}
	return g, nil
}

// match returns, sorted, the ids in the local copy whose reference,
// shortcode and kind match f (state is left to the caller).
func (s *Store) match(f ListFilter) []string {
	now := s.now().UnixMilli()
	var want uint16
	if f.Kind != "" {
		want = kindBit(f.Kind)
	}
	var ids []string
	for n := range s.cache {
		sh := &s.cache[n]
		sh.mu.RLock()
		for key, en := range sh.m {
			switch {
			case f.Reference != "" && en.reference != f.Reference,
				f.Shortcode != "" && shortcodeName(en.shortcode) != f.Shortcode,
				want != 0 && en.kinds()&want == 0:
				continue
			}
			expired := en.expiresMs() != 0 && now >= en.expiresMs()
			switch f.State {
			case StateRevoked:
				if !en.has(flagRevoked) {
					continue
				}
			case StateExpired:
				if en.has(flagRevoked) || !expired {
					continue
				}
			case StateIssued:
				if en.has(flagRevoked) || expired {
					continue
				}
			case StateConsumed: // used, then maybe expired
				if en.has(flagRevoked) {
					continue
				}
			}
			ids = append(ids, idFromBytes(key[:]))
		}
		sh.mu.RUnlock()
	}
	slices.Sort(ids)
	return ids
}

func kindBit(k daraja.Kind) uint16 {
	for i, x := range daraja.Kinds {
		if x == k {
			return 1 << i
		}
	}
	return 0
}

// Sweep settles single-use tokens that expired (MissingGrace ago) without
// being revoked: for each, it reads the full record and hands it to
// resolve, which publishes the missing-callback event unless the stream
// holds a callback for it (resolve must be idempotent across replicas).
// At most limit tokens are resolved per call. It also counts reusable
// tokens near expiry (logging each once a day) and drops long-finished
// records from the local copy. A revoked reusable token, or one that has a
// successor (Rotate shortens the old one's life to the overlap on purpose),
// is not counted: its end is the operator's decision, not a surprise.
func (s *Store) Sweep(ctx context.Context, limit int, resolve func(context.Context, Record) (sent bool, err error)) (sent int, err error) {
	now := s.now()
	nowMs := now.UnixMilli()
	graceMs, dayMs, warnMs := s.grace.Milliseconds(), (24 * time.Hour).Milliseconds(), ExpiryWarning.Milliseconds()
	var due []tokenKey
	var expiring []tokenKey
	for n := range s.cache {
		sh := &s.cache[n]
		sh.mu.Lock()
		if s.sweeping != nil {
			s.sweeping(n)
		}
		for key, en := range sh.m {
			exp := en.expiresMs()
			if exp == 0 {
				continue
			}
			reusable, settled := en.has(flagReusable), en.has(flagSettled|flagRevoked)
			switch {
			case !reusable && !settled && nowMs >= exp+graceMs:
				if len(due) < limit {
					due = append(due, key)
				}
			case reusable && !en.has(flagRevoked|flagRotated) && nowMs < exp && exp-nowMs < warnMs:
				expiring = append(expiring, key)
			case nowMs > exp+graceMs+dayMs && (settled || reusable):
				delete(sh.m, key)
				s.cached.Add(-1)
			}
		}
		sh.mu.Unlock()
	}
	s.obs.TokenCache(int(s.cached.Load()), s.full.Load())
	s.obs.ReusableExpiring(len(expiring))
	s.warnExpiring(now, expiring)

	for _, key := range due {
		id := idFromBytes(key[:])
		rec, _, gerr := s.get(ctx, id)
		if gerr == nil && rec.State == StateIssued && !rec.Reusable && !rec.ExpiresAt.IsZero() {
			var ok bool
			if ok, err = resolve(ctx, rec); err != nil {
				return sent, err
			}
			if ok {
				sent++
				s.obs.TokenEvent("expired")
			}
		} else if gerr != nil && !errors.Is(gerr, ErrNotFound) {
			return sent, gerr
		}
		s.settle(key)
	}
	return sent, nil
}

func (s *Store) settle(key tokenKey) {
	sh := s.shard(key)
	sh.mu.Lock()
	if en, ok := sh.m[key]; ok {
		en.set(flagSettled)
		sh.m[key] = en
	}
	sh.mu.Unlock()
}

// warnExpiring logs each reusable token near its expiry once a day.
func (s *Store) warnExpiring(now time.Time, keys []tokenKey) {
	s.warnMu.Lock()
	defer s.warnMu.Unlock()
	for _, key := range keys {
		id := idFromBytes(key[:])
		if last, ok := s.warned[id]; ok && now.Sub(last) < 24*time.Hour {
			continue
		}
		s.warned[id] = now
		en, ok := s.lookup(key)
		if !ok {
			continue
		}
		exp := en.expiresAt().UTC()
		s.log.Warn("reusable token expires soon: every callback on its registered URLs will be refused after; rotate it and register the successor's URLs",
			zap.String("token_id", id), zap.String("reference", en.reference), zap.String("shortcode", shortcodeName(en.shortcode)),
			zap.Time("expires_at", exp),
			zap.Duration("left", exp.Sub(now).Round(time.Minute)))
	}
	for id, last := range s.warned {
		if now.Sub(last) > 48*time.Hour {
			delete(s.warned, id)
		}
	}
}

func isConflict(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists)
}

// Rotate issues a successor to token id with the same kinds, shortcode,
// reference, reusability and forward_path, and shortens the old token's life to overlap
// from now (if it would live longer), so both are valid while Daraja's
// registered URLs are switched over. ttl "" gives the successor the old
// token's lifetime (none for a reusable token without expiry), capped by
// the limits for single-use tokens.
func (s *Store) Rotate(ctx context.Context, id string, ttl string, overlap time.Duration, lim Limits) (Issued, error) {
	if overlap < 0 {
		return Issued{}, badRequest("overlap: must not be negative")
	}
	old, _, err := s.get(ctx, id)
	if err != nil {
		return Issued{}, err
	}
	if err := rotatable(old, s.now()); err != nil {
		return Issued{}, err
	}
	if ttl == "" && !old.ExpiresAt.IsZero() {
		life := old.ExpiresAt.Sub(old.IssuedAt)
		if !old.Reusable {
			life = min(life, lim.MaxTTL)
		}
		ttl = life.String()
	}
	next, err := s.Issue(ctx, IssueRequest{
		Kinds: old.Kinds, Shortcode: old.Shortcode, Reference: old.Reference, TTL: ttl, Reusable: old.Reusable,
		ForwardPath: old.ForwardPath,
	}, lim)
	if err != nil {
		return Issued{}, err
	}
	// Checked again on the record written: a revoke or another rotate
	// between the read above and this write wins, and the successor just
	// issued is revoked instead of being left live with nothing pointing
	// at it.
	var refused error
	rec, _, err := s.modify(ctx, "rotate", id, func(rec *Record) bool {
		if refused = rotatable(*rec, s.now()); refused != nil {
			return false
		}
		rec.RotatedTo = next.Record.ID
		if end := s.now().UTC().Add(overlap); rec.ExpiresAt.IsZero() || end.Before(rec.ExpiresAt) {
			rec.ExpiresAt = end
		}
		return true
	})
	if err == nil {
		err = refused
	}
	if err != nil {
		if rerr := s.Revoke(ctx, next.Record.ID); rerr != nil {
			s.log.Error("successor of a failed rotation left issued: revoke it", zap.String("token_id", next.Record.ID), zap.Error(rerr))
		}
		return Issued{}, err
	}
	s.obs.TokenEvent("rotated")
	s.log.Info("token rotated", zap.String("token_id", id), zap.String("successor", next.Record.ID),
		zap.Time("old_expires_at", rec.ExpiresAt))
	return next, nil
}
