package daraja

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
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

func TestParseFixturesGolden(t *testing.T) {
	got := map[string]Callback{}
	for name, kind := range fixtureKinds {
		cb, err := Parse(kind, readFixture(t, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got[name] = cb
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
		t.Errorf("parsed fixtures differ from %s (run with -update if intended):\n%s", golden, out)
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
			Callback{Kind: B2CTimeout, TransactionID: "O-1", ResultCode: "1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.kind, []byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
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
		{"array", STKCallback, `[]`},
		{"not json", C2BConfirmation, `TransID=1`},
		{"trailing data", C2BConfirmation, `{"TransID":"X","BusinessShortCode":"1"} {}`},
		{"missing trans id", C2BConfirmation, `{"BusinessShortCode":"600638"}`},
		{"missing shortcode", C2BValidation, `{"TransID":"X"}`},
		{"stk without checkout id", STKCallback, `{"Body":{"stkCallback":{"ResultCode":0}}}`},
		{"stk without result code", STKCallback, `{"Body":{"stkCallback":{"CheckoutRequestID":"ws"}}}`},
		{"result without ids", B2CResult, `{"Result":{"ResultCode":0}}`},
		{"wrong shape for kind", B2CResult, `{"Body":{"stkCallback":{"CheckoutRequestID":"ws","ResultCode":0}}}`},
		{"result code object", B2CResult, `{"Result":{"ResultCode":{},"ConversationID":"A"}}`},
		{"number out of range", B2CResult, `{"Result":{"ResultCode":1e999,"ConversationID":"A"}}`},
		{"deep nesting", C2BConfirmation, deep},
		{"invalid utf8", C2BConfirmation, "{\"TransID\":\"\xff\",\"BusinessShortCode\":\"1\"}"},
		{"control characters in id", C2BConfirmation, `{"TransID":"A\r\nB","BusinessShortCode":"1"}`},
		{"huge id", C2BConfirmation, `{"TransID":"` + strings.Repeat("A", 200) + `","BusinessShortCode":"1"}`},
		{"unknown kind", Kind("x.y"), `{}`},
		{"duplicate key", C2BConfirmation, `{"TransID":"A","BusinessShortCode":"600638","TransID":"B"}`},
		{"duplicate key differing in case", C2BConfirmation, `{"TransID":"A","BusinessShortCode":"600638","transid":"B"}`},
		{"duplicate nested key", STKCallback, `{"Body":{"stkCallback":{"CheckoutRequestID":"a","ResultCode":0,"ResultCode":1}}}`},
		{"escaped key", C2BConfirmation, `{"Trans\u0049D":"A","BusinessShortCode":"600638"}`},
		{"non-ASCII key", C2BConfirmation, `{"TransID":"A","BusinessShortCode":"600638","Kéy":1}`},
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

func TestKindPaths(t *testing.T) {
	for _, k := range Kinds {
		got, ok := KindForPath(k.Path())
		if !ok || got != k {
			t.Errorf("%s: path %s maps to %s", k, k.Path(), got)
		}
		for _, banned := range []string{"mpesa", "safaricom", "exec", "cmd", "sql"} {
			if strings.Contains(strings.ToLower(k.Path()), banned) {
				t.Errorf("%s contains %q, which Daraja refuses in URLs", k.Path(), banned)
			}
		}
	}
	if _, ok := KindForPath("/stk/callback/"); ok {
		t.Error("trailing slash must not match")
	}
}

func TestMaskMSISDN(t *testing.T) {
	for in, want := range map[string]string{
		"254708374149": "2547******49",
		"0712345678":   "0712****78",
		"12345":        "*****",
		"":             "",
	} {
		if got := MaskMSISDN(in); got != want {
			t.Errorf("MaskMSISDN(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for name, kind := range fixtureKinds {
		f.Add(string(kind), readFixture(f, name))
	}
	f.Fuzz(func(t *testing.T, kind string, body []byte) {
		cb, err := Parse(Kind(kind), body)
		if err != nil {
			return
		}
		if cb.TransactionID == "" || !safeIdentifier(cb.TransactionID) || !safeIdentifier(cb.Shortcode) {
			t.Fatalf("accepted callback with unusable ids: %+v", cb)
		}
	})
}

func BenchmarkParse(b *testing.B) {
	for _, name := range []string{"stk_callback_success.json", "c2b_confirmation.json", "b2c_result_success.json"} {
		body := readFixture(b, name)
		kind := fixtureKinds[name]
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
