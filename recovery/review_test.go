package recovery

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/recovery/darajatest"
	"github.com/daraja-edge/daraja-edge/verify"
)

// count returns how many messages subject holds.
func (r *rig) count(subject string) int {
	n := 0
	for seq := uint64(1); ; {
		m, err := r.stream.GetMsg(context.Background(), seq, jetstream.WithGetMsgSubject(subject))
		if err != nil {
			return n
		}
		n++
		seq = m.Sequence + 1
	}
}

// TestPullSameReceiptOnEverySubject: two single-use C2B tokens whose
// windows overlap both find one transaction, and a reconcile finding names
// it too: each recovered subject holds it (one Nats-Msg-Id for all of them
// made JetStream drop every copy after the first, for the duplicate
// window, without a word).
func TestPullSameReceiptOnEverySubject(t *testing.T) {
	r := newRig(t, 1, 2, withPull)
	now := time.Now()
	r.d.AddPull("174379", darajatest.PullTransaction{Receipt: "TLA1B2C3D4", Time: now.Add(time.Minute), MSISDN: "254708374149", Amount: "1.00"})
	a := r.expire(daraja.C2BConfirmation, verify.Annotation{})
	r.messages("daraja.recovered.c2b.confirmation.174379."+a.ID, 1)
	b := r.expire(daraja.C2BConfirmation, verify.Annotation{})
	r.settled()
	if n := r.count("daraja.recovered.c2b.confirmation.174379." + b.ID); n != 1 {
		t.Errorf("the second token's recovered subject holds %d messages, want 1", n)
	}
	r.reconcileFinding("c2b.confirmation", "174379", "TLA1B2C3D4", now.Add(time.Minute))
	r.settled()
	if n := r.count("daraja.recovered.c2b.confirmation.174379.TLA1B2C3D4"); n != 1 {
		t.Errorf("the reconcile finding's recovered subject holds %d messages, want 1", n)
	}
}

// TestEchoedAccessTokenNotPublished: Daraja's 401 repeats the access token
// it was sent; that message went into Daraja-Recovery-Error, the body and
// the log. (The rig's log scan covers every token the stand-in issued.)
func TestEchoedAccessTokenNotPublished(t *testing.T) {
	r := newRig(t, 1, 2)
	r.d.Fail(stkPath, darajatest.Unauthorized, darajatest.Unauthorized, darajatest.Unauthorized, darajatest.Unauthorized)
	iss := r.expire(daraja.STKCallback, verify.Annotation{CheckoutRequestID: "ws_CO_011220261200009"})
	m := r.recovered(daraja.STKCallback, iss.ID)
	if m.Header.Get(HeaderOutcome) != OutcomeUnrecoverable || !strings.Contains(m.Header.Get(HeaderError), "Invalid Access Token") {
		t.Fatalf("headers %v", m.Header)
	}
	toks := r.d.Tokens()
	if len(toks) == 0 {
		t.Fatal("no access token issued: nothing to look for")
	}
	for _, tok := range toks {
		if strings.Contains(m.Header.Get(HeaderError), tok) || strings.Contains(string(m.Data), tok) {
			t.Errorf("the published answer holds an access token: %s / %s", m.Header.Get(HeaderError), m.Data)
		}
	}
}

// TestNumericResultCodeHeader: an STK Push Query answer whose ResultCode
// is a JSON number (as the callback's is) still gives Daraja-Result-Code.
func TestNumericResultCodeHeader(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if strings.HasPrefix(req.URL.Path, "/oauth/") {
			_, _ = w.Write([]byte(`{"access_token":"AccessTokenForTheTest01","expires_in":"3599"}`))
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"ResponseCode": "0", "ResponseDescription": "ok", "MerchantRequestID": "1",
			"CheckoutRequestID": "ws_CO_n", "ResultCode": 1032, "ResultDesc": "Request cancelled by user"})
	}))
	t.Cleanup(ts.Close)
	r := newRig(t, 1, 2, func(o *Options) {
		sc := o.Shortcodes["174379"]
		sc.Client = NewClient(ts.URL, "k", "s", ts.Client())
		o.Shortcodes = map[string]Shortcode{"174379": sc}
	})
	iss := r.expire(daraja.STKCallback, verify.Annotation{CheckoutRequestID: "ws_CO_n"})
	if got := r.recovered(daraja.STKCallback, iss.ID).Header.Get("Daraja-Result-Code"); got != "1032" {
		t.Errorf("Daraja-Result-Code %q, want 1032", got)
	}
}
