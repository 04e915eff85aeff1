package daraja

// This file keeps the implementation of Parse as it was before the
// single-pass scanner (commit e335470), unchanged but for the ref prefix:
// FuzzParseDifferential compares Parse with refParse. It validated a body in
// several passes (utf8.Valid, json.Valid, refCheckJSON) and then decoded it
// with encoding/json.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"strconv"
	"strings"
	"unicode/utf8"
)

func refParse(k Kind, body []byte) (Callback, error) {
	var parse func([]byte) (Callback, error)
	switch k {
	case C2BValidation, C2BConfirmation:
		parse = refParseC2B
	case STKCallback:
		parse = refParseSTK
	case B2CResult, B2CTimeout, B2BResult, B2BTimeout, ReversalResult, ReversalTimeout,
		StatusResult, StatusTimeout, BalanceResult, BalanceTimeout:
		parse = func(b []byte) (Callback, error) { return refParseResult(k, b) }
	default:
		return Callback{}, fmt.Errorf("%w: unknown kind %q", ErrMalformed, k)
	}
	if err := refCheckDocument(body); err != nil {
		return Callback{}, err
	}
	cb, err := parse(body)
	if err != nil {
		return Callback{}, err
	}
	cb.Kind = k
	return cb, nil
}

// refCheckDocument refuses a body that is not exactly one JSON object, with
// nothing but JSON whitespace around it, read alike by every parser.
func refCheckDocument(body []byte) error {
	if !utf8.Valid(body) {
		return fmt.Errorf("%w: body is not UTF-8", ErrMalformed)
	}
	if bytes.HasPrefix(body, []byte("\xef\xbb\xbf")) {
		return fmt.Errorf("%w: body starts with a byte order mark", ErrMalformed)
	}
	// json.Valid takes one value and JSON whitespace only around it: a
	// trailing "}", "]" or second document makes it false.
	if !json.Valid(body) {
		return fmt.Errorf("%w: body is not a single JSON document", ErrMalformed)
	}
	if i := skipSpace(body, 0); i == len(body) || body[i] != '{' {
		return fmt.Errorf("%w: body is not a JSON object", ErrMalformed)
	}
	return refCheckJSON(body)
}

// refScalar reads a JSON string or number as text: strings unescaped and
// trimmed, numbers as written. Anything else (absent, null, boolean, object,
// array) is not text.
func refScalar(raw json.RawMessage) (string, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "", false
	}
	switch c := raw[0]; {
	case c == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", false
		}
		return strings.TrimSpace(s), true
	case c == '-' || (c >= '0' && c <= '9'):
		return string(raw), true
	}
	return "", false
}

// refInfo is an informational field: its text if it has some and is safe in a
// header, else "".
func refInfo(raw json.RawMessage) string {
	s, _ := refScalar(raw)
	if !safeIdentifier(s) {
		return ""
	}
	return s
}

// refIdentifier is an identifying field: "" when absent, null or empty; an
// error when it is there but of another type or not safe in a header.
func refIdentifier(raw json.RawMessage, name string) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	s, ok := refScalar(raw)
	if !ok {
		return "", fmt.Errorf("%w: %s is neither a string nor a number", ErrMalformed, name)
	}
	if !safeIdentifier(s) {
		return "", fmt.Errorf("%w: %s has characters or a length it cannot have", ErrMalformed, name)
	}
	return s, nil
}

// refDecode unmarshals body, which refCheckDocument accepted, into v: a struct
// whose containers are pointers (nil when the body has something else
// there), structs or lists, and whose leaves are json.RawMessage. A member of
// another type than v expects is left zero, never an error: encoding/json
// records the mismatch and goes on with the rest of the body.
func refDecode(body []byte, v any) error {
	err := json.Unmarshal(body, v)
	var mismatch *json.UnmarshalTypeError
	if err != nil && !errors.As(err, &mismatch) {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

type refC2BBody struct {
	TransID           json.RawMessage
	TransAmount       json.RawMessage
	BusinessShortCode json.RawMessage
	MSISDN            json.RawMessage
}

func refParseC2B(body []byte) (Callback, error) {
	var b refC2BBody
	if err := refDecode(body, &b); err != nil {
		return Callback{}, err
	}
	id, err := refIdentifier(b.TransID, "TransID")
	if err != nil {
		return Callback{}, err
	}
	shortcode, err := refIdentifier(b.BusinessShortCode, "BusinessShortCode")
	if err != nil {
		return Callback{}, err
	}
	if id == "" || shortcode == "" {
		return Callback{}, fmt.Errorf("%w: C2B body needs TransID and BusinessShortCode", ErrMalformed)
	}
	cb := Callback{TransactionID: id, Receipt: id, Shortcode: shortcode, Amount: refInfo(b.TransAmount)}
	cb.setMSISDN(refInfo(b.MSISDN))
	return cb, nil
}

// refItem is an entry of CallbackMetadata.Item (Name) or of ResultParameter and
// ReferenceItem (Key). Its fields are read leniently: an entry lacking
// Value, or naming itself with a number, is simply not used.
type refItem struct {
	Name  json.RawMessage
	Key   json.RawMessage
	Value json.RawMessage
}

// refList is a refList Daraja sends as an array, or as a single object when it
// has one entry. Entries that are not objects are left empty; a value that
// is neither an array nor an object is an empty refList. It never fails.
type refList []refItem

func (l *refList) UnmarshalJSON(b []byte) error {
	switch b = bytes.TrimSpace(b); {
	case len(b) > 0 && b[0] == '{':
		var one refItem
		_ = json.Unmarshal(b, &one) // refItem's fields take any value
		*l = refList{one}
	case len(b) > 0 && b[0] == '[':
		var many []refItem
		_ = json.Unmarshal(b, &many) // entries of another type stay empty
		*l = many
	}
	return nil
}

type refSTKBody struct {
	Body *struct {
		StkCallback *struct {
			CheckoutRequestID json.RawMessage
			ResultCode        json.RawMessage
			CallbackMetadata  struct{ Item refList }
		} `json:"stkCallback"`
	}
}

func refParseSTK(body []byte) (Callback, error) {
	var b refSTKBody
	if err := refDecode(body, &b); err != nil {
		return Callback{}, err
	}
	if b.Body == nil || b.Body.StkCallback == nil {
		return Callback{}, fmt.Errorf("%w: STK body needs Body.stkCallback", ErrMalformed)
	}
	s := b.Body.StkCallback
	id, err := refIdentifier(s.CheckoutRequestID, "CheckoutRequestID")
	if err != nil {
		return Callback{}, err
	}
	if id == "" {
		return Callback{}, fmt.Errorf("%w: stkCallback needs CheckoutRequestID", ErrMalformed)
	}
	cb := Callback{TransactionID: id, ResultCode: refInfo(s.ResultCode)}
	// With a name repeated, the first usable value wins.
	for _, it := range s.CallbackMetadata.Item {
		name, _ := refScalar(it.Name)
		v := refInfo(it.Value)
		switch {
		case v == "":
		case name == "Amount" && cb.Amount == "":
			cb.Amount = v
		case name == "MpesaReceiptNumber" && cb.Receipt == "":
			cb.Receipt = v
		case name == "PhoneNumber" && cb.MSISDN == "" && cb.MSISDNHash == "":
			cb.setMSISDN(v)
		}
	}
	return cb, nil
}

type refResultBody struct {
	Result *struct {
		ResultType               json.RawMessage
		ResultCode               json.RawMessage
		OriginatorConversationID json.RawMessage
		ConversationID           json.RawMessage
		TransactionID            json.RawMessage
		ResultParameters         struct{ ResultParameter refList }
	}
}

func refParseResult(k Kind, body []byte) (Callback, error) {
	var b refResultBody
	if err := refDecode(body, &b); err != nil {
		return Callback{}, err
	}
	r := b.Result
	if r == nil {
		return Callback{}, fmt.Errorf("%w: result body needs Result", ErrMalformed)
	}
	id, err := refIdentifier(r.ConversationID, "ConversationID")
	if err != nil {
		return Callback{}, err
	}
	originator := refInfo(r.OriginatorConversationID)
	if id == "" {
		if id, err = refIdentifier(r.OriginatorConversationID, "OriginatorConversationID"); err != nil {
			return Callback{}, err
		}
	}
	if id == "" {
		return Callback{}, fmt.Errorf("%w: Result needs ConversationID or OriginatorConversationID", ErrMalformed)
	}
	cb := Callback{
		TransactionID: id, Receipt: refInfo(r.TransactionID), ResultCode: refInfo(r.ResultCode),
		ResultType: refInfo(r.ResultType), OriginatorConversationID: originator,
	}
	receiptParam := ""
	// With a key repeated, the first usable value wins.
	for _, p := range r.ResultParameters.ResultParameter {
		key, _ := refScalar(p.Key)
		switch key {
		case "TransactionAmount", "Amount":
			if cb.Amount == "" {
				cb.Amount = refInfo(p.Value)
			}
		case "TransactionReceipt", "ReceiptNo":
			if receiptParam == "" {
				receiptParam = refInfo(p.Value)
			}
		case "ReceiverPartyPublicName":
			// B2C: "254722000000 - Jane Doe" or "0722000000 - Jane Doe".
			// B2B names an organisation there: not a phone number.
			if (k == B2CResult || k == B2CTimeout) && cb.MSISDN == "" {
				s, _ := refScalar(p.Value)
				if n := leadingNumber(s); phoneLike(n) {
					cb.MSISDN = n
				}
			}
		}
	}
	if receiptParam != "" {
		cb.Receipt = receiptParam
	}
	return cb, nil
}

// refCheckJSON guards against bodies that different JSON parsers would read
// differently: nesting deeper than maxDepth, an object naming a key twice
// (Go's decoder keeps the last, others the first; Go also matches keys
// without regard to case, so "TransID" and "transid" are the same key), keys
// that are not plain printable ASCII (escapes and non-ASCII letters fold in
// parser-specific ways), and numbers a float64 cannot hold (Go's decoder
// refuses them). It runs on a body json.Valid accepted, in one pass, in time
// linear in the body: an object compares each key with its earlier ones
// while it has fewer than smallObject of them, and keeps a set of key hashes
// beyond (a hash seen before is confirmed by comparing the keys).
func refCheckJSON(b []byte) error {
	type frame struct {
		object, expectKey bool
		keys              int                 // index of this object's first key in spans
		set               map[uint64]struct{} // hashes of the lower-cased keys, past smallObject
	}
	type span struct{ from, to int }
	var (
		stack [maxDepth]frame
		depth int
		spans []span // keys of the open objects, innermost last
		lower []byte
	)
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '{' || c == '[':
			if depth == maxDepth {
				return fmt.Errorf("%w: JSON nested deeper than %d", ErrMalformed, maxDepth)
			}
			stack[depth] = frame{object: c == '{', expectKey: c == '{', keys: len(spans)}
			depth++
		case c == '}' || c == ']':
			if depth > 0 {
				depth--
				spans = spans[:stack[depth].keys]
				stack[depth] = frame{}
			}
		case c == ',':
			if depth > 0 && stack[depth-1].object {
				stack[depth-1].expectKey = true
			}
		case c == ':':
			if depth > 0 {
				stack[depth-1].expectKey = false
			}
		case c == '"':
			j, escaped := i+1, false
			for ; j < len(b) && b[j] != '"'; j++ {
				if b[j] == '\\' {
					escaped = true
					j++
				}
			}
			from, to := i+1, min(j, len(b))
			i = j
			if depth == 0 || !stack[depth-1].expectKey {
				continue
			}
			f := &stack[depth-1]
			if escaped {
				return fmt.Errorf("%w: object key with an escape sequence", ErrMalformed)
			}
			key := b[from:to]
			for _, ch := range key {
				if ch < 0x20 || ch > 0x7e {
					return fmt.Errorf("%w: object key that is not printable ASCII", ErrMalformed)
				}
			}
			if n := len(spans) - f.keys; n < smallObject {
				for _, s := range spans[f.keys:] {
					if bytes.EqualFold(b[s.from:s.to], key) {
						return fmt.Errorf("%w: object key %q appears twice", ErrMalformed, truncateKey(key))
					}
				}
			} else {
				if f.set == nil {
					f.set = make(map[uint64]struct{}, 4*smallObject)
					for _, s := range spans[f.keys:] {
						lower = appendLower(lower[:0], b[s.from:s.to])
						f.set[maphash.Bytes(keySeed, lower)] = struct{}{}
					}
				}
				lower = appendLower(lower[:0], key)
				h := maphash.Bytes(keySeed, lower)
				if _, seen := f.set[h]; seen {
					// Most likely the same key; compare to be sure, so
					// that a collision never refuses a body.
					for _, s := range spans[f.keys:] {
						if bytes.EqualFold(b[s.from:s.to], key) {
							return fmt.Errorf("%w: object key %q appears twice", ErrMalformed, truncateKey(key))
						}
					}
				}
				f.set[h] = struct{}{}
			}
			spans = append(spans, span{from, to})
		case c == '-' || (c >= '0' && c <= '9'):
			j, exp := i, false
			for ; j < len(b) && (b[j] >= '0' && b[j] <= '9' || b[j] == '.' || b[j] == 'e' || b[j] == 'E' || b[j] == '+' || b[j] == '-'); j++ {
				exp = exp || b[j] == 'e' || b[j] == 'E'
			}
			// Only an exponent or more than 308 digits can leave float64's range.
			if exp || j-i > 308 {
				if _, err := strconv.ParseFloat(string(b[i:j]), 64); err != nil {
					return fmt.Errorf("%w: number %.20s… out of range", ErrMalformed, b[i:j])
				}
			}
			i = j - 1
		}
	}
	return nil
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
}
