package publish

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Use is the callback that used a (token, kind), read from the stream.
type Use struct {
	TransactionID string    `json:"transaction_id"`
	ReceivedAt    string    `json:"received_at,omitempty"`
	Sequence      uint64    `json:"sequence"`
	StoredAt      time.Time `json:"stored_at"`
}

// Uses reads, for each kind, the callback stored on the token's subject:
// the stream's per-subject state is the token's consumed state, stored
// once, in the same write as the callback.
func (p *JetStream) Uses(ctx context.Context, s Subjects, tokenID, shortcode string, kinds []string) (map[string]Use, error) {
	out := map[string]Use{}
	for _, k := range kinds {
		m, err := p.Last(ctx, s.Callback(k, shortcode, tokenID))
		if err != nil {
			return nil, err
		}
		if m != nil {
			out[k] = Use{TransactionID: m.Header.Get(HeaderTransactionID), ReceivedAt: m.Header.Get(HeaderReceivedAt),
				Sequence: m.Sequence, StoredAt: m.Time}
		}
	}
	return out, nil
}

// MissingToken is a single-use token that expired: the candidate for a
// missing-callback event.
type MissingToken struct {
	ID        string
	Kinds     []string
	Shortcode string
	Reference string
	IssuedAt  time.Time
	ExpiresAt time.Time
}

// missingEvent is the body of <prefix>.missing.<kind>.<shortcode>.
type missingEvent struct {
	TokenID   string   `json:"token_id"`
	Kinds     []string `json:"kinds"`
	Shortcode string   `json:"shortcode"`
	Reference string   `json:"reference,omitempty"`
	IssuedAt  string   `json:"issued_at"`
	ExpiresAt string   `json:"expires_at"`
}

// Missing publishes missing-callback events exactly once across replicas:
// every replica may resolve the same token; the event's Nats-Msg-Id
// (missing:<token id>) keeps one on the stream, and a marker in a
// key-value bucket of its own (written after the event, fsynced like the
// stream) stops replicas and restarts from publishing it again past the
// stream's duplicate window. The token bucket is never written.
type Missing struct {
	js       *JetStream
	markers  jetstream.KeyValue
	subjects Subjects
	edge     string
}

// OpenMissing opens (creating) the marker bucket.
func OpenMissing(ctx context.Context, js jetstream.JetStream, pub *JetStream, bucket string, replicas int,
	retain time.Duration, subjects Subjects, edge string) (*Missing, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "daraja-edge: tokens whose missing-callback question is settled",
		History:     1,
		TTL:         retain,
		Replicas:    replicas,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("publish: missing-event bucket %s: %w", bucket, err)
	}
	return &Missing{js: pub, markers: kv, subjects: subjects, edge: edge}, nil
}

// Resolve settles an expired single-use token: if no callback of any of
// its kinds is on the stream and no replica settled it before, it
// publishes the missing event. sent reports that this call stored it (a
// replica that raced another and lost gets false).
func (m *Missing) Resolve(ctx context.Context, t MissingToken) (sent bool, err error) {
	if len(t.Kinds) == 0 {
		return false, errors.New("publish: missing event for a token without kinds")
	}
	if _, err := m.markers.Get(ctx, t.ID); err == nil {
		return false, nil
	} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, fmt.Errorf("publish: read missing marker %s: %w", t.ID, err)
	}
	uses, err := m.js.Uses(ctx, m.subjects, t.ID, t.Shortcode, t.Kinds)
	if err != nil {
		return false, err
	}
	if len(uses) > 0 {
		return false, m.mark(ctx, t.ID, "callback")
	}
	ev := missingEvent{TokenID: t.ID, Kinds: t.Kinds, Shortcode: t.Shortcode, Reference: t.Reference,
		IssuedAt: t.IssuedAt.Format(time.RFC3339Nano), ExpiresAt: t.ExpiresAt.Format(time.RFC3339Nano)}
	data, _ := json.Marshal(ev)
	msg := &nats.Msg{Subject: m.subjects.Missing(t.Kinds[0], t.Shortcode), Data: data, Header: nats.Header{
		HeaderMsgID:     {"missing:" + t.ID},
		HeaderKind:      {t.Kinds[0]},
		HeaderShortcode: {t.Shortcode},
		HeaderTokenID:   {t.ID},
		HeaderEdge:      {m.edge},
	}}
	if t.Reference != "" {
		msg.Header.Set(HeaderReference, t.Reference)
	}
	out, err := m.js.Store(ctx, msg, false)
	if err != nil {
		return false, err
	}
	return out == Stored, m.mark(ctx, t.ID, "sent")
}

func (m *Missing) mark(ctx context.Context, id, what string) error {
	_, err := m.markers.Create(ctx, id, []byte(what))
	if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("publish: write missing marker %s: %w", id, err)
	}
	return nil
}
