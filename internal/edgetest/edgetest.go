// Package edgetest runs a real daraja-edge in a test: embedded or given
// NATS, self-signed TLS on a random loopback port, the admin API, and
// helpers to issue tokens and deliver callbacks from a chosen source.
package edgetest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/edge"
	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/daraja-edge/daraja-edge/publish"
	"github.com/daraja-edge/daraja-edge/verify"
	"github.com/nats-io/nats.go/jetstream"
)

// Source is the allowlisted loopback address callbacks come from.
const Source = "127.0.0.2"

// AdminKey is the admin API key of every test edge.
const AdminKey = "edgetest-admin-key-0123456789"

// Config is a test configuration: everything on random loopback ports and
// under t.TempDir(), Source allowlisted; natsURL "" embeds NATS.
func Config(t testing.TB, natsURL string) config.Config {
	dir := t.TempDir()
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.TLS.Storage = filepath.Join(dir, "certs")
	cfg.Allowlist.CIDRs = []string{Source + "/32"}
	cfg.NATS.URL = natsURL
	cfg.NATS.Embedded = config.Embedded{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "nats")}
	cfg.Spool.Dir = filepath.Join(dir, "spool")
	cfg.Admin.Listen, cfg.Admin.APIKeys, cfg.Admin.KeyFile = "127.0.0.1:0", []string{AdminKey}, filepath.Join(dir, "admin.key")
	return cfg
}

// Edge is a running edge.
type Edge struct {
	Srv    *edge.Server
	Public string // host:port of the public listener
	Admin  string // host:port of the admin listener
}

// Start runs an edge with cfg until the test ends.
func Start(t testing.TB, cfg config.Config) *Edge {
	t.Helper()
	srv, err := edge.New(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			t.Error("edge did not stop")
		}
	})
	return &Edge{Srv: srv, Public: srv.PublicAddr().String(), Admin: srv.AdminAddr().String()}
}

// Client sends from Source; it trusts any certificate (these helpers test
// durability and flow, not TLS, which the edge package tests).
var Client = &http.Client{
	Timeout: 30 * time.Second,
	Transport: &http.Transport{
		DialContext:         (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(Source)}, Timeout: 5 * time.Second}).DialContext,
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
		MaxIdleConnsPerHost: 64,
	},
}

// Issue asks the admin API at adminAddr for a token.
func Issue(t testing.TB, adminAddr string, req verify.IssueRequest) verify.IssueResponse {
	t.Helper()
	b, _ := json.Marshal(req)
	hr, _ := http.NewRequest(http.MethodPost, "http://"+adminAddr+"/v1/tokens", bytes.NewReader(b))
	hr.Header.Set("Authorization", "Bearer "+AdminKey)
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("issue: %d %s", resp.StatusCode, body)
	}
	var out verify.IssueResponse
	_ = json.Unmarshal(body, &out)
	return out
}

// Post delivers one callback from Source and returns the status and answer;
// status 0 means no answer (connection error).
func Post(publicAddr string, kind daraja.Kind, token string, body []byte) (int, string) {
	resp, err := Client.Post("https://"+publicAddr+kind.Path()+"?t="+token, "application/json", bytes.NewReader(body))
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// ReadMissing counts the missing-callback events on the DARAJA stream by
// token id.
func ReadMissing(t testing.TB, js jetstream.JetStream) map[string]int {
	t.Helper()
	byToken := map[string]int{}
	natstest.ReadSubjects(t, js, "DARAJA", "daraja.missing.>", func(m jetstream.Msg) {
		byToken[m.Headers().Get(publish.HeaderTokenID)]++
	})
	return byToken
}

// WaitMissing waits up to d until every token in ids has a missing-callback
// event on the stream, and returns the events by token id.
func WaitMissing(t testing.TB, js jetstream.JetStream, ids []string, d time.Duration) map[string]int {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := ReadMissing(t, js)
		var absent []string
		for _, id := range ids {
			if got[id] == 0 {
				absent = append(absent, id)
			}
		}
		if len(absent) == 0 {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("no missing-callback event within %s for tokens %v", d, absent)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
