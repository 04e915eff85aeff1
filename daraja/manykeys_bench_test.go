package daraja

import (
	"fmt"
	"strings"
	"testing"
)

// manyKeysBody is a 64 KiB C2B confirmation padded with ~6,500 distinct
// top-level keys: the shape of the duplicate-key scan's worst case.
func manyKeysBody(size int) []byte {
	var b strings.Builder
	b.WriteString(`{"TransID":"BENCHKEYS1","BusinessShortCode":"600638"`)
	for i := 0; b.Len() < size-16; i++ {
		fmt.Fprintf(&b, `,"k%05d":0`, i)
	}
	b.WriteString("}")
	return []byte(b.String())
}

func BenchmarkParseManyKeys(b *testing.B) {
	body := manyKeysBody(64 << 10)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(C2BConfirmation, body); err != nil {
			b.Fatal(err)
		}
	}
}
