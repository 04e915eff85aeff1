package edge

import (
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

// TestForwardThroughTheEdge: with forward: configured, a callback accepted
// by the running edge reaches the app byte for byte, signed as a Standard
// Webhook (verified with the reference library), without the URL token,
// on the token's forward_path; the app answering 500 first only delays it.
func TestForwardThroughTheEdge(t *testing.T) {
	secret := "whsec_" + base64.StdEncoding.EncodeToString([]byte("edge-forward-test-secret-0123"))
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got [][]byte
	var paths []string
	failures := 1
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		if err := wh.Verify(body, r.Header); err != nil {
			t.Errorf("signature: %v", err)
		}
		if failures > 0 {
			failures--
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		got = append(got, body)
		paths = append(paths, r.URL.RequestURI())
	}))
	defer app.Close()
	h := start(t, func(c *config.Config) {
		d := config.DefaultDestination()
		d.Name, d.URL, d.Secrets = "shop", app.URL+"/mpesa", []string{secret}
		d.Retry = []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond}
		c.Forward.Destinations = []config.Destination{d}
	})
	body := fixture(t, "stk_callback_success.json")
	tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", ForwardPath: "/orders/77?src=daraja"})
	if r := h.callback(allowedSrc, daraja.STKCallback, tok.Token, body); r.status != 200 {
		t.Fatalf("callback: %d %s", r.status, r.body)
	}
	waitUntil(t, 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 1 })
	mu.Lock()
	defer mu.Unlock()
	if string(got[0]) != string(body) {
		t.Error("the app got other bytes than Daraja sent")
	}
	if paths[0] != "/mpesa/orders/77?src=daraja" {
		t.Errorf("delivered to %s", paths[0])
	}
}
