package edge

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/verify"
)

// TestEveryCallbackBody posts every body in testdata/callbacks (the
// variants Daraja really sends: numbers or strings, objects or arrays,
// masked or hashed numbers, Unicode names, pretty-printed, escaped
// slashes, undocumented timeouts) through a running edge: each is answered
// 200 and stored once, byte for byte, and nothing secret a body holds
// reaches the log: no phone number found anywhere in the body (not only
// where the parser looks: reversal CreditPartyPublicName, status
// CreditPartyName, B2C names, the suffix of a 2022+ STK CheckoutRequestID),
// no v1 MSISDN hash, and no token a B2B result echoes in ReferenceData.
func TestEveryCallbackBody(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "testdata", "callbacks", "*.json"))
	if err != nil || len(files) < 13 {
		t.Fatalf("callback bodies: %d files, %v", len(files), err)
	}
	h := start(t, func(c *config.Config) { c.Limits.MaxBodyBytes = 65536 })
	secrets := map[string]string{} // what must not be logged → the file it came from
	for _, f := range files {
		name := filepath.Base(f)
		kind := daraja.Kind(strings.SplitN(name, "__", 2)[0])
		body, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		cb, err := daraja.Parse(kind, body)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, s := range bodySecrets(body) {
			secrets[s] = name
		}
		shortcode := cb.Shortcode
		if shortcode == "" {
			shortcode = "600000"
		}
		tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{kind}, Shortcode: shortcode, Reusable: kind.IsC2B(), Reference: "REF-1"})
		before := h.count()
		r := h.callback(allowedSrc, kind, tok.Token, body)
		if r.status != http.StatusOK {
			t.Errorf("%s: %d %s", name, r.status, r.body)
			continue
		}
		msgs := h.messages()
		if len(msgs) != before+1 {
			t.Errorf("%s: %d new messages, want 1", name, len(msgs)-before)
			continue
		}
		m := msgs[len(msgs)-1]
		if !bytes.Equal(m.Data, body) {
			t.Errorf("%s: body changed on the way", name)
		}
		if want := "daraja.cb." + string(kind) + "." + shortcode + "." + tok.ID; m.Subject != want {
			t.Errorf("%s: subject %s, want %s", name, m.Subject, want)
		}
		if m.Header.Get("Nats-Msg-Id") != string(kind)+":"+cb.TransactionID {
			t.Errorf("%s: Nats-Msg-Id %q", name, m.Header.Get("Nats-Msg-Id"))
		}
	}
	// The bodies hold what the check below is for: if these went missing
	// from testdata, the check would prove nothing.
	for _, must := range []string{
		"254700000201", // reversal CreditPartyPublicName
		"254700000301", // status CreditPartyName
		"0722000001",   // B2C ReceiverPartyPublicName, 07… form
		"700000101",    // 2022+ STK CheckoutRequestID suffix
		"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", // C2B v1 MSISDN hash
		"TESTTOKENb2bQueueTimeout0000000001",                               // B2B ReferenceData QueueTimeoutURL token
	} {
		if _, ok := secrets[strings.ToLower(must)]; !ok {
			t.Errorf("the body scan did not find %s…: the log check would miss it", must[:6])
		}
	}
	if len(secrets) < 25 {
		t.Fatalf("found only %d secrets in the bodies: the log check below would prove little", len(secrets))
	}
	for _, e := range h.logs.All() {
		line, _ := json.Marshal(e.ContextMap())
		text := strings.ToLower(e.Message + " " + string(line))
		for s, file := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("log holds %s… from %s: %s", s[:6], file, text)
			}
		}
	}
}

var (
	digitRun = regexp.MustCompile(`[0-9]+`)
	hexRun   = regexp.MustCompile(`[0-9a-fA-F]{64,}`)
	urlToken = regexp.MustCompile(`[?&]t=([^&"\\\s]+)`)
)

// bodySecrets finds, anywhere in body (every string, number and key, not
// only the fields the parser reads), what a log must never hold, lower
// case: every phone number (a run of digits shaped as a Kenyan mobile
// number, 2547…/2541… or 07…/01…, and its 9 national digits), the payer's
// number at the end of a 2022+ STK CheckoutRequestID (17 timestamp digits,
// then 9), every 64-hex run (a C2B v1 MSISDN hash), and every ?t= token of
// a URL the body echoes.
func bodySecrets(body []byte) []string {
	var out []string
	mobile := func(national string) bool {
		return len(national) == 9 && (national[0] == '7' || national[0] == '1')
	}
	for _, run := range digitRun.FindAllString(string(body), -1) {
		switch {
		case len(run) == 12 && strings.HasPrefix(run, "254") && mobile(run[3:]):
			out = append(out, run, run[3:])
		case len(run) == 10 && run[0] == '0' && mobile(run[1:]):
			out = append(out, run, run[1:])
		case len(run) == 9 && mobile(run):
			out = append(out, run)
		case len(run) == 17+9 && mobile(run[17:]):
			out = append(out, run[17:])
		}
	}
	for _, h := range hexRun.FindAllString(string(body), -1) {
		out = append(out, strings.ToLower(h))
	}
	for _, m := range urlToken.FindAllStringSubmatch(string(body), -1) {
		out = append(out, strings.ToLower(m[1]))
	}
	return out
}
