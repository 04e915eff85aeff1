package reconcile

import (
	"encoding/json"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/daraja-edge/daraja-edge/publish"
)

// HeaderMissingSource names what found a missing callback. Reconcile's
// events carry "reconcile"; the edge's (a single-use token that expired
// unused) carry none. A consumer that acts on token ids (recovery) tells
// them apart by it.
const HeaderMissingSource = "Daraja-Missing-Source"

// MissingSourceReconcile is HeaderMissingSource and the body's source on
// reconcile's events.
const MissingSourceReconcile = "reconcile"

// MissingEvent is the body of a missing-callback event on
// <prefix>.missing.<kind>.<shortcode>: the edge's fields (SPEC: token id,
// kinds, shortcode, reference, issued_at, expires_at; those that do not
// apply to a statement line are absent) and what reconcile knows of the
// transaction.
type MissingEvent struct {
	TokenID   string   `json:"token_id,omitempty"`
	Kinds     []string `json:"kinds"`
	Shortcode string   `json:"shortcode"`
	Reference string   `json:"reference,omitempty"`
	IssuedAt  string   `json:"issued_at,omitempty"`
	ExpiresAt string   `json:"expires_at,omitempty"`
	Receipt   string   `json:"receipt"`
	Amount    string   `json:"amount"`
	Time      string   `json:"time"`                // the statement line's, RFC 3339 in East Africa Time
	Source    string   `json:"source"`              // "reconcile"
	Statement string   `json:"statement,omitempty"` // file:row
}

// MissingMsg is the event for a missing-callback finding: subject
// <prefix>.missing.<first kind>.<shortcode> ("unknown" for a statement
// that names none), Nats-Msg-Id reconcile:<receipt>, and the Daraja-Kind,
// Daraja-Shortcode, Daraja-Receipt and Daraja-Missing-Source headers.
func MissingMsg(prefix string, f Finding) *nats.Msg {
	sc := f.Shortcode
	if sc == "" {
		sc = "unknown"
	}
	ev := MissingEvent{Kinds: strings.Split(f.Kind, "|"), Shortcode: f.Shortcode, Receipt: f.Receipt,
		Amount: f.Amount.String(), Time: rfc(f.Time), Source: MissingSourceReconcile, Statement: f.Source}
	data, _ := json.Marshal(ev)
	kind := f.MissingKind()
	return &nats.Msg{
		Subject: publish.Subjects{Prefix: prefix}.Missing(kind, sc),
		Data:    data,
		Header: nats.Header{
			publish.HeaderMsgID:     {MissingMsgID(f.Receipt)},
			publish.HeaderKind:      {kind},
			publish.HeaderShortcode: {sc},
			publish.HeaderReceipt:   {f.Receipt},
			HeaderMissingSource:     {MissingSourceReconcile},
		},
	}
}

// MissingMsgID is the Nats-Msg-Id of reconcile's event for a receipt.
func MissingMsgID(receipt string) string { return "reconcile:" + receipt }
