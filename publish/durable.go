package publish

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/daraja-edge/daraja-edge/daraja"
)

// Spool keeps messages on local disk, fsynced, while the stream cannot take
// them, and hands them back in order.
type Spool interface {
	Append(msg *nats.Msg) error
	Drain(ctx context.Context, publish func(context.Context, *nats.Msg) error) (int, error)
	Stats() (bytes, records int64)
}

// PendingLister is a Spool that can read the records it holds without
// replaying or removing any (oldest first, stopping at fn's first error).
// NewDurable uses it to hold again, after a restart, the (token, kind)s of
// the single-use callbacks still waiting in the spool.
type PendingLister interface {
	Each(fn func(*nats.Msg) error) error
}

// Observer is told what became of spooled callbacks on replay.
type Observer interface {
	// Replayed counts a spooled callback on its replay: "stored",
	// "duplicate" (already on the stream, dropped) or "replay" (another
	// callback used the (token, kind) meanwhile: an isolated replica
	// accepted both).
	Replayed(outcome string)
}

// Durable stores callbacks on the stream, or in the spool when the stream
// cannot be reached, and replays the spool. While the stream is out of
// reach, single use is held in this replica's memory (the subjects of the
// spooled first callbacks), so the same replica does not accept two
// spooled callbacks for one (token, kind). It does not know what was
// stored on the stream before the outage, nor what another replica
// spooled: such a second callback is answered 200 and spooled, and the
// conflict is found and reported on replay (replay_after_outage; the
// stream keeps the first). A (token, kind) whose stored callback cannot
// be read back to judge a publish is answered 503 (ErrUsedUnresolved).
type Durable struct {
	js       *JetStream
	spool    Spool
	subjects Subjects
	obs      Observer
	log      *zap.Logger

	mu sync.Mutex
	// held: subject → Nats-Msg-Id of a spooled single-use callback not
	// yet replayed.
	held map[string]string
}

// NewDurable returns a Durable over js and spool. obs may be nil. If the
// spool is a PendingLister, the single-use callbacks it still holds (from
// before a restart) are held again, so this replica keeps refusing another
// callback for their (token, kind) until they are replayed.
func NewDurable(js *JetStream, spool Spool, subjects Subjects, obs Observer, log *zap.Logger) *Durable {
	if log == nil {
		log = zap.NewNop()
	}
	d := &Durable{js: js, spool: spool, subjects: subjects, obs: obs, log: log.Named("publish"), held: map[string]string{}}
	if l, ok := spool.(PendingLister); ok {
		err := l.Each(func(m *nats.Msg) error {
			if m.Header.Get(HeaderExpectFirst) != "" {
				d.held[m.Subject] = m.Header.Get(HeaderMsgID)
			}
			return nil
		})
		if err != nil {
			d.log.Error("spooled callbacks could not be read at start: their tokens are not held until replayed",
				zap.Int("held", len(d.held)), zap.Error(err))
		} else if len(d.held) > 0 {
			d.log.Info("single-use callbacks waiting in the spool are held until replayed", zap.Int("held", len(d.held)))
		}
	}
	return d
}

// maskedID is a message's Nats-Msg-Id fit for logs and events: the phone
// number an STK CheckoutRequestID ends with is masked
// (daraja.MaskTransactionID). A message without a kind is masked as STK:
// no other kind's id holds a run of digits that long.
func maskedID(h nats.Header, key string) string {
	k := daraja.Kind(h.Get(HeaderKind))
	if !k.Valid() {
		k = daraja.STKCallback
	}
	return daraja.MaskTransactionID(k, h.Get(key))
}

// ErrNotDurable means neither the stream nor the spool took the callback:
// nothing was stored and nothing was used up.
var ErrNotDurable = errors.New("publish: callback neither acknowledged by the stream nor spooled")

// Store makes msg durable: on the stream (Stored, Duplicate, Replay), else
// in the spool (Spooled). first is the single-use condition (see
// JetStream.Store). An error means nothing was stored: the answer is 503
// and the (token, kind) is still unused.
//
// A single-use callback whose (token, kind) is held (a callback for it
// waits in the spool) is decided here, before any publish, whether or not
// the stream is back: the same Nats-Msg-Id is a Duplicate, another one a
// Replay, and nothing is stored. Otherwise a different callback could be
// stored on the stream before the spooled one is replayed, and this
// replica would have answered 200 twice for one (token, kind).
func (d *Durable) Store(ctx context.Context, msg *nats.Msg, first bool) (Outcome, error) {
	id := msg.Header.Get(HeaderMsgID)
	if first {
		if out, ok := d.heldOutcome(msg.Subject, id); ok {
			return out, nil
		}
	}
	out, err := d.js.Store(ctx, msg, first)
	if err == nil {
		return out, nil
	}
	if errors.Is(err, ErrNotStorable) || errors.Is(err, ErrUsedUnresolved) {
		// Reachable, and a retry is what decides: 503, nothing used up
		// by this callback, nothing spooled.
		return 0, fmt.Errorf("%w: %w", ErrNotDurable, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if first {
		if out, ok := d.heldOutcomeLocked(msg.Subject, id); ok {
			return out, nil
		}
	}
	if serr := d.spool.Append(msg); serr != nil {
		return 0, fmt.Errorf("%w: %w", ErrNotDurable, errors.Join(err, serr))
	}
	if first {
		d.held[msg.Subject] = id
	}
	d.log.Warn("stream unreachable: callback spooled", zap.String("subject", msg.Subject),
		zap.String("msg_id", maskedID(msg.Header, HeaderMsgID)), zap.NamedError("publish_error", err))
	return Spooled, nil
}

// heldOutcome decides a single-use callback whose subject is held.
func (d *Durable) heldOutcome(subject, id string) (Outcome, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.heldOutcomeLocked(subject, id)
}

func (d *Durable) heldOutcomeLocked(subject, id string) (Outcome, bool) {
	held, ok := d.held[subject]
	switch {
	case !ok:
		return 0, false
	case held == id:
		return Duplicate, true
	}
	return Replay, true
}

// outageEvent is what lands on <prefix>.rejected.replay_after_outage: what
// every rejection event carries (reason, source IP, path, token id; never
// the body), plus the callback's ids, masked, so an operator can find both
// callbacks on the stream.
type outageEvent struct {
	Reason        string `json:"reason"`
	SourceIP      string `json:"source_ip,omitempty"`
	Path          string `json:"path,omitempty"`
	TokenID       string `json:"token_id,omitempty"`
	Kind          string `json:"kind,omitempty"`
	Shortcode     string `json:"shortcode,omitempty"`
	MsgID         string `json:"msg_id"`
	TransactionID string `json:"transaction_id,omitempty"`
	ReceivedAt    string `json:"received_at,omitempty"`
	At            string `json:"at"`
	Edge          string `json:"edge,omitempty"`
}

func replayEvent(m *nats.Msg) []byte {
	ev := outageEvent{Reason: "replay_after_outage", SourceIP: m.Header.Get(HeaderSourceIP),
		TokenID: m.Header.Get(HeaderTokenID), Kind: m.Header.Get(HeaderKind), Shortcode: m.Header.Get(HeaderShortcode),
		MsgID: maskedID(m.Header, HeaderMsgID), TransactionID: maskedID(m.Header, HeaderTransactionID),
		ReceivedAt: m.Header.Get(HeaderReceivedAt), At: time.Now().UTC().Format(time.RFC3339Nano),
		Edge: m.Header.Get(HeaderEdge)}
	if k := daraja.Kind(ev.Kind); k.Valid() {
		ev.Path = k.Path()
	}
	data, _ := json.Marshal(ev)
	return data
}

// Pending is how many callbacks wait in the spool.
func (d *Durable) Pending() int64 {
	_, n := d.spool.Stats()
	return n
}

// Drain replays the spool in order with each record's own headers. A
// record the stream already holds is dropped as a duplicate; one whose
// (token, kind) holds another callback is reported on
// <prefix>.rejected.replay_after_outage (see outageEvent: never the body,
// never a full phone number), with an error log and a count, and is
// dropped: the stream keeps the first.
func (d *Durable) Drain(ctx context.Context) (int, error) {
	return d.spool.Drain(ctx, func(ctx context.Context, m *nats.Msg) error {
		first := m.Header.Get(HeaderExpectFirst) != ""
		out, err := d.js.Store(ctx, m, false)
		if err != nil {
			return err
		}
		switch out {
		case Replay:
			d.log.Error("replayed callback conflicts with another callback stored for the same token and kind while this replica could not reach the stream",
				zap.String("subject", m.Subject), zap.String("msg_id", maskedID(m.Header, HeaderMsgID)),
				zap.String("token_id", m.Header.Get(HeaderTokenID)))
			d.js.Notify(&nats.Msg{Subject: d.subjects.Rejected("replay_after_outage"), Data: replayEvent(m)})
		case Duplicate:
			d.log.Info("replayed callback was already on the stream", zap.String("msg_id", maskedID(m.Header, HeaderMsgID)))
		}
		if d.obs != nil {
			d.obs.Replayed(out.String())
		}
		if first {
			d.mu.Lock()
			if d.held[m.Subject] == m.Header.Get(HeaderMsgID) {
				delete(d.held, m.Subject)
			}
			d.mu.Unlock()
		}
		return nil
	})
}
