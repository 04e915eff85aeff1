package publish

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// Spool keeps messages on local disk, fsynced, while the stream cannot take
// them, and hands them back in order.
type Spool interface {
	Append(msg *nats.Msg) error
	Drain(ctx context.Context, publish func(context.Context, *nats.Msg) error) (int, error)
	Stats() (bytes, records int64)
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
// callbacks for one (token, kind); another replica cannot know, and a
// conflict is found and reported on replay (replay_after_outage).
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

// NewDurable returns a Durable over js and spool. obs may be nil.
func NewDurable(js *JetStream, spool Spool, subjects Subjects, obs Observer, log *zap.Logger) *Durable {
	if log == nil {
		log = zap.NewNop()
	}
	return &Durable{js: js, spool: spool, subjects: subjects, obs: obs, log: log.Named("publish"), held: map[string]string{}}
}

// ErrNotDurable means neither the stream nor the spool took the callback:
// nothing was stored and nothing was used up.
var ErrNotDurable = errors.New("publish: callback neither acknowledged by the stream nor spooled")

// Store makes msg durable: on the stream (Stored, Duplicate, Replay), else
// in the spool (Spooled). first is the single-use condition (see
// JetStream.Store). An error means nothing was stored: the answer is 503
// and the (token, kind) is still unused.
func (d *Durable) Store(ctx context.Context, msg *nats.Msg, first bool) (Outcome, error) {
	out, err := d.js.Store(ctx, msg, first)
	if err == nil {
		return out, nil
	}
	id := msg.Header.Get(HeaderMsgID)
	d.mu.Lock()
	defer d.mu.Unlock()
	if first {
		if held, ok := d.held[msg.Subject]; ok {
			if held == id {
				return Duplicate, nil
			}
			return Replay, nil
		}
	}
	if serr := d.spool.Append(msg); serr != nil {
		return 0, fmt.Errorf("%w: %w", ErrNotDurable, errors.Join(err, serr))
	}
	if first {
		d.held[msg.Subject] = id
	}
	d.log.Warn("stream unreachable: callback spooled", zap.String("subject", msg.Subject),
		zap.String("msg_id", id), zap.NamedError("publish_error", err))
	return Spooled, nil
}

// Pending is how many callbacks wait in the spool.
func (d *Durable) Pending() int64 {
	_, n := d.spool.Stats()
	return n
}

// Drain replays the spool in order with each record's own headers. A
// record the stream already holds is dropped as a duplicate; one whose
// (token, kind) holds another callback goes to
// <prefix>.rejected.replay_after_outage with its headers, an error log and
// a count, and is dropped: the stream keeps the first. Rejection events
// never carry the body.
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
				zap.String("subject", m.Subject), zap.String("msg_id", m.Header.Get(HeaderMsgID)),
				zap.String("token_id", m.Header.Get(HeaderTokenID)))
			// Headers only: rejection events never carry a body.
			d.js.Notify(&nats.Msg{Subject: d.subjects.Rejected("replay_after_outage"), Header: m.Header,
				Data: []byte(`{"reason":"replay_after_outage"}`)})
		case Duplicate:
			d.log.Info("replayed callback was already on the stream", zap.String("msg_id", m.Header.Get(HeaderMsgID)))
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
