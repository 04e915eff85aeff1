package daraja

import (
	"encoding/json"
	"testing"
)

// TestValidationAnswer: what Daraja is sent is rebuilt from what was read,
// so it means what the edge records; a reply read one way by Go and
// another by any other parser is no answer (the fallback applies).
func TestValidationAnswer(t *testing.T) {
	for _, c := range []struct {
		reply, want string
		accepted    bool
	}{
		{`{"ResultCode":"0","ResultDesc":"Accepted"}`, `{"ResultCode":"0","ResultDesc":"Accepted"}`, true},
		{`{"ResultCode":0}`, `{"ResultCode":"0","ResultDesc":"Accepted"}`, true},
		{`{"ResultCode":"\u0030"}`, `{"ResultCode":"0","ResultDesc":"Accepted"}`, true}, // read as "0" by every parser
		{`{"ResultCode":"C2B00012","ResultDesc":"Invalid Account Number","ThirdPartyTransID":"INV-77"}`,
			`{"ResultCode":"C2B00012","ResultDesc":"Invalid Account Number","ThirdPartyTransID":"INV-77"}`, false},
		{` {"ResultCode":"C2B00011"} ` + "\n", `{"ResultCode":"C2B00011","ResultDesc":"Rejected"}`, false},
		{`{"ResultCode":"0","ThirdPartyTransID":"a b","Extra":[1]}`, `{"ResultCode":"0","ResultDesc":"Accepted"}`, true},
	} {
		got, accepted, ok := ValidationAnswer([]byte(c.reply))
		if !ok || string(got) != c.want || accepted != c.accepted {
			t.Errorf("%s: %s %v %v, want %s %v", c.reply, got, accepted, ok, c.want, c.accepted)
		}
	}
	for _, bad := range []string{
		``, `[]`, `"0"`, `{}`, `{"ResultCode":""}`, `{"ResultCode":null}`,
		`{"ResultCode":"0","ResultDesc":"Accepted"}}`,   // trailing brace
		`{"ResultCode":"0"} {"ResultCode":"C2B00011"}`,  // two objects
		`{"resultCode":"0"}`,                            // not Daraja's key
		`{"ResultCode":"0","ResultCode":"C2B00011"}`,    // a key twice: parsers disagree
		`{"ResultCode":true}`, `{"ResultCode":{"x":1}}`, // not a code
		`{"ResultCode":1.5}`, `{"ResultCode":-1}`, // not a whole number
		`{"ResultCode":"BANANA-SPLIT"}`, `{"ResultCode":"0 "}`, // not letters and digits
	} {
		if got, _, ok := ValidationAnswer([]byte(bad)); ok {
			t.Errorf("%s: read as %s, want no answer", bad, got)
		}
	}
}

func FuzzValidationAnswer(f *testing.F) {
	for _, s := range []string{`{"ResultCode":0}`, `{"ResultCode":"C2B00011","ResultDesc":"x","ThirdPartyTransID":"a"}`,
		`{"ResultCode":{}}`, `[]`, `{"ResultCode":"0"} {}`, `{"ResultCode":"0","ThirdPartyTransID":"a b"}`, `{"ResultCode":"\u0030"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ans, accepted, ok := ValidationAnswer(b)
		if !ok {
			return
		}
		var a struct{ ResultCode, ResultDesc, ThirdPartyTransID string }
		if err := json.Unmarshal(ans, &a); err != nil || !resultCodeRE.MatchString(a.ResultCode) || (a.ResultCode == "0") != accepted {
			t.Fatalf("%q -> %q %v", b, ans, err)
		}
		if a.ThirdPartyTransID != "" && !thirdPartyRE.MatchString(a.ThirdPartyTransID) {
			t.Fatalf("third party id %q", a.ThirdPartyTransID)
		}
		// The answer read again is itself.
		if again, acc2, ok2 := ValidationAnswer(ans); !ok2 || string(again) != string(ans) || acc2 != accepted {
			t.Fatalf("%q -> %q, read again %q", b, ans, again)
		}
	})
}
