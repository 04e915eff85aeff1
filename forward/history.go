package forward

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Delivery states.
const (
	StatePending   = "pending"   // waiting for its next attempt
	StateDelivered = "delivered" // an attempt got a 2xx
	StateDead      = "dead"      // every attempt failed; on the dead-letter subject
)

// Attempt is one try at a delivery; the dead letter's
// Daraja-Forward-Attempts holds a JSON array of them.
type Attempt struct {
	At     time.Time `json:"at"`
	Status int       `json:"status"` // HTTP status, 0 when none came back
	Error  string    `json:"error,omitempty"`
}

// Delivery is the state and history of one callback at one destination,
// kept in the `<prefix>_deliveries` key-value bucket under
// <destination>.<transaction key>.<stream sequence>, so it survives the
// replica that made the attempts and a transaction id finds it by key.
type Delivery struct {
	Destination   string    `json:"destination"`
	Sequence      uint64    `json:"sequence"`
	MsgID         string    `json:"msg_id"`
	Kind          string    `json:"kind"`
	Shortcode     string    `json:"shortcode"`
	TransactionID string    `json:"transaction_id"`
	State         string    `json:"state"`
	Attempts      []Attempt `json:"attempts"`
	// RoundStart is the index in Attempts where the current round of the
	// retry schedule began (a replay starts a new round).
	RoundStart int       `json:"round_start,omitempty"`
	NextAt     time.Time `json:"next_at,omitzero"`
	Replays    int       `json:"replays,omitempty"`
	ReplayID   string    `json:"replay_id,omitempty"`
}

// history is the deliveries bucket.
type history struct{ kv jetstream.KeyValue }

// txKey makes a transaction id a key token: anything outside [A-Za-z0-9_-]
// becomes _ (the record holds the exact id).
func txKey(tx string) string {
	if tx == "" {
		return "_"
	}
	b := []byte(tx)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			b[i] = '_'
		}
	}
	if len(b) > 128 {
		b = b[:128]
	}
	return string(b)
}

func deliveryKey(dest, tx string, seq uint64) string {
	return dest + "." + txKey(tx) + "." + strconv.FormatUint(seq, 10)
}

func (h history) get(ctx context.Context, key string) (Delivery, bool, error) {
	e, err := h.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Delivery{}, false, nil
	}
	if err != nil {
		return Delivery{}, false, fmt.Errorf("forward: read delivery %s: %w", key, err)
	}
	var d Delivery
	if err := json.Unmarshal(e.Value(), &d); err != nil {
		return Delivery{}, false, fmt.Errorf("forward: delivery %s: %w", key, err)
	}
	return d, true, nil
}

func (h history) put(ctx context.Context, d Delivery) error {
	b, err := json.Marshal(d)
	if err != nil {
		return err
	}
	if _, err := h.kv.Put(ctx, deliveryKey(d.Destination, d.TransactionID, d.Sequence), b); err != nil {
		return fmt.Errorf("forward: write delivery: %w", err)
	}
	return nil
}

// list returns the deliveries of dest, those of tx when tx is set, in at
// most limit records.
func (h history) list(ctx context.Context, dest, tx, state string, limit int) ([]Delivery, error) {
	filter := dest + ".>"
	if tx != "" {
		filter = dest + "." + txKey(tx) + ".*"
	}
	keys, err := h.kv.ListKeysFiltered(ctx, filter)
	if err != nil {
		return nil, fmt.Errorf("forward: list deliveries: %w", err)
	}
	out := []Delivery{}
	for k := range keys.Keys() {
		if len(out) >= limit {
			_ = keys.Stop()
			break
		}
		d, ok, err := h.get(ctx, k)
		if err != nil {
			return nil, err
		}
		if !ok || (tx != "" && d.TransactionID != tx) || (state != "" && d.State != state) {
			continue
		}
		out = append(out, d)
	}
	return out, nil
}

// bucketName is the deliveries bucket of a subject prefix.
func bucketName(prefix string) string { return strings.ReplaceAll(prefix, ".", "_") + "_deliveries" }
