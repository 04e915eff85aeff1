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
	"sync"
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
	x := extract{kind: k}
	switch k {
	case C2BValidation, C2BConfirmation:
		x.root = roleC2B
	case STKCallback:
		x.root = roleSTKRoot
	case B2CResult, B2CTimeout, B2BResult, B2BTimeout, ReversalResult, ReversalTimeout,
		StatusResult, StatusTimeout, BalanceResult, BalanceTimeout:
		x.root = roleResultRoot
	default:
		return Callback{}, fmt.Errorf("%w: unknown kind %q", ErrMalformed, k)
	}
	s := getScanner(body)
	err := s.document(&x)
	putScanner(s)
	if err != nil {
		return Callback{}, err
	}
	var cb Callback
	switch x.root {
	case roleC2B:
		cb, err = x.c2b()
	case roleSTKRoot:
		cb, err = x.stkCallback()
	default:
		cb, err = x.result()
	}
	if err != nil {
		return Callback{}, err
	}
	cb.Kind = k
	return cb, nil
}

// Parse reads a body in one pass (scanner) that validates all of it, as
// json.Valid and utf8.Valid would, with the rules of the package
// documentation on top, and keeps the raw bytes of only the members that
// Callback is made of (extract). Those are then read as encoding/json would
// have decoded the body into structs whose leaves are json.RawMessage:
// object keys match field names without regard to ASCII case (a body
// cannot name one twice), a member of another type than expected is left
// empty, and a list (CallbackMetadata.Item, ResultParameters.ResultParameter)
// is an array of entries or one object. FuzzParseDifferential compares Parse
// with that decoder-based implementation, kept in reference_test.go.

// role says what the value being scanned is to Callback.
type role uint8

const (
	roleSkip         role = iota // validated only
	roleLeaf                     // a member whose raw bytes extract keeps
	roleC2B                      // the C2B body object
	roleSTKRoot                  // {"Body": …}
	roleSTKBody                  // {"stkCallback": …}
	roleSTKCallback              // {"CheckoutRequestID", "ResultCode", "CallbackMetadata"}
	roleSTKMeta                  // {"Item": …}
	roleResultRoot               // {"Result": …}
	roleResult                   // {"ConversationID", …, "ResultParameters"}
	roleResultParams             // {"ResultParameter": …}
	roleList                     // an array of entries, or one entry
	roleEntry                    // {"Name" or "Key", "Value"}
)

// The leaves extract keeps, by index in extract.f.
const (
	fTransID = iota
	fTransAmount
	fBusinessShortCode
	fMSISDN
	fCheckoutRequestID
	fResultCode
	fResultType
	fOriginatorConversationID
	fConversationID
	fTransactionID
	fName
	fKey
	fValue
	nFields
)

// child is the role, and for a leaf the field, of the member named key of
// an object of role r.
func child(r role, key []byte) (role, int) {
	is := func(name string) bool { return equalFoldASCII(key, name) }
	switch r {
	case roleC2B:
		switch {
		case is("TransID"):
			return roleLeaf, fTransID
		case is("TransAmount"):
			return roleLeaf, fTransAmount
		case is("BusinessShortCode"):
			return roleLeaf, fBusinessShortCode
		case is("MSISDN"):
			return roleLeaf, fMSISDN
		}
	case roleSTKRoot:
		if is("Body") {
			return roleSTKBody, 0
		}
	case roleSTKBody:
		if is("stkCallback") {
			return roleSTKCallback, 0
		}
	case roleSTKCallback:
		switch {
		case is("CheckoutRequestID"):
			return roleLeaf, fCheckoutRequestID
		case is("ResultCode"):
			return roleLeaf, fResultCode
		case is("CallbackMetadata"):
			return roleSTKMeta, 0
		}
	case roleSTKMeta:
		if is("Item") {
			return roleList, 0
		}
	case roleResultRoot:
		if is("Result") {
			return roleResult, 0
		}
	case roleResult:
		switch {
		case is("ResultType"):
			return roleLeaf, fResultType
		case is("ResultCode"):
			return roleLeaf, fResultCode
		case is("OriginatorConversationID"):
			return roleLeaf, fOriginatorConversationID
		case is("ConversationID"):
			return roleLeaf, fConversationID
		case is("TransactionID"):
			return roleLeaf, fTransactionID
		case is("ResultParameters"):
			return roleResultParams, 0
		}
	case roleResultParams:
		if is("ResultParameter") {
			return roleList, 0
		}
	case roleEntry:
		switch {
		case is("Name"):
			return roleLeaf, fName
		case is("Key"):
			return roleLeaf, fKey
		case is("Value"):
			return roleLeaf, fValue
		}
	}
	return roleSkip, 0
}

// equalFoldASCII reports whether key and name are equal without regard to
// ASCII case, as encoding/json matches keys to field names.
func equalFoldASCII(key []byte, name string) bool {
	if len(key) != len(name) {
		return false
	}
	for i := 0; i < len(key); i++ {
		a, b := key[i], name[i]
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

// extract gathers what a body says of its callback while scanner reads it.
type extract struct {
	kind Kind
	root role
	// f holds the raw bytes of each leaf found (a JSON value without
	// whitespace around it), nil when absent.
	f [nFields][]byte
	// stk and result report that Body.stkCallback, or Result, is an object.
	stkSeen, resultSeen bool
	// list is what the entries of the list read so far gave (Amount,
	// Receipt, MSISDN, MSISDNHash); receiptParam is a result's
	// TransactionReceipt or ReceiptNo.
	list         Callback
	receiptParam string
}

// entry reads the list entry whose members are in f[fName], f[fKey] and
// f[fValue]. With a name or key repeated, the first usable value wins.
func (x *extract) entry() {
	if x.root == roleSTKRoot {
		name, _ := scalarBytes(x.f[fName])
		switch string(name) {
		case "Amount":
			if x.list.Amount == "" {
				x.list.Amount = info(x.f[fValue])
			}
		case "MpesaReceiptNumber":
			if x.list.Receipt == "" {
				x.list.Receipt = info(x.f[fValue])
			}
		case "PhoneNumber":
			if x.list.MSISDN == "" && x.list.MSISDNHash == "" {
				x.list.setMSISDN(info(x.f[fValue]))
			}
		}
		return
	}
	key, _ := scalarBytes(x.f[fKey])
	switch string(key) {
	case "TransactionAmount", "Amount":
		if x.list.Amount == "" {
			x.list.Amount = info(x.f[fValue])
		}
	case "TransactionReceipt", "ReceiptNo":
		if x.receiptParam == "" {
			x.receiptParam = info(x.f[fValue])
		}
	case "ReceiverPartyPublicName":
		// B2C: "254722000000 - Jane Doe" or "0722000000 - Jane Doe".
		// B2B names an organisation there: not a phone number.
		if (x.kind == B2CResult || x.kind == B2CTimeout) && x.list.MSISDN == "" {
			s, _ := scalarBytes(x.f[fValue])
			if n := leadingNumber(string(s)); phoneLike(n) {
				x.list.MSISDN = n
			}
		}
	}
}

func (x *extract) c2b() (Callback, error) {
	id, err := identifier(x.f[fTransID], "TransID")
	if err != nil {
		return Callback{}, err
	}
	shortcode, err := identifier(x.f[fBusinessShortCode], "BusinessShortCode")
	if err != nil {
		return Callback{}, err
	}
	if id == "" || shortcode == "" {
		return Callback{}, fmt.Errorf("%w: C2B body needs TransID and BusinessShortCode", ErrMalformed)
	}
	cb := Callback{TransactionID: id, Receipt: id, Shortcode: shortcode, Amount: info(x.f[fTransAmount])}
	cb.setMSISDN(info(x.f[fMSISDN]))
	return cb, nil
}

func (x *extract) stkCallback() (Callback, error) {
	if !x.stkSeen {
		return Callback{}, fmt.Errorf("%w: STK body needs Body.stkCallback", ErrMalformed)
	}
	id, err := identifier(x.f[fCheckoutRequestID], "CheckoutRequestID")
	if err != nil {
		return Callback{}, err
	}
	if id == "" {
		return Callback{}, fmt.Errorf("%w: stkCallback needs CheckoutRequestID", ErrMalformed)
	}
	cb := x.list
	cb.TransactionID, cb.ResultCode = id, info(x.f[fResultCode])
	return cb, nil
}

func (x *extract) result() (Callback, error) {
	if !x.resultSeen {
		return Callback{}, fmt.Errorf("%w: result body needs Result", ErrMalformed)
	}
	id, err := identifier(x.f[fConversationID], "ConversationID")
	if err != nil {
		return Callback{}, err
	}
	originator := info(x.f[fOriginatorConversationID])
	if id == "" {
		if id, err = identifier(x.f[fOriginatorConversationID], "OriginatorConversationID"); err != nil {
			return Callback{}, err
		}
	}
	if id == "" {
		return Callback{}, fmt.Errorf("%w: Result needs ConversationID or OriginatorConversationID", ErrMalformed)
	}
	cb := Callback{
		TransactionID: id, Receipt: x.receiptParam, ResultCode: info(x.f[fResultCode]),
		ResultType: info(x.f[fResultType]), OriginatorConversationID: originator,
		Amount: x.list.Amount, MSISDN: x.list.MSISDN,
	}
	if cb.Receipt == "" {
		cb.Receipt = info(x.f[fTransactionID])
	}
	return cb, nil
}

// scalarBytes reads a JSON string or number as text, as encoding/json
// would: strings unescaped and trimmed (strings.TrimSpace), numbers as
// written. Anything else (absent, null, boolean, object, array) is not
// text. A string of printable ASCII without escapes, the common case, is
// returned as a slice of raw, without allocating.
func scalarBytes(raw []byte) ([]byte, bool) {
	if len(raw) == 0 {
		return nil, false
	}
	switch c := raw[0]; {
	case c == '"':
		in := raw[1 : len(raw)-1]
		for _, ch := range in {
			if ch < 0x20 || ch > 0x7e || ch == '\\' {
				var s string
				if err := json.Unmarshal(raw, &s); err != nil {
					return nil, false
				}
				return []byte(strings.TrimSpace(s)), true
			}
		}
		// Printable ASCII holds no white space but ' '.
		return bytes.Trim(in, " "), true
	case c == '-' || (c >= '0' && c <= '9'):
		return raw, true
	}
	return nil, false
}

// info is an informational field: its text if it has some and is safe in a
// header, else "".
func info(raw []byte) string {
	s, _ := scalarBytes(raw)
	if !safeIdentifier(string(s)) {
		return ""
	}
	return string(s)
}

// identifier is an identifying field: "" when absent, null or empty; an
// error when it is there but of another type or not safe in a header.
func identifier(raw []byte, name string) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	s, ok := scalarBytes(raw)
	if !ok {
		return "", fmt.Errorf("%w: %s is neither a string nor a number", ErrMalformed, name)
	}
	if !safeIdentifier(string(s)) {
		return "", fmt.Errorf("%w: %s has characters or a length it cannot have", ErrMalformed, name)
	}
	return string(s), nil
}

// isSpace reports JSON whitespace (RFC 8259 §2): not form feed, not NBSP.
func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

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

// scanner reads a body once, front to back, refusing what the package
// documentation lists: anything but one JSON object (RFC 8259) with only
// JSON whitespace around it, invalid UTF-8 (checked inside strings: outside
// them any byte above 0x7f is not JSON anyway, a byte order mark included),
// nesting deeper than maxDepth, keys with escapes or outside printable
// ASCII, a key repeated in an object without regard to ASCII case, and
// numbers a float64 cannot hold. The duplicate check is linear in the body:
// an object compares each key with its earlier ones while it has fewer than
// smallObject of them, and keeps a set of key hashes beyond (a hash seen
// before is confirmed by comparing the keys, so that a collision never
// refuses a body).
type scanner struct {
	b     []byte
	i     int    // next byte to read
	spans []span // keys of the open objects, innermost last
	lower []byte
	// keyWork counts the key bytes the duplicate check compared or hashed:
	// TestDuplicateKeyScanIsLinear holds it to a constant times the body.
	keyWork int
	// spanBuf backs spans for bodies of ordinary size.
	spanBuf [64]span
}

type span struct{ from, to int }

// scanners are reused: a scanner is about 1 KiB (its span buffer), and one
// is needed for every callback.
var scanners = sync.Pool{New: func() any { return new(scanner) }}

// getScanner returns a scanner over b, from the pool.
func getScanner(b []byte) *scanner {
	s := scanners.Get().(*scanner)
	s.b, s.i, s.keyWork = b, 0, 0
	s.spans = s.spanBuf[:0]
	return s
}

// putScanner returns s to the pool, holding on to nothing of the body.
func putScanner(s *scanner) {
	s.b, s.spans = nil, nil
	if cap(s.lower) > 4096 {
		s.lower = nil // an outsized key's buffer is not kept
	}
	scanners.Put(s)
}

func (s *scanner) ws() {
	for s.i < len(s.b) && isSpace(s.b[s.i]) {
		s.i++
	}
}

func (s *scanner) notJSON() error {
	return fmt.Errorf("%w: body is not a single JSON document (at byte %d)", ErrMalformed, s.i)
}

// document scans the whole body, filling x.
func (s *scanner) document(x *extract) error {
	s.ws()
	if s.i == len(s.b) || s.b[s.i] != '{' {
		if bytes.HasPrefix(s.b, []byte("\xef\xbb\xbf")) {
			return fmt.Errorf("%w: body starts with a byte order mark", ErrMalformed)
		}
		return fmt.Errorf("%w: body is not a JSON object", ErrMalformed)
	}
	if err := s.value(0, x.root, 0, x); err != nil {
		return err
	}
	s.ws()
	if s.i != len(s.b) {
		return s.notJSON()
	}
	return nil
}

// value scans the value at s.i, inside depth open containers, which is of
// role r to the callback (for a leaf, field f of x).
func (s *scanner) value(depth int, r role, f int, x *extract) error {
	b := s.b
	if s.i >= len(b) {
		return s.notJSON()
	}
	start := s.i
	switch c := b[s.i]; {
	case c == '{' || c == '[':
		if depth == maxDepth {
			return fmt.Errorf("%w: JSON nested deeper than %d", ErrMalformed, maxDepth)
		}
		var err error
		switch {
		case c == '[' && r == roleList:
			err = s.array(depth+1, roleEntry, x)
		case c == '[':
			err = s.array(depth+1, roleSkip, x)
		case r == roleList || r == roleEntry:
			x.f[fName], x.f[fKey], x.f[fValue] = nil, nil, nil
			if err = s.object(depth+1, roleEntry, x); err == nil {
				x.entry()
			}
		case r == roleSkip || r == roleLeaf:
			err = s.object(depth+1, roleSkip, x)
		default:
			err = s.object(depth+1, r, x)
			x.stkSeen = x.stkSeen || r == roleSTKCallback
			x.resultSeen = x.resultSeen || r == roleResult
		}
		if err != nil {
			return err
		}
	case c == '"':
		if err := s.str(); err != nil {
			return err
		}
	case c == '-' || (c >= '0' && c <= '9'):
		if err := s.number(); err != nil {
			return err
		}
	case c == 't' && bytes.HasPrefix(b[s.i:], []byte("true")):
		s.i += 4
	case c == 'f' && bytes.HasPrefix(b[s.i:], []byte("false")):
		s.i += 5
	case c == 'n' && bytes.HasPrefix(b[s.i:], []byte("null")):
		s.i += 4
	default:
		return s.notJSON()
	}
	if r == roleLeaf {
		x.f[f] = b[start:s.i]
	}
	return nil
}

// array scans the array at s.i, whose elements are of role elem.
func (s *scanner) array(depth int, elem role, x *extract) error {
	b := s.b
	s.i++ // '['
	s.ws()
	if s.i < len(b) && b[s.i] == ']' {
		s.i++
		return nil
	}
	for {
		if err := s.value(depth, elem, 0, x); err != nil {
			return err
		}
		s.ws()
		if s.i >= len(b) {
			return s.notJSON()
		}
		switch b[s.i] {
		case ',':
			s.i++
			s.ws()
		case ']':
			s.i++
			return nil
		default:
			return s.notJSON()
		}
	}
}

// object scans the object at s.i, of role r.
func (s *scanner) object(depth int, r role, x *extract) error {
	b := s.b
	s.i++ // '{'
	base := len(s.spans)
	var set map[uint64]struct{} // hashes of the lower-cased keys, past smallObject
	s.ws()
	if s.i < len(b) && b[s.i] == '}' {
		s.i++
		return nil
	}
	for {
		if s.i >= len(b) || b[s.i] != '"' {
			return s.notJSON()
		}
		from := s.i + 1
		if err := s.key(); err != nil {
			return err
		}
		key := b[from : s.i-1]
		if n := len(s.spans) - base; n < smallObject {
			for _, sp := range s.spans[base:] {
				s.keyWork += len(key)
				if bytes.EqualFold(b[sp.from:sp.to], key) {
					return fmt.Errorf("%w: object key %q appears twice", ErrMalformed, truncateKey(key))
				}
			}
		} else {
			if set == nil {
				set = make(map[uint64]struct{}, 4*smallObject)
				for _, sp := range s.spans[base:] {
					s.keyWork += sp.to - sp.from
					s.lower = appendLower(s.lower[:0], b[sp.from:sp.to])
					set[maphash.Bytes(keySeed, s.lower)] = struct{}{}
				}
			}
			s.keyWork += len(key)
			s.lower = appendLower(s.lower[:0], key)
			h := maphash.Bytes(keySeed, s.lower)
			if _, seen := set[h]; seen {
				for _, sp := range s.spans[base:] {
					s.keyWork += len(key)
					if bytes.EqualFold(b[sp.from:sp.to], key) {
						return fmt.Errorf("%w: object key %q appears twice", ErrMalformed, truncateKey(key))
					}
				}
			}
			set[h] = struct{}{}
		}
		s.spans = append(s.spans, span{from, s.i - 1})
		s.ws()
		if s.i >= len(b) || b[s.i] != ':' {
			return s.notJSON()
		}
		s.i++
		s.ws()
		cr, f := child(r, key)
		if err := s.value(depth, cr, f, x); err != nil {
			return err
		}
		s.ws()
		if s.i >= len(b) {
			return s.notJSON()
		}
		switch b[s.i] {
		case ',':
			s.i++
			s.ws()
		case '}':
			s.i++
			s.spans = s.spans[:base]
			return nil
		default:
			return s.notJSON()
		}
	}
}

// key scans an object key at s.i: printable ASCII without escapes (escapes
// and other letters fold in parser-specific ways).
func (s *scanner) key() error {
	b := s.b
	for i := s.i + 1; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			s.i = i + 1
			return nil
		case c == '\\':
			return fmt.Errorf("%w: object key with an escape sequence", ErrMalformed)
		case c < 0x20 || c > 0x7e:
			return fmt.Errorf("%w: object key that is not printable ASCII", ErrMalformed)
		}
	}
	return s.notJSON()
}

// str scans a string value at s.i (RFC 8259 §7), refusing invalid UTF-8.
func (s *scanner) str() error {
	b := s.b
	for i := s.i + 1; i < len(b); {
		switch c := b[i]; {
		case c == '"':
			s.i = i + 1
			return nil
		case c == '\\':
			if i+1 >= len(b) {
				return s.notJSON()
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) || !isHex(b[i+2]) || !isHex(b[i+3]) || !isHex(b[i+4]) || !isHex(b[i+5]) {
					return s.notJSON()
				}
				i += 6
			default:
				return s.notJSON()
			}
		case c < 0x20:
			return s.notJSON()
		case c < utf8.RuneSelf:
			i++
		default:
			r, n := utf8.DecodeRune(b[i:])
			if r == utf8.RuneError && n == 1 {
				return fmt.Errorf("%w: body is not UTF-8", ErrMalformed)
			}
			i += n
		}
	}
	return s.notJSON()
}

// number scans a number at s.i (RFC 8259 §6), refusing one beyond the
// range of a float64 (Go's decoder refuses them).
func (s *scanner) number() error {
	b, i := s.b, s.i
	digits := func() bool {
		j := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i > j
	}
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case !digits():
		return s.notJSON()
	}
	if i < len(b) && b[i] == '.' {
		i++
		if !digits() {
			return s.notJSON()
		}
	}
	exp := false
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		exp = true
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if !digits() {
			return s.notJSON()
		}
	}
	// Only an exponent or more than 308 digits can leave float64's range.
	if exp || i-s.i > 308 {
		if _, err := strconv.ParseFloat(string(b[s.i:i]), 64); err != nil {
			return fmt.Errorf("%w: number %.20s… out of range", ErrMalformed, b[s.i:i])
		}
	}
	s.i = i
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
