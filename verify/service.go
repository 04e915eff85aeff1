package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
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
	// Uses reads from the stream, per kind, the transaction id of the
	// callback that used the token (nil: no such reads, state from the
	// bucket alone).
	Uses func(ctx context.Context, rec Record) (map[daraja.Kind]string, error)
}

// IssueResponse is the answer to an issue request.
type IssueResponse struct {
	ID        string            `json:"id"`
	Token     string            `json:"token"`
	ExpiresAt string            `json:"expires_at,omitempty"` // absent: never expires
	URLs      map[string]string `json:"urls"`
	// RotatedFrom names the token this one replaces (rotate only).
	RotatedFrom string `json:"rotated_from,omitempty"`
}

// Issue issues a token for req.
func (i *Issuer) Issue(ctx context.Context, req IssueRequest) (IssueResponse, error) {
	iss, err := i.Store.Issue(ctx, req, i.Limits)
	if err != nil {
		return IssueResponse{}, err
	}
	return i.response(iss), nil
}

// RotateRequest asks for a successor to a token.
type RotateRequest struct {
	ID string `json:"id"`
	// TTL of the successor; default the old token's lifetime.
	TTL string `json:"ttl,omitempty"`
	// Overlap is how long the old token stays valid; default 24h.
	Overlap string `json:"overlap,omitempty"`
}

// DefaultOverlap is how long a rotated token stays valid by default.
const DefaultOverlap = 24 * time.Hour

// Rotate issues a successor to req.ID, which must be live (not revoked,
// expired or, for a single-use token, used); both are valid for the overlap.
func (i *Issuer) Rotate(ctx context.Context, req RotateRequest) (IssueResponse, error) {
	overlap := DefaultOverlap
	if req.Overlap != "" {
		d, err := time.ParseDuration(req.Overlap)
		if err != nil || d < 0 {
			return IssueResponse{}, badRequest("overlap: %q is not a duration like 1h", req.Overlap)
		}
		overlap = d
	}
	// The bucket says issued until a single-use token expires: whether a
	// callback used it is on the stream, so that is asked first.
	st, err := i.Status(ctx, req.ID)
	if err != nil {
		return IssueResponse{}, err
	}
	if st.State == StateConsumed {
		return IssueResponse{}, &RequestError{Code: "not_rotatable", Message: "token is " + StateConsumed + "; only a live token can be rotated"}
	}
	iss, err := i.Store.Rotate(ctx, req.ID, req.TTL, overlap, i.Limits)
	if err != nil {
		return IssueResponse{}, err
	}
	resp := i.response(iss)
	resp.RotatedFrom = req.ID
	return resp, nil
}

func (i *Issuer) response(iss Issued) IssueResponse {
	base := strings.TrimRight(i.PublicURL, "/")
	q := url.Values{i.QueryParam: {iss.Token}}.Encode()
	urls := make(map[string]string, len(iss.Record.Kinds))
	for _, k := range iss.Record.Kinds {
		urls[string(k)] = base + k.Path() + "?" + q
	}
	return IssueResponse{
		ID:        iss.Record.ID,
		Token:     iss.Token,
		ExpiresAt: formatTime(iss.Record.ExpiresAt),
		URLs:      urls,
	}
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.Format(time.RFC3339)
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
	ExpiresAt string        `json:"expires_at,omitempty"` // absent: never expires
	// UsedBy maps each kind that received a callback to that callback's
	// transaction id, as stored on the stream.
	UsedBy map[daraja.Kind]string `json:"used_by,omitempty"`
	// ConsumedBy and ConsumedKind name the first kind in UsedBy (in the
	// token's kind order) and its transaction id.
	ConsumedBy   string `json:"consumed_by,omitempty"`
	ConsumedKind string `json:"consumed_kind,omitempty"`
	RotatedTo    string `json:"rotated_to,omitempty"`
	ForwardPath  string `json:"forward_path,omitempty"`

	CheckoutRequestID        string `json:"checkout_request_id,omitempty"`
	OriginatorConversationID string `json:"originator_conversation_id,omitempty"`
}

// Status returns the state of token id: revoked or expired from the
// bucket; consumed when the stream holds a callback for any of a
// single-use token's kinds (a reusable token stays issued); else issued.
func (i *Issuer) Status(ctx context.Context, id string) (Status, error) {
	rec, err := i.Store.Get(ctx, id)
	if err != nil {
		return Status{}, err
	}
	st := Status{
		ID: rec.ID, State: rec.StateAt(i.Store.now()), Kinds: rec.Kinds, Shortcode: rec.Shortcode,
		Reference: rec.Reference, Reusable: rec.Reusable, RotatedTo: rec.RotatedTo, ForwardPath: rec.ForwardPath,
		IssuedAt: rec.IssuedAt.Format(time.RFC3339), ExpiresAt: formatTime(rec.ExpiresAt),
		CheckoutRequestID: rec.CheckoutRequestID, OriginatorConversationID: rec.OriginatorConversationID,
	}
	if i.Uses == nil {
		return st, nil
	}
	used, err := i.Uses(ctx, rec)
	if err != nil {
		return Status{}, err
	}
	if len(used) > 0 {
		st.UsedBy = used
		for _, k := range rec.Kinds {
			if tx, ok := used[k]; ok {
				st.ConsumedKind, st.ConsumedBy = string(k), tx
				break
			}
		}
		if !rec.Reusable && st.State != StateRevoked {
			st.State = StateConsumed
		}
	}
	return st, nil
}

// Annotate records what Daraja answered the request a token is for, and
// returns the token's state.
func (i *Issuer) Annotate(ctx context.Context, id string, a Annotation) (Status, error) {
	if _, err := i.Store.Annotate(ctx, id, a); err != nil {
		return Status{}, err
	}
	return i.Status(ctx, id)
}

// Revoke revokes token id.
func (i *Issuer) Revoke(ctx context.Context, id string) error { return i.Store.Revoke(ctx, id) }

// ListFilter selects tokens for List. Empty fields match everything.
type ListFilter struct {
	Reference string      `json:"reference,omitempty"`
	Shortcode string      `json:"shortcode,omitempty"`
	Kind      daraja.Kind `json:"kind,omitempty"`
	// State: issued, consumed, expired or revoked.
	State string `json:"state,omitempty"`
	// After is the cursor: the last id of the previous page.
	After string `json:"after,omitempty"`
	// Limit per page: default 50, at most 500.
	Limit int `json:"limit,omitempty"`
}

// maxListScan bounds the stream look-ups one List call makes to tell
// issued from consumed.
const maxListScan = 2000

// List returns a page of tokens matching f, ordered by id, and the cursor
// of the next page ("" at the end). It searches this replica's local copy
// (every live token, and finished ones for a day after their expiry), so
// it never scans the bucket.
func (i *Issuer) List(ctx context.Context, f ListFilter) (page []Status, next string, err error) {
	if f.Limit <= 0 {
		f.Limit = 50
	}
	f.Limit = min(f.Limit, 500)
	switch f.State {
	case "", StateIssued, StateConsumed, StateExpired, StateRevoked:
	default:
		return nil, "", badRequest("state: one of issued, consumed, expired, revoked")
	}
	if f.Kind != "" && !f.Kind.Valid() {
		return nil, "", badRequest("kind: %q is not a callback kind", f.Kind)
	}
	ids := i.Store.match(f)
	scanned, last := 0, ""
	for _, id := range ids {
		if id <= f.After {
			continue
		}
		if len(page) == f.Limit {
			return page, page[len(page)-1].ID, nil
		}
		if scanned == maxListScan {
			// Bounded work per call: the caller continues after the last
			// id looked at (this one has not been).
			return page, last, nil
		}
		scanned, last = scanned+1, id
		st, err := i.Status(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, "", err
		}
		if f.State == "" || st.State == f.State {
			page = append(page, st)
		}
	}
	return page, "", nil
}

// DecodeRequest decodes one JSON object from data into v, as the admin API
// and the NATS token service both take requests: an unknown field (a
// misspelt "ttl" would otherwise issue a token with the default one) or
// anything after the object is an error.
func DecodeRequest(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("more after the JSON object")
	}
	return nil
}
