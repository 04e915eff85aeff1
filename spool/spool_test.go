package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats.go"
)

func msg(i int) *nats.Msg {
	return &nats.Msg{
		Subject: fmt.Sprintf("daraja.cb.stk.callback.%d", 174379),
		Header:  nats.Header{"Nats-Msg-Id": {fmt.Sprintf("stk.callback:ws_%d", i)}, "Daraja-Kind": {"stk.callback"}},
		Data:    []byte(fmt.Sprintf(`{"n":%d}`, i)),
	}
}

func collect(t *testing.T, s *Spool) []*nats.Msg {
	t.Helper()
	var got []*nats.Msg
	if _, err := s.Drain(context.Background(), func(_ context.Context, m *nats.Msg) error {
		got = append(got, m)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestAppendDrainInOrder(t *testing.T) {
	s, err := Open(t.TempDir(), 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := s.Append(msg(i)); err != nil {
			t.Fatal(err)
		}
	}
	got := collect(t, s)
	if len(got) != 5 {
		t.Fatalf("drained %d", len(got))
	}
	for i, m := range got {
		want := msg(i)
		if m.Subject != want.Subject || !bytes.Equal(m.Data, want.Data) || m.Header.Get("Nats-Msg-Id") != want.Header.Get("Nats-Msg-Id") {
			t.Errorf("record %d: %+v", i, m)
		}
	}
	if b, n := s.Stats(); b != 0 || n != 0 {
		t.Errorf("after drain: %d bytes, %d records", b, n)
	}
	if len(collect(t, s)) != 0 {
		t.Error("drained twice")
	}
}

func TestDrainStopsAndResumes(t *testing.T) {
	s, _ := Open(t.TempDir(), 1<<20, nil)
	for i := range 6 {
		_ = s.Append(msg(i))
	}
	calls := 0
	n, err := s.Drain(context.Background(), func(_ context.Context, m *nats.Msg) error {
		calls++
		if calls == 4 {
			return errors.New("nats down")
		}
		return nil
	})
	if err == nil || n != 3 {
		t.Fatalf("n=%d err=%v", n, err)
	}
	// New appends while draining go to a new segment, after the old ones.
	_ = s.Append(msg(6))
	got := collect(t, s)
	var ids []string
	for _, m := range got {
		ids = append(ids, m.Header.Get("Nats-Msg-Id"))
	}
	want := []string{"stk.callback:ws_3", "stk.callback:ws_4", "stk.callback:ws_5"}
	if fmt.Sprint(ids[:3]) != fmt.Sprint(want) {
		t.Fatalf("resumed with %v", ids)
	}
	got = append(got, collect(t, s)...)
	if len(got) != 4 || got[3].Header.Get("Nats-Msg-Id") != "stk.callback:ws_6" {
		t.Fatalf("got %d records", len(got))
	}
}

func TestFull(t *testing.T) {
	s, _ := Open(t.TempDir(), 200, nil)
	var err error
	n := 0
	for ; n < 100; n++ {
		if err = s.Append(msg(n)); err != nil {
			break
		}
	}
	if !errors.Is(err, ErrFull) || n == 0 {
		t.Fatalf("n=%d err=%v", n, err)
	}
	if b, _ := s.Stats(); b > 200 {
		t.Fatalf("spool grew to %d bytes", b)
	}
	collect(t, s)
	if err := s.Append(msg(0)); err != nil {
		t.Fatalf("after drain: %v", err)
	}
}

// TestRecoverTornTail: a crash mid-write leaves part of a record; Open keeps
// every whole record before it.
func TestRecoverTornTail(t *testing.T) {
	for _, damage := range []struct {
		name string
		do   func(data []byte) []byte
	}{
		{"cut inside the last record", func(d []byte) []byte { return d[:len(d)-5] }},
		{"cut inside the last header", func(d []byte) []byte { return append(d, 0, 0, 1) }},
		{"garbage after the last record", func(d []byte) []byte { return append(d, bytes.Repeat([]byte{0xff}, 40)...) }},
		{"last record's checksum broken", func(d []byte) []byte { d[len(d)-1] ^= 0xff; return d }},
	} {
		t.Run(damage.name, func(t *testing.T) {
			dir := t.TempDir()
			s, _ := Open(dir, 1<<20, nil)
			for i := range 3 {
				_ = s.Append(msg(i))
			}
			s.Close()
			seg := filepath.Join(dir, fmt.Sprintf("%020d%s", 1, segmentExt))
			data, _ := os.ReadFile(seg)
			os.WriteFile(seg, damage.do(data), 0o600)

			s, err := Open(dir, 1<<20, nil)
			if err != nil {
				t.Fatal(err)
			}
			_, records := s.Stats()
			want := int64(3)
			if damage.name == "cut inside the last record" || damage.name == "last record's checksum broken" {
				want = 2
			}
			if records != want {
				t.Fatalf("recovered %d records, want %d", records, want)
			}
			// Appends after recovery land after the kept records.
			_ = s.Append(msg(9))
			got := collect(t, s)
			if int64(len(got)) != want+1 || got[len(got)-1].Header.Get("Nats-Msg-Id") != "stk.callback:ws_9" {
				t.Fatalf("drained %d", len(got))
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(encode(msg(1)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decode(b)
		if err != nil {
			return
		}
		again, err := decode(encode(m))
		if err != nil || again.Subject != m.Subject || !bytes.Equal(again.Data, m.Data) {
			t.Fatalf("round trip changed %+v", m)
		}
	})
}

func FuzzRecover(f *testing.F) {
	var buf bytes.Buffer
	for i := range 3 {
		p := encode(msg(i))
		rec := make([]byte, recHeader)
		rec[3] = byte(len(p))
		buf.Write(rec)
		buf.Write(p)
	}
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("%020d%s", 1, segmentExt)), data, 0o600)
		s, err := Open(dir, 1<<30, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, records := s.Stats()
		got := collect(t, s)
		if int64(len(got)) != records {
			t.Fatalf("counted %d, drained %d", records, len(got))
		}
	})
}

func BenchmarkAppend(b *testing.B) {
	s, _ := Open(b.TempDir(), 1<<40, nil)
	m := msg(1)
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Append(m); err != nil {
			b.Fatal(err)
		}
	}
}
