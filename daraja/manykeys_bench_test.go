package daraja

import (
	"fmt"
	"strings"
	"testing"
)

// manyKeysBody is a C2B confirmation of about size bytes padded with
// distinct top-level keys (~6,500 in 64 KiB): the worst case of the old
// pairwise duplicate-key scan, which took ~120 ms of CPU on it.
func manyKeysBody(size int) []byte {
	var b strings.Builder
	b.WriteString(`{"TransID":"BENCHKEYS1","BusinessShortCode":"600638"`)
	for i := 0; b.Len() < size-16; i++ {
		fmt.Fprintf(&b, `,"k%05d":0`, i)
	}
	b.WriteString("}")
	return []byte(b.String())
}

// manySmallObjectsBody fills about size bytes with objects of
// smallObject-1 keys each: the worst case of the pairwise comparison that
// checkJSON keeps for small objects.
func manySmallObjectsBody(size int) []byte {
	var b strings.Builder
	b.WriteString(`{"TransID":"BENCHKEYS2","BusinessShortCode":"600638","X":[{}`)
	for b.Len() < size-128 {
		b.WriteString(",{")
		for k := range smallObject - 1 {
			if k > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"%c":0`, 'a'+k)
		}
		b.WriteByte('}')
	}
	b.WriteString("]}")
	return []byte(b.String())
}

func BenchmarkParseManyKeys(b *testing.B) {
	for _, bc := range []struct {
		name string
		body []byte
	}{
		{"one_object_64KiB", manyKeysBody(64 << 10)},
		{"small_objects_64KiB", manySmallObjectsBody(64 << 10)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Parse(C2BConfirmation, bc.body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
