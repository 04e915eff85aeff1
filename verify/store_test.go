package verify

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/internal/natstest"
)

var limits = Limits{DefaultTTL: time.Hour, MaxTTL: 24 * time.Hour}

func newStore(t *testing.T) *Store {
	t.Helper()
	_, js := natstest.Connect(t, natstest.Server(t))
	s, err := NewStore(context.Background(), js, StoreOptions{Bucket: "test_tokens", Replicas: 1, Retain: 48 * time.Hour}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func issue(t *testing.T, s *Store, req IssueRequest) Issued {
	t.Helper()
	iss, err := s.Issue(context.Background(), req, limits)
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

func TestTokenFormat(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		tok, id := newToken()
		if len(tok) != 40 || strings.ContainsAny(tok, "+/=") {
			t.Fatalf("token %q is not 40 URL-safe characters", tok)
		}
		got, err := ParseToken(tok)
		if err != nil || got != id || !ValidID(id) {
			t.Fatalf("ParseToken(%q) = %q, %v; want %q", tok, got, err, id)
		}
		if seen[tok] {
			t.Fatal("token repeated")
		}
		seen[tok] = true
	}
	for _, bad := range []string{"", "short", strings.Repeat("A", 39), strings.Repeat("!", 40), strings.Repeat("A", 41)} {
		if _, err := ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) accepted", bad)
		}
	}
}

func TestIssueValidation(t *testing.T) {
	s := newStore(t)
	tests := []struct {
		name string
		req  IssueRequest
		want string
	}{
		{"no kinds", IssueRequest{Shortcode: "600000"}, "kinds:"},
		{"unknown kind", IssueRequest{Kinds: []daraja.Kind{"b2c.results"}, Shortcode: "600000"}, `kinds[0]: "b2c.results"`},
		{"kind twice", IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult, daraja.B2CResult}, Shortcode: "600000"}, "named twice"},
		{"bad shortcode", IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "60.0>"}, "shortcode:"},
		{"reference with newline", IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", Reference: "a\nb"}, "reference:"},
		{"bad ttl", IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", TTL: "soon"}, "ttl:"},
		{"ttl over max", IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", TTL: "48h"}, "longer than the maximum"},
		{"reusable for b2c", IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "600000", Reusable: true}, "reusable:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Issue(context.Background(), tt.req, limits)
			var re *RequestError
			if !errors.As(err, &re) || !strings.Contains(re.Message, tt.want) {
				t.Fatalf("got %v, want a RequestError containing %q", err, tt.want)
			}
		})
	}
}

func TestStoredHashedOnly(t *testing.T) {
	s := newStore(t)
	iss := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
	e, err := s.kv.Get(context.Background(), iss.Record.ID)
	if err != nil {
		t.Fatal(err)
	}
	secret := iss.Token[len(iss.Token)-20:]
	if strings.Contains(string(e.Value()), iss.Token) || strings.Contains(string(e.Value()), secret) {
		t.Fatal("the bucket holds the token")
	}
}

func TestAuthorize(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	stk := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", Reference: "ORDER-1"})

	// A token with its secret changed names the same id but must not pass.
	forged := forgeSecret(t, stk.Token, len(stk.Token)-1)
	for name, tc := range map[string]struct {
		token string
		kind  daraja.Kind
		want  error
	}{
		"empty":        {"", daraja.STKCallback, ErrUnknown},
		"never issued": {strings.Repeat("A", 40), daraja.STKCallback, ErrUnknown},
		"wrong secret": {forged, daraja.STKCallback, ErrUnknown},
		"wrong kind":   {stk.Token, daraja.B2CResult, ErrWrongKind},
	} {
		if _, err := s.Authorize(ctx, tc.token, tc.kind); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", name, err, tc.want)
		}
	}
	g, err := s.Authorize(ctx, stk.Token, daraja.STKCallback)
	if err != nil {
		t.Fatal(err)
	}
	if g != (Grant{ID: stk.Record.ID, Shortcode: "174379", Reference: "ORDER-1"}) {
		t.Fatalf("grant %+v", g)
	}
	// Checks never write the bucket: single use is the stream's business.
	rec, rev, err := s.get(ctx, stk.Record.ID)
	if err != nil || rec.State != StateIssued {
		t.Fatalf("record after checks: %+v %v", rec, err)
	}
	for range 3 {
		if _, err := s.Authorize(ctx, stk.Token, daraja.STKCallback); err != nil {
			t.Fatal(err)
		}
	}
	if _, rev2, _ := s.get(ctx, stk.Record.ID); rev2 != rev {
		t.Fatalf("Authorize wrote the bucket: revision %d → %d", rev, rev2)
	}
}

// TestAuthorizeIssuedElsewhere: a token issued by another replica that
// this one's local copy has not seen yet is read from the bucket.
func TestAuthorizeIssuedElsewhere(t *testing.T) {
	ctx := context.Background()
	_, js := natstest.Connect(t, natstest.Server(t))
	o := StoreOptions{Bucket: "test_tokens", Replicas: 1, Retain: 48 * time.Hour}
	a, err := NewStore(ctx, js, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewStore(ctx, js, o, nil) // no watch: it learns only by reading
	if err != nil {
		t.Fatal(err)
	}
	iss := issue(t, a, IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "600000"})
	if _, err := b.Authorize(ctx, iss.Token, daraja.B2CResult); err != nil {
		t.Fatalf("replica b: %v", err)
	}
}

func TestExpiredAndRevoked(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	a := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
	b := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
	if err := s.Revoke(ctx, b.Record.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.Revoke(ctx, b.Record.ID); err != nil {
		t.Fatalf("second revoke: %v", err)
	}
	if _, err := s.Authorize(ctx, b.Token, daraja.STKCallback); !errors.Is(err, ErrRevoked) {
		t.Errorf("revoked: %v", err)
	}
	s.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	if _, err := s.Authorize(ctx, a.Token, daraja.STKCallback); !errors.Is(err, ErrExpired) {
		t.Errorf("expired: %v", err)
	}
	if rec, _ := s.Get(ctx, a.Record.ID); rec.StateAt(s.now()) != StateExpired {
		t.Errorf("state = %s", rec.StateAt(s.now()))
	}
	if err := s.Revoke(ctx, "tok_aaaaaaaaaaaaaaaa"); !errors.Is(err, ErrNotFound) {
		t.Errorf("revoke unknown: %v", err)
	}
}

// TestReusableNeverExpiresByDefault: a registered C2B URL's token that
// expired silently would refuse every payment notice; without a ttl it
// lives until revoked or rotated, and with one it warns 14 days ahead.
func TestReusableNeverExpiresByDefault(t *testing.T) {
	ctx := context.Background()
	obs := &countObserver{}
	_, js := natstest.Connect(t, natstest.Server(t))
	s, err := NewStore(ctx, js, StoreOptions{Bucket: "test_tokens", Replicas: 1, Retain: 48 * time.Hour, Observer: obs}, nil)
	if err != nil {
		t.Fatal(err)
	}
	forever := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.C2BValidation, daraja.C2BConfirmation}, Shortcode: "600638", Reusable: true})
	if !forever.Record.ExpiresAt.IsZero() {
		t.Fatalf("reusable token without ttl expires at %s", forever.Record.ExpiresAt)
	}
	// Longer than max_ttl is fine for a reusable token the operator dates.
	dated := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.C2BConfirmation}, Shortcode: "600638", Reusable: true, TTL: "2400h"})
	s.now = func() time.Time { return time.Now().Add(10 * 365 * 24 * time.Hour) }
	if _, err := s.Authorize(ctx, forever.Token, daraja.C2BConfirmation); err != nil {
		t.Fatalf("ten years on: %v", err)
	}
	if _, err := s.Authorize(ctx, dated.Token, daraja.C2BConfirmation); !errors.Is(err, ErrExpired) {
		t.Fatalf("dated reusable token after its expiry: %v", err)
	}
	// 90 days on, the dated one has 10 days left: counted, not expired.
	s.now = func() time.Time { return time.Now().Add(90 * 24 * time.Hour) }
	if _, err := s.Sweep(ctx, 10, func(context.Context, Record) (bool, error) {
		t.Error("a reusable token is never a missing callback")
		return false, nil
	}); err != nil {
		t.Fatal(err)
	}
	if obs.expiring != 1 {
		t.Fatalf("reusable tokens expiring counted %d, want 1", obs.expiring)
	}
}

// TestReusableExpiryWarningSkipsRevokedAndRotated: a reusable token is
// counted (metric) and warned about (one Warn a day: id, reference, expiry;
// never the token) only within 14 days of an expiry nobody chose: one with
// 15 days left is not, nor a revoked one, nor one a rotation shortened to
// its overlap.
func TestReusableExpiryWarningSkipsRevokedAndRotated(t *testing.T) {
	ctx := context.Background()
	obs := &countObserver{}
	core, logs := observer.New(zap.InfoLevel)
	_, js := natstest.Connect(t, natstest.Server(t))
	s, err := NewStore(ctx, js, StoreOptions{Bucket: "test_tokens", Replicas: 1, Retain: 48 * time.Hour, Observer: obs},
		zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	day := 24 * time.Hour
	s.now = func() time.Time { return t0 }
	c2b := []daraja.Kind{daraja.C2BValidation, daraja.C2BConfirmation}
	dated := issue(t, s, IssueRequest{Kinds: c2b, Shortcode: "600638", Reference: "TILL-1", Reusable: true, TTL: "720h"})
	revoked := issue(t, s, IssueRequest{Kinds: c2b, Shortcode: "600638", Reference: "TILL-2", Reusable: true, TTL: "720h"})
	if err := s.Revoke(ctx, revoked.Record.ID); err != nil {
		t.Fatal(err)
	}
	// Rotated on day 5: the old token ends on day 19 (14 days' overlap),
	// its successor on day 35.
	rotated := issue(t, s, IssueRequest{Kinds: c2b, Shortcode: "600638", Reference: "TILL-3", Reusable: true, TTL: "720h"})
	s.now = func() time.Time { return t0.Add(5 * day) }
	successor, err := s.Rotate(ctx, rotated.Record.ID, "", 14*day, limits)
	if err != nil {
		t.Fatal(err)
	}
	tokens := []string{dated.Token, revoked.Token, rotated.Token, successor.Token}
	sweep := func(at time.Duration) int {
		t.Helper()
		s.now = func() time.Time { return t0.Add(at) }
		if _, err := s.Sweep(ctx, 10, func(context.Context, Record) (bool, error) {
			t.Error("a reusable token is never a missing callback")
			return false, nil
		}); err != nil {
			t.Fatal(err)
		}
		obs.mu.Lock()
		defer obs.mu.Unlock()
		return obs.expiring
	}
	warnings := func() []observer.LoggedEntry {
		return logs.FilterMessageSnippet("reusable token expires soon").AllUntimed()
	}
	// Day 15: 15 days left on the dated one (and 4 on the rotated one).
	if n := sweep(15 * day); n != 0 || len(warnings()) != 0 {
		t.Fatalf("15 days left: %d counted, %d warnings; want none", n, len(warnings()))
	}
	// Day 17: 13 days left on the dated (and the revoked) one, 2 on the
	// rotated one, 18 on the successor: only the dated one counts.
	if n := sweep(17 * day); n != 1 {
		t.Fatalf("13 days left: %d counted, want 1 (revoked and rotated tokens are not)", n)
	}
	if n := sweep(17*day + time.Hour); n != 1 {
		t.Fatalf("an hour later: %d counted, want 1", n)
	}
	w := warnings()
	if len(w) != 1 || w[0].Level != zap.WarnLevel {
		t.Fatalf("warnings %+v, want one Warn a day", w)
	}
	f := w[0].ContextMap()
	if f["token_id"] != dated.Record.ID || f["reference"] != "TILL-1" ||
		!f["expires_at"].(time.Time).Equal(dated.Record.ExpiresAt.Truncate(time.Millisecond)) {
		t.Fatalf("warning fields %v", f)
	}
	for _, e := range logs.AllUntimed() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		for _, tok := range tokens {
			if strings.Contains(line, tok) {
				t.Fatalf("a log line holds a token: %s", e.Message)
			}
		}
	}
}

type countObserver struct {
	mu        sync.Mutex
	expiring  int
	watchUp   []bool
	cacheFull bool
}

func (o *countObserver) TokenEvent(string) {}
func (o *countObserver) TokenCache(_ int, full bool) {
	o.mu.Lock()
	o.cacheFull = full
	o.mu.Unlock()
}
func (o *countObserver) ReusableExpiring(n int) {
	o.mu.Lock()
	o.expiring = n
	o.mu.Unlock()
}
func (o *countObserver) TokenWatch(up bool) {
	o.mu.Lock()
	o.watchUp = append(o.watchUp, up)
	o.mu.Unlock()
}

// TestSweepResolvesEachExpiredTokenOnce: single-use tokens past expiry
// and grace are handed to resolve once; revoked and live ones never.
func TestSweepResolvesEachExpiredTokenOnce(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	s.grace = time.Minute
	expired := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult, daraja.B2CTimeout}, Shortcode: "600000", TTL: "1m"})
	revoked := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "600000", TTL: "1m"})
	live := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "600000", TTL: "1h"})
	_ = live
	if err := s.Revoke(ctx, revoked.Record.ID); err != nil {
		t.Fatal(err)
	}
	var got []string
	resolve := func(_ context.Context, rec Record) (bool, error) {
		got = append(got, rec.ID)
		return true, nil
	}
	// Within the grace after expiry: not yet.
	s.now = func() time.Time { return time.Now().Add(90 * time.Second) }
	if n, err := s.Sweep(ctx, 10, resolve); err != nil || n != 0 {
		t.Fatalf("within grace: %d %v", n, err)
	}
	s.now = func() time.Time { return time.Now().Add(3 * time.Minute) }
	for range 3 {
		if _, err := s.Sweep(ctx, 10, resolve); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != 1 || got[0] != expired.Record.ID {
		t.Fatalf("resolved %v, want once %s", got, expired.Record.ID)
	}
}

// TestWatchRestarts: a watch that stops (here: its subscription closed
// under it, as a lost connection or a deleted stream end one; new watches
// refused while the bucket is "unreachable") is logged at Error, reported
// down to the observer, restarted once the bucket answers, reported up
// again, and the local copy catches up with a token issued while it was
// down.
func TestWatchRestarts(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	obs := &countObserver{}
	core, logs := observer.New(zap.InfoLevel)
	_, js := natstest.Connect(t, natstest.Server(t))
	o := StoreOptions{Bucket: "test_tokens", Replicas: 1, Retain: 48 * time.Hour, Observer: obs}
	s, err := NewStore(ctx, js, o, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	kv := &cuttableKV{KeyValue: s.kv}
	s.kv = kv
	if err := s.Watch(ctx); err != nil {
		t.Fatal(err)
	}
	<-s.Synced()
	waitFor(t, s.Live)

	kv.cut()
	waitFor(t, func() bool {
		return logs.FilterMessageSnippet("token watch stopped").FilterLevelExact(zap.ErrorLevel).Len() > 0 && !s.Live()
	})
	// Issued elsewhere while the watch is down: not in the local copy yet.
	other, err := NewStore(ctx, js, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	iss := issue(t, other, IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
	key, _ := keyOf(iss.Record.ID)
	if _, ok := s.lookup(key); ok {
		t.Fatal("the copy learnt a token with its watch down: the watch did not stop")
	}
	kv.mend()
	waitFor(t, func() bool { _, ok := s.lookup(key); return ok && s.Live() })
	if logs.FilterMessage("token watch restarted").Len() == 0 {
		t.Error("no log line for the restart")
	}
	obs.mu.Lock()
	ups := slices.Clone(obs.watchUp)
	obs.mu.Unlock()
	// Up (first sync), down (stopped), up (restarted and synced).
	if i := slices.Index(ups, false); i < 1 || !ups[0] || !slices.Contains(ups[i:], true) {
		t.Fatalf("watch-up reports %v, want true, false, then true", ups)
	}
}

// TestTokenCacheBound: past MaxCached the local copy takes no more tokens:
// one Error log, the full flag set; a token past the bound still
// authorizes (read from the bucket) and gets no missing-callback event, as
// documented, while the cached ones keep theirs.
func TestTokenCacheBound(t *testing.T) {
	ctx := context.Background()
	obs := &countObserver{}
	core, logs := observer.New(zap.InfoLevel)
	_, js := natstest.Connect(t, natstest.Server(t))
	s, err := NewStore(ctx, js, StoreOptions{Bucket: "test_tokens", Replicas: 1, Retain: 48 * time.Hour, Observer: obs,
		MaxCached: 2, MissingGrace: time.Minute}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	kv := &countingKV{KeyValue: s.kv}
	s.kv = kv
	var toks []Issued
	for range 3 {
		toks = append(toks, issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", TTL: "1m"}))
	}
	extra := toks[2]
	full := func() int {
		return logs.FilterMessageSnippet("local token copy is full").FilterLevelExact(zap.ErrorLevel).Len()
	}
	if n := full(); n != 1 {
		t.Fatalf("%d Error logs for a full copy, want 1", n)
	}
	obs.mu.Lock()
	flagged := obs.cacheFull
	obs.mu.Unlock()
	if !flagged || s.cached.Load() != 2 {
		t.Fatalf("full flag %v, %d cached; want true, 2", flagged, s.cached.Load())
	}
	for range 2 {
		before := kv.gets.Load()
		if g, err := s.Authorize(ctx, extra.Token, daraja.STKCallback); err != nil || g.ID != extra.Record.ID {
			t.Fatalf("token past the bound: %+v %v", g, err)
		}
		if kv.gets.Load()-before != 1 {
			t.Fatal("a token past the bound was not read from the bucket")
		}
	}
	before := kv.gets.Load()
	if _, err := s.Authorize(ctx, toks[0].Token, daraja.STKCallback); err != nil || kv.gets.Load() != before {
		t.Fatalf("cached token: %v, %d bucket reads", err, kv.gets.Load()-before)
	}
	if n := full(); n != 1 {
		t.Fatalf("%d Error logs after more checks, want still 1", n)
	}
	var resolved []string
	s.now = func() time.Time { return time.Now().Add(5 * time.Minute) }
	if _, err := s.Sweep(ctx, 10, func(_ context.Context, rec Record) (bool, error) {
		resolved = append(resolved, rec.ID)
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(resolved)
	want := []string{toks[0].Record.ID, toks[1].Record.ID}
	slices.Sort(want)
	if !slices.Equal(resolved, want) {
		t.Fatalf("missing events for %v, want the two cached tokens %v", resolved, want)
	}
}

// cuttableKV is a real bucket whose running watches a test can stop (their
// Updates channels close, as when a watch's subscription ends) and whose
// new watches it can refuse until mend, as an unreachable bucket would.
type cuttableKV struct {
	jetstream.KeyValue
	mu       sync.Mutex
	watchers []jetstream.KeyWatcher
	refuse   bool
}

func (c *cuttableKV) WatchAll(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.refuse {
		return nil, errors.New("test: bucket unreachable")
	}
	w, err := c.KeyValue.WatchAll(ctx, opts...)
	if err == nil {
		c.watchers = append(c.watchers, w)
	}
	return w, err
}

func (c *cuttableKV) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refuse = true
	for _, w := range c.watchers {
		_ = w.Stop()
	}
	c.watchers = nil
}

func (c *cuttableKV) mend() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refuse = false
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 15s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTokensAvoidRefusedWords: Daraja refuses callback URLs holding
// M-PESA, Safaricom, exe, cmd, sql, query and their variants.
func TestTokensAvoidRefusedWords(t *testing.T) {
	for range 20000 {
		tok, _ := newToken()
		if daraja.HasRefusedWord(tok) {
			t.Fatalf("token %q holds a refused word", tok)
		}
	}
}

func BenchmarkParseToken(b *testing.B) {
	tok, _ := newToken()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseToken(tok); err != nil {
			b.Fatal(err)
		}
	}
}

func FuzzParseToken(f *testing.F) {
	tok, _ := newToken()
	f.Add(tok)
	f.Add("")
	f.Add(strings.Repeat("_", 40))
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseToken(s)
		if err != nil {
			return
		}
		if !ValidID(id) || len(s) != 40 {
			t.Fatalf("ParseToken(%q) = %q", s, id)
		}
	})
}

// BenchmarkAuthorize is the token check on the hot path: a token known to
// the local copy, hash compared in constant time, no round trip.
func BenchmarkAuthorize(b *testing.B) {
	_, js := natstest.Connect(b, natstest.Server(b))
	s, err := NewStore(context.Background(), js, StoreOptions{Bucket: "bench_tokens", Replicas: 1, Retain: time.Hour}, nil)
	if err != nil {
		b.Fatal(err)
	}
	iss, err := s.Issue(context.Background(), IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"}, limits)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Authorize(ctx, iss.Token, daraja.STKCallback); err != nil {
			b.Fatal(err)
		}
	}
}

func TestDecodeHashPrefixRefusesBadStoredHash(t *testing.T) {
	tok, _ := newToken()
	var out [16]byte
	for _, h := range []string{"", "zz", hashToken(tok) + "00", hashToken(tok)[:62], strings.Repeat("g", 64)} {
		if decodeHashPrefix(h, &out) {
			t.Errorf("hash %q decoded", h)
		}
	}
	if !decodeHashPrefix(hashToken(tok), &out) {
		t.Error("the right hash did not decode")
	}
}

// TestLocalCopyMemory measures the local copy's cost per live token (the
// target is at most 200 bytes). Set DARAJA_TOKEN_MEMORY=1000000 to measure
// at a million tokens; by default it checks 100,000.
func TestLocalCopyMemory(t *testing.T) {
	n := 100_000
	if v := os.Getenv("DARAJA_TOKEN_MEMORY"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	s := &Store{maxCached: n + 1, obs: nopObserver{}, log: zap.NewNop()}
	s.initCache()
	recs := make([]Record, 1000)
	for i := range recs {
		tok, id := newToken()
		recs[i] = Record{ID: id, Hash: hashToken(tok), Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379",
			Reference: fmt.Sprintf("ORDER-%07d", i), ExpiresAt: time.Now().Add(time.Hour), State: StateIssued}
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range n {
		r := recs[i%len(recs)]
		var b [idBytes]byte
		_, _ = rand.Read(b[:])
		r.ID = idFromBytes(b[:])
		r.Reference = fmt.Sprintf("ORDER-%07d", i) // a fresh string per token, as the watch gives
		s.remember(&r, uint64(i+1))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if int(s.cached.Load()) != n {
		t.Fatalf("cached %d of %d", s.cached.Load(), n)
	}
	per := float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
	t.Logf("TOKENS local copy: %d live tokens, %.0f bytes each", n, per)
	if per > 200 {
		t.Errorf("local copy costs %.0f bytes per token, want at most 200", per)
	}
}

func TestForwardPathAndAnnotate(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	for path, ok := range map[string]bool{
		"/payouts/77?src=daraja": true, "/": true, "/a/b": true, "/a?x=1&y=%20": true,
		"//evil.example/x": false, "https://evil.example/": false, "a/b": false, "/a#frag": false,
		"/a/../b": false, "/a/..": false, "/a b": false, "/a\n": false,
		// Percent-encoded, the same: the forwarder sends the decoded path.
		"/%2e%2e/admin": false, "/%2E%2E/admin": false, "/a/%2e%2e": false, "/a/.%2e/b": false,
		"/a/%2e%2e?x=1": false, "/%2fevil.example/x": false, "/%2Fevil.example/x": false,
		"/a%5cb": false, "/a%5C..%5Cb": false, "/a\\b": false, "/%zz": false,
		"/a/%2e%2ex": true, "/a%2fb": true, "/a/..b?next=/../x": true,
	} {
		_, err := s.Issue(ctx, IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "600000", ForwardPath: path}, limits)
		if (err == nil) != ok {
			t.Errorf("forward_path %q: %v", path, err)
		}
	}
	iss := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", ForwardPath: "/orders/9"})
	if _, err := s.Annotate(ctx, iss.Record.ID, Annotation{}); err == nil {
		t.Error("empty annotation accepted")
	}
	if _, err := s.Annotate(ctx, iss.Record.ID, Annotation{CheckoutRequestID: "ws_CO bad"}); err == nil {
		t.Error("a CheckoutRequestID with a space accepted")
	}
	rec, err := s.Annotate(ctx, iss.Record.ID, Annotation{CheckoutRequestID: "ws_CO_191220191020363925"})
	if err != nil || rec.CheckoutRequestID != "ws_CO_191220191020363925" || rec.ForwardPath != "/orders/9" {
		t.Fatalf("annotate: %+v %v", rec, err)
	}
	if _, err := s.Annotate(ctx, "tok_aaaaaaaaaaaaaaaa", Annotation{CheckoutRequestID: "x"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("annotate unknown: %v", err)
	}
}

// TestRotateKeepsForwardPath: the successor of a token with a
// forward_path delivers to the same place.
func TestRotateKeepsForwardPath(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	old := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.C2BConfirmation}, Shortcode: "600638", Reusable: true,
		ForwardPath: "/payments/in?src=daraja"})
	next, err := s.Rotate(ctx, old.Record.ID, "", time.Hour, limits)
	if err != nil {
		t.Fatal(err)
	}
	rec, err := s.Get(ctx, next.Record.ID)
	if err != nil || next.Record.ForwardPath != old.Record.ForwardPath || rec.ForwardPath != old.Record.ForwardPath {
		t.Fatalf("successor forward_path %q (stored %q, %v), want %q", next.Record.ForwardPath, rec.ForwardPath, err,
			old.Record.ForwardPath)
	}
}

// usingIssuer is an Issuer whose stream shows a callback (for the token's
// first kind) on every token id used holds.
func usingIssuer(s *Store, used map[string]bool) *Issuer {
	return &Issuer{Store: s, PublicURL: "https://cb.example", QueryParam: "t", Limits: limits,
		Uses: func(_ context.Context, rec Record) (map[daraja.Kind]string, error) {
			if used[rec.ID] {
				return map[daraja.Kind]string{rec.Kinds[0]: "TX-" + rec.ID}, nil
			}
			return nil, nil
		}}
}

func TestList(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	used := map[string]bool{}
	iss := usingIssuer(s, used)
	var ids []string
	for i := range 7 {
		req := IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", Reference: fmt.Sprintf("ORDER-%d", i%2)}
		if i == 6 {
			req = IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "600000", Reference: "PAYOUT-1"}
		}
		ids = append(ids, issue(t, s, req).Record.ID)
	}
	used[ids[0]], used[ids[2]] = true, true
	if err := s.Revoke(ctx, ids[4]); err != nil {
		t.Fatal(err)
	}
	count := func(f ListFilter) int {
		t.Helper()
		n := 0
		for {
			page, next, err := iss.List(ctx, f)
			if err != nil {
				t.Fatal(err)
			}
			n += len(page)
			if next == "" {
				return n
			}
			f.After = next
		}
	}
	for _, c := range []struct {
		f    ListFilter
		want int
	}{
		{ListFilter{}, 7},
		{ListFilter{Limit: 2}, 7}, // paged
		{ListFilter{Reference: "ORDER-0"}, 3},
		{ListFilter{Shortcode: "600000"}, 1},
		{ListFilter{Kind: daraja.B2CResult}, 1},
		{ListFilter{State: StateConsumed}, 2},
		{ListFilter{State: StateRevoked}, 1},
		{ListFilter{State: StateIssued}, 4},
		{ListFilter{State: StateIssued, Reference: "ORDER-0"}, 0},
		{ListFilter{State: StateIssued, Reference: "ORDER-1"}, 3},
	} {
		if got := count(c.f); got != c.want {
			t.Errorf("%+v: %d tokens, want %d", c.f, got, c.want)
		}
	}
	if _, _, err := iss.List(ctx, ListFilter{State: "gone"}); err == nil {
		t.Error("a bad state accepted")
	}
}

// countingKV counts reads of a real bucket.
type countingKV struct {
	jetstream.KeyValue
	gets atomic.Int32
}

func (c *countingKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	c.gets.Add(1)
	return c.KeyValue.Get(ctx, key)
}

// TestUnknownAndWrongSecretCostTheSame: an unknown token id and a known id
// with a wrong secret take the same path (one bucket read each), so the
// answer's timing does not tell an attacker which ids exist; a right token
// known to the local copy reads nothing.
func TestUnknownAndWrongSecretCostTheSame(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	kv := &countingKV{KeyValue: s.kv}
	s.kv = kv
	iss := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
	forged := forgeSecret(t, iss.Token, len(iss.Token)-2)
	unknown, _ := newToken()
	for name, c := range map[string]struct {
		token string
		gets  int32
		err   error
	}{
		"right":        {iss.Token, 0, nil},
		"wrong secret": {forged, 1, ErrUnknown},
		"unknown id":   {unknown, 1, ErrUnknown},
	} {
		before := kv.gets.Load()
		_, err := s.Authorize(ctx, c.token, daraja.STKCallback)
		if !errors.Is(err, c.err) || err == nil && c.err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if got := kv.gets.Load() - before; got != c.gets {
			t.Errorf("%s: %d bucket reads, want %d", name, got, c.gets)
		}
	}
}

// forgeSecret returns token with its character at i replaced by the next
// one of the URL-safe base64 alphabet: always another valid character, so
// the forgery stays a well-formed token. i must fall in the secret
// (characters 14 to 39 encode secret bits only), so the id stays the same.
func forgeSecret(t *testing.T, token string, i int) string {
	t.Helper()
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	j := strings.IndexByte(alphabet, token[i])
	if j < 0 || i < 14 {
		t.Fatalf("cannot forge character %d of the token", i)
	}
	b := []byte(token)
	b[i] = alphabet[(j+1)%len(alphabet)]
	forged := string(b)
	if id, err := ParseToken(forged); err != nil || id != mustID(t, token) || forged == token {
		t.Fatalf("the forgery is not the same id with another secret: %v", err)
	}
	return forged
}

func mustID(t *testing.T, token string) string {
	t.Helper()
	id, err := ParseToken(token)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestSweepHoldsOneShard: while Sweep walks one shard of the local copy
// (with a million live tokens the walk takes milliseconds), tokens of the
// other shards are still looked up. Red with one lock over the whole copy:
// the look-up then waits for the whole walk.
func TestSweepHoldsOneShard(t *testing.T) {
	s := &Store{maxCached: 100, obs: nopObserver{}, log: zap.NewNop(), now: time.Now, grace: time.Second, warned: map[string]time.Time{}}
	s.initCache()
	var keys []tokenKey
	for len(keys) < 2 {
		tok, id := newToken()
		rec := Record{ID: id, Hash: hashToken(tok), Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379",
			ExpiresAt: time.Now().Add(time.Hour), State: StateIssued}
		s.remember(&rec, 1)
		k, _ := keyOf(id)
		if len(keys) == 0 || s.shard(k) != s.shard(keys[0]) {
			keys = append(keys, k)
		}
	}
	locked := s.shard(keys[0])
	checked := false
	s.sweeping = func(n int) {
		if &s.cache[n] != locked {
			return
		}
		checked = true
		done := make(chan bool, 1)
		go func() { _, ok := s.lookup(keys[1]); done <- ok }()
		select {
		case ok := <-done:
			if !ok {
				t.Error("the other shard's token is not in the local copy")
			}
		case <-time.After(10 * time.Second):
			t.Error("a look-up in another shard waited for the shard being swept")
		}
	}
	if _, err := s.Sweep(context.Background(), 10, func(context.Context, Record) (bool, error) { return false, nil }); err != nil {
		t.Fatal(err)
	}
	if !checked {
		t.Fatal("the sweep never walked the first token's shard")
	}
}

// TestTokenCacheBoundConcurrent fills the copy to one below its bound and
// lets a token for every shard arrive at once: the bound holds across
// shards (a check under one shard's lock and a later count overshot it by
// up to one token a shard).
func TestTokenCacheBoundConcurrent(t *testing.T) {
	const bound = 10
	for range 100 {
		s := &Store{maxCached: bound, obs: nopObserver{}, log: zap.NewNop(), now: time.Now}
		s.initCache()
		var recs []Record
		seen := map[*cacheShard]bool{}
		for len(recs) < cacheShards {
			tok, id := newToken()
			k, _ := keyOf(id)
			if seen[s.shard(k)] {
				continue
			}
			seen[s.shard(k)] = true
			recs = append(recs, Record{ID: id, Hash: hashToken(tok), Kinds: []daraja.Kind{daraja.STKCallback},
				Shortcode: "174379", ExpiresAt: time.Now().Add(time.Hour), State: StateIssued})
		}
		for i := range bound - 1 {
			s.remember(&recs[i], 1)
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := bound - 1; i < len(recs); i++ {
			wg.Go(func() { <-start; s.remember(&recs[i], 1) })
		}
		close(start)
		wg.Wait()
		held := 0
		for i := range s.cache {
			held += len(s.cache[i].m)
		}
		if c := s.cached.Load(); c != bound || held != bound {
			t.Fatalf("bound %d: counted %d, held %d", bound, c, held)
		}
	}
}

// TestRotateRefusesConsumed: a single-use token the stream shows used is
// not live (the bucket alone still says issued, since nothing on the
// callback path writes it): rotating it would hand out a fresh URL for a
// callback that already landed. A reusable token stays rotatable.
func TestRotateRefusesConsumed(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	used := map[string]bool{}
	iss := usingIssuer(s, used)
	single := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult, daraja.B2CTimeout}, Shortcode: "600000"})
	reusable := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.C2BConfirmation}, Shortcode: "600638", Reusable: true})
	used[single.Record.ID], used[reusable.Record.ID] = true, true
	_, err := iss.Rotate(ctx, RotateRequest{ID: single.Record.ID})
	var re *RequestError
	if !errors.As(err, &re) || re.Code != "not_rotatable" || !strings.Contains(re.Message, StateConsumed) {
		t.Fatalf("rotating a consumed single-use token: %v, want not_rotatable naming %q", err, StateConsumed)
	}
	if rec, err := s.Get(ctx, single.Record.ID); err != nil || rec.RotatedTo != "" || !rec.ExpiresAt.Equal(single.Record.ExpiresAt) {
		t.Fatalf("a refused rotation changed the token: %+v %v", rec, err)
	}
	if _, err := iss.Rotate(ctx, RotateRequest{ID: reusable.Record.ID}); err != nil {
		t.Fatalf("rotating a used reusable token: %v", err)
	}
}

// TestListScanLimitKeepsEveryToken: a List call stops after maxListScan
// look-ups; its cursor is the last id it looked at, so the next call
// starts with the one it had not (that token was skipped for good).
func TestListScanLimitKeepsEveryToken(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	var highest string
	for range maxListScan + 1 {
		id := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"}).Record.ID
		highest = max(highest, id)
	}
	iss := &Issuer{Store: s, PublicURL: "https://cb.example", QueryParam: "t", Limits: limits,
		Uses: func(_ context.Context, rec Record) (map[daraja.Kind]string, error) {
			if rec.ID == highest {
				return map[daraja.Kind]string{rec.Kinds[0]: "TX"}, nil
			}
			return nil, nil
		}}
	f := ListFilter{State: StateConsumed}
	var listed []string
	for calls := 1; ; calls++ {
		page, next, err := iss.List(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range page {
			listed = append(listed, st.ID)
		}
		if next == "" {
			if calls < 2 {
				t.Fatalf("%d tokens listed in one call: the scan bound did not apply", maxListScan+1)
			}
			break
		}
		f.After = next
	}
	if len(listed) != 1 || listed[0] != highest {
		t.Fatalf("state=consumed listed %v over every page, want [%s]", listed, highest)
	}
}

// TestRotateTwiceRefused: a token that already has a successor is not
// rotated again (a retried rotate left the first successor live, a
// reusable one for ever, with nothing pointing at it); the refusal names
// the successor, and the token still points at it.
func TestRotateTwiceRefused(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	iss := &Issuer{Store: s, PublicURL: "https://cb.example", QueryParam: "t", Limits: limits,
		Uses: func(context.Context, Record) (map[daraja.Kind]string, error) { return nil, nil }}
	old := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.C2BConfirmation}, Shortcode: "600638", Reusable: true})
	first, err := iss.Rotate(ctx, RotateRequest{ID: old.Record.ID, Overlap: "48h"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = iss.Rotate(ctx, RotateRequest{ID: old.Record.ID, Overlap: "48h"})
	var re *RequestError
	if !errors.As(err, &re) || re.Code != "not_rotatable" || !strings.Contains(re.Message, first.ID) {
		t.Fatalf("second rotation: %v, want not_rotatable naming %s", err, first.ID)
	}
	if rec, err := s.Get(ctx, old.Record.ID); err != nil || rec.RotatedTo != first.ID {
		t.Fatalf("after a refused second rotation the token points at %q (%v), want %s", rec.RotatedTo, err, first.ID)
	}
	if _, err := iss.Rotate(ctx, RotateRequest{ID: first.ID}); err != nil {
		t.Fatalf("rotating the successor: %v", err)
	}
}
