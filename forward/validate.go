package forward

import (
	"context"
	"io"
	"slices"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/publish"
)

// Answers when the app does not give one in time.
var (
	fallbackAccept = []byte(`{"ResultCode":"0","ResultDesc":"Accepted"}`)
	fallbackReject = []byte(`{"ResultCode":"C2B00016","ResultDesc":"Rejected"}`)
)

// validationDest is the destination answering C2B validation for a
// shortcode: the first with a validation_url taking it.
func (f *Forwarder) validationDest(shortcode string) *dest {
	for _, d := range f.dests {
		if d.cfg.ValidationURL != "" && (len(d.cfg.Shortcodes) == 0 || slices.Contains(d.cfg.Shortcodes, shortcode)) {
			return d
		}
	}
	return nil
}

// Validate answers a C2B validation request (msg as the proxy builds it
// for <prefix>.validate.<shortcode>) through the app's validation_url,
// within validation_timeout, with no retry. ok is false when no
// destination answers validation for the shortcode: the caller asks its
// NATS validators then. The app's ResultCode (and ResultDesc,
// ThirdPartyTransID) pass through; an error, a timeout, an answer that is
// not a Daraja one, or an open circuit give the shortcode's fallback at
// once. by is "app" or "fallback". It is proxy.Validator.
func (f *Forwarder) Validate(ctx context.Context, msg *nats.Msg) (answer []byte, decision, by string, ok bool) {
	sc := msg.Header.Get(publish.HeaderShortcode)
	d := f.validationDest(sc)
	if d == nil {
		return nil, "", "", false
	}
	log := f.log.With(zap.String("destination", d.cfg.Name), zap.String("shortcode", sc))
	fallback := func(why string) ([]byte, string, string, bool) {
		f.m.validations.WithLabelValues(d.cfg.Name, "fallback").Inc()
		log.Warn("forward: validation answered by the fallback", zap.String("reason", why))
		if f.o.Fallback != nil && f.o.Fallback(sc) == "reject" {
			return fallbackReject, "rejected", "fallback", true
		}
		return fallbackAccept, "accepted", "fallback", true
	}
	if d.circuit.isOpen() {
		return fallback("circuit open")
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.ValidationTimeout)
	defer cancel()
	cb := &callback{header: msg.Header, body: msg.Data}
	req, err := d.request(ctx, d.cfg.ValidationURL, cb)
	if err != nil {
		return fallback(err.Error())
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return fallback(errorText(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4097))
	if err != nil || len(body) > 4096 {
		return fallback("answer unreadable or too long")
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fallback("HTTP " + resp.Status)
	}
	ans, accepted, good := daraja.ValidationAnswer(body)
	if !good {
		return fallback("answer is not a Daraja validation answer")
	}
	f.m.validations.WithLabelValues(d.cfg.Name, "app").Inc()
	decision = "rejected"
	if accepted {
		decision = "accepted"
	}
	return ans, decision, "app", true
}
