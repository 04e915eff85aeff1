// Command consumer is what a business copies to act on vetted Daraja
// callbacks: a durable JetStream consumer on the DARAJA stream that decodes
// each kind into a typed value, does the work and only then acks, plus a
// C2B validator that answers <prefix>.validate.<shortcode> requests.
//
//	go run ./examples/consumer --nats nats://127.0.0.1:4222 --validate 600638
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Options of the consumer.
type Options struct {
	NATSURL   string
	Stream    string
	Prefix    string
	Durable   string
	Shortcode string // validate C2B payments for this shortcode ("" = no validator)
}

func main() {
	var o Options
	flag.StringVar(&o.NATSURL, "nats", "nats://127.0.0.1:4222", "NATS URL")
	flag.StringVar(&o.Stream, "stream", "DARAJA", "stream name")
	flag.StringVar(&o.Prefix, "prefix", "daraja", "subject prefix")
	flag.StringVar(&o.Durable, "durable", "orders", "durable consumer name")
	flag.StringVar(&o.Shortcode, "validate", "", "answer C2B validation for this shortcode")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// Flex is a JSON value Daraja sends as a number or a string.
type Flex string

// UnmarshalJSON keeps the text of a string or a number.
func (f *Flex) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		err := json.Unmarshal(b, &s)
		*f = Flex(s)
		return err
	}
	if string(b) == "null" {
		*f = ""
		return nil
	}
	*f = Flex(b)
	return nil
}

// C2BPayment is a C2B validation or confirmation.
type C2BPayment struct {
	TransactionType   string
	TransID           string
	TransTime         string
	TransAmount       Flex
	BusinessShortCode Flex
	BillRefNumber     string
	MSISDN            Flex
	FirstName         string
}

// STKResult is an M-Pesa Express callback.
type STKResult struct {
	Body struct {
		StkCallback struct {
			MerchantRequestID string
			CheckoutRequestID string
			ResultCode        Flex
			ResultDesc        string
			CallbackMetadata  struct {
				Item []struct {
					Name  string
					Value Flex
				}
			}
		} `json:"stkCallback"`
	}
}

// Meta returns a CallbackMetadata item ("Amount", "MpesaReceiptNumber", …).
func (s *STKResult) Meta(name string) string {
	for _, it := range s.Body.StkCallback.CallbackMetadata.Item {
		if it.Name == name {
			return string(it.Value)
		}
	}
	return ""
}

// Result is a B2C, B2B, reversal, transaction status or account balance
// result, or a queue timeout.
type Result struct {
	Result struct {
		ResultType               Flex
		ResultCode               Flex
		ResultDesc               string
		OriginatorConversationID string
		ConversationID           string
		TransactionID            string
		ResultParameters         struct {
			ResultParameter json.RawMessage // a list, or one object
		}
	}
}

// Param returns a ResultParameters value by key.
func (r *Result) Param(key string) string {
	var list []struct {
		Key   string
		Value Flex
	}
	raw := bytes.TrimSpace(r.Result.ResultParameters.ResultParameter)
	if len(raw) > 0 && raw[0] == '{' {
		raw = append(append([]byte{'['}, raw...), ']')
	}
	_ = json.Unmarshal(raw, &list)
	for _, p := range list {
		if p.Key == key {
			return string(p.Value)
		}
	}
	return ""
}

// errPoison marks a message that can never be processed.
var errPoison = errors.New("undecodable callback")

// handle does the business's work for one callback. Return an error to have
// it redelivered; errPoison to drop it.
func handle(out io.Writer, kind, shortcode string, h nats.Header, data []byte) error {
	switch {
	case kind == "c2b.confirmation" || kind == "c2b.validation":
		var p C2BPayment
		if err := json.Unmarshal(data, &p); err != nil {
			return fmt.Errorf("%w: %v", errPoison, err)
		}
		// Credit account p.BillRefNumber with p.TransAmount (idempotently,
		// keyed by p.TransID: redeliveries happen).
		fmt.Fprintf(out, "%s %s %s amount=%s account=%s decision=%s\n", kind, shortcode, p.TransID, p.TransAmount,
			p.BillRefNumber, h.Get("Daraja-Decision"))
	case kind == "stk.callback":
		var s STKResult
		if err := json.Unmarshal(data, &s); err != nil {
			return fmt.Errorf("%w: %v", errPoison, err)
		}
		cb := s.Body.StkCallback
		// Mark order h.Get("Daraja-Reference") paid when ResultCode is 0.
		fmt.Fprintf(out, "%s %s %s result=%s amount=%s receipt=%s ref=%s\n", kind, shortcode, cb.CheckoutRequestID,
			cb.ResultCode, s.Meta("Amount"), s.Meta("MpesaReceiptNumber"), h.Get("Daraja-Reference"))
	default: // b2c/b2b/reversal/status/balance results and timeouts
		var r Result
		if err := json.Unmarshal(data, &r); err != nil {
			return fmt.Errorf("%w: %v", errPoison, err)
		}
		amount := r.Param("TransactionAmount")
		if amount == "" {
			amount = r.Param("Amount")
		}
		fmt.Fprintf(out, "%s %s %s result=%s amount=%s ref=%s\n", kind, shortcode, r.Result.ConversationID,
			r.Result.ResultCode, amount, h.Get("Daraja-Reference"))
	}
	return nil
}

// validate decides a C2B validation: here, a bill reference is required.
func validate(data []byte) []byte {
	var p C2BPayment
	if err := json.Unmarshal(data, &p); err != nil || strings.TrimSpace(p.BillRefNumber) == "" || !strings.HasPrefix(p.BillRefNumber, "ACC-") {
		return []byte(`{"ResultCode":"C2B00012","ResultDesc":"Invalid Account Number"}`)
	}
	return []byte(`{"ResultCode":"0","ResultDesc":"Accepted"}`)
}

func run(ctx context.Context, o Options, out io.Writer) error {
	nc, err := nats.Connect(o.NATSURL, nats.Name("daraja consumer "+o.Durable), nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Printf("lost NATS (%v); reconnecting…", err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { log.Print("NATS is back") }))
	if err != nil {
		return err
	}
	defer nc.Drain()
	if o.Shortcode != "" {
		// A queue group: run several validators, each request goes to one.
		if _, err := nc.QueueSubscribe(o.Prefix+".validate."+o.Shortcode, "validators", func(m *nats.Msg) {
			_ = m.Respond(validate(m.Data))
		}); err != nil {
			return err
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, o.Stream, jetstream.ConsumerConfig{
		Durable:        o.Durable,
		FilterSubjects: []string{o.Prefix + ".cb.>", o.Prefix + ".missing.>"},
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        30 * time.Second,
		MaxDeliver:     20,
	})
	if err != nil {
		return err
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		h := m.Headers()
		kind, shortcode := h.Get("Daraja-Kind"), h.Get("Daraja-Shortcode")
		if strings.HasPrefix(m.Subject(), o.Prefix+".missing.") {
			// No callback came for this token: ask Daraja (Transaction
			// Status or STK Query) for the outcome.
			var ev struct {
				TokenID   string `json:"token_id"`
				Reference string `json:"reference"`
			}
			_ = json.Unmarshal(m.Data(), &ev)
			fmt.Fprintf(out, "missing %s %s token=%s ref=%s\n", kind, shortcode, ev.TokenID, ev.Reference)
			_ = m.Ack()
			return
		}
		err := handle(out, kind, shortcode, h, m.Data())
		switch {
		case err == nil:
			_ = m.DoubleAck(ctx) // ack only after the work is done, and know it landed
		case errors.Is(err, errPoison):
			log.Printf("dropping %s: %v", m.Subject(), err)
			_ = m.Term()
		default:
			_ = m.NakWithDelay(5 * time.Second)
		}
	})
	if err != nil {
		return err
	}
	defer cc.Stop()
	<-ctx.Done()
	return nil
}
