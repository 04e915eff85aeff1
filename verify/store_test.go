package verify

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

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

func TestAuthorizeAndConsume(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	stk := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", Reference: "ORDER-1"})

	// A token with its secret changed names the same id but must not pass.
	forged := []byte(stk.Token)
	forged[len(forged)-1] ^= 1
	if forged[len(forged)-1] == stk.Token[len(forged)-1] {
		t.Fatal("forgery did not change the token")
	}
	for name, tc := range map[string]struct {
		token string
		kind  daraja.Kind
		want  error
	}{
		"empty":        {"", daraja.STKCallback, ErrUnknown},
		"never issued": {strings.Repeat("A", 40), daraja.STKCallback, ErrUnknown},
		"wrong secret": {string(forged), daraja.STKCallback, ErrUnknown},
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
	if out, err := s.Consume(ctx, g, "stk.callback:ws_1"); err != nil || out != First {
		t.Fatalf("first consume: %v, %v", out, err)
	}
	// The same callback again is a duplicate, another one is a replay.
	g, _ = s.Authorize(ctx, stk.Token, daraja.STKCallback)
	if out, err := s.Consume(ctx, g, "stk.callback:ws_1"); err != nil || out != Duplicate {
		t.Fatalf("repeat: %v, %v", out, err)
	}
	if _, err := s.Consume(ctx, g, "stk.callback:ws_2"); !errors.Is(err, ErrReplay) {
		t.Fatalf("replay: %v", err)
	}
	// A stale grant (read before the consumption) still loses the race.
	st, _ := s.Get(ctx, stk.Record.ID)
	if st.State != StateConsumed || st.ConsumedBy != "stk.callback:ws_1" {
		t.Fatalf("record after consume: %+v", st)
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
	g, err := s.Authorize(ctx, a.Token, daraja.STKCallback)
	if err != nil {
		t.Fatal(err)
	}
	s.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	if _, err := s.Authorize(ctx, a.Token, daraja.STKCallback); !errors.Is(err, ErrExpired) {
		t.Errorf("expired: %v", err)
	}
	// Expiry between Authorize and Consume is caught too.
	if _, err := s.Consume(ctx, g, "stk.callback:x"); !errors.Is(err, ErrExpired) {
		t.Errorf("consume after expiry: %v", err)
	}
	if rec, _ := s.Get(ctx, a.Record.ID); rec.StateAt(s.now()) != StateExpired {
		t.Errorf("state = %s", rec.StateAt(s.now()))
	}
	if err := s.Revoke(ctx, "tok_aaaaaaaaaaaaaaaa"); !errors.Is(err, ErrNotFound) {
		t.Errorf("revoke unknown: %v", err)
	}
}

func TestReusableNeverConsumed(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	c2b := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.C2BValidation, daraja.C2BConfirmation}, Shortcode: "600638", Reusable: true})
	for _, tx := range []string{"A", "B", "A"} {
		g, err := s.Authorize(ctx, c2b.Token, daraja.C2BConfirmation)
		if err != nil {
			t.Fatal(err)
		}
		if out, err := s.Consume(ctx, g, "c2b.confirmation:"+tx); err != nil || out != First {
			t.Fatalf("%s: %v %v", tx, out, err)
		}
	}
}

// TestConsumeRace: many concurrent consumers of one token with different
// callbacks; exactly one wins, every other is a replay.
func TestConsumeRace(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	iss := issue(t, s, IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "600000"})
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, replays := 0, 0
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g, err := s.Authorize(ctx, iss.Token, daraja.B2CResult)
			if err != nil {
				t.Error(err)
				return
			}
			out, err := s.Consume(ctx, g, "b2c.result:"+string(rune('a'+i)))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && out == First:
				wins++
			case errors.Is(err, ErrReplay):
				replays++
			default:
				t.Errorf("unexpected %v %v", out, err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || replays != 19 {
		t.Fatalf("wins=%d replays=%d", wins, replays)
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

func TestMatchesRefusesBadStoredHash(t *testing.T) {
	tok, _ := newToken()
	for _, h := range []string{"", "zz", hashToken(tok) + "00", hashToken(tok)[:62]} {
		if (&Record{Hash: h}).matches(tok) {
			t.Errorf("hash %q matched", h)
		}
	}
	if !(&Record{Hash: hashToken(tok)}).matches(tok) {
		t.Error("the right hash did not match")
	}
}
