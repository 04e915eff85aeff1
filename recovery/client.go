// Package recovery asks Daraja about callbacks that never came (STK Push
// Query, Transaction Status, Pull Transactions) and publishes the answer
// on <prefix>.recovered.<kind>.<shortcode>.<token id>.
package recovery

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// eat is Daraja's clock (East Africa Time, UTC+3, no daylight saving).
var eat = time.FixedZone("EAT", 3*60*60)

// Timestamp is Daraja's yyyyMMddHHmmss in EAT.
func Timestamp(t time.Time) string { return t.In(eat).Format("20060102150405") }

// STKPassword is base64(shortcode + passkey + timestamp).
func STKPassword(shortcode, passkey, timestamp string) string {
	return base64.StdEncoding.EncodeToString([]byte(shortcode + passkey + timestamp))
}

// SecurityCredential encrypts the initiator password with Safaricom's
// public certificate (RSA PKCS#1 v1.5) and returns it in base64.
func SecurityCredential(password string, certPEM []byte) (string, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return "", errors.New("recovery: certificate: no PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", fmt.Errorf("recovery: certificate: %w", err)
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return "", errors.New("recovery: certificate: not an RSA key")
	}
	//lint:ignore SA1019 Daraja specifies the SecurityCredential as PKCS #1 v1.5 with its certificate; there is no other choice.
	out, err := rsa.EncryptPKCS1v15(rand.Reader, pub, []byte(password))
	if err != nil {
		return "", fmt.Errorf("recovery: encrypt initiator password: %w", err)
	}
	return base64.StdEncoding.EncodeToString(out), nil
}

// APIError is a Daraja answer other than success.
type APIError struct {
	Status  int    // HTTP status
	Code    string // Daraja's errorCode (e.g. 500.001.1001), or the fault's
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("daraja: HTTP %d %s: %s", e.Status, e.Code, e.Message)
}

// Daraja error codes the client acts on.
const (
	CodeInvalidToken = "404.001.03"   // Invalid Access Token
	CodeProcessing   = "500.001.1001" // the transaction is being processed (STK query)
)

// Retryable reports whether trying again later may succeed.
func (e *APIError) Retryable() bool {
	return e.Status == http.StatusTooManyRequests || e.Status >= 500 || e.Code == CodeProcessing
}

func (e *APIError) invalidToken() bool {
	return e.Status == http.StatusUnauthorized || e.Code == CodeInvalidToken
}

// Retryable reports whether err may pass on a later try: network errors
// and Daraja's retryable answers.
func Retryable(err error) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Retryable()
	}
	return !errors.Is(err, context.Canceled)
}

// Client calls Daraja with one app's client credentials. Its OAuth token
// is cached until shortly before expires_in, shared by concurrent calls
// (one fetch at a time), and renewed once on an invalid-token answer. The
// token and the credentials are never logged.
type Client struct {
	base, key, secret string
	http              *http.Client
	now               func() time.Time

	mu      sync.Mutex
	token   string
	expires time.Time
	flight  chan struct{} // closed when the fetch under way ends
	fetchEr error
	fetches int
}

// NewClient returns a client for the app (key, secret) at base.
func NewClient(base, key, secret string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Timeout: 15 * time.Second}
	}
	return &Client{base: strings.TrimRight(base, "/"), key: key, secret: secret, http: hc, now: time.Now}
}

// tokenMargin: a cached token is renewed this long before it expires.
const tokenMargin = 60 * time.Second

// Fetches counts the OAuth token fetches made (for tests and metrics).
func (c *Client) Fetches() int { c.mu.Lock(); defer c.mu.Unlock(); return c.fetches }

// accessToken returns a valid token, fetching one if none is cached (or
// stale is the cached one, found invalid).
func (c *Client) accessToken(ctx context.Context, stale string) (string, error) {
	for {
		c.mu.Lock()
		if c.token != "" && c.token != stale && c.now().Before(c.expires) {
			t := c.token
			c.mu.Unlock()
			return t, nil
		}
		if c.flight != nil {
			ch := c.flight
			c.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return "", ctx.Err()
			}
			c.mu.Lock()
			err := c.fetchEr
			c.mu.Unlock()
			if err != nil {
				return "", err
			}
			stale = ""
			continue
		}
		ch := make(chan struct{})
		c.flight = ch
		c.fetches++
		c.mu.Unlock()
		tok, exp, err := c.fetchToken(ctx)
		c.mu.Lock()
		c.flight, c.fetchEr = nil, err
		if err == nil {
			c.token, c.expires = tok, exp
		}
		c.mu.Unlock()
		close(ch)
		return tok, err
	}
}

func (c *Client) fetchToken(ctx context.Context) (string, time.Time, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/oauth/v1/generate?grant_type=client_credentials", nil)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("recovery: oauth: %w", err)
	}
	req.SetBasicAuth(c.key, c.secret)
	resp, err := c.http.Do(req)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("recovery: oauth: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return "", time.Time{}, fmt.Errorf("recovery: oauth: %w", apiError(resp.StatusCode, body))
	}
	var out struct {
		AccessToken string      `json:"access_token"`
		ExpiresIn   json.Number `json:"expires_in"` // Daraja sends a string
	}
	if err := json.Unmarshal(body, &out); err != nil || out.AccessToken == "" {
		return "", time.Time{}, errors.New("recovery: oauth: answer holds no access_token")
	}
	secs, err := strconv.ParseFloat(out.ExpiresIn.String(), 64)
	if err != nil || secs <= 0 {
		secs = 3599
	}
	ttl := time.Duration(secs) * time.Second
	if ttl > 2*tokenMargin {
		ttl -= tokenMargin
	} else {
		ttl /= 2
	}
	return out.AccessToken, c.now().Add(ttl), nil
}

// apiError reads Daraja's error shapes: {"requestId","errorCode",
// "errorMessage"} and the gateway's {"fault":{"faultstring","detail":
// {"errorcode"}}}.
func apiError(status int, body []byte) *APIError {
	var e struct {
		ErrorCode    string `json:"errorCode"`
		ErrorMessage string `json:"errorMessage"`
		Fault        struct {
			FaultString string `json:"faultstring"`
			Detail      struct {
				ErrorCode string `json:"errorcode"`
			} `json:"detail"`
		} `json:"fault"`
	}
	_ = json.Unmarshal(body, &e)
	ae := &APIError{Status: status, Code: e.ErrorCode, Message: e.ErrorMessage}
	if ae.Code == "" {
		ae.Code, ae.Message = e.Fault.Detail.ErrorCode, e.Fault.FaultString
	}
	if len(ae.Message) > 200 {
		ae.Message = ae.Message[:200]
	}
	return ae
}

// withoutTokens takes the access tokens out of an error message: Daraja's
// 401.002.01 repeats the token it was sent ("Error Occurred - Invalid
// Access Token - <token>"), and the message goes on to logs and the
// published unrecoverable answer.
func withoutTokens(msg string, toks ...string) string {
	if i := strings.Index(msg, "Invalid Access Token - "); i >= 0 {
		msg = msg[:i+len("Invalid Access Token")]
	}
	for _, t := range toks {
		if t != "" {
			msg = strings.ReplaceAll(msg, t, "…")
		}
	}
	return msg
}

// post sends a JSON request with the bearer token, renewing the token once
// on an invalid-token answer, and returns the 200 answer's body.
func (c *Client) post(ctx context.Context, path string, in any) ([]byte, error) {
	data, err := json.Marshal(in)
	if err != nil {
		return nil, err
	}
	stale := ""
	for try := 0; ; try++ {
		tok, err := c.accessToken(ctx, stale)
		if err != nil {
			return nil, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+path, bytes.NewReader(data))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.http.Do(req)
		if err != nil {
			return nil, fmt.Errorf("recovery: %s: %w", path, err)
		}
		body, rerr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if rerr != nil {
			return nil, fmt.Errorf("recovery: %s: %w", path, rerr)
		}
		if resp.StatusCode == http.StatusOK {
			return body, nil
		}
		ae := apiError(resp.StatusCode, body)
		ae.Message = withoutTokens(ae.Message, tok, stale)
		if ae.invalidToken() && try == 0 {
			stale = tok
			continue
		}
		return nil, fmt.Errorf("recovery: %s: %w", path, ae)
	}
}

// STKQuery is STK Push Query's request.
type STKQuery struct {
	BusinessShortCode string
	Password          string
	Timestamp         string
	CheckoutRequestID string
}

// QuerySTK asks for an STK push's result; the answer is Daraja's body.
func (c *Client) QuerySTK(ctx context.Context, q STKQuery) ([]byte, error) {
	return c.post(ctx, "/mpesa/stkpushquery/v1/query", q)
}

// StatusQuery is Transaction Status's request.
type StatusQuery struct {
	Initiator              string
	SecurityCredential     string
	CommandID              string
	TransactionID          string `json:",omitempty"`
	OriginalConversationID string `json:",omitempty"`
	PartyA                 string
	IdentifierType         string
	ResultURL              string
	QueueTimeOutURL        string
	Remarks                string
	Occasion               string
}

// QueryStatus sends a Transaction Status query; the answer (its
// acknowledgement) is Daraja's body, the result comes to ResultURL.
func (c *Client) QueryStatus(ctx context.Context, q StatusQuery) ([]byte, error) {
	q.CommandID = "TransactionStatusQuery"
	return c.post(ctx, "/mpesa/transactionstatus/v1/query", q)
}

// PullQuery is Pull Transactions' request (dates "2006-01-02 15:04:05" EAT).
type PullQuery struct {
	ShortCode   string
	StartDate   string
	EndDate     string
	OffSetValue string
}

// QueryPull pulls a shortcode's C2B transactions in a window.
func (c *Client) QueryPull(ctx context.Context, q PullQuery) ([]byte, error) {
	return c.post(ctx, "/pulltransactions/v1/query", q)
}
