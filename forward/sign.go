package forward

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
)

// WebhookID is the Standard Webhooks id of a callback: "msg_" and the
// lowercase hex of the first 16 bytes of SHA-256 of its Nats-Msg-Id. The
// same on every attempt, free of dots.
func WebhookID(natsMsgID string) string {
	sum := sha256.Sum256([]byte(natsMsgID))
	return "msg_" + hex.EncodeToString(sum[:16])
}

// signer holds a destination's decoded secrets.
type signer struct{ keys [][]byte }

// newSigner decodes "whsec_<base64>" secrets (padded or not).
func newSigner(secrets []string) (signer, error) {
	var s signer
	for i, sec := range secrets {
		b64, ok := strings.CutPrefix(sec, "whsec_")
		if !ok {
			return signer{}, fmt.Errorf("forward: secrets[%d] is not a whsec_ secret", i)
		}
		key, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			if key, err = base64.RawStdEncoding.DecodeString(b64); err != nil {
				return signer{}, fmt.Errorf("forward: secrets[%d] is not whsec_ and base64", i)
			}
		}
		s.keys = append(s.keys, key)
	}
	if len(s.keys) == 0 {
		return signer{}, fmt.Errorf("forward: no signing secret")
	}
	return s, nil
}

// sign returns the webhook-signature value for id, timestamp (Unix
// seconds) and body: "v1,<base64 HMAC-SHA256 of id.timestamp.body>" per
// secret, space separated.
func (s signer) sign(id string, ts int64, body []byte) string {
	var out []string
	for _, k := range s.keys {
		m := hmac.New(sha256.New, k)
		m.Write([]byte(id))
		m.Write([]byte{'.'})
		m.Write([]byte(strconv.FormatInt(ts, 10)))
		m.Write([]byte{'.'})
		m.Write(body)
		out = append(out, "v1,"+base64.StdEncoding.EncodeToString(m.Sum(nil)))
	}
	return strings.Join(out, " ")
}
