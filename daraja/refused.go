package daraja

import "strings"

// refusedWords are the words Safaricom refuses in callback URLs ("or any
// of their variants", case-insensitive). "exe" also covers "exec".
var refusedWords = [...]string{"mpesa", "safaricom", "exe", "cmd", "sql", "query"}

// HasRefusedWord reports whether s contains a word Daraja refuses in a
// callback URL, in any case, also when separators (-, _, ., ~, space,
// %2D-style escapes left aside) are put between its letters: "M-PESA",
// "m_pesa", "S.Q.L" and "Query" all count.
func HasRefusedWord(s string) bool {
	lower := strings.ToLower(s)
	var squeezed strings.Builder
	squeezed.Grow(len(lower))
	for i := 0; i < len(lower); i++ {
		switch c := lower[i]; c {
		case '-', '_', '.', '~', ' ', '+':
		default:
			squeezed.WriteByte(c)
		}
	}
	sq := squeezed.String()
	for _, w := range refusedWords {
		if strings.Contains(lower, w) || strings.Contains(sq, w) {
			return true
		}
	}
	return false
}
