package console

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/publish"
	"github.com/daraja-edge/daraja-edge/verify"
)

var funcs = map[string]any{
	"expiring": expiring,
	"maskTx":   func(k daraja.Kind, tx string) string { return daraja.MaskTransactionID(k, tx) },
	"list":     func(xs ...string) []string { return xs },
}

// expiring reports a live reusable token close to its expiry, which should
// be rotated: not one already rotated, revoked or expired (none of them
// can be), as the store's own warning.
func expiring(s verify.Status) bool {
	if !s.Reusable || s.ExpiresAt == "" || s.State != verify.StateIssued || s.RotatedTo != "" {
		return false
	}
	t, err := time.Parse(time.RFC3339, s.ExpiresAt)
	return err == nil && time.Until(t) < verify.ExpiryWarning
}

type tokensData struct {
	Filter verify.ListFilter
	Page   []verify.Status
	Next   string
	Kinds  []daraja.Kind
}

// tokens searches tokens by reference, shortcode, kind and state (the
// filter stays in the URL).
func (c *Console) tokens(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := verify.ListFilter{Reference: q.Get("reference"), Shortcode: q.Get("shortcode"), Kind: daraja.Kind(q.Get("kind")),
		State: q.Get("state"), After: q.Get("after")}
	d := tokensData{Filter: f, Kinds: daraja.Kinds}
	p := page{Title: "Tokens", Nav: "tokens"}
	var err error
	if d.Page, d.Next, err = c.o.Tokens.List(r.Context(), f); err != nil {
		p.Error = err.Error()
	}
	p.Data = d
	c.render(w, r, http.StatusOK, "tokens.html", p)
}

// kindUse is what the stream holds for one of a token's kinds.
type kindUse struct {
	Kind daraja.Kind
	Seq  uint64 // the last callback's stream sequence; 0: waiting
	Tx   string // its transaction id, masked
	At   string // when it was received
	Err  string // the stream could not be read
}

type tokenData struct {
	S    verify.Status
	Uses []kindUse
}

// uses reads, for each of st's kinds, the last callback on the stream
// under <prefix>.cb.<kind>.<shortcode>.<token id>.
func (c *Console) uses(ctx context.Context, st verify.Status) []kindUse {
	out := make([]kindUse, 0, len(st.Kinds))
	s, serr := c.o.JS.Stream(ctx, c.o.Stream)
	subjects := publish.Subjects{Prefix: c.o.Prefix}
	for _, k := range st.Kinds {
		u := kindUse{Kind: k}
		if serr != nil {
			u.Err = "the stream could not be read"
			out = append(out, u)
			continue
		}
		m, err := s.GetLastMsgForSubject(ctx, subjects.Callback(string(k), st.Shortcode, st.ID))
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
		case err != nil:
			u.Err = "the stream could not be read"
		default:
			u.Seq = m.Sequence
			u.Tx = daraja.MaskTransactionID(k, m.Header.Get(publish.HeaderTransactionID))
			u.At = m.Header.Get(publish.HeaderReceivedAt)
			if u.At == "" {
				u.At = m.Time.UTC().Format(time.RFC3339)
			}
		}
		out = append(out, u)
	}
	return out
}

// token shows one token: its kinds, expiry, each kind's callback from the
// stream (or "waiting"), and a revoke button for sessions that may.
func (c *Console) token(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !verify.ValidID(id) {
		c.render(w, r, http.StatusNotFound, "error.html", page{Title: "Not found", Error: "No such token."})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	st, err := c.o.Tokens.Status(ctx, id)
	if errors.Is(err, verify.ErrNotFound) {
		c.render(w, r, http.StatusNotFound, "error.html", page{Title: "Not found", Error: "No such token."})
		return
	}
	if err != nil {
		c.render(w, r, http.StatusServiceUnavailable, "error.html", page{Title: "Error", Error: "The token could not be read."})
		return
	}
	d := tokenData{S: st, Uses: c.uses(ctx, st)}
	p := page{Title: "Token " + id, Nav: "tokens", Data: d}
	if r.URL.Query().Get("revoked") == "1" {
		p.Notice = "Token revoked."
	}
	c.render(w, r, http.StatusOK, "token.html", p)
}

// revoke revokes a token after confirmation (confirm=yes); read-only
// sessions are refused with 403.
func (c *Console) revoke(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if sessionOf(r).readOnly {
		c.render(w, r, http.StatusForbidden, "error.html", page{Title: "Refused", Error: "This key is read-only: it cannot revoke tokens."})
		return
	}
	if !verify.ValidID(id) {
		c.render(w, r, http.StatusNotFound, "error.html", page{Title: "Not found", Error: "No such token."})
		return
	}
	if r.PostFormValue("confirm") != "yes" {
		c.render(w, r, http.StatusOK, "confirm.html", page{Title: "Revoke " + id, Nav: "tokens", Data: id})
		return
	}
	if err := c.o.Tokens.Revoke(r.Context(), id); err != nil {
		status, msg := http.StatusServiceUnavailable, "Revoke failed: "+err.Error()
		if errors.Is(err, verify.ErrNotFound) {
			status, msg = http.StatusNotFound, "No such token."
		}
		c.render(w, r, status, "error.html", page{Title: "Error", Error: msg})
		return
	}
	c.log.Info("console: token revoked", zapID(id))
	http.Redirect(w, r, "/console/tokens/"+id+"?revoked=1", http.StatusSeeOther)
}
