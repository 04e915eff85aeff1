// Package daraja knows the shapes of Safaricom Daraja callbacks: the kinds,
// their endpoint paths, and a tolerant parser that extracts each callback's
// identifying fields.
//
// # What Parse refuses
//
// The edge passes every accepted body on byte for byte, so Parse refuses a
// body that some JSON parser downstream would read differently from the edge,
// or not at all, and a body that cannot be identified. Nothing else:
//
//   - Not a single JSON object (RFC 8259): invalid UTF-8, anything but JSON
//     whitespace (space, tab, CR, LF) before or after the one document — a
//     second document, a stray "}" or "]", a NUL, a form feed. A UTF-8 byte
//     order mark before the object is refused too, not stripped: RFC 8259
//     forbids it in JSON sent over a network, and the stored body is the
//     request body unchanged, so a stripped BOM would still reach consumers.
//   - Bodies parsers disagree on: an object naming a key twice, comparing
//     without regard to ASCII case as Go's decoder does (one parser keeps the
//     first, another the last, and a twin "transid" could let a consumer read
//     another transaction id than the edge did); keys with escape sequences
//     or outside printable ASCII; nesting deeper than 32; numbers beyond the
//     range of a float64.
//   - Not the kind's shape: C2B is an object, STK needs Body.stkCallback, the
//     results and timeouts need Result (QueueTimeOut bodies are undocumented:
//     they are assumed to have the Result shape and nothing is required of
//     them beyond the id that names them).
//   - Missing or unusable identifying fields: the transaction id that becomes
//     the Nats-Msg-Id (C2B TransID, STK CheckoutRequestID, Result
//     ConversationID or, when that is absent or empty, OriginatorConversationID),
//     and the C2B BusinessShortCode. They must be a string or a number made
//     of at most 128 printable ASCII characters: they travel in NATS headers.
//
// Every other field is informational: when it is absent, of another type,
// odd (letters in a result code, a masked or hashed MSISDN) or not safe in
// a header, it is simply not extracted. Such a callback is never refused.
//
// # What a body can hold
//
// Phone numbers, in the open or barely hidden: C2B MSISDN (full, masked, or
// a SHA-256 a dictionary reverses), STK PhoneNumber, B2C names, and the
// suffix of every STK CheckoutRequestID issued since 2022. Log them only
// through MaskMSISDN and MaskTransactionID. A B2B result may also echo the
// merchant's QueueTimeOutURL in ReferenceData, with its ?t= token: Parse
// extracts nothing from ReferenceData, and the body itself must be handled
// as holding a secret.
package daraja

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
// travels untouched; these fields drive checks, subjects and headers. Every
// field is empty or at most 128 printable ASCII characters.
type Callback struct {
	Kind Kind
	// TransactionID identifies the callback for de-duplication: TransID
	// for C2B, CheckoutRequestID for STK, ConversationID for results and
	// timeouts (their TransactionID is a placeholder on failures), or
	// OriginatorConversationID when the body has no ConversationID. Never
	// empty in a parsed callback. Log it only through MaskTransactionID:
	// an STK CheckoutRequestID ends with the payer's phone number.
	TransactionID string
	// Receipt is the M-Pesa receipt when the body carries one
	// (C2B TransID, STK MpesaReceiptNumber, Result.TransactionID or the
	// TransactionReceipt / ReceiptNo result parameter).
	Receipt string
	// Shortcode is the business shortcode named by the body, if any (C2B
	// BusinessShortCode, never empty for C2B). Other kinds take the
	// shortcode from the token.
	Shortcode string
	// ResultCode as Daraja sent it, number or string, as text ("0",
	// "1032", "SFC_IC0003"); empty for C2B and when the body has none.
	ResultCode string
	// Amount as text, empty when the body names none.
	Amount string
	// MSISDN is the payer's or payee's phone number, full ("254708374149",
	// "0722000000") or masked as Daraja sends it ("2547 ***** 126"); empty
	// when the body holds nothing shaped like a phone number. Log it only
	// through MaskMSISDN.
	MSISDN string
	// ResultType as text, for results and timeouts.
	ResultType string
	// OriginatorConversationID of a result or timeout: the id Daraja
	// answered the business's request with.
	OriginatorConversationID string
	// MSISDNHash is the hex SHA-256 that C2B v1 sends in place of the
	// MSISDN. A hash of a phone number is as good as the number to anyone
	// who hashes the ~10⁹ candidates: log it only through MaskMSISDN.
	MSISDNHash string
}

// ErrMalformed is wrapped by every Parse error.
var ErrMalformed = errors.New("malformed callback")

// Parse extracts the identifying fields of a callback of kind k from body.
// The package documentation lists what it refuses; every refusal wraps
// ErrMalformed. Informational fields that are absent, odd or unsafe are
// left empty.
func Parse(k Kind, body []byte) (Callback, error) {
	var parse func([]byte) (Callback, error)
	switch k {
	case C2BValidation, C2BConfirmation:
		parse = parseC2B
	case STKCallback:
		parse = parseSTK
	case B2CResult, B2CTimeout, B2BResult, B2BTimeout, ReversalResult, ReversalTimeout,
		StatusResult, StatusTimeout, BalanceResult, BalanceTimeout:
		parse = func(b []byte) (Callback, error) { return parseResult(k, b) }
	default:
		return Callback{}, fmt.Errorf("%w: unknown kind %q", ErrMalformed, k)
	}
	if err := checkDocument(body); err != nil {
		return Callback{}, err
	}
	cb, err := parse(body)
	if err != nil {
		return Callback{}, err
	}
	cb.Kind = k
	return cb, nil
}

// checkDocument refuses a body that is not exactly one JSON object, with
// nothing but JSON whitespace around it, read alike by every parser.
func checkDocument(body []byte) error {
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
	return checkJSON(body)
}

// isSpace reports JSON whitespace (RFC 8259 §2): not form feed, not NBSP.
func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(b []byte, i int) int {
	for i < len(b) && isSpace(b[i]) {
		i++
	}
	return i
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

// scalar reads a JSON string or number as text: strings unescaped and
// trimmed, numbers as written. Anything else (absent, null, boolean, object,
// array) is not text.
func scalar(raw json.RawMessage) (string, bool) {
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

// info is an informational field: its text if it has some and is safe in a
// header, else "".
func info(raw json.RawMessage) string {
	s, _ := scalar(raw)
	if !safeIdentifier(s) {
		return ""
	}
	return s
}

// identifier is an identifying field: "" when absent, null or empty; an
// error when it is there but of another type or not safe in a header.
func identifier(raw json.RawMessage, name string) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	s, ok := scalar(raw)
	if !ok {
		return "", fmt.Errorf("%w: %s is neither a string nor a number", ErrMalformed, name)
	}
	if !safeIdentifier(s) {
		return "", fmt.Errorf("%w: %s has characters or a length it cannot have", ErrMalformed, name)
	}
	return s, nil
}

// decode unmarshals body, which checkDocument accepted, into v: a struct
// whose containers are pointers (nil when the body has something else
// there), structs or lists, and whose leaves are json.RawMessage. A member of
// another type than v expects is left zero, never an error: encoding/json
// records the mismatch and goes on with the rest of the body.
func decode(body []byte, v any) error {
	err := json.Unmarshal(body, v)
	var mismatch *json.UnmarshalTypeError
	if err != nil && !errors.As(err, &mismatch) {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

type c2bBody struct {
	TransID           json.RawMessage
	TransAmount       json.RawMessage
	BusinessShortCode json.RawMessage
	MSISDN            json.RawMessage
}

func parseC2B(body []byte) (Callback, error) {
	var b c2bBody
	if err := decode(body, &b); err != nil {
		return Callback{}, err
	}
	id, err := identifier(b.TransID, "TransID")
	if err != nil {
		return Callback{}, err
	}
	shortcode, err := identifier(b.BusinessShortCode, "BusinessShortCode")
	if err != nil {
		return Callback{}, err
	}
	if id == "" || shortcode == "" {
		return Callback{}, fmt.Errorf("%w: C2B body needs TransID and BusinessShortCode", ErrMalformed)
	}
	cb := Callback{TransactionID: id, Receipt: id, Shortcode: shortcode, Amount: info(b.TransAmount)}
	cb.setMSISDN(info(b.MSISDN))
	return cb, nil
}

// setMSISDN files s as MSISDN if it is shaped like a phone number, as
// MSISDNHash if it is a hex SHA-256, and nowhere otherwise.
func (cb *Callback) setMSISDN(s string) {
	switch {
	case isHash(s):
		cb.MSISDNHash = s
	case phoneLike(s):
		cb.MSISDN = s
	}
}

// item is an entry of CallbackMetadata.Item (Name) or of ResultParameter and
// ReferenceItem (Key). Its fields are read leniently: an entry lacking
// Value, or naming itself with a number, is simply not used.
type item struct {
	Name  json.RawMessage
	Key   json.RawMessage
	Value json.RawMessage
}

// list is a list Daraja sends as an array, or as a single object when it
// has one entry. Entries that are not objects are left empty; a value that
// is neither an array nor an object is an empty list. It never fails.
type list []item

func (l *list) UnmarshalJSON(b []byte) error {
	switch b = bytes.TrimSpace(b); {
	case len(b) > 0 && b[0] == '{':
		var one item
		_ = json.Unmarshal(b, &one) // item's fields take any value
		*l = list{one}
	case len(b) > 0 && b[0] == '[':
		var many []item
		_ = json.Unmarshal(b, &many) // entries of another type stay empty
		*l = many
	}
	return nil
}

type stkBody struct {
	Body *struct {
		StkCallback *struct {
			CheckoutRequestID json.RawMessage
			ResultCode        json.RawMessage
			CallbackMetadata  struct{ Item list }
		} `json:"stkCallback"`
	}
}

func parseSTK(body []byte) (Callback, error) {
	var b stkBody
	if err := decode(body, &b); err != nil {
		return Callback{}, err
	}
	if b.Body == nil || b.Body.StkCallback == nil {
		return Callback{}, fmt.Errorf("%w: STK body needs Body.stkCallback", ErrMalformed)
	}
	s := b.Body.StkCallback
	id, err := identifier(s.CheckoutRequestID, "CheckoutRequestID")
	if err != nil {
		return Callback{}, err
	}
	if id == "" {
		return Callback{}, fmt.Errorf("%w: stkCallback needs CheckoutRequestID", ErrMalformed)
	}
	cb := Callback{TransactionID: id, ResultCode: info(s.ResultCode)}
	// With a name repeated, the first usable value wins.
	for _, it := range s.CallbackMetadata.Item {
		name, _ := scalar(it.Name)
		v := info(it.Value)
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

type resultBody struct {
	Result *struct {
		ResultType               json.RawMessage
		ResultCode               json.RawMessage
		OriginatorConversationID json.RawMessage
		ConversationID           json.RawMessage
		TransactionID            json.RawMessage
		ResultParameters         struct{ ResultParameter list }
	}
}

func parseResult(k Kind, body []byte) (Callback, error) {
	var b resultBody
	if err := decode(body, &b); err != nil {
		return Callback{}, err
	}
	r := b.Result
	if r == nil {
		return Callback{}, fmt.Errorf("%w: result body needs Result", ErrMalformed)
	}
	id, err := identifier(r.ConversationID, "ConversationID")
	if err != nil {
		return Callback{}, err
	}
	originator := info(r.OriginatorConversationID)
	if id == "" {
		if id, err = identifier(r.OriginatorConversationID, "OriginatorConversationID"); err != nil {
			return Callback{}, err
		}
	}
	if id == "" {
		return Callback{}, fmt.Errorf("%w: Result needs ConversationID or OriginatorConversationID", ErrMalformed)
	}
	cb := Callback{
		TransactionID: id, Receipt: info(r.TransactionID), ResultCode: info(r.ResultCode),
		ResultType: info(r.ResultType), OriginatorConversationID: originator,
	}
	receiptParam := ""
	// With a key repeated, the first usable value wins.
	for _, p := range r.ResultParameters.ResultParameter {
		key, _ := scalar(p.Key)
		switch key {
		case "TransactionAmount", "Amount":
			if cb.Amount == "" {
				cb.Amount = info(p.Value)
			}
		case "TransactionReceipt", "ReceiptNo":
			if receiptParam == "" {
				receiptParam = info(p.Value)
			}
		case "ReceiverPartyPublicName":
			// B2C: "254722000000 - Jane Doe" or "0722000000 - Jane Doe".
			// B2B names an organisation there: not a phone number.
			if (k == B2CResult || k == B2CTimeout) && cb.MSISDN == "" {
				s, _ := scalar(p.Value)
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

// leadingNumber is the part of "254722000000 - Jane Doe" before the name.
func leadingNumber(s string) string {
	if n, _, ok := strings.Cut(s, " - "); ok {
		return strings.TrimSpace(n)
	}
	n, _, _ := strings.Cut(s, " ")
	return n
}

// phoneLike reports whether s is a phone number, full or masked: an optional
// "+", then 9 to 15 digits or mask characters ('*', 'x'), at least 3 of them
// digits, spaces allowed between them ("2547 ***** 126").
func phoneLike(s string) bool {
	s = strings.TrimPrefix(s, "+")
	if s == "" || s[0] == ' ' || s[len(s)-1] == ' ' {
		return false
	}
	digits, marks := 0, 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			digits++
		case c == '*' || c == 'x' || c == 'X':
			marks++
		case c == ' ':
		default:
			return false
		}
	}
	n := digits + marks
	return digits >= 3 && n >= 9 && n <= 15
}

// isHash reports a hex SHA-256: 64 hex digits.
func isHash(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isHex(s[i]) {
			return false
		}
	}
	return true
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }

// maxDepth bounds JSON nesting; Daraja bodies are four levels deep.
const maxDepth = 32

// smallObject is how many keys an object holds before its duplicate check
// moves from comparing with each earlier key to a set: linear either way.
const smallObject = 16

// checkJSON guards against bodies that different JSON parsers would read
// differently: nesting deeper than maxDepth, an object naming a key twice
// (Go's decoder keeps the last, others the first; Go also matches keys
// without regard to case, so "TransID" and "transid" are the same key), keys
// that are not plain printable ASCII (escapes and non-ASCII letters fold in
// parser-specific ways), and numbers a float64 cannot hold (Go's decoder
// refuses them). It runs on a body json.Valid accepted, in one pass, in time
// linear in the body: an object compares each key with its earlier ones
// while it has fewer than smallObject of them, and keeps a set of key hashes
// beyond (a hash seen before is confirmed by comparing the keys).
func checkJSON(b []byte) error {
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

// keySeed seeds the key hashes of checkJSON, differently in each process, so
// that no body can be built to make them collide.
var keySeed = maphash.MakeSeed()

// appendLower appends ASCII s to dst in lower case.
func appendLower(dst, s []byte) []byte {
	for _, c := range s {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

func truncateKey(k []byte) string {
	if len(k) > 32 {
		k = k[:32]
	}
	return string(k)
}

// MaskMSISDN hides a phone number for logs: the last two digits stay, and
// up to four leading ones while at least six stay hidden (254708374149 →
// 2547******49, 0712345678 → 07******78, "2547 ***** 126" → 2547******26).
// Anything not shaped like a phone number is masked whole, and a hex SHA-256
// (C2B v1) shows only its first four digits ("hash:ab12..."): the hash of a
// phone number gives the number away to a dictionary. The result is
// printable ASCII.
func MaskMSISDN(s string) string {
	if s == "" {
		return ""
	}
	if isHash(s) {
		return "hash:" + strings.ToLower(s[:4]) + "..."
	}
	compact := strings.ReplaceAll(s, " ", "")
	if !phoneLike(compact) {
		return strings.Repeat("*", min(utf8.RuneCountInString(s), 16))
	}
	// At least six characters hidden: 254708374149 keeps "2547" (the
	// country code and the mobile prefix), 0712345678 only "07".
	keep := min(4, len(compact)-8)
	return compact[:keep] + strings.Repeat("*", len(compact)-keep-2) + compact[len(compact)-2:]
}

// stkTimestampDigits is the length of the timestamp that starts the digits
// of an STK CheckoutRequestID (ws_CO_DDMMYYYYHHMMSSmmm…).
const stkTimestampDigits = 17

// MaskTransactionID hides what a transaction id of kind k says about a
// person, for logs, tail and events. Since 2022 an STK CheckoutRequestID is
// ws_CO_<17-digit timestamp><9-digit phone number>: the phone part is masked
// but for its last three digits, so that the id can still be found on the
// stream (ws_CO_03082023134725382708374149 →
// ws_CO_03082023134725382******149). Older and other ids carry no phone
// number and pass through.
func MaskTransactionID(k Kind, id string) string {
	if k != STKCallback {
		return id
	}
	var out []byte
	for i := 0; i < len(id); {
		j := i
		for j < len(id) && id[j] >= '0' && id[j] <= '9' {
			j++
		}
		if j-i >= stkTimestampDigits+9 {
			if out == nil {
				out = []byte(id)
			}
			for p := i + stkTimestampDigits; p < j-3; p++ {
				out[p] = '*'
			}
		}
		i = max(j, i+1)
	}
	if out == nil {
		return id
	}
	return string(out)
}
