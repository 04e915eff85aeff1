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
// 200 and stored once, byte for byte, and no phone number it holds reaches
// the log.
func TestEveryCallbackBody(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "testdata", "callbacks", "*.json"))
	if err != nil || len(files) < 13 {
		t.Fatalf("callback bodies: %d files, %v", len(files), err)
	}
	h := start(t, func(c *config.Config) { c.Limits.MaxBodyBytes = 65536 })
	var phones []string
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
		phones = append(phones, phoneNumbers(kind, cb, body)...)
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
	if len(phones) < 10 {
		t.Fatalf("found only %d phone numbers in the bodies: the log check below would prove little", len(phones))
	}
	for _, e := range h.logs.All() {
		line, _ := json.Marshal(e.ContextMap())
		text := e.Message + " " + string(line)
		for _, p := range phones {
			if strings.Contains(text, p) {
				t.Errorf("log holds phone number %s…: %s", p[:4], text)
			}
		}
	}
}

var nineDigits = regexp.MustCompile(`(?:254|0)?([17][0-9]{8})`)

// phoneNumbers lists the full phone numbers a body carries, as they appear
// in it and as their national 9 digits: the extracted MSISDN, the STK
// PhoneNumber item, B2C receiver names, and the payer's number at the end
// of a 2022+ STK CheckoutRequestID.
func phoneNumbers(kind daraja.Kind, cb daraja.Callback, body []byte) []string {
	var out []string
	add := func(s string) {
		for _, m := range nineDigits.FindAllStringSubmatch(s, -1) {
			out = append(out, m[0], m[1])
		}
	}
	if cb.MSISDN != "" && !strings.Contains(cb.MSISDN, "*") {
		add(cb.MSISDN)
	}
	var any struct {
		Body struct {
			StkCallback struct {
				CallbackMetadata struct {
					Item []struct {
						Name  string
						Value json.RawMessage
					}
				}
			} `json:"stkCallback"`
		}
	}
	if json.Unmarshal(body, &any) == nil {
		for _, it := range any.Body.StkCallback.CallbackMetadata.Item {
			if it.Name == "PhoneNumber" {
				add(strings.Trim(string(it.Value), `"`))
			}
		}
	}
	if kind == daraja.STKCallback && len(cb.TransactionID) == len("ws_CO_")+26 {
		out = append(out, cb.TransactionID[len(cb.TransactionID)-9:])
	}
	return out
}
