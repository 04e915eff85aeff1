package forward

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/publish"
)

// Example_appVerifies is the Go snippet of docs/forward.md: the app's
// handler verifies the forwarder's signature with the Standard Webhooks
// reference library before it reads the body as it always has. The
// request is one the forwarder built and signed.
func Example_appVerifies() {
	secret := "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" // forward.destinations[].secrets

	// --- the app ---
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		panic(err)
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20)) // the raw bytes: verify before decoding
		if err != nil {
			http.Error(w, "unreadable body", http.StatusBadRequest)
			return
		}
		if err := wh.Verify(body, r.Header); err != nil {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		// Signed: webhook-id, webhook-timestamp and the body. The Daraja-*
		// headers are not: read the transaction from the body.
		fmt.Printf("verified %s (id %s): %s\n", r.Header.Get("Daraja-Kind"), r.Header.Get("webhook-id"), body)
		w.WriteHeader(http.StatusOK) // any 2xx: delivered
	})

	// --- what the forwarder sends ---
	s, _ := newSigner([]string{secret})
	d := &dest{cfg: config.Destination{}, sign: s}
	stored := &publish.Callback{Kind: "stk.callback", Shortcode: "174379", TransactionID: "ws_CO_1", ReceivedAt: time.Now(),
		Body: []byte(`{"Body":{"stkCallback":{"CheckoutRequestID":"ws_CO_1","ResultCode":0}}}`)}
	m := stored.Msg("daraja.cb.stk.callback.174379.tok_x")
	cb := &callback{header: m.Header, body: m.Data}
	req, _ := d.request(context.Background(), "http://app.internal/mpesa/stk", cb)
	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, req)
	fmt.Println(rec.Code)
	// Output:
	// verified stk.callback (id msg_d20b7f45a0661f84007c24248c78162a): {"Body":{"stkCallback":{"CheckoutRequestID":"ws_CO_1","ResultCode":0}}}
	// 200
}
