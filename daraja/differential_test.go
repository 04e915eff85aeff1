package daraja

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzParseDifferential compares Parse with refParse, the implementation it
// replaced (reference_test.go), on every kind: both refuse the body, or
// both accept it with the same Callback. Seeds are the testdata bodies,
// each also cut short, with a byte dropped and with its keys' case changed,
// so that the fuzzer starts from the shapes Parse reads.
func FuzzParseDifferential(f *testing.F) {
	for _, cf := range callbackFiles(f) {
		b := cf.body
		f.Add(uint8(kindIndex(cf.kind)), b)
		f.Add(uint8(kindIndex(cf.kind)), b[:len(b)/2])
		f.Add(uint8(kindIndex(cf.kind)), append(bytes.Clone(b[:len(b)/3]), b[len(b)/3+1:]...))
		f.Add(uint8(kindIndex(cf.kind)), bytes.ToLower(b))
		f.Add(uint8(kindIndex(cf.kind)+1), b)
	}
	for name, kind := range fixtureKinds {
		f.Add(uint8(kindIndex(kind)), readFixture(f, name))
	}
	for _, s := range []string{
		`{"TransID":"A","BusinessShortCode":"1","transid":"B"}`,
		`{"TransID":" A\u00a0","BusinessShortCode":1e3,"MSISDN":"254 708 374 149"}`,
		`{"Body":{"stkCallback":{"CheckoutRequestID":"ws","CallbackMetadata":{"Item":{"Name":" Amount ","Value":1}}}}}`,
		`{"Body":{"stkCallback":{"CheckoutRequestID":"ws","CallbackMetadata":{"Item":[1,[{"Name":"Amount","Value":1}],{"Name":"PhoneNumber","Value":"254708374149"}]}}}}`,
		`{"Result":{"ConversationID":null,"OriginatorConversationID":"O","ResultParameters":{"ResultParameter":[{"Key":"ReceiverPartyPublicName","Value":"0722000000 - Jöhn"}]}}}`,
		`{"Result":"x"}`, `{"Result":[]}`, `{"Body":{"stkCallback":[]}}`, `{"a":1e309}`, `{"a":-0.0e-400}`,
	} {
		for k := range Kinds {
			f.Add(uint8(k), []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, k uint8, body []byte) {
		kind := Kind("unknown")
		if int(k) < len(Kinds) {
			kind = Kinds[k]
		}
		got, err := Parse(kind, body)
		want, wantErr := refParse(kind, body)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("Parse(%s, %q): error %v, reference error %v", kind, body, err, wantErr)
		}
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		if got != want {
			t.Fatalf("Parse(%s, %q):\n got %+v\nwant %+v", kind, body, got, want)
		}
	})
}

func kindIndex(k Kind) int {
	for i, x := range Kinds {
		if x == k {
			return i
		}
	}
	return len(Kinds)
}

// TestParseMatchesReference runs the differential comparison on every
// testdata body without the fuzzer, so that `go test` alone checks it.
func TestParseMatchesReference(t *testing.T) {
	for _, cf := range callbackFiles(t) {
		for _, kind := range Kinds {
			got, err := Parse(kind, cf.body)
			want, wantErr := refParse(kind, cf.body)
			if (err != nil) != (wantErr != nil) || got != want {
				t.Errorf("%s as %s: got %+v, %v; reference %+v, %v", cf.name, kind, got, err, want, wantErr)
			}
		}
	}
}
