package verify

import (
	"context"
	"net/url"
	"strings"
	"time"

	"github.com/daraja-edge/daraja-edge/daraja"
)

// Issuer answers token requests: it issues through the Store and builds the
// callback URLs a business hands to Daraja. The admin API and the NATS
// token service both use it, so both answer the same JSON.
type Issuer struct {
	Store *Store
	// PublicURL is the base of callback URLs, e.g. https://cb.example.co.ke.
	PublicURL string
	// QueryParam carries the token in callback URLs.
	QueryParam string
	Limits     Limits
}

// IssueResponse is the answer to an issue request.
type IssueResponse struct {
	ID        string            `json:"id"`
	Token     string            `json:"token"`
	ExpiresAt string            `json:"expires_at"`
	URLs      map[string]string `json:"urls"`
}

// Issue issues a token for req.
func (i *Issuer) Issue(ctx context.Context, req IssueRequest) (IssueResponse, error) {
	iss, err := i.Store.Issue(ctx, req, i.Limits)
	if err != nil {
		return IssueResponse{}, err
	}
	base := strings.TrimRight(i.PublicURL, "/")
	q := url.Values{i.QueryParam: {iss.Token}}.Encode()
	urls := make(map[string]string, len(req.Kinds))
	for _, k := range iss.Record.Kinds {
		urls[string(k)] = base + k.Path() + "?" + q
	}
	return IssueResponse{
		ID:        iss.Record.ID,
		Token:     iss.Token,
		ExpiresAt: iss.Record.ExpiresAt.Format(time.RFC3339),
		URLs:      urls,
	}, nil
}

// Status is the public view of a token record.
type Status struct {
	ID        string        `json:"id"`
	State     string        `json:"state"`
	Kinds     []daraja.Kind `json:"kinds"`
	Shortcode string        `json:"shortcode"`
	Reference string        `json:"reference,omitempty"`
	Reusable  bool          `json:"reusable"`
	IssuedAt  string        `json:"issued_at"`
	ExpiresAt string        `json:"expires_at"`
	// ConsumedBy is the transaction id of the callback that consumed it.
	ConsumedBy   string `json:"consumed_by,omitempty"`
	ConsumedKind string `json:"consumed_kind,omitempty"`
	ConsumedAt   string `json:"consumed_at,omitempty"`
}

// Status returns the state of token id.
func (i *Issuer) Status(ctx context.Context, id string) (Status, error) {
	rec, err := i.Store.Get(ctx, id)
	if err != nil {
		return Status{}, err
	}
	st := Status{
		ID: rec.ID, State: rec.StateAt(i.Store.now()), Kinds: rec.Kinds, Shortcode: rec.Shortcode,
		Reference: rec.Reference, Reusable: rec.Reusable,
		IssuedAt: rec.IssuedAt.Format(time.RFC3339), ExpiresAt: rec.ExpiresAt.Format(time.RFC3339),
	}
	if rec.ConsumedBy != "" {
		kind, tx, _ := strings.Cut(rec.ConsumedBy, ":")
		st.ConsumedKind, st.ConsumedBy = kind, tx
	}
	if rec.ConsumedAt != nil {
		st.ConsumedAt = rec.ConsumedAt.Format(time.RFC3339Nano)
	}
	return st, nil
}

// Revoke revokes token id.
func (i *Issuer) Revoke(ctx context.Context, id string) error { return i.Store.Revoke(ctx, id) }
