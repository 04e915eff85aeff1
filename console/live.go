package console

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/publish"
)

// Event is what the live view shows of one message: never a body, never a
// full phone number, never a token.
type Event struct {
	Seq           uint64 `json:"seq,omitempty"` // stream sequence (callbacks, missing)
	Type          string `json:"type"`          // callback | missing | rejected
	At            string `json:"at"`
	Kind          string `json:"kind,omitempty"`
	Shortcode     string `json:"shortcode,omitempty"`
	TransactionID string `json:"transaction_id,omitempty"`
	ResultCode    string `json:"result_code,omitempty"`
	Amount        string `json:"amount,omitempty"`
	MSISDN        string `json:"msisdn,omitempty"`
	Reference     string `json:"reference,omitempty"`
	TokenID       string `json:"token_id,omitempty"`
	Source        string `json:"source,omitempty"`
	Reason        string `json:"reason,omitempty"`
	Path          string `json:"path,omitempty"`
	Edge          string `json:"edge,omitempty"`
}

// describe turns a message on the console's subjects into an Event,
// masked.
func (c *Console) describe(subject string, h nats.Header, data []byte) Event {
	prefix := c.o.Prefix
	var e Event
	switch {
	case strings.HasPrefix(subject, prefix+".cb."):
		e.Type = "callback"
		e.Kind, e.Shortcode = h.Get(publish.HeaderKind), h.Get(publish.HeaderShortcode)
		e.TransactionID = daraja.MaskTransactionID(daraja.Kind(e.Kind), h.Get(publish.HeaderTransactionID))
		e.ResultCode, e.Reference, e.TokenID = h.Get(publish.HeaderResultCode), h.Get(publish.HeaderReference), h.Get(publish.HeaderTokenID)
		e.At, e.Source, e.Edge = h.Get(publish.HeaderReceivedAt), h.Get(publish.HeaderSourceIP), h.Get(publish.HeaderEdge)
		if cb, err := daraja.Parse(daraja.Kind(e.Kind), data); err == nil {
			e.Amount, e.MSISDN = cb.Amount, daraja.MaskMSISDN(cb.MSISDN)
			if cb.MSISDN == "" && cb.MSISDNHash != "" {
				e.MSISDN = daraja.MaskMSISDN(cb.MSISDNHash)
			}
		}
	case strings.HasPrefix(subject, prefix+".missing."):
		e.Type = "missing"
		var ev struct {
			TokenID   string   `json:"token_id"`
			Kinds     []string `json:"kinds"`
			Shortcode string   `json:"shortcode"`
			Reference string   `json:"reference"`
			ExpiresAt string   `json:"expires_at"`
		}
		_ = json.Unmarshal(data, &ev)
		e.TokenID, e.Kind, e.Shortcode, e.Reference, e.At = ev.TokenID, strings.Join(ev.Kinds, ","), ev.Shortcode, ev.Reference, ev.ExpiresAt
	case strings.HasPrefix(subject, prefix+".rejected."):
		e.Type = "rejected"
		var ev struct {
			Reason   string `json:"reason"`
			SourceIP string `json:"source_ip"`
			Path     string `json:"path"`
			TokenID  string `json:"token_id"`
			At       string `json:"at"`
		}
		_ = json.Unmarshal(data, &ev)
		e.Reason, e.Source, e.Path, e.TokenID, e.At = ev.Reason, ev.SourceIP, c.maskQuery(ev.Path), ev.TokenID, ev.At
		if e.Reason == "" {
			e.Reason = strings.TrimPrefix(subject, prefix+".rejected.")
		}
		if k, ok := daraja.KindForPath(strings.SplitN(ev.Path, "?", 2)[0]); ok {
			e.Kind = string(k) // so a kind filter keeps its rejections
		}
	default:
		e.Type = "message"
	}
	if e.At == "" {
		e.At = time.Now().UTC().Format(time.RFC3339Nano)
	}
	return e
}

// filter is the live view's filter, from the URL.
type filter struct {
	Kind, Shortcode, Reference, Result, Type string
}

func filterOf(r *http.Request) filter {
	q := r.URL.Query()
	return filter{Kind: q.Get("kind"), Shortcode: q.Get("shortcode"), Reference: q.Get("reference"),
		Result: q.Get("result"), Type: q.Get("type")}
}

func (f filter) match(e Event) bool {
	return (f.Kind == "" || strings.Contains(","+e.Kind+",", ","+f.Kind+",")) &&
		(f.Shortcode == "" || e.Shortcode == f.Shortcode) &&
		(f.Reference == "" || strings.Contains(strings.ToLower(e.Reference), strings.ToLower(f.Reference))) &&
		(f.Result == "" || e.ResultCode == f.Result || e.Reason == f.Result) &&
		(f.Type == "" || e.Type == f.Type)
}

type liveData struct {
	Filter filter
	Kinds  []daraja.Kind
}

// State is the live view's periodic `state` event: this replica's
// readiness, NATS connection and spool.
type State struct {
	Type         string `json:"type"` // state
	At           string `json:"at"`
	Edge         string `json:"edge,omitempty"`
	Ready        bool   `json:"ready"`
	NotReady     string `json:"not_ready,omitempty"`
	NATS         string `json:"nats"`
	SpoolRecords int64  `json:"spool_records"`
	SpoolBytes   int64  `json:"spool_bytes"`
	SpoolKnown   bool   `json:"spool_known"`
	SignedOut    bool   `json:"signed_out,omitempty"`
}

// state is this replica's state, read at most every half state interval
// whatever the number of open live views (readiness writes a probe file
// in the spool directory).
func (c *Console) state(ctx context.Context) State {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	if !c.stateAt.IsZero() && c.o.now().Sub(c.stateAt) < c.o.stateEvery/2 {
		return c.lastState
	}
	c.lastState, c.stateAt = c.readState(ctx), c.o.now()
	return c.lastState
}

func (c *Console) readState(ctx context.Context) State {
	st := State{Type: "state", At: c.o.now().UTC().Format(time.RFC3339), Edge: c.o.Edge, Ready: true,
		NATS: c.o.NATS.Status().String()}
	if c.o.Ready != nil {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if err := c.o.Ready(ctx); err != nil {
			st.Ready, st.NotReady = false, err.Error()
		}
	}
	if c.o.Spool != nil {
		st.SpoolBytes, st.SpoolRecords = c.o.Spool()
		st.SpoolKnown = true
	}
	return st
}

func (c *Console) live(w http.ResponseWriter, r *http.Request) {
	c.render(w, r, http.StatusOK, "live.html", page{Title: "Live", Nav: "live", Data: liveData{Filter: filterOf(r), Kinds: daraja.Kinds}})
}

// backlog is how far back a live view starts, so a refresh shows what
// just landed.
const backlog = 15 * time.Minute

// events streams Events as server-sent events: callbacks and missing
// events from an ordered consumer on the stream (so every replica's
// console shows the whole stream), rejections from a core subscription.
// A state event every few seconds (readiness, NATS, spool) keeps proxies
// from closing it; the stream ends once the session does.
func (c *Console) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	// The admin server's WriteTimeout would cut the stream.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	f := filterOf(r)
	ctx := r.Context()
	ch := make(chan Event, 256)
	send := func(e Event) {
		if !f.match(e) {
			return
		}
		select {
		case ch <- e:
		default: // a slow browser loses events rather than holding NATS
		}
	}
	p := c.o.Prefix
	sub, err := c.o.NATS.Subscribe(p+".rejected.>", func(m *nats.Msg) { send(c.describe(m.Subject, m.Header, m.Data)) })
	if err != nil {
		http.Error(w, "NATS: subscribe failed", http.StatusServiceUnavailable)
		return
	}
	defer func() { _ = sub.Unsubscribe() }()
	// The server knows the interest before the browser hears "live": a
	// rejection from then on reaches it.
	_ = c.o.NATS.FlushTimeout(2 * time.Second)
	start := c.o.now().Add(-backlog)
	cons, err := c.o.JS.OrderedConsumer(ctx, c.o.Stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{p + ".cb.>", p + ".missing.>"},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy, OptStartTime: &start,
	})
	if err != nil {
		c.log.Warn("console: live view: ordered consumer", zap.Error(err))
		http.Error(w, "stream unavailable", http.StatusServiceUnavailable)
		return
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		e := c.describe(m.Subject(), m.Headers(), m.Data())
		if md, err := m.Metadata(); err == nil {
			e.Seq = md.Sequence.Stream
		}
		send(e)
	})
	if err != nil {
		http.Error(w, "stream unavailable", http.StatusServiceUnavailable)
		return
	}
	defer cc.Stop()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fmt.Fprint(w, ": live\n\n")
	writeState := func() bool {
		st := c.state(ctx)
		if s, _ := c.session(r); s == nil { // signed out or expired meanwhile
			st.SignedOut = true
		}
		b, _ := json.Marshal(st)
		fmt.Fprintf(w, "event: state\ndata: %s\n\n", b)
		return !st.SignedOut
	}
	writeState()
	fl.Flush()
	// The state events double as the keep-alive that stops proxies from
	// closing an idle stream.
	tick := time.NewTicker(c.o.stateEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if !writeState() {
				fl.Flush()
				return
			}
		case e := <-ch:
			b, _ := json.Marshal(e)
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", e.Type, b)
		}
		fl.Flush()
	}
}

// phoneRe finds Kenyan phone numbers (2547…, 2541…, 07…, 01…) in text.
var phoneRe = regexp.MustCompile(`(?:\+?254|\b0)[17]\d{8}\b`)

// tokenPattern finds the value of query parameter param (the configured
// tokens.query_param) in text: after ? or &, also JSON-escaped (\u0026).
func tokenPattern(param string) *regexp.Regexp {
	return regexp.MustCompile(`((?:[?&]|\\u0026)` + regexp.QuoteMeta(param) + `=)[^&"'\s\\]+`)
}

// maskText masks phone numbers and URL tokens in s.
func (c *Console) maskText(s string) string {
	s = phoneRe.ReplaceAllStringFunc(s, func(m string) string {
		return daraja.MaskMSISDN(strings.TrimPrefix(m, "+"))
	})
	return c.maskQuery(s)
}

func (c *Console) maskQuery(p string) string { return c.tokenRe.ReplaceAllString(p, "${1}…") }

type header struct{ Name, Value string }

type callbackData struct {
	Event   Event
	Subject string
	Headers []header
	Body    string
	// Deliveries: this callback's delivery records, one per destination
	// that took it (forwarding on).
	Deliveries    []delivery
	DeliveriesErr string
}

// callback shows one stored message: its headers and its body, with phone
// numbers, the STK transaction id's number and URL tokens masked.
func (c *Console) callback(w http.ResponseWriter, r *http.Request) {
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil || seq == 0 {
		c.render(w, r, http.StatusNotFound, "error.html", page{Title: "Not found", Error: "No such callback."})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	st, err := c.o.JS.Stream(ctx, c.o.Stream)
	if err == nil {
		var m *jetstream.RawStreamMsg
		if m, err = st.GetMsg(ctx, seq); err == nil {
			if !strings.HasPrefix(m.Subject, c.o.Prefix+".") {
				err = jetstream.ErrMsgNotFound
			} else {
				d := c.describeRaw(seq, m)
				d.Deliveries, d.DeliveriesErr = c.deliveriesOf(ctx, seq, m.Header.Get(publish.HeaderTransactionID))
				c.render(w, r, http.StatusOK, "callback.html", page{Title: "Callback " + strconv.FormatUint(seq, 10), Nav: "live",
					Data: d})
				return
			}
		}
	}
	status, msg := http.StatusServiceUnavailable, "The stream could not be read."
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		status, msg = http.StatusNotFound, "No such callback (it may have aged out of the stream)."
	}
	c.render(w, r, status, "error.html", page{Title: "Not found", Error: msg})
}

func (c *Console) describeRaw(seq uint64, m *jetstream.RawStreamMsg) callbackData {
	e := c.describe(m.Subject, m.Header, m.Data)
	e.Seq = seq
	kind := daraja.Kind(m.Header.Get(publish.HeaderKind))
	tx := m.Header.Get(publish.HeaderTransactionID)
	masked := daraja.MaskTransactionID(kind, tx)
	mask := func(s string) string {
		if tx != "" && masked != tx {
			s = strings.ReplaceAll(s, tx, masked)
		}
		return c.maskText(s)
	}
	d := callbackData{Event: e, Subject: mask(m.Subject)}
	names := make([]string, 0, len(m.Header))
	for k := range m.Header {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		for _, v := range m.Header[k] {
			d.Headers = append(d.Headers, header{k, mask(v)})
		}
	}
	// Indented as stored: json.Indent keeps every byte of every value
	// (amounts keep their decimals, nothing is re-escaped).
	body := m.Data
	var b bytes.Buffer
	if json.Indent(&b, body, "", "  ") == nil {
		body = b.Bytes()
	}
	d.Body = mask(string(body))
	return d
}
