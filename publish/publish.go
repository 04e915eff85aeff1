// Package publish puts vetted callbacks on NATS: it builds the message with
// the contract's headers, publishes to JetStream and waits for the ack, and
// asks C2B validators over request-reply.
package publish

import (
	"context"
	"errors"
	"fmt"
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
	HeaderDecisionBy    = "Daraja-Decision-By" // validator | timeout | invalid-reply
	HeaderReceipt       = "Daraja-Receipt"     // M-Pesa receipt, when the body has one
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

// Msg builds the NATS message for subject.
func (c *Callback) Msg(subject string) *nats.Msg {
	h := make(nats.Header, 12)
	set := func(k, v string) {
		if v != "" {
			h[k] = []string{v}
		}
	}
	set(HeaderMsgID, c.MsgID())
	set(HeaderKind, c.Kind)
	set(HeaderShortcode, c.Shortcode)
	set(HeaderTransactionID, c.TransactionID)
	set(HeaderReceipt, c.Receipt)
	set(HeaderResultCode, c.ResultCode)
	set(HeaderReference, c.Reference)
	set(HeaderTokenID, c.TokenID)
	set(HeaderSourceIP, c.SourceIP)
	set(HeaderReceivedAt, c.ReceivedAt.UTC().Format(time.RFC3339Nano))
	set(HeaderEdge, c.Edge)
	return &nats.Msg{Subject: subject, Header: h, Data: c.Body}
}

// Subjects names the subjects under a prefix.
type Subjects struct{ Prefix string }

// Callback is <prefix>.cb.<kind>.<shortcode>.
func (s Subjects) Callback(kind, shortcode string) string {
	return s.Prefix + ".cb." + kind + "." + shortcode
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
	return []string{s.Prefix + ".cb.>", s.Prefix + ".missing.>"}
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
	nc      *nats.Conn
	timeout time.Duration
}

// New returns a publisher. timeout bounds the wait for each ack.
func New(nc *nats.Conn, js jetstream.JetStream, timeout time.Duration) *JetStream {
	return &JetStream{js: js, nc: nc, timeout: timeout}
}

// ErrNotAcked means the stream did not acknowledge the message in time; it
// may or may not have been stored. Publishing again with the same Msg-Id is
// safe.
var ErrNotAcked = errors.New("publish: no JetStream ack")

// Publish stores msg in the stream. duplicate reports that the stream
// already held a message with the same Nats-Msg-Id.
func (p *JetStream) Publish(ctx context.Context, msg *nats.Msg) (duplicate bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	ack, err := p.js.PublishMsg(ctx, msg)
	if err != nil {
		return false, fmt.Errorf("%w: %s: %w", ErrNotAcked, msg.Subject, err)
	}
	return ack.Duplicate, nil
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
