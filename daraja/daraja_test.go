package daraja

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files")

// FixtureKinds maps each sample body under testdata/fixtures to its kind.
var fixtureKinds = map[string]Kind{
	"b2c_result_failed.json":      B2CResult,
	"b2c_result_success.json":     B2CResult,
	"balance_result.json":         BalanceResult,
	"c2b_confirmation.json":       C2BConfirmation,
	"c2b_validation.json":         C2BValidation,
	"reversal_result.json":        ReversalResult,
	"status_result.json":          StatusResult,
	"stk_callback_cancelled.json": STKCallback,
	"stk_callback_success.json":   STKCallback,
}

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "fixtures", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// callbacksDir holds the repository's callback bodies, one file per variant,
// named <kind>__<variant>.json.
var callbacksDir = filepath.Join("..", "testdata", "callbacks")

type callbackFile struct {
	name string
	kind Kind
	body []byte
}

func callbackFiles(t testing.TB) []callbackFile {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(callbacksDir, "*.json"))
	if err != nil || len(names) == 0 {
		t.Fatalf("no callback bodies in %s: %v", callbacksDir, err)
	}
	sort.Strings(names)
	var out []callbackFile
	for _, path := range names {
		name := filepath.Base(path)
		kind, _, ok := strings.Cut(name, "__")
		if !ok || !Kind(kind).Valid() {
			t.Fatalf("%s: name does not start with <kind>__", name)
		}
		body, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, callbackFile{name, Kind(kind), body})
	}
	return out
}

func readCallback(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(callbacksDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFixturesMatchShared keeps the copies in testdata in step with the
// shared fixtures, when the shared folder is beside the repository.
func TestFixturesMatchShared(t *testing.T) {
	shared := filepath.Join("..", "..", "shared", "fixtures")
	if _, err := os.Stat(shared); err != nil {
		t.Skip("shared fixtures not beside the repository")
	}
	for name := range fixtureKinds {
		want, err := os.ReadFile(filepath.Join(shared, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !bytes.Equal(want, readFixture(t, name)) {
			t.Errorf("testdata/fixtures/%s differs from shared/fixtures", name)
		}
	}
	all, _ := filepath.Glob(filepath.Join(shared, "*.json"))
	if len(all) != len(fixtureKinds) {
		t.Errorf("shared has %d fixtures, the test knows %d", len(all), len(fixtureKinds))
	}
}

// TestCallbackFilesCoverEveryKind: an end-to-end test posts every file, so
// every endpoint must have at least one body.
func TestCallbackFilesCoverEveryKind(t *testing.T) {
	seen := map[Kind]int{}
	ids := map[string]string{}
	for _, f := range callbackFiles(t) {
		seen[f.kind]++
		cb, err := Parse(f.kind, f.body)
		if err != nil {
			t.Errorf("%s: %v", f.name, err)
			continue
		}
		// One message per file on the stream: no two files share a
		// Nats-Msg-Id.
		id := string(f.kind) + ":" + cb.TransactionID
		if other, dup := ids[id]; dup {
			t.Errorf("%s and %s have the same message id %s", other, f.name, id)
		}
		ids[id] = f.name
	}
	for _, k := range Kinds {
		if seen[k] == 0 {
			t.Errorf("no body for %s in %s", k, callbacksDir)
		}
	}
}

// TestParseCallbackFiles states, for every body in testdata/callbacks, what
// Parse must extract: one case per variant Daraja is known to send.
func TestParseCallbackFiles(t *testing.T) {
	const hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	want := map[string]Callback{
		// C2B: MSISDN full (old), hashed (v1), masked (v2); shortcodes of 5
		// to 9 digits, as numbers or strings; amounts as numbers or strings.
		"c2b.validation__paybill.json":           {TransactionID: "TST1VAL001", Receipt: "TST1VAL001", Shortcode: "600100", Amount: "250.00", MSISDN: "254700000001"},
		"c2b.validation__v1_hashed_msisdn.json":  {TransactionID: "TST1VAL002", Receipt: "TST1VAL002", Shortcode: "600100", Amount: "75.00", MSISDNHash: hash},
		"c2b.validation__v2_masked_msisdn.json":  {TransactionID: "TST1VAL003", Receipt: "TST1VAL003", Shortcode: "600100", Amount: "80.00", MSISDN: "2547 ***** 103"},
		"c2b.confirmation__old_full_msisdn.json": {TransactionID: "TST1CNF001", Receipt: "TST1CNF001", Shortcode: "600100", Amount: "10.00", MSISDN: "254700000011"},
		"c2b.confirmation__v1_hashed_msisdn.json": {TransactionID: "TST1CNF002", Receipt: "TST1CNF002", Shortcode: "600100", Amount: "20.00",
			MSISDNHash: strings.ToUpper(hash)},
		"c2b.confirmation__v2_masked_msisdn.json":          {TransactionID: "TST1CNF003", Receipt: "TST1CNF003", Shortcode: "600100", Amount: "30.00", MSISDN: "2547 ***** 126"},
		"c2b.confirmation__shortcode_5_digits_number.json": {TransactionID: "TST1CNF004", Receipt: "TST1CNF004", Shortcode: "60010", Amount: "40", MSISDN: "254700000014"},
		"c2b.confirmation__shortcode_9_digits.json":        {TransactionID: "TST1CNF005", Receipt: "TST1CNF005", Shortcode: "600100123", Amount: "50.00", MSISDN: "254700000015"},
		"c2b.confirmation__buy_goods_amount_number.json":   {TransactionID: "TST1CNF006", Receipt: "TST1CNF006", Shortcode: "6001001", Amount: "1250.5", MSISDN: "254700000016"},
		"c2b.confirmation__sandbox_pretty_printed.json":    {TransactionID: "TST1CNF007", Receipt: "TST1CNF007", Shortcode: "600100", Amount: "1.00", MSISDN: "254700000017"},
		// STK: success, cancelled (no CallbackMetadata), codes and amounts
		// as strings, an item lacking Value, a pre-2022 CheckoutRequestID.
		"stk.callback__success.json": {TransactionID: "ws_CO_15032026102233101700000101", Receipt: "TST7RT6101", ResultCode: "0", Amount: "1.00",
			MSISDN: "254700000101"},
		"stk.callback__cancelled.json": {TransactionID: "ws_CO_15032026102301202700000102", ResultCode: "1032"},
		"stk.callback__result_code_string_amount_string.json": {TransactionID: "ws_CO_15032026102412303700000103", Receipt: "TST7RT6103",
			ResultCode: "0", Amount: "150.00", MSISDN: "254700000103"},
		"stk.callback__item_without_value.json": {TransactionID: "ws_CO_15032026102533404700000104", Receipt: "TST7RT6104", ResultCode: "0",
			Amount: "5", MSISDN: "254700000104"},
		"stk.callback__old_checkout_id.json": {TransactionID: "ws_CO_150320191020363925", ResultCode: "1037"},
		// B2C: names with 07… and 2547… numbers, codes as strings, letters in
		// a code, a single parameter object, \/ escapes, a repeated key.
		"b2c.result__success_07_name.json": {TransactionID: "AG_20260315_0000a1b2c3d4e5f60001", Receipt: "TST41HAY01", ResultCode: "0",
			Amount: "10", MSISDN: "0722000001", ResultType: "0", OriginatorConversationID: "10571-7910404-1"},
		"b2c.result__success_254_name_codes_as_strings.json": {TransactionID: "AG_20260315_0000a1b2c3d4e5f60002", Receipt: "TST41HAY02",
			ResultCode: "0", Amount: "2500.00", MSISDN: "254722000002", ResultType: "0", OriginatorConversationID: "10571-7910404-2"},
		"b2c.result__failed_letters_code.json": {TransactionID: "AG_20260315_0000a1b2c3d4e5f60003", Receipt: "TST0000000", ResultCode: "SFC_IC0003",
			ResultType: "0", OriginatorConversationID: "10571-7910404-3"},
		"b2c.result__single_parameter_object.json": {TransactionID: "AG_20260315_0000a1b2c3d4e5f60004", Receipt: "TST41HAY04", ResultCode: "0",
			Amount: "99", ResultType: "0", OriginatorConversationID: "10571-7910404-4"},
		"b2c.result__escaped_slashes.json": {TransactionID: "AG_20260315_0000a1b2c3d4e5f60005", Receipt: "TST0000000", ResultCode: "2001",
			ResultType: "0", OriginatorConversationID: "10571-7910404-5"},
		"b2c.result__repeated_key_item_without_value.json": {TransactionID: "AG_20260315_0000a1b2c3d4e5f60006", Receipt: "TST41HAY06",
			ResultCode: "0", Amount: "60", MSISDN: "254722000006", ResultType: "0", OriginatorConversationID: "10571-7910404-6"},
		// Timeouts: Result shape; the id from ConversationID, else from
		// OriginatorConversationID.
		"b2c.timeout__queue_timeout.json": {TransactionID: "AG_20260315_0000a1b2c3d4e5f60007", ResultCode: "SVC0403", ResultType: "0",
			OriginatorConversationID: "10571-7910404-7"},
		"b2c.timeout__originator_only.json": {TransactionID: "10571-7910404-8", ResultCode: "1", ResultType: "0", OriginatorConversationID: "10571-7910404-8"},
		// B2B: an organisation's name (en dash) is no MSISDN; the echoed
		// QueueTimeoutURL's token lands in no field.
		"b2b.result__org_name_en_dash_timeout_url_token.json": {TransactionID: "AG_20260315_0000b2b000000000001", Receipt: "TSTB2B0001",
			ResultCode: "0", Amount: "10.00", ResultType: "0", OriginatorConversationID: "12345-67890-1"},
		"b2b.result__failed_r000002.json": {TransactionID: "AG_20260315_0000b2b000000000002", Receipt: "TST0000000", ResultCode: "R000002",
			ResultType: "0", OriginatorConversationID: "12345-67890-2"},
		"b2b.timeout__queue_timeout.json": {TransactionID: "AG_20260315_0000b2b000000000003", ResultCode: "1", ResultType: "0",
			OriginatorConversationID: "12345-67890-3"},
		"reversal.result__success.json": {TransactionID: "AG_20260315_0000rev000000000001", Receipt: "TSTREV0001", ResultCode: "21",
			Amount: "100", ResultType: "0", OriginatorConversationID: "8521-4298025-1"},
		"reversal.timeout__queue_timeout.json": {TransactionID: "AG_20260315_0000rev000000000002", ResultCode: "1", ResultType: "0",
			OriginatorConversationID: "8521-4298025-2"},
		"status.result__success.json": {TransactionID: "AG_20260315_0000sts000000000001", Receipt: "TSTSTS0001", ResultCode: "0",
			Amount: "300", ResultType: "0", OriginatorConversationID: "10816-694520-1"},
		"status.timeout__queue_timeout.json": {TransactionID: "AG_20260315_0000sts000000000002", ResultCode: "1", ResultType: "0",
			OriginatorConversationID: "10816-694520-2"},
		"balance.result__success.json": {TransactionID: "AG_20260315_0000bal000000000001", Receipt: "TST0000000", ResultCode: "0",
			ResultType: "0", OriginatorConversationID: "16917-22577599-1"},
		"balance.timeout__queue_timeout.json": {TransactionID: "AG_20260315_0000bal000000000002", ResultCode: "1", ResultType: "0",
			OriginatorConversationID: "16917-22577599-2"},
	}
	files := callbackFiles(t)
	have := map[string]bool{}
	for _, f := range files {
		have[f.name] = true
		t.Run(f.name, func(t *testing.T) {
			w, ok := want[f.name]
			if !ok {
				t.Fatalf("no expectation for %s: add one to this table", f.name)
			}
			w.Kind = f.kind
			got, err := Parse(f.kind, f.body)
			if err != nil {
				t.Fatal(err)
			}
			if got != w {
				t.Errorf("got  %+v\nwant %+v", got, w)
			}
		})
	}
	for name := range want {
		if !have[name] {
			t.Errorf("%s is expected but missing from %s", name, callbacksDir)
		}
	}
}

// TestEchoedTokenStaysInTheBody: a B2B result may echo the merchant's
// QueueTimeOutURL with its token; the body goes through untouched, and no
// extracted field (headers, logs) holds the token.
func TestEchoedTokenStaysInTheBody(t *testing.T) {
	const token = "TESTTOKENb2bQueueTimeout0000000001"
	body := readCallback(t, "b2b.result__org_name_en_dash_timeout_url_token.json")
	if !bytes.Contains(body, []byte("?t="+token)) {
		t.Fatal("the test body no longer echoes a token")
	}
	cb, err := Parse(B2BResult, body)
	if err != nil {
		t.Fatal(err)
	}
	if out, _ := json.Marshal(cb); bytes.Contains(out, []byte(token)) {
		t.Errorf("a parsed field holds the echoed token: %s", out)
	}
}

func TestParseGolden(t *testing.T) {
	got := map[string]Callback{}
	for _, f := range callbackFiles(t) {
		cb, err := Parse(f.kind, f.body)
		if err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		got["callbacks/"+f.name] = cb
	}
	for name, kind := range fixtureKinds {
		cb, err := Parse(kind, readFixture(t, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got["fixtures/"+name] = cb
	}
	out, _ := json.MarshalIndent(got, "", "  ")
	golden := filepath.Join("testdata", "parsed.golden.json")
	if *update {
		if err := os.WriteFile(golden, append(out, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bytes.TrimSpace(want), out) {
		t.Errorf("parsed bodies differ from %s (run go test ./daraja -run Golden -update if intended):\n%s", golden, out)
	}
}

func TestParseVariants(t *testing.T) {
	tests := []struct {
		name string
		kind Kind
		body string
		want Callback
	}{
		{"stk result code as string", STKCallback,
			`{"Body":{"stkCallback":{"CheckoutRequestID":"ws_CO_1","ResultCode":"0","CallbackMetadata":{"Item":[{"Name":"Amount","Value":"1.00"},{"Name":"PhoneNumber","Value":"254700000001"}]}}}}`,
			Callback{Kind: STKCallback, TransactionID: "ws_CO_1", ResultCode: "0", Amount: "1.00", MSISDN: "254700000001"}},
		{"c2b amount as number, extra fields", C2BConfirmation,
			`{"TransID":"X1","BusinessShortCode":600638,"TransAmount":10.5,"NewField":{"a":[1,2]}}`,
			Callback{Kind: C2BConfirmation, TransactionID: "X1", Receipt: "X1", Shortcode: "600638", Amount: "10.5"}},
		{"result code as string, single parameter object", B2CResult,
			`{"Result":{"ResultCode":"0","ConversationID":"AG_1","TransactionID":"R1","ResultParameters":{"ResultParameter":{"Key":"TransactionAmount","Value":"5"}}}}`,
			Callback{Kind: B2CResult, TransactionID: "AG_1", Receipt: "R1", ResultCode: "0", Amount: "5"}},
		{"same key in different objects", STKCallback,
			`{"Body":{"stkCallback":{"CheckoutRequestID":"ws_CO_2","ResultCode":0,"CallbackMetadata":{"Item":[{"Name":"Amount","Value":1},{"Name":"PhoneNumber","Value":254700000002}]}}}}`,
			Callback{Kind: STKCallback, TransactionID: "ws_CO_2", ResultCode: "0", Amount: "1", MSISDN: "254700000002"}},
		{"timeout with originator id only", B2CTimeout,
			`{"Result":{"ResultCode":1,"OriginatorConversationID":"O-1"}}`,
			Callback{Kind: B2CTimeout, TransactionID: "O-1", ResultCode: "1", OriginatorConversationID: "O-1"}},
		{"timeout with an empty ConversationID", B2BTimeout,
			`{"Result":{"ConversationID":"","OriginatorConversationID":"O-2"}}`,
			Callback{Kind: B2BTimeout, TransactionID: "O-2", OriginatorConversationID: "O-2"}},
		{"timeout with a null ConversationID and nothing else", StatusTimeout,
			`{"Result":{"ConversationID":null,"OriginatorConversationID":"O-3"}}`,
			Callback{Kind: StatusTimeout, TransactionID: "O-3", OriginatorConversationID: "O-3"}},
		{"ids as numbers", STKCallback,
			`{"Body":{"stkCallback":{"CheckoutRequestID":12345}}}`,
			Callback{Kind: STKCallback, TransactionID: "12345"}},
		// Informational fields that are odd are not extracted; the
		// callback is still accepted.
		{"stk without result code", STKCallback,
			`{"Body":{"stkCallback":{"CheckoutRequestID":"ws"}}}`,
			Callback{Kind: STKCallback, TransactionID: "ws"}},
		{"result code an object", B2CResult,
			`{"Result":{"ResultCode":{"$gt":""},"ConversationID":"A"}}`,
			Callback{Kind: B2CResult, TransactionID: "A"}},
		{"result code too long, result type a boolean", B2CResult,
			`{"Result":{"ResultCode":"` + strings.Repeat("9", 200) + `","ResultType":true,"ConversationID":"A"}}`,
			Callback{Kind: B2CResult, TransactionID: "A"}},
		{"msisdn with a line break, amount an object", C2BConfirmation,
			`{"TransID":"X2","BusinessShortCode":"600638","MSISDN":"2547\r\n00000001","TransAmount":{"v":1}}`,
			Callback{Kind: C2BConfirmation, TransactionID: "X2", Receipt: "X2", Shortcode: "600638"}},
		{"msisdn not a phone number", C2BConfirmation,
			`{"TransID":"X3","BusinessShortCode":"600638","MSISDN":"unknown"}`,
			Callback{Kind: C2BConfirmation, TransactionID: "X3", Receipt: "X3", Shortcode: "600638"}},
		{"msisdn with non-ASCII", C2BConfirmation,
			`{"TransID":"X4","BusinessShortCode":"600638","MSISDN":"２５４７００"}`,
			Callback{Kind: C2BConfirmation, TransactionID: "X4", Receipt: "X4", Shortcode: "600638"}},
		{"result parameters odd", B2CResult,
			`{"Result":{"ConversationID":"A","ResultParameters":"none","ReferenceData":7}}`,
			Callback{Kind: B2CResult, TransactionID: "A"}},
		{"result parameter entries odd", B2CResult,
			`{"Result":{"ConversationID":"A","ResultParameters":{"ResultParameter":[1,"x",null,{"Key":5,"Value":1},{"Key":"Amount","Value":[1]},{"Key":"Amount","Value":7}]}}}`,
			Callback{Kind: B2CResult, TransactionID: "A", Amount: "7"}},
		{"callback metadata odd", STKCallback,
			`{"Body":{"stkCallback":{"CheckoutRequestID":"ws","CallbackMetadata":{"Item":{"Name":"Amount","Value":3}}}}}`,
			Callback{Kind: STKCallback, TransactionID: "ws", Amount: "3"}},
		{"callback metadata a string", STKCallback,
			`{"Body":{"stkCallback":{"CheckoutRequestID":"ws","CallbackMetadata":"n/a"}}}`,
			Callback{Kind: STKCallback, TransactionID: "ws"}},
		{"odd members before the identifying ones", STKCallback,
			`{"Body":{"stkCallback":{"CallbackMetadata":[1],"ResultCode":[],"MerchantRequestID":{},"CheckoutRequestID":"ws_odd"}}}`,
			Callback{Kind: STKCallback, TransactionID: "ws_odd"}},
		{"odd result members before the identifying ones", B2CResult,
			`{"Result":{"ResultParameters":[{"Key":"Amount","Value":1}],"ReferenceData":"x","ConversationID":"AG_odd","ResultCode":"0"}}`,
			Callback{Kind: B2CResult, TransactionID: "AG_odd", ResultCode: "0"}},
		{"b2c name without a number", B2CResult,
			`{"Result":{"ConversationID":"A","ResultParameters":{"ResultParameter":{"Key":"ReceiverPartyPublicName","Value":"Jane Doe"}}}}`,
			Callback{Kind: B2CResult, TransactionID: "A"}},
		{"b2c masked name", B2CResult,
			`{"Result":{"ConversationID":"A","ResultParameters":{"ResultParameter":{"Key":"ReceiverPartyPublicName","Value":"2547*****126 - Jane Doe"}}}}`,
			Callback{Kind: B2CResult, TransactionID: "A", MSISDN: "2547*****126"}},
		{"b2b organisation number is not an msisdn", B2BResult,
			`{"Result":{"ConversationID":"A","ResultParameters":{"ResultParameter":{"Key":"ReceiverPartyPublicName","Value":"254722000000 - Shop"}}}}`,
			Callback{Kind: B2BResult, TransactionID: "A"}},
		{"stk phone number hashed", STKCallback,
			`{"Body":{"stkCallback":{"CheckoutRequestID":"ws","CallbackMetadata":{"Item":[{"Name":"PhoneNumber","Value":"` + strings.Repeat("ab", 32) + `"}]}}}}`,
			Callback{Kind: STKCallback, TransactionID: "ws", MSISDNHash: strings.Repeat("ab", 32)}},
		{"escaped slashes and unicode escapes in values", B2CResult,
			`{"Result":{"ConversationID":"AG\/1","ResultDesc":"\u2013 done"}}`,
			Callback{Kind: B2CResult, TransactionID: "AG/1"}},
		{"whitespace around the document", C2BConfirmation,
			" \r\n\t{\"TransID\":\"X5\",\"BusinessShortCode\":\"600638\"}\r\n \t",
			Callback{Kind: C2BConfirmation, TransactionID: "X5", Receipt: "X5", Shortcode: "600638"}},
		{"depth at the limit", C2BConfirmation,
			`{"TransID":"X6","BusinessShortCode":"600638","X":` + strings.Repeat("[", maxDepth-1) + strings.Repeat("]", maxDepth-1) + `}`,
			Callback{Kind: C2BConfirmation, TransactionID: "X6", Receipt: "X6", Shortcode: "600638"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.kind, []byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	deep := strings.Repeat(`{"a":`, 40) + "1" + strings.Repeat("}", 40)
	tests := []struct {
		name string
		kind Kind
		body string
	}{
		{"empty", STKCallback, ``},
		{"whitespace only", STKCallback, " \n"},
		{"array", STKCallback, `[]`},
		{"string", C2BConfirmation, `"TransID"`},
		{"not json", C2BConfirmation, `TransID=1`},
		{"trailing data", C2BConfirmation, `{"TransID":"X","BusinessShortCode":"1"} {}`},
		{"missing trans id", C2BConfirmation, `{"BusinessShortCode":"600638"}`},
		{"empty trans id", C2BConfirmation, `{"TransID":" ","BusinessShortCode":"600638"}`},
		{"missing shortcode", C2BValidation, `{"TransID":"X"}`},
		{"shortcode an object", C2BValidation, `{"TransID":"X","BusinessShortCode":{"n":600638}}`},
		{"shortcode with a line break", C2BValidation, `{"TransID":"X","BusinessShortCode":"600638\nX-Evil: 1"}`},
		{"trans id a boolean", C2BValidation, `{"TransID":true,"BusinessShortCode":"600638"}`},
		{"stk without checkout id", STKCallback, `{"Body":{"stkCallback":{"ResultCode":0}}}`},
		{"stk with null checkout id", STKCallback, `{"Body":{"stkCallback":{"CheckoutRequestID":null,"ResultCode":0}}}`},
		{"stk checkout id an array", STKCallback, `{"Body":{"stkCallback":{"CheckoutRequestID":["ws"]}}}`},
		{"stk callback not an object", STKCallback, `{"Body":{"stkCallback":"ws"}}`},
		{"stk body null", STKCallback, `{"Body":null}`},
		{"result without ids", B2CResult, `{"Result":{"ResultCode":0}}`},
		{"result not an object", B2CTimeout, `{"Result":"timeout"}`},
		{"result conversation id an object", B2CResult, `{"Result":{"ConversationID":{},"OriginatorConversationID":"O"}}`},
		{"result conversation id unsafe, originator fine", B2CResult, `{"Result":{"ConversationID":"A\u0000","OriginatorConversationID":"O"}}`},
		{"timeout originator id unsafe", B2CTimeout, `{"Result":{"OriginatorConversationID":"O\u00e9"}}`},
		{"wrong shape for kind", B2CResult, `{"Body":{"stkCallback":{"CheckoutRequestID":"ws","ResultCode":0}}}`},
		{"number out of range", B2CResult, `{"Result":{"ResultCode":1e999,"ConversationID":"A"}}`},
		{"number out of range in an unknown field", C2BConfirmation, `{"TransID":"X","BusinessShortCode":"1","X":[-2e308]}`},
		{"deep nesting", C2BConfirmation, deep},
		{"invalid utf8", C2BConfirmation, "{\"TransID\":\"\xff\",\"BusinessShortCode\":\"1\"}"},
		{"invalid utf8 in an unknown field", C2BConfirmation, "{\"TransID\":\"X\",\"BusinessShortCode\":\"1\",\"FirstName\":\"\xc3\"}"},
		{"control characters in id", C2BConfirmation, `{"TransID":"A\r\nB","BusinessShortCode":"1"}`},
		{"huge id", C2BConfirmation, `{"TransID":"` + strings.Repeat("A", 200) + `","BusinessShortCode":"1"}`},
		{"unknown kind", Kind("x.y"), `{}`},
		{"duplicate key", C2BConfirmation, `{"TransID":"A","BusinessShortCode":"600638","TransID":"B"}`},
		{"duplicate key differing in case", C2BConfirmation, `{"TransID":"A","BusinessShortCode":"600638","transid":"B"}`},
		{"duplicate nested key", STKCallback, `{"Body":{"stkCallback":{"CheckoutRequestID":"a","ResultCode":0,"ResultCode":1}}}`},
		{"duplicate key in an array's object", B2CResult, `{"Result":{"ConversationID":"A","X":[{"k":1},{"k":1,"K":2}]}}`},
		{"escaped key", C2BConfirmation, `{"Trans\u0049D":"A","BusinessShortCode":"600638"}`},
		{"non-ASCII key", C2BConfirmation, `{"TransID":"A","BusinessShortCode":"600638","Kéy":1}`},
		{"kelvin sign key", C2BConfirmation, "{\"TransID\":\"A\",\"BusinessShortCode\":\"600638\",\"\u212aey\":1}"},
		{"deep arrays", B2CResult, strings.Repeat("[", 100) + strings.Repeat("]", 100)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if cb, err := Parse(tt.kind, []byte(tt.body)); !errors.Is(err, ErrMalformed) {
				t.Errorf("got %+v, %v; want ErrMalformed", cb, err)
			}
		})
	}
}

// TestParseRefusesTrailingData (issue 14): a real body followed by anything
// but JSON whitespace is refused, so that the stream never holds a body a
// consumer cannot parse, and a second document cannot name another
// shortcode. A BOM before the body is refused too (see the package doc).
func TestParseRefusesTrailingData(t *testing.T) {
	stk := readCallback(t, "stk.callback__success.json")
	c2b := readCallback(t, "c2b.confirmation__old_full_msisdn.json")
	for _, base := range []struct {
		kind Kind
		body []byte
	}{{STKCallback, stk}, {C2BConfirmation, c2b}} {
		if _, err := Parse(base.kind, base.body); err != nil {
			t.Fatalf("the base body must be accepted: %v", err)
		}
	}
	second := `{"TransactionType":"Pay Bill","TransID":"TST1CNF001","TransAmount":"99999.00","BusinessShortCode":"999999","MSISDN":"254700000099"}`
	cat := func(parts ...string) []byte { return []byte(strings.Join(parts, "")) }
	tests := []struct {
		name string
		kind Kind
		body []byte
	}{
		{"stk with one extra }", STKCallback, cat(string(stk), "}")},
		{"stk with } right after the object", STKCallback, cat(strings.TrimSpace(string(stk)), "}")},
		{"stk with ]", STKCallback, cat(string(stk), "]")},
		{"stk with ] then a second document", STKCallback, cat(string(stk),
			`]{"Body":{"stkCallback":{"CheckoutRequestID":"ws_CO_15032026102233101700000101","ResultCode":1032}}}`)},
		{"stk with a second document", STKCallback, cat(string(stk), string(stk))},
		{"stk with a comma", STKCallback, cat(string(stk), ",")},
		{"stk with a NUL", STKCallback, cat(string(stk), "\x00")},
		{"stk with a form feed", STKCallback, cat(string(stk), "\f")},
		{"stk with a vertical tab", STKCallback, cat(string(stk), "\v")},
		{"stk with a no-break space", STKCallback, cat(string(stk), "\u00a0")},
		{"stk with a next-line character", STKCallback, cat(string(stk), "\u0085")},
		{"stk with a trailing BOM", STKCallback, cat(string(stk), "\ufeff")},
		{"stk with a line separator before", STKCallback, cat("\u2028", string(stk))},
		{"stk with a BOM", STKCallback, cat("\ufeff", string(stk))},
		{"stk with whitespace then a BOM", STKCallback, cat(" \ufeff", string(stk))},
		{"c2b with a second document naming another shortcode", C2BConfirmation, cat(string(c2b), second)},
		{"c2b with a second document after whitespace", C2BConfirmation, cat(string(c2b), "\r\n\t ", second)},
		{"c2b with a BOM", C2BConfirmation, cat("\xef\xbb\xbf", string(c2b))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if cb, err := Parse(tt.kind, tt.body); !errors.Is(err, ErrMalformed) {
				t.Errorf("got %+v, %v; want ErrMalformed", cb, err)
			}
		})
	}
}

// TestParseDepthGuard gives the depth guard a body that passes every other
// check, and is far below every body limit (the smallest max_body_bytes is
// 1024): only the guard can refuse it.
func TestParseDepthGuard(t *testing.T) {
	for _, tt := range []struct {
		name      string
		kind      Kind
		levels    int
		open, end string
		template  string
	}{
		{"arrays in an unknown C2B field", C2BConfirmation, 200, "[", "]",
			`{"TransID":"TST9DEEP01","BusinessShortCode":"600100","X":%s}`},
		{"objects in ResultDesc", B2CResult, 150, `{"a":`, "}",
			`{"Result":{"ConversationID":"AG_DEEP_1","ResultDesc":%s}}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			nest := func(n int) []byte {
				inner := strings.Repeat(tt.open, n) + "1" + strings.Repeat(tt.end, n)
				if tt.open == "[" {
					inner = strings.Repeat(tt.open, n) + strings.Repeat(tt.end, n)
				}
				return []byte(fmt.Sprintf(tt.template, inner))
			}
			shallow, deep := nest(4), nest(tt.levels)
			if len(deep) >= 1024 {
				t.Fatalf("the deep body is %d bytes; it must stay under every size limit", len(deep))
			}
			if !json.Valid(deep) {
				t.Fatal("the deep body must be valid JSON")
			}
			if _, err := Parse(tt.kind, shallow); err != nil {
				t.Fatalf("the same body, shallow, must be accepted: %v", err)
			}
			if cb, err := Parse(tt.kind, deep); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "nested deeper") {
				t.Errorf("%d levels: got %+v, %v; want the depth guard's refusal", tt.levels, cb, err)
			}
		})
	}
}

// TestParseDuplicateKeysInLargeObjects covers the set that takes over from
// pairwise comparison past smallObject keys: a duplicate on either side of
// the switch, in any case, is still refused, and distinct keys are not.
func TestParseDuplicateKeysInLargeObjects(t *testing.T) {
	body := func(n int, extra string) []byte {
		var b strings.Builder
		b.WriteString(`{"TransID":"TST9KEYS01","BusinessShortCode":"600100"`)
		for i := range n {
			fmt.Fprintf(&b, `,"Field%d":%d`, i, i)
		}
		b.WriteString(extra + "}")
		return []byte(b.String())
	}
	if _, err := Parse(C2BConfirmation, body(3*smallObject, "")); err != nil {
		t.Fatalf("distinct keys: %v", err)
	}
	if _, err := Parse(C2BConfirmation, manyKeysBody(64<<10)); err != nil {
		t.Fatalf("64 KiB of distinct keys: %v", err)
	}
	for name, extra := range map[string]string{
		"twin of an early key":            `,"transid":"OTHER"`,
		"twin of a late key":              fmt.Sprintf(`,"FIELD%d":0`, 2*smallObject),
		"twin of the last key before set": fmt.Sprintf(`,"field%d":0`, smallObject-3),
	} {
		t.Run(name, func(t *testing.T) {
			if cb, err := Parse(C2BConfirmation, body(3*smallObject, extra)); !errors.Is(err, ErrMalformed) {
				t.Errorf("got %+v, %v; want ErrMalformed", cb, err)
			}
		})
	}
}

func TestKindPaths(t *testing.T) {
	for _, k := range Kinds {
		got, ok := KindForPath(k.Path())
		if !ok || got != k {
			t.Errorf("%s: path %s maps to %s", k, k.Path(), got)
		}
		if HasRefusedWord(k.Path()) {
			t.Errorf("%s contains a word Daraja refuses in URLs", k.Path())
		}
	}
	if _, ok := KindForPath("/stk/callback/"); ok {
		t.Error("trailing slash must not match")
	}
}

func TestMaskMSISDN(t *testing.T) {
	for in, want := range map[string]string{
		"254708374149":          "2547******49",
		"0712345678":            "07******78",
		"722000001":             "7******01",
		"2547 *** 1":            "**********",
		"+254708374149":         "+254*******49",
		"2547 ***** 126":        "2547******26",
		"2547*****126":          "2547******26",
		"12345":                 "*****",
		"John Doe":              "********",
		"Ünïcødé":               "*******",
		strings.Repeat("7", 40): strings.Repeat("*", 16),
		"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08": "hash:9f86...",
		"9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08": "hash:9f86...",
		"": "",
	} {
		got := MaskMSISDN(in)
		if got != want {
			t.Errorf("MaskMSISDN(%q) = %q, want %q", in, got, want)
		}
		if !safeIdentifier(got) {
			t.Errorf("MaskMSISDN(%q) = %q is not printable ASCII", in, got)
		}
	}
}

func TestMaskTransactionID(t *testing.T) {
	for _, tt := range []struct {
		kind     Kind
		id, want string
	}{
		{STKCallback, "ws_CO_03082023134725382708374149", "ws_CO_03082023134725382******149"},
		{STKCallback, "ws_CO_15032026102233101700000101", "ws_CO_15032026102233101******101"},
		{STKCallback, "ws_CO_150320261022331012547000001", "ws_CO_15032026102233101*******001"}, // 12-digit number
		{STKCallback, "WS_CO_03082023134725382708374149", "WS_CO_03082023134725382******149"},
		{STKCallback, "ws_CO_191220191020363925", "ws_CO_191220191020363925"}, // before 2022: no phone number
		{STKCallback, "ws_CO_1", "ws_CO_1"},
		{STKCallback, "", ""},
		{C2BConfirmation, "RKTQDM7W6S", "RKTQDM7W6S"},
		{B2CResult, "AG_20191219_00004e48cf7e3533f581", "AG_20191219_00004e48cf7e3533f581"},
		{B2CTimeout, "03082023134725382708374149", "03082023134725382708374149"},
	} {
		if got := MaskTransactionID(tt.kind, tt.id); got != tt.want {
			t.Errorf("MaskTransactionID(%s, %q) = %q, want %q", tt.kind, tt.id, got, tt.want)
		}
	}
	// No body in testdata leaks its phone number through a masked id.
	for _, f := range callbackFiles(t) {
		cb, err := Parse(f.kind, f.body)
		if err != nil {
			t.Fatal(err)
		}
		if cb.MSISDN == "" || !strings.HasPrefix(cb.MSISDN, "254") {
			continue
		}
		if masked := MaskTransactionID(f.kind, cb.TransactionID); strings.Contains(masked, cb.MSISDN[3:]) {
			t.Errorf("%s: masked id %s still holds the phone number", f.name, masked)
		}
	}
}

// singleDocument reports, without Parse's code, whether body is one JSON
// value with nothing but JSON whitespace after it.
func singleDocument(body []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	var v json.RawMessage
	if dec.Decode(&v) != nil {
		return false
	}
	return len(bytes.Trim(body[dec.InputOffset():], " \t\r\n")) == 0
}

func FuzzParse(f *testing.F) {
	for _, cf := range callbackFiles(f) {
		f.Add(string(cf.kind), cf.body)
		f.Add(string(cf.kind), append(bytes.Clone(cf.body), '}'))
	}
	for name, kind := range fixtureKinds {
		f.Add(string(kind), readFixture(f, name))
	}
	f.Add(string(C2BConfirmation), []byte(`{"TransID":"A","BusinessShortCode":"1","transid":"B"}`))
	f.Add(string(B2CTimeout), []byte(`{"Result":{"OriginatorConversationID":"O","X":[[[[1e308]]]]}}`))
	f.Add(string(STKCallback), []byte(`{"Body":{"stkCallback":{"CheckoutRequestID":"ws","ResultCode":"0é"}}}`))
	f.Add(string(B2CResult), []byte(`{"Result":{"ConversationID":"A","ResultCode":"0\u0000","TransactionID":"R\r\n"}}`))
	f.Fuzz(func(t *testing.T, kind string, body []byte) {
		cb, err := Parse(Kind(kind), body)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		if !json.Valid(body) || !singleDocument(body) {
			t.Fatalf("accepted a body that is not a single JSON document: %q", body)
		}
		if i := bytes.IndexFunc(body, func(r rune) bool { return !strings.ContainsRune(" \t\r\n", r) }); i < 0 || body[i] != '{' {
			t.Fatalf("accepted a body that is not an object: %q", body)
		}
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatalf("accepted a body Go's decoder refuses: %v", err)
		}
		if cb.Kind != Kind(kind) || cb.TransactionID == "" {
			t.Fatalf("accepted callback without an id: %+v", cb)
		}
		if Kind(kind).IsC2B() && cb.Shortcode == "" {
			t.Fatalf("accepted C2B callback without a shortcode: %+v", cb)
		}
		for _, s := range []string{cb.TransactionID, cb.Receipt, cb.Shortcode, cb.ResultCode, cb.Amount, cb.MSISDN,
			cb.ResultType, cb.OriginatorConversationID, cb.MSISDNHash,
			MaskMSISDN(cb.MSISDN), MaskMSISDN(cb.MSISDNHash), MaskTransactionID(cb.Kind, cb.TransactionID)} {
			if !safeIdentifier(s) {
				t.Fatalf("field %q is not header-safe in %+v", s, cb)
			}
		}
		if cb.MSISDN != "" && !phoneLike(cb.MSISDN) {
			t.Fatalf("MSISDN %q is not a phone number", cb.MSISDN)
		}
	})
}

func BenchmarkParse(b *testing.B) {
	for _, name := range []string{"stk.callback__success.json", "c2b.confirmation__old_full_msisdn.json", "b2c.result__success_07_name.json"} {
		body := readCallback(b, name)
		kind := Kind(name[:strings.Index(name, "__")])
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Parse(kind, body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func ExampleParse() {
	body := []byte(`{"Body":{"stkCallback":{"MerchantRequestID":"29115-34620561-1","CheckoutRequestID":"ws_CO_191220191020363925","ResultCode":0,"ResultDesc":"The service request is processed successfully.","CallbackMetadata":{"Item":[{"Name":"Amount","Value":1.00},{"Name":"MpesaReceiptNumber","Value":"NLJ7RT61SV"},{"Name":"PhoneNumber","Value":254708374149}]}}}}`)
	cb, err := Parse(STKCallback, body)
	if err != nil {
		panic(err)
	}
	fmt.Println(cb.TransactionID, cb.ResultCode, cb.Receipt, cb.Amount, MaskMSISDN(cb.MSISDN))
	// Output: ws_CO_191220191020363925 0 NLJ7RT61SV 1.00 2547******49
}

func ExampleMaskTransactionID() {
	// Since 2022 a CheckoutRequestID ends with the payer's number.
	fmt.Println(MaskTransactionID(STKCallback, "ws_CO_03082023134725382708374149"))
	fmt.Println(MaskTransactionID(STKCallback, "ws_CO_191220191020363925"))
	fmt.Println(MaskTransactionID(C2BConfirmation, "RKTQDM7W6S"))
	// Output:
	// ws_CO_03082023134725382******149
	// ws_CO_191220191020363925
	// RKTQDM7W6S
}

func ExampleMaskMSISDN() {
	fmt.Println(MaskMSISDN("254708374149"))
	fmt.Println(MaskMSISDN("2547 ***** 126"))
	fmt.Println(MaskMSISDN("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"))
	// Output:
	// 2547******49
	// 2547******26
	// hash:9f86...
}
