package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/internal/edgetest"
	"github.com/daraja-edge/daraja-edge/verify"
)

// TestTokenListCommand: `token list` against a running edge filters by
// reference, shortcode, kind and state, consumed included (a callback
// delivered through the public listener), and pages with --limit and
// --after.
func TestTokenListCommand(t *testing.T) {
	e := edgetest.Start(t, edgetest.Config(t, ""))
	t.Setenv("DARAJA_EDGE_ADMIN_KEY", edgetest.AdminKey)
	t.Setenv("DARAJA_EDGE_CONFIG", "")
	type page struct {
		Tokens []verify.Status `json:"tokens"`
		Next   string          `json:"next"`
	}
	list := func(args ...string) page {
		t.Helper()
		var out, errb bytes.Buffer
		err := run(context.Background(), append(append([]string{"token", "list"}, args...), "--admin", "http://"+e.Admin), &out, &errb)
		var p page
		if err != nil || json.Unmarshal(out.Bytes(), &p) != nil {
			t.Fatalf("token list %v: %v %s%s", args, err, out.String(), errb.String())
		}
		return p
	}
	issue := func(req verify.IssueRequest) string { return edgetest.Issue(t, e.Admin, req).ID }
	stk := []daraja.Kind{daraja.STKCallback}
	ids := map[string]string{
		"paid":    "",
		"waiting": issue(verify.IssueRequest{Kinds: stk, Shortcode: "174379", Reference: "ORDER-9"}),
		"payout":  issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult, daraja.B2CTimeout}, Shortcode: "600000", Reference: "PAYOUT-9"}),
		"revoked": issue(verify.IssueRequest{Kinds: stk, Shortcode: "174379", Reference: "ORDER-9"}),
	}
	paid := edgetest.Issue(t, e.Admin, verify.IssueRequest{Kinds: stk, Shortcode: "174379", Reference: "ORDER-9"})
	ids["paid"] = paid.ID
	body, err := os.ReadFile("testdata/callbacks/stk.callback__success.json")
	if err != nil {
		t.Fatal(err)
	}
	if code, answer := edgetest.Post(e.Public, daraja.STKCallback, paid.Token, body); code != http.StatusOK {
		t.Fatalf("callback: %d %s", code, answer)
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"token", "revoke", ids["revoked"], "--admin", "http://" + e.Admin}, &out, &out); err != nil {
		t.Fatalf("revoke: %v %s", err, out.String())
	}
	names := func(p page) []string {
		var got []string
		for _, st := range p.Tokens {
			for n, id := range ids {
				if st.ID == id {
					got = append(got, n)
				}
			}
		}
		slices.Sort(got)
		return got
	}
	for deadline := time.Now().Add(60 * time.Second); len(names(list("--state", "consumed"))) != 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the paid token never listed as consumed: %+v", list())
		}
	}
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--state", "consumed"}, []string{"paid"}},
		{[]string{"--state", "revoked"}, []string{"revoked"}},
		{[]string{"--state", "issued"}, []string{"payout", "waiting"}},
		{[]string{"--reference", "ORDER-9"}, []string{"paid", "revoked", "waiting"}},
		{[]string{"--reference", "ORDER-9", "--state", "issued"}, []string{"waiting"}},
		{[]string{"--shortcode", "600000"}, []string{"payout"}},
		{[]string{"--kind", "b2c.timeout"}, []string{"payout"}},
		{[]string{"--kind", "stk.callback", "--shortcode", "174379", "--state", "consumed"}, []string{"paid"}},
	} {
		if got := names(list(c.args...)); !slices.Equal(got, c.want) {
			t.Errorf("token list %v: %v, want %v", c.args, got, c.want)
		}
	}
	// Pages of one, following next, give every token once, in id order.
	var got []string
	after := ""
	for range 10 {
		args := []string{"--limit", "1"}
		if after != "" {
			args = append(args, "--after", after)
		}
		p := list(args...)
		for _, st := range p.Tokens {
			got = append(got, st.ID)
		}
		if after = p.Next; after == "" {
			break
		}
	}
	all := names(list("--limit", "500"))
	if len(got) != len(all) || !slices.IsSorted(got) || len(got) != 4 {
		t.Errorf("pages of one: %v, want the %d tokens %v in id order", got, len(all), all)
	}
}
