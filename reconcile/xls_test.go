package reconcile

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/shakinm/xlsReader/xls/record"
)

// rkRecord is an RK record's data as a .xls holds it (row, column, XF
// index, RK number), read by xlsReader itself.
func rkRecord(rk uint32) *record.Rk {
	b := make([]byte, 10)
	binary.LittleEndian.PutUint32(b[6:], rk)
	c := new(record.Rk)
	c.Read(b)
	return c
}

func rkInt(n int32, cents bool) uint32 {
	rk := uint32(n<<2) | 2
	if cents {
		rk |= 1
	}
	return rk
}

func rkFloat(f float64, cents bool) uint32 {
	rk := uint32(math.Float64bits(f) >> 32)
	if cents {
		rk |= 1
	}
	return rk
}

// TestXLSRKDecoding: xlsCell reads RK numbers of every type, negative
// ones too, from the bytes of records the library built, single (RK) and
// multiple (MULRK). xlsCell reaches those bytes by reflection on
// xlsReader's unexported field: if an upgrade moves it, this fails.
func TestXLSRKDecoding(t *testing.T) {
	cases := []struct {
		rk   uint32
		want string
	}{
		{rkInt(-5000, false), "-5000"},
		{rkInt(6085, false), "6085"},
		{rkInt(-1550, true), "-15.5"},
		{rkInt(123450, true), "1234.5"},
		{rkFloat(2.5, false), "2.5"},
		{rkFloat(-2.5, false), "-2.5"},
		{rkFloat(123450, true), "1234.5"},
		{rkFloat(-123450, true), "-1234.5"},
	}
	for _, c := range cases {
		cell := rkRecord(c.rk)
		if _, ok := rkBytes(cell); !ok {
			t.Fatalf("xlsReader changed: rkBytes cannot read record.Rk's RK number (type %s); xlsCell would read negative amounts as large positive ones", cell.GetType())
		}
		if got := xlsCell(cell); got != c.want {
			t.Errorf("RK %#08x: %s, want %s (the library says %s)", c.rk, got, c.want, cell.GetString())
		}
	}
	// MULRK: rw, colFirst, then 6-byte (XF, RK) pairs, then colLast.
	b := make([]byte, 4+6*len(cases)+2)
	for i, c := range cases {
		binary.LittleEndian.PutUint32(b[4+6*i+2:], c.rk)
	}
	binary.LittleEndian.PutUint16(b[len(b)-2:], uint16(len(cases)-1))
	m := new(record.MulRk)
	m.Read(b)
	recs := m.GetArrayRKRecord()
	if len(recs) != len(cases) {
		t.Fatalf("MULRK gave %d records", len(recs))
	}
	for i := range recs {
		if got := xlsCell(recs[i].Get()); got != cases[i].want {
			t.Errorf("MULRK %d: %s, want %s", i, got, cases[i].want)
		}
	}
	// Any other cell is the library's text.
	if _, ok := rkBytes(new(record.LabelSSt)); ok {
		t.Error("rkBytes read a cell that is not an RK")
	}
}
