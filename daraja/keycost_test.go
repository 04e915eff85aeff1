package daraja

import (
	"fmt"
	"strings"
	"testing"
)

// keyWork scans body as Parse does for a C2B kind and returns the key bytes
// the duplicate check compared or hashed.
func keyWork(t *testing.T, body []byte) int {
	t.Helper()
	x := extract{kind: C2BConfirmation, root: roleC2B}
	s := scanner{b: body}
	s.spans = s.spanBuf[:0]
	if err := s.document(&x); err != nil {
		t.Fatalf("body refused: %v", err)
	}
	return s.keyWork
}

// smallObjectsOf fills n objects of smallObject-1 keys each, every key
// keyLen bytes long and differing from the others only in its last bytes:
// the worst case of the pairwise comparison kept for small objects (each
// comparison runs to the end of the keys).
func smallObjectsOf(n, keyLen int) []byte {
	var b strings.Builder
	b.WriteString(`{"TransID":"KEYCOST1","BusinessShortCode":"600638","X":[{}`)
	prefix := strings.Repeat("p", keyLen-2)
	for range n {
		b.WriteString(",{")
		for k := range smallObject - 1 {
			if k > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"%s%02d":0`, prefix, k)
		}
		b.WriteByte('}')
	}
	b.WriteString("]}")
	return []byte(b.String())
}

// oneObjectOf is a C2B body with n distinct top-level keys of keyLen bytes
// sharing all but their last five.
func oneObjectOf(n, keyLen int) []byte {
	var b strings.Builder
	b.WriteString(`{"TransID":"KEYCOST2","BusinessShortCode":"600638"`)
	prefix := strings.Repeat("k", keyLen-5)
	for i := range n {
		fmt.Fprintf(&b, `,"%s%05d":0`, prefix, i)
	}
	b.WriteString("}")
	return []byte(b.String())
}

// nestedOf is n objects of 3*smallObject keys each, inside one object of
// n keys: both sides of the switch to a set, at two depths.
func nestedOf(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"TransID":"KEYCOST3","BusinessShortCode":"600638"`)
	for i := range n {
		fmt.Fprintf(&b, `,"o%05d":{`, i)
		for k := range 3 * smallObject {
			if k > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"i%03d":%d`, k, k)
		}
		b.WriteByte('}')
	}
	b.WriteString("}")
	return []byte(b.String())
}

// TestDuplicateKeyScanIsLinear holds the duplicate-key check to linear work
// without timing anything: it counts the key bytes the check compares or
// hashes (scanner.keyWork). For each adversarial shape, eight times the
// keys may cost at most eight times the work (with a little slack for the
// fixed members), and the work stays within smallObject bytes per body
// byte. A pairwise scan of every object (quadratic) does 64 times the work
// for eight times the keys of one object, and fails both.
func TestDuplicateKeyScanIsLinear(t *testing.T) {
	for _, c := range []struct {
		name string
		body func(n int) []byte
		n    int
	}{
		{"one object, short keys", func(n int) []byte { return oneObjectOf(n, 6) }, 800},
		{"one object, long shared-prefix keys", func(n int) []byte { return oneObjectOf(n, 64) }, 200},
		{"small objects, short keys", func(n int) []byte { return smallObjectsOf(n, 3) }, 50},
		{"small objects, long shared-prefix keys", func(n int) []byte { return smallObjectsOf(n, 200) }, 20},
		{"nested objects past the set threshold", nestedOf, 40},
	} {
		t.Run(c.name, func(t *testing.T) {
			small, large := c.body(c.n), c.body(8*c.n)
			ws, wl := keyWork(t, small), keyWork(t, large)
			t.Logf("%d keys-worth: %d bytes, work %d; 8×: %d bytes, work %d (×%.2f)",
				c.n, len(small), ws, len(large), wl, float64(wl)/float64(ws))
			if ws == 0 {
				t.Fatal("no key work counted: the counter is not wired")
			}
			if float64(wl) > 8*1.1*float64(ws) {
				t.Errorf("8× the keys cost %.1f× the work (%d → %d): not linear", float64(wl)/float64(ws), ws, wl)
			}
			if wl > smallObject*len(large) {
				t.Errorf("work %d for a %d-byte body: more than %d per byte", wl, len(large), smallObject)
			}
		})
	}
}
