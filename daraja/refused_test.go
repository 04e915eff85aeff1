package daraja

import "testing"

func TestHasRefusedWord(t *testing.T) {
	for s, want := range map[string]bool{
		"https://callbacks.example.co.ke": false,
		"https://pay.example.com/M-PESA":  true,
		"mpesa":                           true,
		"MPesa":                           true,
		"m_pesa":                          true,
		"Safaricom":                       true,
		"abcEXEcdef":                      true,
		"x-E-x-e":                         true,
		"cmd":                             true,
		"s.q.l":                           true,
		"QUERY":                           true,
		"aB3_x9-Qz":                       false,
		"":                                false,
	} {
		if got := HasRefusedWord(s); got != want {
			t.Errorf("HasRefusedWord(%q) = %v, want %v", s, got, want)
		}
	}
}
