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
	// Lease is set while an attempt is in flight: until then no other
	// worker, here or at another replica, makes an attempt for this
	// callback (a redelivery or a replay waits for it to end).
	Lease time.Time `json:"lease,omitzero"`
	// Holder names the attempt holding the lease.
	Holder string `json:"holder,omitempty"`
}

// leased reports whether another attempt than holder's holds the record
// at now.
func (d Delivery) leased(holder string, now time.Time) bool {
	return d.Holder != "" && d.Holder != holder && now.Before(d.Lease)
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

// errConflict is a delivery record written by someone else since it was
// read.
var errConflict = errors.New("forward: delivery record changed since read")

// get reads a record and its revision (0: none yet).
func (h history) get(ctx context.Context, key string) (Delivery, uint64, error) {
	e, err := h.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Delivery{}, 0, nil
	}
	if err != nil {
		return Delivery{}, 0, fmt.Errorf("forward: read delivery %s: %w", key, err)
	}
	var d Delivery
	if err := json.Unmarshal(e.Value(), &d); err != nil {
		return Delivery{}, 0, fmt.Errorf("forward: delivery %s: %w", key, err)
	}
	return d, e.Revision(), nil
}

// write stores d if its record is still at revision rev (0: not there
// yet), and returns the new revision; errConflict when another writer
// came first (compare and set: two workers never overwrite each other's
// attempts).
func (h history) write(ctx context.Context, d Delivery, rev uint64) (uint64, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return 0, fmt.Errorf("forward: encode delivery: %w", err)
	}
	key := deliveryKey(d.Destination, d.TransactionID, d.Sequence)
	var n uint64
	if rev == 0 {
		n, err = h.kv.Create(ctx, key, b)
	} else {
		n, err = h.kv.Update(ctx, key, b, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, fmt.Errorf("forward: write delivery %s: %w", key, errConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("forward: write delivery %s: %w", key, err)
	}
	return n, nil
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
		d, rev, err := h.get(ctx, k)
		if err != nil {
			return nil, err
		}
		if rev == 0 || (tx != "" && d.TransactionID != tx) || (state != "" && d.State != state) {
			continue
		}
		out = append(out, d)
	}
	return out, nil
}

// bucketName is the deliveries bucket of a subject prefix.
func bucketName(prefix string) string { return strings.ReplaceAll(prefix, ".", "_") + "_deliveries" }
