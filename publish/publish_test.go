package publish

import (
	"testing"
	"time"
)

func TestCallbackMsgHeaders(t *testing.T) {
	c := Callback{Kind: "stk.callback", Shortcode: "174379", TransactionID: "ws_CO_1", ResultCode: "0",
		TokenID: "tok_x", SourceIP: "196.201.214.200", ReceivedAt: time.Unix(1700000000, 5).UTC(), Edge: "e1", Body: []byte("{}")}
	m := c.Msg(Subjects{Prefix: "daraja"}.Callback(c.Kind, c.Shortcode))
	if m.Subject != "daraja.cb.stk.callback.174379" {
		t.Errorf("subject %s", m.Subject)
	}
	want := map[string]string{
		"Nats-Msg-Id": "stk.callback:ws_CO_1", "Daraja-Kind": "stk.callback", "Daraja-Shortcode": "174379",
		"Daraja-Transaction-Id": "ws_CO_1", "Daraja-Result-Code": "0", "Daraja-Token-Id": "tok_x",
		"Daraja-Source-Ip": "196.201.214.200", "Daraja-Received-At": "2023-11-14T22:13:20.000000005Z", "Daraja-Edge": "e1",
	}
	for k, v := range want {
		if got := m.Header.Get(k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if _, ok := m.Header["Daraja-Reference"]; ok {
		t.Error("empty reference sent as a header")
	}
}

// BenchmarkCallbackMsg is the header build on the hot path.
func BenchmarkCallbackMsg(b *testing.B) {
	c := Callback{Kind: "stk.callback", Shortcode: "174379", TransactionID: "ws_CO_191220191020363925", Receipt: "NLJ7RT61SV",
		ResultCode: "0", Reference: "ORDER-1042", TokenID: "tok_6v3r7ypjmnwrytos", SourceIP: "196.201.214.200",
		ReceivedAt: time.Now(), Edge: "edge-1", Body: []byte("{}")}
	s := Subjects{Prefix: "daraja"}
	b.ReportAllocs()
	for b.Loop() {
		_ = c.Msg(s.Callback(c.Kind, c.Shortcode))
	}
}
