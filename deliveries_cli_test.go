package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/forward"
	"github.com/daraja-edge/daraja-edge/internal/edgetest"
	"github.com/daraja-edge/daraja-edge/verify"
)

// TestDeliveriesCommands: through a running edge that forwards to an app,
// a callback the app refuses is found by `deliveries list` (by state, by
// transaction, and for every destination of the config), and `deliveries
// replay` delivers it again once the app is up: from the dead letters, by
// transaction, by stream sequence and by time range; wrong invocations are
// exit 2 and say why.
func TestDeliveriesCommands(t *testing.T) {
	var up atomic.Bool
	var delivered atomic.Int32
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !up.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		delivered.Add(1)
	}))
	t.Cleanup(app.Close)
	secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("deliveries-cli-test-secret-0123"))
	cfg := edgetest.Config(t, "")
	d := config.DefaultDestination()
	d.Name, d.URL, d.Secrets = "shop", app.URL, []string{secret}
	d.Retry = []time.Duration{0, 20 * time.Millisecond}
	cfg.Forward.Destinations = []config.Destination{d}
	e := edgetest.Start(t, cfg)
	t.Setenv("DARAJA_EDGE_ADMIN_KEY", edgetest.AdminKey)
	t.Setenv("DARAJA_EDGE_CONFIG", "")
	cli := func(args ...string) (string, error) {
		var out, errb bytes.Buffer
		err := run(context.Background(), args, &out, &errb)
		return out.String() + errb.String(), err
	}
	admin := []string{"--admin", "http://" + e.Admin}
	list := func(args ...string) []forward.Delivery {
		t.Helper()
		out, err := cli(append(append([]string{"deliveries", "list"}, args...), admin...)...)
		var page struct{ Deliveries []forward.Delivery }
		if err != nil || json.Unmarshal([]byte(out), &page) != nil || page.Deliveries == nil {
			t.Fatalf("deliveries list %v: %v %s", args, err, out)
		}
		return page.Deliveries
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("never: %s", what)
			}
		}
	}

	// A callback through the edge, refused by the app until dead.
	body, err := os.ReadFile("testdata/callbacks/stk.callback__success.json")
	if err != nil {
		t.Fatal(err)
	}
	const tx = "ws_CO_15032026102233101700000101"
	tok := edgetest.Issue(t, e.Admin, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
	before := time.Now().Add(-time.Minute)
	if code, answer := edgetest.Post(e.Public, daraja.STKCallback, tok.Token, body); code != http.StatusOK {
		t.Fatalf("callback: %d %s", code, answer)
	}
	waitFor("the callback dead at shop", func() bool { return len(list("--destination", "shop", "--state", "dead")) == 1 })
	dead := list("--destination", "shop", "--tx", tx)
	if len(dead) != 1 || dead[0].TransactionID != tx || dead[0].State != forward.StateDead || len(dead[0].Attempts) != 2 ||
		dead[0].Attempts[0].Status != http.StatusServiceUnavailable {
		t.Fatalf("--tx %s: %+v", tx, dead)
	}
	if ds := list("--destination", "shop", "--state", "delivered"); len(ds) != 0 {
		t.Errorf("delivered before the app was up: %+v", ds)
	}
	if ds := list("--destination", "shop", "--tx", "ws_CO_other"); len(ds) != 0 {
		t.Errorf("another transaction listed: %+v", ds)
	}
	// Without --destination: every destination of the config.
	cfgFile := filepath.Join(t.TempDir(), "config.yaml")
	yaml := fmt.Sprintf("admin:\n  listen: %s\n  api_keys: [%q]\nforward:\n  destinations:\n    - name: shop\n      url: %s\n      secrets: [%q]\n",
		e.Admin, edgetest.AdminKey, app.URL, secret)
	if err := os.WriteFile(cfgFile, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := cli("deliveries", "list", "--config", cfgFile, "--state", "dead"); err != nil || !strings.Contains(out, tx) {
		t.Errorf("deliveries list --config (every destination): %v %s", err, out)
	}

	// Replays, once the app is up.
	up.Store(true)
	replay := func(args ...string) []uint64 {
		t.Helper()
		out, err := cli(append(append([]string{"deliveries", "replay", "--destination", "shop"}, args...), admin...)...)
		var res forward.ReplayResult
		if err != nil || json.Unmarshal([]byte(out), &res) != nil {
			t.Fatalf("deliveries replay %v: %v %s", args, err, out)
		}
		return res.Queued
	}
	if q := replay("--dlq"); len(q) != 1 || q[0] != dead[0].Sequence {
		t.Fatalf("--dlq queued %v, want [%d]", q, dead[0].Sequence)
	}
	waitFor("delivered after the dlq replay", func() bool { return len(list("--destination", "shop", "--state", "delivered")) == 1 })
	for _, sel := range [][]string{
		{"--tx", tx},
		{"--sequence", fmt.Sprint(dead[0].Sequence)},
		{"--since", before.Format(time.RFC3339), "--until", time.Now().Add(time.Minute).Format(time.RFC3339)},
	} {
		n := delivered.Load()
		if q := replay(sel...); len(q) != 1 || q[0] != dead[0].Sequence {
			t.Errorf("replay %v queued %v, want [%d]", sel, q, dead[0].Sequence)
			continue
		}
		waitFor(fmt.Sprintf("the app got the callback again after replay %v", sel), func() bool { return delivered.Load() > n })
	}

	// Wrong invocations.
	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"deliveries", "replay", "--dlq"}, 2, "--destination is required"},
		{[]string{"deliveries", "replay", "--destination", "shop"}, 2, "name one of"},
		{[]string{"deliveries", "replay", "--destination", "shop", "--dlq", "--tx", tx}, 2, "name one of"},
		{[]string{"deliveries", "replay", "--destination", "shop", "--since", "yesterday", "--until", "today"}, 2, "RFC 3339"},
		{[]string{"deliveries", "replay", "--destination", "shop", "--since", "2026-03-15T12:00:00Z", "--until", "2026-03-15T10:00:00Z"}, 2, "after --since"},
		{[]string{"deliveries", "list", "--state", "lost"}, 2, "pending, delivered or dead"},
		{[]string{"deliveries", "list"}, 2, "name --destination"},
		{[]string{"deliveries", "list", "--destination", "nope"}, 1, "404"},
		{[]string{"deliveries", "replay", "--destination", "nope", "--dlq"}, 1, "404"},
		{[]string{"deliveries", "frobnicate"}, 2, "one of: list, replay"},
	} {
		out, err := cli(append(c.args, admin...)...)
		code := 0
		if err != nil {
			code = 1
			var ee *exitError
			if errors.As(err, &ee) {
				code = ee.code
			}
			out += err.Error()
		}
		if code != c.code || !strings.Contains(out, c.says) {
			t.Errorf("%v: exit %d, want %d saying %q: %s", c.args, code, c.code, c.says, out)
		}
	}
}
