// Package publish gets vetted callbacks durably onto NATS exactly once: it
// builds the message with the contract's headers, publishes it on its
// per-token subject with the condition that makes the one durable write also
// the token's single use, tells a duplicate from a replay, spools what the
// stream cannot take and replays it, publishes missing-callback events, and
// asks C2B validators over request-reply.
package publish

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Header names on every vetted callback message.
const (
	HeaderMsgID         = jetstream.MsgIDHeader // Nats-Msg-Id: <kind>:<transaction id>
	HeaderKind          = "Daraja-Kind"
	HeaderShortcode     = "Daraja-Shortcode"
	HeaderTransactionID = "Daraja-Transaction-Id"
	HeaderResultCode    = "Daraja-Result-Code"
	HeaderReference     = "Daraja-Reference"
	HeaderTokenID       = "Daraja-Token-Id"
	HeaderSourceIP      = "Daraja-Source-Ip"
	HeaderReceivedAt    = "Daraja-Received-At"
	HeaderEdge          = "Daraja-Edge"
	HeaderDecision      = "Daraja-Decision"    // c2b.validation records: accepted | rejected
	HeaderDecisionBy    = "Daraja-Decision-By" // validator | timeout | invalid-reply | app | fallback
	// HeaderDecisionAnswer is the answer Daraja was given for a
	// c2b.validation, as sent: a repeated validation (same Nats-Msg-Id) is
	// given the same answer (Store reads it back).
	HeaderDecisionAnswer = "Daraja-Decision-Answer"
	HeaderReceipt        = "Daraja-Receipt" // M-Pesa receipt, when the body has one
	// HeaderExpectFirst makes a publish the first message on its subject:
	// the single use of a (token, kind).
	HeaderExpectFirst = jetstream.ExpectedLastSubjSeqHeader
)

// Callback is a vetted callback ready for NATS. Body travels byte for byte.
type Callback struct {
	Kind          string
	Shortcode     string
	TransactionID string
	Receipt       string
	ResultCode    string
	Reference     string
	TokenID       string
	SourceIP      string
	ReceivedAt    time.Time
	Edge          string
	Body          []byte
}

// MsgID is the de-duplication id: <kind>:<transaction id>.
func (c *Callback) MsgID() string { return c.Kind + ":" + c.TransactionID }

// Msg builds the NATS message for subject. The header values share one
// backing array (and the map is sized once): this runs for every callback.
func (c *Callback) Msg(subject string) *nats.Msg {
	var at [len(time.RFC3339Nano) + 8]byte
	vals := [...]struct{ k, v string }{
		{HeaderMsgID, c.MsgID()}, {HeaderKind, c.Kind}, {HeaderShortcode, c.Shortcode},
		{HeaderTransactionID, c.TransactionID}, {HeaderReceipt, c.Receipt}, {HeaderResultCode, c.ResultCode},
		{HeaderReference, c.Reference}, {HeaderTokenID, c.TokenID}, {HeaderSourceIP, c.SourceIP},
		{HeaderReceivedAt, string(c.ReceivedAt.UTC().AppendFormat(at[:0], time.RFC3339Nano))}, {HeaderEdge, c.Edge},
	}
	// Room for the headers a caller adds (decision, single-use condition).
	h := make(nats.Header, len(vals)+3)
	backing := make([]string, len(vals))
	for i, kv := range vals {
		if kv.v != "" {
			backing[i] = kv.v
			h[kv.k] = backing[i : i+1 : i+1]
		}
	}
	return &nats.Msg{Subject: subject, Header: h, Data: c.Body}
}

// Subjects names the subjects under a prefix.
type Subjects struct{ Prefix string }

// Callback is <prefix>.cb.<kind>.<shortcode>.<token id>: one subject per
// (token, kind), so the stream's per-subject state is the token's use.
func (s Subjects) Callback(kind, shortcode, tokenID string) string {
	return s.Prefix + ".cb." + kind + "." + shortcode + "." + tokenID
}

// Validate is <prefix>.validate.<shortcode>.
func (s Subjects) Validate(shortcode string) string { return s.Prefix + ".validate." + shortcode }

// Missing is <prefix>.missing.<kind>.<shortcode>.
func (s Subjects) Missing(kind, shortcode string) string {
	return s.Prefix + ".missing." + kind + "." + shortcode
}

// Rejected is <prefix>.rejected.<reason>.
func (s Subjects) Rejected(reason string) string { return s.Prefix + ".rejected." + reason }

// StreamSubjects are the subjects the stream holds.
func (s Subjects) StreamSubjects() []string {
	return []string{s.Prefix + ".cb.>", s.Prefix + ".missing.>", s.Prefix + ".recovered.>", s.Prefix + ".dlq.>"}
}

// StreamOptions configures the callback stream.
type StreamOptions struct {
	Name            string
	Subjects        []string
	Replicas        int
	DuplicateWindow time.Duration
	MaxAge          time.Duration
}

// EnsureStream creates the stream if missing, or brings an existing one's
// subjects, replicas, window and age in line with opts.
func EnsureStream(ctx context.Context, js jetstream.JetStream, o StreamOptions) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        o.Name,
		Description: "daraja-edge: vetted Daraja callbacks and missing-callback events",
		Subjects:    o.Subjects,
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Replicas:    o.Replicas,
		Duplicates:  o.DuplicateWindow,
		MaxAge:      o.MaxAge,
		Discard:     jetstream.DiscardOld,
	})
	if err != nil {
		return nil, fmt.Errorf("publish: stream %s: %w", o.Name, err)
	}
	return s, nil
}

// JetStream publishes to JetStream and waits for the stream's ack.
type JetStream struct {
	js      jetstream.JetStream
	stream  jetstream.Stream
	nc      *nats.Conn
	timeout time.Duration
	mark    *Watermark

	inFlight atomic.Uint64 // 10164 and 10158 answers: another message in flight (tests)
}

// Remember records every acknowledged sequence in w (embedded NATS).
func (p *JetStream) Remember(w *Watermark) { p.mark = w }

// New returns a publisher onto stream. timeout bounds the wait for each ack
// and each look-up.
func New(nc *nats.Conn, js jetstream.JetStream, stream jetstream.Stream, timeout time.Duration) *JetStream {
	return &JetStream{js: js, stream: stream, nc: nc, timeout: timeout}
}

// errCodeDuplicateInProcess is JetStream's "duplicate message id is in
// process" (10158; nats.go names no constant for it).
const errCodeDuplicateInProcess jetstream.ErrorCode = 10158

// ErrNotAcked means the stream did not acknowledge the message in time; it
// may or may not have been stored. Publishing again with the same Msg-Id is
// safe.
var ErrNotAcked = errors.New("publish: no JetStream ack")

// ErrNotStorable is a message the stream can never take (larger than the
// server's max_payload): spooling it would answer 200 for a callback that
// never reaches the stream, and stop every replay behind it.
var ErrNotStorable = errors.New("publish: the stream can never take this message")

// ErrUsedUnresolved is a single-use publish the stream refused because
// the subject already holds a message, which could then not be read to
// tell a duplicate from a replay. The (token, kind) is used: spooling the
// callback would answer 200 to what may be another callback.
var ErrUsedUnresolved = errors.New("publish: the subject holds a message that could not be read")

// MaxHeaderBytes bounds the headers of a callback message (about 1 KiB in
// practice, with a validation's decision answer): the body limit plus this
// must fit the server's max_payload.
const MaxHeaderBytes = 8 << 10

// Outcome is what became of a callback handed to the stream.
type Outcome int

const (
	// Stored: the stream holds it now, acknowledged (and, with sync always,
	// on disk).
	Stored Outcome = iota
	// Duplicate: the stream already held this same callback (same
	// Nats-Msg-Id); nothing new was stored.
	Duplicate
	// Replay: the (token, kind) already holds another callback; nothing
	// was stored.
	Replay
	// Spooled: the stream could not be reached; the callback is on local
	// disk, fsynced, and is replayed later.
	Spooled
)

func (o Outcome) String() string {
	switch o {
	case Stored:
		return "stored"
	case Duplicate:
		return "duplicate"
	case Replay:
		return "replay"
	case Spooled:
		return "spooled"
	}
	return "unknown"
}

// Store publishes msg and waits for the ack. first makes the publish
// conditional on its subject holding nothing yet
// (Nats-Expected-Last-Subject-Sequence: 0): the one write that stores the
// callback is also what uses up a single-use (token, kind). When the
// condition fails, the subject's last message decides: the same Nats-Msg-Id
// is a Duplicate, another is a Replay. While another message on the
// subject is still in flight on a replicated stream, the publish is asked
// again until that one settles (within the timeout). A message that
// already carries the condition header (a spooled one) keeps it.
func (p *JetStream) Store(ctx context.Context, msg *nats.Msg, first bool) (Outcome, error) {
	if first {
		if msg.Header == nil {
			msg.Header = nats.Header{}
		}
		msg.Header[HeaderExpectFirst] = []string{"0"}
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	for wait := time.Millisecond; ; wait = min(2*wait, 50*time.Millisecond) {
		ack, err := p.js.PublishMsg(ctx, msg)
		if err == nil {
			p.mark.Acked(ack.Sequence)
			if ack.Duplicate {
				p.decided(ctx, msg, ack.Sequence)
				return Duplicate, nil
			}
			return Stored, nil
		}
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) {
			if errors.Is(err, nats.ErrMaxPayload) {
				return 0, fmt.Errorf("%w: %s: %w", ErrNotStorable, msg.Subject, err)
			}
			return 0, fmt.Errorf("%w: %s: %w", ErrNotAcked, msg.Subject, err)
		}
		switch apiErr.ErrorCode {
		case jetstream.JSErrCodeStreamWrongLastSequence:
			return p.resolve(ctx, msg, apiErr)
		case jetstream.JSErrCodeStreamWrongLastSequenceConstant, errCodeDuplicateInProcess:
			// A replicated stream's leader answers 10164 (wrong last
			// sequence, no sequence given) while another message on this
			// subject is proposed and not yet committed, and 10158 while
			// a message with this Nats-Msg-Id is: there is nothing to
			// read yet, and that message's fate decides this one. Ask
			// again shortly: the answer becomes a duplicate ack or 10071
			// with the sequence (or a store, should the other one fail).
			p.inFlight.Add(1)
			select {
			case <-ctx.Done():
				return 0, fmt.Errorf("%w: %s: another message on the subject stayed in flight: %w", ErrNotAcked, msg.Subject, err)
			case <-time.After(wait):
			}
		default:
			return 0, fmt.Errorf("%w: %s: %w", ErrNotAcked, msg.Subject, err)
		}
	}
}

// decided gives msg, a c2b.validation the stream already held (a
// duplicate acked with the first one's sequence), that first one's
// decision headers: Daraja is given the answer recorded, not one the
// validator gave to the repeat. Should the first one not be readable, msg
// keeps its own.
func (p *JetStream) decided(ctx context.Context, msg *nats.Msg, seq uint64) {
	if msg.Header.Get(HeaderDecisionAnswer) == "" {
		return
	}
	first, err := p.stream.GetMsg(ctx, seq)
	if err != nil || first.Header.Get(HeaderMsgID) != msg.Header.Get(HeaderMsgID) || first.Header.Get(HeaderDecisionAnswer) == "" {
		return
	}
	for _, k := range []string{HeaderDecision, HeaderDecisionBy, HeaderDecisionAnswer} {
		msg.Header.Set(k, first.Header.Get(k))
	}
}

// resolve tells a duplicate from a replay once the stream said the subject
// already holds a message: the error names the subject's last sequence
// (fetched by sequence); should it not, the subject's last message is
// fetched. Both go through the stream's message API, not a direct get,
// which waits behind a sync-always write loop.
func (p *JetStream) resolve(ctx context.Context, msg *nats.Msg, cause *jetstream.APIError) (Outcome, error) {
	var last *jetstream.RawStreamMsg
	var err error
	if seq, ok := lastSequence(cause.Description); ok {
		last, err = p.stream.GetMsg(ctx, seq)
		if err == nil && last.Subject != msg.Subject {
			last, err = nil, errors.New("message at the reported sequence is on another subject")
		}
	}
	if last == nil {
		last, err = p.stream.GetLastMsgForSubject(ctx, msg.Subject)
	}
	if err != nil {
		return 0, fmt.Errorf("%w: %w: %s: %w", ErrNotAcked, ErrUsedUnresolved, msg.Subject, err)
	}
	if last.Header.Get(HeaderMsgID) == msg.Header.Get(HeaderMsgID) {
		return Duplicate, nil
	}
	return Replay, nil
}

// lastSequence reads N from "wrong last sequence: N".
func lastSequence(desc string) (uint64, bool) {
	i := strings.LastIndexByte(desc, ':')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSpace(desc[i+1:]), 10, 64)
	return n, err == nil && n > 0
}

// Last returns the last message on subject, or nil when it holds none.
func (p *JetStream) Last(ctx context.Context, subject string) (*jetstream.RawStreamMsg, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	m, err := p.stream.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("publish: read %s: %w", subject, err)
	}
	return m, nil
}

// ErrNoReply means no validator answered in time (or none is listening).
var ErrNoReply = errors.New("publish: no reply")

// Request sends msg as a core NATS request and returns the reply's data.
func (p *JetStream) Request(ctx context.Context, msg *nats.Msg, timeout time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	reply, err := p.nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNoReply, msg.Subject, err)
	}
	return reply.Data, nil
}

// Notify publishes msg on core NATS, best effort, for events that are not
// part of the durable record (rejections).
func (p *JetStream) Notify(msg *nats.Msg) {
	_ = p.nc.PublishMsg(msg)
}
