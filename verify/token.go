// Package verify issues and checks the tokens that prove a callback was
// expected: random secrets carried in callback URLs, stored only as hashes
// in a JetStream key-value bucket, bound to kinds, a shortcode and a
// reference, single use unless issued reusable.
package verify

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"slices"
	"time"

	"github.com/daraja-edge/daraja-edge/daraja"
)

// Token states.
const (
	StateIssued   = "issued"
	StateConsumed = "consumed"
	StateExpired  = "expired"
	StateRevoked  = "revoked"
)

const (
	idBytes     = 10 // 80 bits: the public handle, safe to log
	secretBytes = 20 // 160 bits: the part only Daraja and the business see
	tokenLen    = (idBytes + secretBytes) * 4 / 3
	idPrefix    = "tok_"
)

var idEncoding = base32.StdEncoding.WithPadding(base32.NoPadding)

// Record is what the bucket holds for one token. It never holds the token.
type Record struct {
	ID        string        `json:"id"`
	Hash      string        `json:"hash"` // hex SHA-256 of the token
	Kinds     []daraja.Kind `json:"kinds"`
	Shortcode string        `json:"shortcode"`
	Reference string        `json:"reference,omitempty"`
	Reusable  bool          `json:"reusable,omitempty"`
	IssuedAt  time.Time     `json:"issued_at"`
	ExpiresAt time.Time     `json:"expires_at"` // zero: never (reusable tokens)
	// State is issued or revoked: whether a callback used the token is
	// read from the stream, where the callback itself is.
	State     string     `json:"state"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	// ForwardPath is the relative path and query the forwarder appends
	// for this token's callbacks (forward:), if the business gave one.
	ForwardPath string `json:"forward_path,omitempty"`
	// CheckoutRequestID and OriginatorConversationID are what Daraja
	// answered the business's request, recorded (PATCH) so a missing
	// callback can be recovered by a query.
	CheckoutRequestID        string `json:"checkout_request_id,omitempty"`
	OriginatorConversationID string `json:"originator_conversation_id,omitempty"`
	// RotatedTo names the token that replaced this one.
	RotatedTo string `json:"rotated_to,omitempty"`
}

// Allows reports whether the token was issued for kind k.
func (r *Record) Allows(k daraja.Kind) bool { return slices.Contains(r.Kinds, k) }

// StateAt is the token's state in the bucket as seen at now: an issued
// token past its expiry is expired.
func (r *Record) StateAt(now time.Time) string {
	if r.State == StateIssued && !r.ExpiresAt.IsZero() && !now.Before(r.ExpiresAt) {
		return StateExpired
	}
	return r.State
}

// newToken returns a fresh token and its id. The token is URL-safe base64
// of id bytes followed by secret bytes, so a token names its own record.
// Tokens holding a word Daraja refuses in callback URLs (about 1 in 270)
// are drawn again, so a handed-out URL is never refused by Daraja.
func newToken() (token, id string) {
	var b [idBytes + secretBytes]byte
	for {
		_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
		token = base64.RawURLEncoding.EncodeToString(b[:])
		if !daraja.HasRefusedWord(token) {
			return token, idFromBytes(b[:idBytes])
		}
	}
}

func idFromBytes(b []byte) string {
	return idPrefix + toLower(idEncoding.EncodeToString(b))
}

func toLower(s string) string {
	out := []byte(s)
	for i, c := range out {
		if c >= 'A' && c <= 'Z' {
			out[i] = c + 'a' - 'A'
		}
	}
	return string(out)
}

// ErrTokenFormat means a string cannot be a token this edge issued.
var ErrTokenFormat = errors.New("not a token")

// ParseToken returns the id a token claims to have. It checks the format
// only; the secret is checked against the stored hash by the Store.
func ParseToken(token string) (id string, err error) {
	key, ok := parseKey(token)
	if !ok {
		return "", ErrTokenFormat
	}
	return idFromBytes(key[:]), nil
}

// parseKey returns the id bytes a well-formed token claims.
func parseKey(token string) (key tokenKey, ok bool) {
	if len(token) != tokenLen {
		return key, false
	}
	var b [idBytes + secretBytes]byte
	n, err := base64.RawURLEncoding.Decode(b[:], []byte(token))
	if err != nil || n != len(b) {
		return key, false
	}
	// Only the canonical encoding is a token: no two strings name one
	// token. 30 bytes encode to 40 characters with no partial group, so
	// a successful decode of the right length is canonical.
	copy(key[:], b[:idBytes])
	return key, true
}

// keyOf returns the id bytes of a token id ("tok_" + base32).
func keyOf(id string) (key tokenKey, ok bool) {
	if !ValidID(id) {
		return key, false
	}
	var up [16]byte
	for i := range up {
		c := id[len(idPrefix)+i]
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		up[i] = c
	}
	n, err := idEncoding.Decode(key[:], up[:])
	return key, err == nil && n == idBytes
}

// ValidID reports whether s has the form of a token id.
func ValidID(s string) bool {
	if len(s) != len(idPrefix)+16 || s[:len(idPrefix)] != idPrefix {
		return false
	}
	for _, c := range []byte(s[len(idPrefix):]) {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// decodeHashPrefix decodes the first half of a record's hex SHA-256.
func decodeHashPrefix(h string, out *[16]byte) bool {
	if len(h) != 2*sha256.Size {
		return false
	}
	var full [sha256.Size]byte
	if _, err := hex.Decode(full[:], []byte(h)); err != nil {
		return false
	}
	copy(out[:], full[:16])
	return true
}
