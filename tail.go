package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/publish"
)

func cmdTail(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tail", stderr)
	subject := fs.String("subject", "", "subject to follow (default <prefix>.cb.>, .missing.> and .rejected.>)")
	asJSON := fs.Bool("json", false, "one JSON object per line")
	path := configFlag(fs, "configuration file (NATS address and prefix)")
	natsURL := fs.String("nats", "", "NATS URL (default from the config)")
	export := fs.Bool("export", false, "write every stream message there is now as one JSON line {subject,headers,body}, from the stream's start, and exit (reconcile --callbacks reads it)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, _, err := clientConfig(*path, stderr)
	if err != nil {
		return err
	}
	url := *natsURL
	if url == "" {
		url = cfg.NATS.URL
	}
	if url == "" {
		url = "nats://" + loopbackAddr(cfg.NATS.Embedded.Listen)
	}
	opts := []nats.Option{nats.Name("daraja-edge tail"), nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				fmt.Fprintf(stderr, "tail: lost NATS (%v); reconnecting…\n", err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { fmt.Fprintln(stderr, "tail: NATS is back") }),
	}
	if cfg.NATS.CredentialsFile != "" && *natsURL == "" {
		opts = append(opts, nats.UserCredentials(cfg.NATS.CredentialsFile))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return fmt.Errorf("tail: connect to NATS: %w", err)
	}
	defer nc.Close()

	p := cfg.NATS.SubjectPrefix
	pr := &tailPrinter{w: stdout, json: *asJSON, color: isTerminal(stdout) && !*asJSON, prefix: p}
	// Callbacks and missing events are read from the stream, so tail shows
	// what landed (once), not every publish attempt; rejections are core
	// NATS events.
	var streamSubjects, coreSubjects []string
	if *subject == "" {
		streamSubjects, coreSubjects = []string{p + ".cb.>", p + ".missing.>"}, []string{p + ".rejected.>"}
	} else if strings.HasPrefix(*subject, p+".cb.") || strings.HasPrefix(*subject, p+".missing.") {
		streamSubjects = []string{*subject}
	} else {
		coreSubjects = []string{*subject}
	}
	if *export {
		js, err := jetstream.New(nc)
		if err != nil {
			return fmt.Errorf("tail: %w", err)
		}
		return exportStream(ctx, js, cfg.NATS.Stream.Name, streamSubjects, stdout)
	}
	printFn, deliver := pr.print, jetstream.DeliverNewPolicy
	for _, s := range coreSubjects {
		if _, err := nc.Subscribe(s, printFn); err != nil {
			return fmt.Errorf("tail: subscribe %s: %w", s, err)
		}
	}
	if len(streamSubjects) > 0 {
		js, err := jetstream.New(nc)
		if err != nil {
			return fmt.Errorf("tail: %w", err)
		}
		cons, err := js.OrderedConsumer(ctx, cfg.NATS.Stream.Name, jetstream.OrderedConsumerConfig{
			FilterSubjects: streamSubjects, DeliverPolicy: deliver,
		})
		if err != nil {
			return fmt.Errorf("tail: stream %s: %w", cfg.NATS.Stream.Name, err)
		}
		cc, err := cons.Consume(func(m jetstream.Msg) {
			printFn(&nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()})
		})
		if err != nil {
			return fmt.Errorf("tail: %w", err)
		}
		defer cc.Stop()
	}
	if err := nc.Flush(); err != nil {
		return fmt.Errorf("tail: %w", err)
	}
	<-ctx.Done()
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// tailLine is what tail shows of one message: never a body, never a full
// phone number.
type tailLine struct {
	Type          string `json:"type"` // callback | missing | rejected
	Subject       string `json:"subject"`
	At            string `json:"at,omitempty"`
	Kind          string `json:"kind,omitempty"`
	Shortcode     string `json:"shortcode,omitempty"`
	TransactionID string `json:"transaction_id,omitempty"`
	ResultCode    string `json:"result_code,omitempty"`
	Amount        string `json:"amount,omitempty"`
	MSISDN        string `json:"msisdn,omitempty"`
	Reference     string `json:"reference,omitempty"`
	TokenID       string `json:"token_id,omitempty"`
	Decision      string `json:"decision,omitempty"`
	Reason        string `json:"reason,omitempty"`
	SourceIP      string `json:"source_ip,omitempty"`
	Path          string `json:"path,omitempty"`
}

type tailPrinter struct {
	mu     sync.Mutex
	w      io.Writer
	json   bool
	color  bool
	prefix string
}

func describeMsg(prefix string, m *nats.Msg) tailLine {
	l := tailLine{Subject: m.Subject}
	switch {
	case strings.HasPrefix(m.Subject, prefix+".cb."):
		l.Type = "callback"
		h := m.Header
		l.Kind, l.Shortcode = h.Get(publish.HeaderKind), h.Get(publish.HeaderShortcode)
		// An STK CheckoutRequestID ends with the payer's number.
		l.TransactionID = daraja.MaskTransactionID(daraja.Kind(l.Kind), h.Get(publish.HeaderTransactionID))
		l.ResultCode, l.Reference, l.TokenID = h.Get(publish.HeaderResultCode), h.Get(publish.HeaderReference), h.Get(publish.HeaderTokenID)
		l.At, l.Decision, l.SourceIP = h.Get(publish.HeaderReceivedAt), h.Get(publish.HeaderDecision), h.Get(publish.HeaderSourceIP)
		if cb, err := daraja.Parse(daraja.Kind(l.Kind), m.Data); err == nil {
			l.Amount, l.MSISDN = cb.Amount, daraja.MaskMSISDN(cb.MSISDN)
			if cb.MSISDN == "" && cb.MSISDNHash != "" {
				l.MSISDN = daraja.MaskMSISDN(cb.MSISDNHash)
			}
		}
	case strings.HasPrefix(m.Subject, prefix+".missing."):
		l.Type = "missing"
		var ev struct {
			TokenID   string   `json:"token_id"`
			Kinds     []string `json:"kinds"`
			Shortcode string   `json:"shortcode"`
			Reference string   `json:"reference"`
			ExpiresAt string   `json:"expires_at"`
		}
		_ = json.Unmarshal(m.Data, &ev)
		l.TokenID, l.Kind, l.Shortcode, l.Reference, l.At = ev.TokenID, strings.Join(ev.Kinds, ","), ev.Shortcode, ev.Reference, ev.ExpiresAt
	case strings.HasPrefix(m.Subject, prefix+".rejected."):
		l.Type = "rejected"
		var ev struct {
			Reason   string `json:"reason"`
			SourceIP string `json:"source_ip"`
			Path     string `json:"path"`
			TokenID  string `json:"token_id"`
			At       string `json:"at"`
		}
		_ = json.Unmarshal(m.Data, &ev)
		l.Reason, l.SourceIP, l.Path, l.TokenID, l.At = ev.Reason, ev.SourceIP, ev.Path, ev.TokenID, ev.At
	default:
		l.Type = "message"
	}
	if l.At == "" {
		l.At = time.Now().UTC().Format(time.RFC3339Nano)
	}
	return l
}

func (p *tailPrinter) print(m *nats.Msg) {
	l := describeMsg(p.prefix, m)
	var out string
	if p.json {
		b, _ := json.Marshal(l)
		out = string(b)
	} else {
		fields := []string{l.At, l.Type}
		add := func(k, v string) {
			if v != "" {
				fields = append(fields, k+"="+v)
			}
		}
		add("kind", l.Kind)
		add("shortcode", l.Shortcode)
		add("tx", l.TransactionID)
		add("result", l.ResultCode)
		add("amount", l.Amount)
		add("msisdn", l.MSISDN)
		add("ref", l.Reference)
		add("decision", l.Decision)
		add("reason", l.Reason)
		add("source", l.SourceIP)
		add("path", l.Path)
		add("token", l.TokenID)
		out = strings.Join(fields, " ")
		if p.color {
			code := "32" // green: callback
			switch l.Type {
			case "rejected":
				code = "31"
			case "missing":
				code = "33"
			}
			out = "\x1b[" + code + "m" + out + "\x1b[0m"
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintln(p.w, out)
}
