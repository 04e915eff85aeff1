package forward

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/publish"
)

// ErrUnknownDestination is a destination the configuration does not name.
var ErrUnknownDestination = errors.New("forward: no such destination")

// ErrBadReplay is a replay request that selects nothing sensible.
var ErrBadReplay = errors.New("forward: replay needs destination and one of sequence, tx, since+until, dlq")

// ErrNotForwarded is a replay of a stream sequence that holds no callback
// the destination forwards (a dead letter, a validation, another kind or
// shortcode, or nothing at all).
var ErrNotForwarded = errors.New("forward: not a callback this destination forwards")

// ReplayRequest selects callbacks to deliver again to Destination: one
// stream sequence, every callback of a transaction id, every callback
// stored between Since and Until, or (DLQ) every dead letter of the
// destination not delivered since (within Since/Until when set).
type ReplayRequest struct {
	Destination string    `json:"destination"`
	Sequence    uint64    `json:"sequence,omitempty"`
	TX          string    `json:"tx,omitempty"`
	Since       time.Time `json:"since,omitzero"`
	Until       time.Time `json:"until,omitzero"`
	DLQ         bool      `json:"dlq,omitempty"`
}

// ReplayResult lists the stream sequences queued for delivery.
type ReplayResult struct {
	Queued []uint64 `json:"queued"`
}

type replayRequest struct {
	Sequence uint64 `json:"sequence"`
	ID       string `json:"id"`
}

// maxReplay bounds one replay request.
const maxReplay = 10000

func (f *Forwarder) dest(name string) *dest {
	for _, d := range f.dests {
		if d.cfg.Name == name {
			return d
		}
	}
	return nil
}

// Deliveries lists delivery records of a destination, of one transaction
// id and in one state when set, at most limit.
func (f *Forwarder) Deliveries(ctx context.Context, destination, tx, state string, limit int) ([]Delivery, error) {
	if f.dest(destination) == nil {
		return nil, ErrUnknownDestination
	}
	if f.hist.kv == nil {
		return nil, errors.New("forward: not started")
	}
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	return f.hist.list(ctx, destination, tx, state, limit)
}

// Replay queues the selected callbacks on the destination's replay
// consumer; each starts a new round of the retry schedule, and the
// delivery goes through the same signing, breaker and dead letter.
func (f *Forwarder) Replay(ctx context.Context, r ReplayRequest) (ReplayResult, error) {
	d := f.dest(r.Destination)
	if d == nil {
		return ReplayResult{}, ErrUnknownDestination
	}
	if f.hist.kv == nil {
		return ReplayResult{}, errors.New("forward: not started")
	}
	var seqs []uint64
	var err error
	switch {
	case r.Sequence > 0:
		if err := f.checkForwarded(ctx, d, r.Sequence); err != nil {
			return ReplayResult{}, err
		}
		seqs = []uint64{r.Sequence}
	case r.TX != "":
		ds, lerr := f.hist.list(ctx, r.Destination, r.TX, "", maxReplay)
		if lerr != nil {
			return ReplayResult{}, lerr
		}
		for _, x := range ds {
			seqs = append(seqs, x.Sequence)
		}
	case r.DLQ:
		seqs, err = f.scan(ctx, r, []string{f.o.Prefix + ".dlq." + r.Destination + ".>"}, true)
	case !r.Since.IsZero() && !r.Until.IsZero() && r.Until.After(r.Since):
		seqs, err = f.scan(ctx, r, d.filters(), false)
	default:
		return ReplayResult{}, ErrBadReplay
	}
	if err != nil {
		return ReplayResult{}, err
	}
	slices.Sort(seqs)
	seqs = slices.Compact(seqs)
	var idb [8]byte
	_, _ = rand.Read(idb[:])
	id := hex.EncodeToString(idb[:])
	out := ReplayResult{Queued: []uint64{}}
	for _, s := range seqs {
		b, _ := json.Marshal(replayRequest{Sequence: s, ID: id})
		if _, err := f.o.JS.Publish(ctx, f.replaySubject(r.Destination), b); err != nil {
			return out, fmt.Errorf("forward: queue replay of %d: %w", s, err)
		}
		out.Queued = append(out.Queued, s)
	}
	return out, nil
}

// checkForwarded says why seq cannot be replayed to d, or nil when it is
// a callback d forwards.
func (f *Forwarder) checkForwarded(ctx context.Context, d *dest, seq uint64) error {
	s, err := f.o.JS.Stream(ctx, f.o.Stream)
	if err != nil {
		return fmt.Errorf("forward: stream: %w", err)
	}
	raw, err := s.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("%w: the stream holds no message at sequence %d", ErrNotForwarded, seq)
	}
	if err != nil {
		return fmt.Errorf("forward: read sequence %d: %w", seq, err)
	}
	if !d.forwards(raw.Subject) {
		return fmt.Errorf("%w: sequence %d is on %s", ErrNotForwarded, seq, raw.Subject)
	}
	return nil
}

// scan reads the stream on subjects from Since (or the start) to Until
// (or now) with an ephemeral ordered consumer. For dead letters it
// returns the callbacks' own sequences, skipping those delivered since.
func (f *Forwarder) scan(ctx context.Context, r ReplayRequest, subjects []string, dlq bool) ([]uint64, error) {
	cc := jetstream.OrderedConsumerConfig{FilterSubjects: subjects, DeliverPolicy: jetstream.DeliverAllPolicy}
	if !r.Since.IsZero() {
		since := r.Since
		cc.DeliverPolicy, cc.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	cons, err := f.o.JS.OrderedConsumer(ctx, f.o.Stream, cc)
	if err != nil {
		return nil, fmt.Errorf("forward: scan: %w", err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("forward: scan: %w", err)
	}
	left := info.NumPending
	var out []uint64
	for left > 0 && len(out) < maxReplay {
		batch, err := cons.Fetch(int(min(left, 256)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, fmt.Errorf("forward: scan: %w", err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			left--
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			if !r.Until.IsZero() && md.Timestamp.After(r.Until) {
				return out, nil
			}
			if !dlq {
				out = append(out, md.Sequence.Stream)
				continue
			}
			seq, err := strconv.ParseUint(m.Headers().Get(HeaderSequence), 10, 64)
			if err != nil {
				continue
			}
			rec, rev, err := f.hist.get(ctx, deliveryKey(r.Destination, m.Headers().Get(publish.HeaderTransactionID), seq))
			if err == nil && rev != 0 && rec.State == StateDelivered {
				continue
			}
			out = append(out, seq)
		}
		if got == 0 {
			break
		}
	}
	return out, nil
}
