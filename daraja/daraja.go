// Package daraja knows the shapes of Safaricom Daraja callbacks: the kinds,
// their endpoint paths, and a tolerant parser that extracts each callback's
// identifying fields.
package daraja

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Kind names a callback kind, e.g. "stk.callback". It is also a NATS
// subject fragment.
type Kind string

// The callback kinds, one per public endpoint.
const (
	C2BValidation    Kind = "c2b.validation"
	C2BConfirmation  Kind = "c2b.confirmation"
	STKCallback      Kind = "stk.callback"
	B2CResult        Kind = "b2c.result"
	B2CTimeout       Kind = "b2c.timeout"
	B2BResult        Kind = "b2b.result"
	B2BTimeout       Kind = "b2b.timeout"
	ReversalResult   Kind = "reversal.result"
	ReversalTimeout  Kind = "reversal.timeout"
	StatusResult     Kind = "status.result"
	StatusTimeout    Kind = "status.timeout"
	BalanceResult    Kind = "balance.result"
	BalanceTimeout   Kind = "balance.timeout"
	maxIdentifierLen      = 128
)

// Kinds lists every kind in endpoint-table order.
var Kinds = []Kind{
	C2BValidation, C2BConfirmation, STKCallback,
	B2CResult, B2CTimeout, B2BResult, B2BTimeout,
	ReversalResult, ReversalTimeout, StatusResult, StatusTimeout,
	BalanceResult, BalanceTimeout,
}

// Path is the kind's endpoint path: "stk.callback" → "/stk/callback".
func (k Kind) Path() string { return "/" + strings.Replace(string(k), ".", "/", 1) }

// Valid reports whether k is one of Kinds.
func (k Kind) Valid() bool {
	for _, x := range Kinds {
		if x == k {
			return true
		}
	}
	return false
}

// IsC2B reports whether k is a C2B kind (registered URLs, reusable tokens).
func (k Kind) IsC2B() bool { return k == C2BValidation || k == C2BConfirmation }

// KindForPath maps an endpoint path to its kind.
func KindForPath(path string) (Kind, bool) {
	k, ok := byPath[path]
	return k, ok
}

var byPath = func() map[string]Kind {
	m := make(map[string]Kind, len(Kinds))
	for _, k := range Kinds {
		m[k.Path()] = k
	}
	return m
}()

// Callback is what the edge needs to know of a callback body. The body itself
// travels untouched; these fields drive checks, subjects and headers.
type Callback struct {
	Kind Kind
	// TransactionID identifies the callback for de-duplication: TransID
	// for C2B, CheckoutRequestID for STK, ConversationID for results and
	// timeouts (their TransactionID is a placeholder on failures).
	TransactionID string
	// Receipt is the M-Pesa receipt when the body carries one
	// (C2B TransID, STK MpesaReceiptNumber, Result.TransactionID).
	Receipt string
	// Shortcode is the business shortcode named by the body, if any (C2B
	// BusinessShortCode). Other kinds take the shortcode from the token.
	Shortcode string
	// ResultCode as Daraja sent it, number or string, as text; empty for C2B.
	ResultCode string
	// Amount as text, empty when the body names none.
	Amount string
	// MSISDN is the payer or payee phone number if present. Log it only
	// through MaskMSISDN.
	MSISDN string
}

// ErrMalformed is wrapped by every Parse error.
var ErrMalformed = errors.New("malformed callback")

// Parse extracts the identifying fields of a callback of kind k from body.
// It accepts numbers or strings where Daraja sends either, and ignores
// fields it does not know. A body that is not a single JSON object of the
// kind's shape, or lacks its identifying fields, is ErrMalformed.
func Parse(k Kind, body []byte) (Callback, error) {
	if !utf8.Valid(body) {
		return Callback{}, fmt.Errorf("%w: body is not UTF-8", ErrMalformed)
	}
	var cb Callback
	var err error
	switch k {
	case C2BValidation, C2BConfirmation:
		cb, err = parseC2B(body)
	case STKCallback:
		cb, err = parseSTK(body)
	case B2CResult, B2CTimeout, B2BResult, B2BTimeout, ReversalResult, ReversalTimeout,
		StatusResult, StatusTimeout, BalanceResult, BalanceTimeout:
		cb, err = parseResult(body)
	default:
		return Callback{}, fmt.Errorf("%w: unknown kind %q", ErrMalformed, k)
	}
	if err != nil {
		return Callback{}, err
	}
	cb.Kind = k
	for _, f := range [...]struct{ name, v string }{
		{"transaction id", cb.TransactionID}, {"receipt", cb.Receipt}, {"shortcode", cb.Shortcode},
		{"result code", cb.ResultCode}, {"amount", cb.Amount}, {"msisdn", cb.MSISDN},
	} {
		if !safeIdentifier(f.v) {
			return Callback{}, fmt.Errorf("%w: %s has characters or a length it cannot have", ErrMalformed, f.name)
		}
	}
	return cb, nil
}

// safeIdentifier admits what can travel in a NATS header and a subject-free
// message id: printable ASCII without control characters, bounded length.
func safeIdentifier(s string) bool {
	if len(s) > maxIdentifierLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// Text is a JSON value that Daraja sends as a string or a number; it keeps
// the text. null and absent are "".
type Text string

// UnmarshalJSON accepts a string, a number, a boolean or null.
func (t *Text) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case len(b) == 0 || string(b) == "null":
		*t = ""
	case b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*t = Text(strings.TrimSpace(s))
	case b[0] == '-' || (b[0] >= '0' && b[0] <= '9'):
		n := json.Number(b)
		if _, err := strconv.ParseFloat(string(n), 64); err != nil {
			return fmt.Errorf("number %s out of range", b)
		}
		*t = Text(n)
	case string(b) == "true" || string(b) == "false":
		*t = Text(b)
	default:
		return fmt.Errorf("want a string or number, got %.20s", b)
	}
	return nil
}

type c2bBody struct {
	TransactionType   Text
	TransID           Text
	TransAmount       Text
	BusinessShortCode Text
	BillRefNumber     Text
	MSISDN            Text
}

func parseC2B(body []byte) (Callback, error) {
	var b c2bBody
	if err := decodeObject(body, &b); err != nil {
		return Callback{}, err
	}
	if b.TransID == "" || b.BusinessShortCode == "" {
		return Callback{}, fmt.Errorf("%w: C2B body needs TransID and BusinessShortCode", ErrMalformed)
	}
	return Callback{
		TransactionID: string(b.TransID),
		Receipt:       string(b.TransID),
		Shortcode:     string(b.BusinessShortCode),
		Amount:        string(b.TransAmount),
		MSISDN:        string(b.MSISDN),
	}, nil
}

type item struct {
	Name  Text
	Key   Text
	Value Text
}

type stkBody struct {
	Body *struct {
		StkCallback *struct {
			MerchantRequestID string
			CheckoutRequestID string
			ResultCode        *Text
			ResultDesc        Text
			CallbackMetadata  *struct {
				Item []item
			}
		} `json:"stkCallback"`
	}
}

func parseSTK(body []byte) (Callback, error) {
	var b stkBody
	if err := decodeObject(body, &b); err != nil {
		return Callback{}, err
	}
	if b.Body == nil || b.Body.StkCallback == nil {
		return Callback{}, fmt.Errorf("%w: STK body needs Body.stkCallback", ErrMalformed)
	}
	s := b.Body.StkCallback
	if s.CheckoutRequestID == "" || s.ResultCode == nil || *s.ResultCode == "" {
		return Callback{}, fmt.Errorf("%w: stkCallback needs CheckoutRequestID and ResultCode", ErrMalformed)
	}
	cb := Callback{TransactionID: s.CheckoutRequestID, ResultCode: string(*s.ResultCode)}
	if s.CallbackMetadata != nil {
		for _, it := range s.CallbackMetadata.Item {
			switch it.Name {
			case "Amount":
				cb.Amount = string(it.Value)
			case "MpesaReceiptNumber":
				cb.Receipt = string(it.Value)
			case "PhoneNumber":
				cb.MSISDN = string(it.Value)
			}
		}
	}
	return cb, nil
}

type resultBody struct {
	Result *struct {
		ResultType               Text
		ResultCode               *Text
		ResultDesc               Text
		OriginatorConversationID Text
		ConversationID           Text
		TransactionID            Text
		ResultParameters         *struct {
			ResultParameter params
		}
	}
}

// params is ResultParameter, which Daraja sends as a list, or as a single
// object when there is one entry.
type params []item

func (p *params) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '{' {
		var one item
		if err := json.Unmarshal(b, &one); err != nil {
			return err
		}
		*p = params{one}
		return nil
	}
	return json.Unmarshal(b, (*[]item)(p))
}

func parseResult(body []byte) (Callback, error) {
	var b resultBody
	if err := decodeObject(body, &b); err != nil {
		return Callback{}, err
	}
	r := b.Result
	if r == nil {
		return Callback{}, fmt.Errorf("%w: result body needs Result", ErrMalformed)
	}
	id := r.ConversationID
	if id == "" {
		id = r.OriginatorConversationID
	}
	if id == "" || r.ResultCode == nil || *r.ResultCode == "" {
		return Callback{}, fmt.Errorf("%w: Result needs ConversationID or OriginatorConversationID, and ResultCode", ErrMalformed)
	}
	cb := Callback{TransactionID: string(id), Receipt: string(r.TransactionID), ResultCode: string(*r.ResultCode)}
	if r.ResultParameters != nil {
		for _, p := range r.ResultParameters.ResultParameter {
			switch p.Key {
			case "TransactionAmount", "Amount":
				cb.Amount = string(p.Value)
			case "TransactionReceipt", "ReceiptNo":
				if p.Value != "" {
					cb.Receipt = string(p.Value)
				}
			case "ReceiverPartyPublicName":
				// "254708374149 - John Doe"
				number, _, _ := strings.Cut(string(p.Value), " ")
				cb.MSISDN = number
			}
		}
	}
	return cb, nil
}

// maxDepth bounds JSON nesting; Daraja bodies are four levels deep.
const maxDepth = 32

// decodeObject decodes a single JSON object into v, refusing anything after
// it and nesting deeper than maxDepth.
func decodeObject(body []byte, v any) error {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return fmt.Errorf("%w: body is not a JSON object", ErrMalformed)
	}
	if err := checkJSON(trimmed); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: data after the JSON object", ErrMalformed)
	}
	if _, err := dec.Token(); err == nil {
		return fmt.Errorf("%w: data after the JSON object", ErrMalformed)
	}
	return nil
}

// checkJSON guards against bodies that different JSON parsers would read
// differently: nesting deeper than maxDepth, an object naming a key twice
// (Go's decoder keeps the last, others the first; Go also matches keys
// without regard to case, so "TransID" and "transid" are the same key), and
// keys that are not plain printable ASCII (escapes and non-ASCII letters
// fold in parser-specific ways). It runs before decoding; it does not
// otherwise validate the JSON.
func checkJSON(b []byte) error {
	type frame struct {
		object    bool
		expectKey bool
		keys      [][]byte
	}
	var stack []frame
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case '{', '[':
			if len(stack) >= maxDepth {
				return fmt.Errorf("%w: JSON nested deeper than %d", ErrMalformed, maxDepth)
			}
			stack = append(stack, frame{object: c == '{', expectKey: c == '{'})
		case '}', ']':
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
		case ',':
			if n := len(stack); n > 0 && stack[n-1].object {
				stack[n-1].expectKey = true
			}
		case ':':
			if n := len(stack); n > 0 {
				stack[n-1].expectKey = false
			}
		case '"':
			j := i + 1
			escaped := false
			for ; j < len(b) && b[j] != '"'; j++ {
				if b[j] == '\\' {
					escaped = true
					j++
				}
			}
			str := b[i+1 : min(j, len(b))]
			i = j
			n := len(stack)
			if n == 0 || !stack[n-1].object || !stack[n-1].expectKey {
				continue
			}
			if escaped {
				return fmt.Errorf("%w: object key with an escape sequence", ErrMalformed)
			}
			for _, ch := range str {
				if ch < 0x20 || ch > 0x7e {
					return fmt.Errorf("%w: object key that is not printable ASCII", ErrMalformed)
				}
			}
			for _, k := range stack[n-1].keys {
				if bytes.EqualFold(k, str) {
					return fmt.Errorf("%w: object key %q appears twice", ErrMalformed, truncateKey(str))
				}
			}
			stack[n-1].keys = append(stack[n-1].keys, str)
		}
	}
	return nil
}

func truncateKey(k []byte) string {
	if len(k) > 32 {
		k = k[:32]
	}
	return string(k)
}

// MaskMSISDN hides the middle of a phone number: 254708374149 →
// 2547******49. Anything shorter than 7 characters is fully masked.
func MaskMSISDN(s string) string {
	if s == "" {
		return ""
	}
	if len(s) < 7 {
		return strings.Repeat("*", len(s))
	}
	return s[:4] + strings.Repeat("*", len(s)-6) + s[len(s)-2:]
}
