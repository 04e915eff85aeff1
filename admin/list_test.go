package admin

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/verify"
)

// TestListTokensOverHTTP: GET /v1/tokens over a real HTTP connection
// filters by reference, shortcode, kind and state, alone and together,
// pages with limit and the after cursor without losing or repeating a
// token, and refuses malformed filters with the JSON error.
func TestListTokensOverHTTP(t *testing.T) {
	h := newHarness(t, nil)
	srv := httptest.NewServer(h.h)
	t.Cleanup(srv.Close)
	call := func(method, target, body string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+target, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+apiKey)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	issue := func(body string) string {
		t.Helper()
		code, b := call("POST", "/v1/tokens", body)
		var r verify.IssueResponse
		if code != http.StatusCreated || json.Unmarshal(b, &r) != nil {
			t.Fatalf("issue %s: %d %s", body, code, b)
		}
		return r.ID
	}
	ids := map[string]string{"base": h.token.ID} // name → id
	ids["a"] = issue(`{"kinds":["stk.callback"],"shortcode":"174379","reference":"ORDER-1"}`)
	ids["b"] = issue(`{"kinds":["stk.callback"],"shortcode":"174379","reference":"ORDER-2"}`)
	ids["c"] = issue(`{"kinds":["b2c.result","b2c.timeout"],"shortcode":"600000","reference":"PAYOUT-1"}`)
	ids["d"] = issue(`{"kinds":["c2b.confirmation"],"shortcode":"600638","reference":"ORDER-1","reusable":true}`)
	ids["e"] = issue(`{"kinds":["stk.callback"],"shortcode":"174379","reference":"ORDER-1"}`)
	ids["f"] = issue(`{"kinds":["stk.callback"],"shortcode":"174379","ttl":"1ms"}`)
	if code, b := call("DELETE", "/v1/tokens/"+ids["e"], ""); code != http.StatusNoContent {
		t.Fatalf("revoke: %d %s", code, b)
	}
	type page struct {
		Tokens []verify.Status `json:"tokens"`
		Next   *string         `json:"next"`
	}
	list := func(q string) page {
		t.Helper()
		code, b := call("GET", "/v1/tokens?"+q, "")
		var p page
		dec := json.NewDecoder(strings.NewReader(string(b)))
		dec.DisallowUnknownFields()
		if code != http.StatusOK || dec.Decode(&p) != nil || p.Tokens == nil || p.Next == nil {
			t.Fatalf("GET /v1/tokens?%s: %d %s", q, code, b)
		}
		return p
	}
	names := func(p page) []string {
		var out []string
		for _, st := range p.Tokens {
			for n, id := range ids {
				if id == st.ID {
					out = append(out, n)
				}
			}
		}
		slices.Sort(out)
		return out
	}
	// The list reads the replica's watch-fed copy: wait until it holds all,
	// and until f has expired.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if len(list("").Tokens) == len(ids) && len(list("state=expired").Tokens) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the list never held every token: %+v", list(""))
		}
	}
	for _, c := range []struct {
		query string
		want  []string
	}{
		{"reference=ORDER-1", []string{"a", "d", "e"}},
		{"reference=NONE", nil},
		{"shortcode=174379", []string{"a", "b", "base", "e", "f"}},
		{"shortcode=600638", []string{"d"}},
		{"kind=b2c.timeout", []string{"c"}},
		{"kind=c2b.confirmation", []string{"d"}},
		{"kind=stk.callback&reference=ORDER-1", []string{"a", "e"}},
		{"state=revoked", []string{"e"}},
		{"state=expired", []string{"f"}},
		{"state=consumed", nil},
		{"state=issued", []string{"a", "b", "base", "c", "d"}},
		{"state=issued&shortcode=174379&reference=ORDER-1", []string{"a"}},
		{"state=issued&kind=stk.callback", []string{"a", "b", "base"}},
	} {
		if got := names(list(c.query)); !slices.Equal(got, c.want) {
			t.Errorf("?%s: %v, want %v", c.query, got, c.want)
		}
	}
	// Pages of two: in id order, each token once, the last page's next "".
	for _, filter := range []string{"", "shortcode=174379&"} {
		want := list(filter + "limit=500").Tokens
		var got []string
		after, pages := "", 0
		for {
			p := list(filter + "limit=2&after=" + url.QueryEscape(after))
			pages++
			if len(p.Tokens) > 2 || pages > 10 {
				t.Fatalf("?%slimit=2: page %d has %d tokens", filter, pages, len(p.Tokens))
			}
			for _, st := range p.Tokens {
				got = append(got, st.ID)
			}
			if *p.Next == "" {
				break
			}
			if *p.Next != p.Tokens[len(p.Tokens)-1].ID {
				t.Errorf("next %q is not the page's last id", *p.Next)
			}
			after = *p.Next
		}
		var all []string
		for _, st := range want {
			all = append(all, st.ID)
		}
		if !slices.Equal(got, all) || !slices.IsSorted(got) || pages != (len(all)+1)/2 {
			t.Errorf("?%s pages of 2 (%d pages): %v, want %v in id order", filter, pages, got, all)
		}
	}
	for _, q := range []string{"limit=0", "limit=-1", "limit=x", "after=bogus", "state=lost", "kind=nope"} {
		code, b := call("GET", "/v1/tokens?"+q, "")
		var e APIError
		if code != http.StatusBadRequest || json.Unmarshal(b, &e) != nil || e.Error.Code != "invalid_request" {
			t.Errorf("?%s: %d %s, want 400 invalid_request", q, code, b)
		}
	}
}
