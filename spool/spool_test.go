package spool

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func msg(i int) *nats.Msg {
	return &nats.Msg{
		Subject: fmt.Sprintf("daraja.cb.stk.callback.%d", 174379),
		Header:  nats.Header{"Nats-Msg-Id": {fmt.Sprintf("stk.callback:ws_%d", i)}, "Daraja-Kind": {"stk.callback"}},
		Data:    []byte(fmt.Sprintf(`{"n":%d}`, i)),
	}
}

func collect(t testing.TB, s *Spool) []*nats.Msg {
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

// ids returns each message's number from its Nats-Msg-Id.
func ids(ms []*nats.Msg) []int {
	out := []int{}
	for _, m := range ms {
		var i int
		if _, err := fmt.Sscanf(m.Header.Get("Nats-Msg-Id"), "stk.callback:ws_%d", &i); err != nil {
			i = -1
		}
		out = append(out, i)
	}
	return out
}

func segPath(dir string, seq uint64) string {
	return filepath.Join(dir, fmt.Sprintf("%020d%s", seq, segmentExt))
}

func mustOpen(t testing.TB, dir string, o Options) *Spool {
	t.Helper()
	if o.MaxBytes == 0 {
		o.MaxBytes = 1 << 20
	}
	s, err := OpenOptions(dir, o, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
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
	if fmt.Sprint(ids(got)) != fmt.Sprint([]int{3, 4, 5, 6}) {
		t.Fatalf("resumed with %v", ids(got))
	}
	if got := collect(t, s); len(got) != 0 {
		t.Fatalf("drained again: %v", ids(got))
	}
}

func TestFull(t *testing.T) {
	s, _ := Open(t.TempDir(), 400, nil)
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
	if b, _ := s.Stats(); b > 400 {
		t.Fatalf("spool grew to %d bytes", b)
	}
	collect(t, s)
	if err := s.Append(msg(0)); err != nil {
		t.Fatalf("after drain: %v", err)
	}
}

func TestAppendAfterClose(t *testing.T) {
	s := mustOpen(t, t.TempDir(), Options{})
	s.Close()
	if err := s.Append(msg(0)); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestRecoverTornTail: a crash mid-write leaves part of a record; Open keeps
// every whole record before it. A torn record is not damage (it was never
// acknowledged); a broken checksum or garbage is.
func TestRecoverTornTail(t *testing.T) {
	for _, damage := range []struct {
		name    string
		do      func(data []byte) []byte
		want    int
		corrupt int64
	}{
		{"cut inside the last record", func(d []byte) []byte { return d[:len(d)-5] }, 2, 0},
		{"cut inside the last header", func(d []byte) []byte { return append(d, 0, 0, 1) }, 3, 0},
		{"zeros after the last record", func(d []byte) []byte { return append(d, make([]byte, 4096)...) }, 3, 0},
		{"garbage after the last record", func(d []byte) []byte { return append(d, bytes.Repeat([]byte{0xff}, 40)...) }, 3, 1},
		{"last record's checksum broken", func(d []byte) []byte { d[len(d)-1] ^= 0xff; return d }, 2, 1},
	} {
		t.Run(damage.name, func(t *testing.T) {
			dir := t.TempDir()
			s, _ := Open(dir, 1<<20, nil)
			for i := range 3 {
				_ = s.Append(msg(i))
			}
			s.Close()
			seg := segPath(dir, 1)
			data, _ := os.ReadFile(seg)
			os.WriteFile(seg, damage.do(data), 0o600)

			s, err := Open(dir, 1<<20, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, records := s.Stats(); records != int64(damage.want) {
				t.Fatalf("recovered %d records, want %d", records, damage.want)
			}
			if c := s.Corrupt(); c != damage.corrupt {
				t.Errorf("corrupt %d, want %d", c, damage.corrupt)
			}
			if st, _ := os.Stat(seg); st.Size() > int64(len(data)) {
				t.Errorf("tail not cut: %d bytes, written %d", st.Size(), len(data))
			}
			// Appends after recovery land after the kept records.
			_ = s.Append(msg(9))
			got := ids(collect(t, s))
			want := append(slices.Collect(func(yield func(int) bool) {
				for i := range damage.want {
					yield(i)
				}
			}), 9)
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("drained %v, want %v", got, want)
			}
		})
	}
}

// spans returns each record's [start, end) in a segment file.
func spans(t testing.TB, path string) [][2]int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	var head [segHdr]byte
	n, _ := f.ReadAt(head[:], 0)
	seed, fm := parseSegHeader(head[:n])
	seg := &segment{end: st.Size(), seed: seed}
	if fm == formatLegacy {
		seg.legacy = true
	} else {
		seg.cursor = segHdr
	}
	r := newReader(f, seg)
	var out [][2]int64
	for off := seg.cursor; ; {
		_, next, dmg, err := r.next(off)
		if err != nil || dmg != nil {
			t.Fatalf("spans: %v %+v", err, dmg)
		}
		if next < 0 {
			return out
		}
		out = append(out, [2]int64{off, next})
		off = next
	}
}

// legacyRecord is a record as segments without a header hold them.
func legacyRecord(m *nats.Msg) []byte {
	p := encode(nil, m)
	rec := binary.BigEndian.AppendUint32(nil, uint32(len(p)))
	rec = binary.BigEndian.AppendUint32(rec, crc32.Checksum(p, crcTable))
	return append(rec, p...)
}

// TestRecoverSkipsDamage: damage in the middle of a segment is skipped,
// logged and counted; the records after it replay, nothing else does.
func TestRecoverSkipsDamage(t *testing.T) {
	flip := func(rec, at int) func([]byte, [][2]int64) []byte {
		return func(d []byte, sp [][2]int64) []byte { d[sp[rec][0]+int64(at)] ^= 0x10; return d }
	}
	for _, c := range []struct {
		name    string
		legacy  bool
		damage  func(d []byte, sp [][2]int64) []byte
		want    []int
		corrupt int64
	}{
		{"payload bit flipped", false, flip(2, recHeader+5), []int{0, 1, 3, 4}, 1},
		{"data bit flipped", false, func(d []byte, sp [][2]int64) []byte { d[sp[2][1]-2] ^= 1; return d }, []int{0, 1, 3, 4}, 1},
		{"length bit flipped", false, flip(2, 3), []int{0, 1, 3, 4}, 1},
		{"length made huge", false, flip(2, 0), []int{0, 1, 3, 4}, 1},
		{"header checksum flipped", false, flip(2, 5), []int{0, 1, 3, 4}, 1},
		{"payload checksum flipped", false, flip(2, 9), []int{0, 1, 3, 4}, 1},
		{"first record damaged", false, flip(0, recHeader+1), []int{1, 2, 3, 4}, 1},
		{"record cut short", false, func(d []byte, sp [][2]int64) []byte {
			return slices.Delete(d, int(sp[2][0])+20, int(sp[2][0])+30)
		}, []int{0, 1, 3, 4}, 1},
		{"two records zeroed", false, func(d []byte, sp [][2]int64) []byte {
			clear(d[sp[1][0]:sp[2][1]])
			return d
		}, []int{0, 3, 4}, 1},
		{"two separate damages", false, func(d []byte, sp [][2]int64) []byte {
			d[sp[1][0]+15] ^= 4
			d[sp[3][0]+15] ^= 4
			return d
		}, []int{0, 2, 4}, 2},
		{"garbage inserted", false, func(d []byte, sp [][2]int64) []byte {
			return slices.Insert(d, int(sp[2][0]), bytes.Repeat([]byte{0, 0, 0, 9}, 30)...)
		}, []int{0, 1, 2, 3, 4}, 1},
		{"first header copy damaged", false, func(d []byte, _ [][2]int64) []byte { d[10] ^= 1; return d }, []int{0, 1, 2, 3, 4}, 0},
		{"second header copy damaged", false, func(d []byte, _ [][2]int64) []byte { d[30] ^= 1; return d }, []int{0, 1, 2, 3, 4}, 0},
		{"both header copies damaged", false, func(d []byte, _ [][2]int64) []byte { d[10] ^= 1; d[30] ^= 1; return d }, []int{}, 1},
		{"legacy: payload bit flipped", true, flip(2, legacyHeader+5), []int{0, 1, 3, 4}, 1},
		{"legacy: length bit flipped", true, flip(2, 3), []int{0, 1, 3, 4}, 1},
		{"legacy: first length byte", true, flip(0, 0), []int{1, 2, 3, 4}, 1},
		{"legacy: intact", true, func(d []byte, _ [][2]int64) []byte { return d }, []int{0, 1, 2, 3, 4}, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			seg := segPath(dir, 1)
			if c.legacy {
				var b []byte
				for i := range 5 {
					b = append(b, legacyRecord(msg(i))...)
				}
				os.WriteFile(seg, b, 0o600)
			} else {
				s := mustOpen(t, dir, Options{})
				for i := range 5 {
					if err := s.Append(msg(i)); err != nil {
						t.Fatal(err)
					}
				}
				s.Close()
			}
			sp := spans(t, seg)
			data, _ := os.ReadFile(seg)
			os.WriteFile(seg, c.damage(data, sp), 0o600)

			s := mustOpen(t, dir, Options{})
			if _, n := s.Stats(); n != int64(len(c.want)) {
				t.Errorf("counted %d records, want %d", n, len(c.want))
			}
			if got := s.Corrupt(); got != c.corrupt {
				t.Errorf("corrupt %d, want %d", got, c.corrupt)
			}
			if err := s.Append(msg(9)); err != nil {
				t.Fatal(err)
			}
			got := collect(t, s)
			if want := append(slices.Clone(c.want), 9); fmt.Sprint(ids(got)) != fmt.Sprint(want) {
				t.Fatalf("replayed %v, want %v", ids(got), want)
			}
			for _, m := range got {
				w := msg(ids([]*nats.Msg{m})[0])
				if m.Subject != w.Subject || !bytes.Equal(m.Data, w.Data) || fmt.Sprint(m.Header) != fmt.Sprint(w.Header) {
					t.Errorf("replayed a different callback: %+v", m)
				}
			}
			if b, n := s.Stats(); b != 0 || n != 0 {
				t.Errorf("after drain: %d bytes, %d records", b, n)
			}
			if s.Corrupt() != c.corrupt {
				t.Errorf("drain counted the damage again: %d", s.Corrupt())
			}
			_, err := os.Stat(seg + damagedExt)
			if setAside := err == nil; setAside != (len(c.want) == 0) {
				t.Errorf("set aside %v", setAside)
			}
		})
	}
}

// TestForgedRecordInPayload: a callback body holding bytes shaped like a
// record is not replayed when the real record around it is damaged, since
// the forger cannot know the segment's salt.
func TestForgedRecordInPayload(t *testing.T) {
	dir := t.TempDir()
	forged := &nats.Msg{Subject: "daraja.cb.stk.callback.174379", Header: nats.Header{"Nats-Msg-Id": {"stk.callback:FORGED"}}, Data: []byte(`{"ResultCode":0}`)}
	p := encode(nil, forged)
	var rec []byte
	rec = binary.BigEndian.AppendUint32(rec, uint32(len(p)))
	rec = binary.BigEndian.AppendUint32(rec, crc32.Update(0, crcTable, rec[0:4]))
	rec = binary.BigEndian.AppendUint32(rec, crc32.Update(0, crcTable, p))
	rec = append(rec, p...)
	carrier := msg(1)
	carrier.Data = rec

	s := mustOpen(t, dir, Options{})
	for _, m := range []*nats.Msg{msg(0), carrier, msg(2)} {
		if err := s.Append(m); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	seg := segPath(dir, 1)
	sp := spans(t, seg)
	data, _ := os.ReadFile(seg)
	data[sp[1][0]+2] ^= 0x01 // the carrier's length
	os.WriteFile(seg, data, 0o600)

	s = mustOpen(t, dir, Options{})
	got := collect(t, s)
	if fmt.Sprint(ids(got)) != fmt.Sprint([]int{0, 2}) {
		t.Fatalf("replayed %v (%d), want [0 2]", ids(got), len(got))
	}
}

// TestDrainSkipsNewDamage: damage written after Open is found by the drain,
// skipped and counted once, even when the drain is retried.
func TestDrainSkipsNewDamage(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, Options{})
	for i := range 4 {
		_ = s.Append(msg(i))
	}
	seg := segPath(dir, 1)
	sp := spans(t, seg)
	f, _ := os.OpenFile(seg, os.O_RDWR, 0)
	f.WriteAt([]byte{0xee}, sp[1][0]+recHeader+3)
	f.Close()

	var got []*nats.Msg
	fail := true
	publish := func(_ context.Context, m *nats.Msg) error {
		if ids([]*nats.Msg{m})[0] == 2 && fail {
			fail = false
			return errors.New("nats down")
		}
		got = append(got, m)
		return nil
	}
	if _, err := s.Drain(context.Background(), publish); err == nil {
		t.Fatal("first drain did not fail")
	}
	if _, err := s.Drain(context.Background(), publish); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ids(got)) != fmt.Sprint([]int{0, 2, 3}) {
		t.Fatalf("replayed %v", ids(got))
	}
	if c := s.Corrupt(); c != 1 {
		t.Errorf("corrupt %d, want 1", c)
	}
	if b, n := s.Stats(); b != 0 || n != 0 {
		t.Errorf("after drain: %d bytes, %d records", b, n)
	}
}

// faultFS is the real filesystem with faults on demand.
type faultFS struct {
	osFS
	mu         sync.Mutex
	writeErr   error // next write writes half its bytes and fails
	writeNone  error // next write writes nothing and fails
	shortWrite bool  // next write writes half its bytes and reports no error
	syncFails  int   // the next syncFails file fsyncs fail (the bytes stay in the page cache)
	truncErr   error // every truncate fails while set
	readErr    error // every read-only open fails while set
	removeErr  error // every remove fails while set
	dirSyncErr error // next directory fsync fails
	syncs      int
	dirSyncs   int
}

type faultFile struct {
	file
	fs *faultFS
}

func (fs *faultFS) OpenFile(name string, flag int, perm os.FileMode) (file, error) {
	fs.mu.Lock()
	err := fs.readErr
	fs.mu.Unlock()
	if err != nil && flag == os.O_RDONLY {
		return nil, err
	}
	f, err := fs.osFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &faultFile{file: f, fs: fs}, nil
}

func (fs *faultFS) Remove(name string) error {
	fs.mu.Lock()
	err := fs.removeErr
	fs.mu.Unlock()
	if err != nil {
		return err
	}
	return fs.osFS.Remove(name)
}

func (fs *faultFS) SyncDir(dir string) error {
	fs.mu.Lock()
	err := fs.dirSyncErr
	fs.dirSyncErr = nil
	fs.dirSyncs++
	fs.mu.Unlock()
	if err != nil {
		return err
	}
	return fs.osFS.SyncDir(dir)
}

func (f *faultFile) Write(p []byte) (int, error) {
	fs := f.fs
	fs.mu.Lock()
	werr, wnone, short := fs.writeErr, fs.writeNone, fs.shortWrite
	fs.writeErr, fs.writeNone, fs.shortWrite = nil, nil, false
	fs.mu.Unlock()
	switch {
	case wnone != nil:
		return 0, wnone
	case werr != nil:
		n, _ := f.file.Write(p[:len(p)/2])
		return n, werr
	case short:
		return f.file.Write(p[:len(p)/2])
	}
	return f.file.Write(p)
}

func (f *faultFile) Sync() error {
	fs := f.fs
	fs.mu.Lock()
	fail := fs.syncFails > 0
	if fail {
		fs.syncFails--
	}
	fs.syncs++
	fs.mu.Unlock()
	if fail {
		return errEIO
	}
	return f.file.Sync()
}

func (f *faultFile) Truncate(size int64) error {
	f.fs.mu.Lock()
	err := f.fs.truncErr
	f.fs.mu.Unlock()
	if err != nil {
		return err
	}
	return f.file.Truncate(size)
}

var errEIO = errors.New("injected EIO")

// TestFailedAppendLeavesNoRecord: an append that fails (write error, short
// write, fsync error, new segment not durable) leaves nothing that a later
// drain or a later Open would replay, and later appends still replay.
func TestFailedAppendLeavesNoRecord(t *testing.T) {
	for _, c := range []struct {
		name  string
		fault func(*faultFS)
	}{
		{"write fails after half the bytes", func(fs *faultFS) { fs.writeErr = errEIO }},
		{"write fails with nothing written", func(fs *faultFS) { fs.writeNone = errEIO }},
		{"short write without an error", func(fs *faultFS) { fs.shortWrite = true }},
		{"fsync fails, bytes in the page cache", func(fs *faultFS) { fs.syncFails = 1 }},
	} {
		for _, reopen := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/reopen=%v", c.name, reopen), func(t *testing.T) {
				dir := t.TempDir()
				fs := &faultFS{}
				s := mustOpen(t, dir, Options{fs: fs})
				if err := s.Append(msg(0)); err != nil {
					t.Fatal(err)
				}
				c.fault(fs)
				if err := s.Append(msg(1)); err == nil {
					t.Fatal("failed append returned nil")
				}
				for _, i := range []int{2, 3} {
					if err := s.Append(msg(i)); err != nil {
						t.Fatalf("append after a failed one: %v", err)
					}
				}
				if _, n := s.Stats(); n != 3 {
					t.Errorf("counted %d records, want 3", n)
				}
				if reopen {
					s.Close()
					s = mustOpen(t, dir, Options{})
				}
				got := collect(t, s)
				if fmt.Sprint(ids(got)) != fmt.Sprint([]int{0, 2, 3}) {
					t.Fatalf("replayed %v, want [0 2 3]", ids(got))
				}
				if s.Corrupt() != 0 {
					t.Errorf("corrupt %d", s.Corrupt())
				}
				if b, n := s.Stats(); b != 0 || n != 0 {
					t.Errorf("after drain: %d bytes, %d records", b, n)
				}
			})
		}
	}
}

// TestFailedAppendTruncateFails: when the failed append cannot be taken
// back, the segment is sealed at its last good record and a new one takes
// the later appends; the drain reads no further than the seal.
func TestFailedAppendTruncateFails(t *testing.T) {
	for _, c := range []struct {
		name  string
		fault func(*faultFS)
	}{
		{"write fails after half the bytes, truncate fails", func(fs *faultFS) { fs.writeErr, fs.truncErr = errEIO, errEIO }},
		{"fsync fails, truncate fails", func(fs *faultFS) { fs.syncFails, fs.truncErr = 1, errEIO }},
		{"fsync fails, and again after the truncation", func(fs *faultFS) { fs.syncFails = 2 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			fs := &faultFS{}
			s := mustOpen(t, dir, Options{fs: fs})
			if err := s.Append(msg(0)); err != nil {
				t.Fatal(err)
			}
			fs.mu.Lock()
			c.fault(fs)
			fs.mu.Unlock()
			if err := s.Append(msg(1)); err == nil {
				t.Fatal("failed append returned nil")
			}
			fs.mu.Lock()
			fs.truncErr, fs.syncFails = nil, 0
			fs.mu.Unlock()
			for _, i := range []int{2, 3} {
				if err := s.Append(msg(i)); err != nil {
					t.Fatalf("append after a failed one: %v", err)
				}
			}
			if _, err := os.Stat(segPath(dir, 2)); err != nil {
				t.Errorf("no new segment after the seal: %v", err)
			}
			got := collect(t, s)
			if fmt.Sprint(ids(got)) != fmt.Sprint([]int{0, 2, 3}) {
				t.Fatalf("replayed %v, want [0 2 3]", ids(got))
			}
			if s.Corrupt() != 0 {
				t.Errorf("corrupt %d", s.Corrupt())
			}
			if b, n := s.Stats(); b != 0 || n != 0 {
				t.Errorf("after drain: %d bytes, %d records", b, n)
			}
		})
	}
}

// TestFailedAppendRestartAfterSeal: after a seal at a torn write, a restart
// cuts the torn bytes and replays every acknowledged record once.
func TestFailedAppendRestartAfterSeal(t *testing.T) {
	dir := t.TempDir()
	fs := &faultFS{}
	s := mustOpen(t, dir, Options{fs: fs})
	_ = s.Append(msg(0))
	fs.writeErr, fs.truncErr = errEIO, errEIO
	if err := s.Append(msg(1)); err == nil {
		t.Fatal("failed append returned nil")
	}
	fs.truncErr = nil
	_ = s.Append(msg(2))
	s.Close()
	s = mustOpen(t, dir, Options{})
	if got := ids(collect(t, s)); fmt.Sprint(got) != fmt.Sprint([]int{0, 2}) {
		t.Fatalf("replayed %v, want [0 2]", got)
	}
	if s.Corrupt() != 0 {
		t.Errorf("a torn tail counted as corrupt: %d", s.Corrupt())
	}
}

// TestNewSegmentNotDurable: a segment whose name cannot be fsynced into the
// directory is not used; the append fails and the next one works.
func TestNewSegmentNotDurable(t *testing.T) {
	dir := t.TempDir()
	fs := &faultFS{dirSyncErr: errEIO}
	s := mustOpen(t, dir, Options{fs: fs})
	if err := s.Append(msg(0)); err == nil {
		t.Fatal("append into a segment that is not durable returned nil")
	}
	if err := s.Append(msg(1)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = mustOpen(t, dir, Options{})
	if got := ids(collect(t, s)); fmt.Sprint(got) != fmt.Sprint([]int{1}) {
		t.Fatalf("replayed %v, want [1]", got)
	}
}

// TestSyncs: a record is fsynced, a new segment's name is fsynced into the
// directory, and so is a drained segment's removal; NoSync does none.
func TestSyncs(t *testing.T) {
	fs := &faultFS{}
	s := mustOpen(t, t.TempDir(), Options{fs: fs})
	step := func(name string, do func(), syncs, dirSyncs int) {
		t.Helper()
		s0, d0 := fs.syncs, fs.dirSyncs
		do()
		if fs.syncs-s0 != syncs || fs.dirSyncs-d0 != dirSyncs {
			t.Errorf("%s: %d file and %d directory fsyncs, want %d and %d", name, fs.syncs-s0, fs.dirSyncs-d0, syncs, dirSyncs)
		}
	}
	step("first append", func() { _ = s.Append(msg(0)) }, 2, 1) // header and record; the new name
	step("second append", func() { _ = s.Append(msg(1)) }, 1, 0)
	step("drain", func() { collect(t, s) }, 0, 1)

	fs = &faultFS{}
	s = mustOpen(t, t.TempDir(), Options{fs: fs, NoSync: true})
	step("no sync: append", func() { _ = s.Append(msg(0)) }, 0, 0)
	step("no sync: drain", func() { collect(t, s) }, 0, 0)
}

// TestOpenSyncsNewDirectories: the directories Open creates are fsynced
// into their parents; an existing directory costs no fsync.
func TestOpenSyncsNewDirectories(t *testing.T) {
	base := t.TempDir()
	fs := &faultFS{}
	mustOpen(t, filepath.Join(base, "data", "spool"), Options{fs: fs})
	if fs.dirSyncs != 2 {
		t.Errorf("created two directories, fsynced %d parents", fs.dirSyncs)
	}
	fs = &faultFS{}
	mustOpen(t, filepath.Join(base, "data", "spool"), Options{fs: fs})
	if fs.dirSyncs != 0 {
		t.Errorf("existing directory: %d fsyncs", fs.dirSyncs)
	}
	fs = &faultFS{dirSyncErr: errEIO}
	if _, err := OpenOptions(filepath.Join(base, "other"), Options{MaxBytes: 1 << 20, fs: fs}, nil); !errors.Is(err, errEIO) {
		t.Errorf("open with a failing directory fsync: %v", err)
	}
}

// clock is a test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// TestStuck: a drain that cannot progress shows in Stuck after the set
// number of attempts or the set time, and clears once it progresses.
func TestStuck(t *testing.T) {
	errNATS := errors.New("stream refuses it")
	for _, c := range []struct {
		name     string
		attempts int
		after    time.Duration
		fault    func(*faultFS, *bool)
		clear    func(*faultFS, *bool)
		stepTime time.Duration
		stuckAt  int // attempt after which Stuck is not nil
	}{
		{"publish keeps failing", 3, time.Hour, func(_ *faultFS, p *bool) { *p = true }, func(_ *faultFS, p *bool) { *p = false }, time.Second, 3},
		{"publish fails for too long", 100, time.Minute, func(_ *faultFS, p *bool) { *p = true }, func(_ *faultFS, p *bool) { *p = false }, 25 * time.Second, 4},
		{"segment cannot be opened", 3, time.Hour, func(fs *faultFS, _ *bool) { fs.readErr = errEIO }, func(fs *faultFS, _ *bool) { fs.readErr = nil }, time.Second, 3},
		{"segment cannot be removed", 3, time.Hour, func(fs *faultFS, _ *bool) { fs.removeErr = errEIO }, func(fs *faultFS, _ *bool) { fs.removeErr = nil }, time.Second, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			fs, clk := &faultFS{}, &clock{t: time.Unix(1e9, 0)}
			s := mustOpen(t, t.TempDir(), Options{fs: fs, StuckAttempts: c.attempts, StuckAfter: c.after, now: clk.now})
			for i := range 3 {
				_ = s.Append(msg(i))
			}
			if err := s.Stuck(); err != nil {
				t.Fatalf("stuck before any drain: %v", err)
			}
			failing := false
			var got []*nats.Msg
			publish := func(_ context.Context, m *nats.Msg) error {
				if failing {
					return errNATS
				}
				got = append(got, m)
				return nil
			}
			c.fault(fs, &failing)
			for attempt := 1; attempt <= c.stuckAt+1; attempt++ {
				if _, err := s.Drain(context.Background(), publish); err == nil {
					t.Fatalf("attempt %d did not fail", attempt)
				}
				stuck := s.Stuck()
				if (stuck != nil) != (attempt >= c.stuckAt) {
					t.Fatalf("attempt %d: stuck %v", attempt, stuck)
				}
				clk.add(c.stepTime)
			}
			if fails := s.ReplayFailures(); fails != int64(c.stuckAt+1) {
				t.Errorf("replay failures %d, want %d", fails, c.stuckAt+1)
			}
			c.clear(fs, &failing)
			if _, err := s.Drain(context.Background(), publish); err != nil {
				t.Fatal(err)
			}
			if err := s.Stuck(); err != nil {
				t.Errorf("still stuck after draining: %v", err)
			}
			if b, n := s.Stats(); b != 0 || n != 0 {
				t.Errorf("after drain: %d bytes, %d records", b, n)
			}
			if c.name != "segment cannot be removed" && len(got) != 3 {
				t.Errorf("replayed %d", len(got))
			}
		})
	}
}

// TestStuckNotOnCancel: a drain cut short by its context is not a failure.
func TestStuckNotOnCancel(t *testing.T) {
	s := mustOpen(t, t.TempDir(), Options{StuckAttempts: 1})
	_ = s.Append(msg(0))
	ctx, cancel := context.WithCancel(context.Background())
	// The publish sees its context cancelled while it waits (a shutdown).
	if _, err := s.Drain(ctx, func(ctx context.Context, _ *nats.Msg) error { cancel(); return ctx.Err() }); !errors.Is(err, context.Canceled) {
		t.Fatalf("drain: %v", err)
	}
	if err := s.Stuck(); err != nil || s.ReplayFailures() != 0 {
		t.Fatalf("stuck %v, failures %d", err, s.ReplayFailures())
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(encode(nil, msg(1)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decode(b)
		if err != nil {
			return
		}
		again, err := decode(encode(nil, m))
		if err != nil || again.Subject != m.Subject || !bytes.Equal(again.Data, m.Data) || fmt.Sprint(again.Header) != fmt.Sprint(m.Header) {
			t.Fatalf("round trip changed %+v", m)
		}
	})
}

// FuzzRecover writes records, damages the segment as the fuzzer says (bit
// flips, bytes set, zeroed stretches, cuts, inserted bytes), then opens
// and drains it.
// Every record replayed is one that was written, in order, none twice;
// the count Open reports is what the drain replays; and every record whose
// bytes the damage did not touch is replayed.
func FuzzRecover(f *testing.F) {
	f.Add(false, uint8(3), []byte{})
	f.Add(false, uint8(5), []byte{0, 0, 90, 3, 1, 0, 200, 0})
	f.Add(true, uint8(5), []byte{0, 0, 10, 3, 2, 0, 100, 40})
	f.Add(false, uint8(8), []byte{3, 1, 0, 9, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, legacy bool, n uint8, ops []byte) {
		count := int(n%12) + 1
		dir := t.TempDir()
		seg := segPath(dir, 1)
		written := make([]*nats.Msg, count)
		for i := range written {
			written[i] = msg(i)
			written[i].Data = bytes.Repeat([]byte{byte('a' + i)}, i*7)
		}
		if legacy {
			var b []byte
			for _, m := range written {
				b = append(b, legacyRecord(m)...)
			}
			os.WriteFile(seg, b, 0o600)
		} else {
			s := mustOpen(t, dir, Options{NoSync: true})
			for _, m := range written {
				if err := s.Append(m); err != nil {
					t.Fatal(err)
				}
			}
			s.Close()
		}
		sp := spans(t, seg)
		data, _ := os.ReadFile(seg)
		touched := make([]bool, count)
		headerTouched := 0
		touch := func(from, to int64) { // bytes [from, to) changed
			for i, r := range sp {
				if from < r[1] && to > r[0] {
					touched[i] = true
				}
			}
			if !legacy && from < segHdrCopy && to > 0 {
				headerTouched |= 1
			}
			if !legacy && from < segHdr && to > segHdrCopy {
				headerTouched |= 2
			}
		}
		for ; len(ops) >= 4 && len(data) > 0; ops = ops[4:] {
			pos := int64(binary.BigEndian.Uint16(ops[1:3])) % int64(len(data))
			arg := ops[3]
			switch ops[0] % 5 {
			case 0: // flip one bit
				data[pos] ^= 1 << (arg % 8)
				touch(pos, pos+1)
			case 4: // set a byte
				if data[pos] != arg {
					data[pos] = arg
					touch(pos, pos+1)
				}
			case 1: // zero a stretch
				end := min(pos+int64(arg)+1, int64(len(data)))
				clear(data[pos:end])
				touch(pos, end)
			case 2: // cut the tail
				data = data[:pos]
				touch(pos, 1<<62)
			case 3: // insert bytes (a constant: inserted bytes must not forge a legacy record)
				data = slices.Insert(data, int(pos), bytes.Repeat([]byte{0xa5}, int(arg)+1)...)
				if !legacy && pos < segHdr {
					headerTouched = 3 // both copies move: the segment is set aside
				}
				for i := range sp {
					if sp[i][0] < pos && pos < sp[i][1] {
						touched[i] = true
					}
					if sp[i][0] >= pos {
						sp[i][0] += int64(arg) + 1
						sp[i][1] += int64(arg) + 1
					}
				}
			}
		}
		os.WriteFile(seg, data, 0o600)

		s, err := OpenOptions(dir, Options{MaxBytes: 1 << 30, NoSync: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, records := s.Stats()
		got := collect(t, s)
		if int64(len(got)) != records {
			t.Fatalf("counted %d, drained %d", records, len(got))
		}
		j := 0
		for _, m := range got {
			for j < count && !same(m, written[j]) {
				j++
			}
			if j == count {
				t.Fatalf("replayed a record not written, out of order or twice: %+v (ids %v)", m, ids(got))
			}
			j++
		}
		if headerTouched == 3 {
			return // both header copies: the segment is set aside
		}
		seen := map[int]bool{}
		for _, i := range ids(got) {
			seen[i] = true
		}
		for i := range written {
			if !touched[i] && !seen[i] {
				t.Fatalf("record %d untouched by the damage but not replayed (replayed %v)", i, ids(got))
			}
		}
	})
}

func same(a, b *nats.Msg) bool {
	return a.Subject == b.Subject && bytes.Equal(a.Data, b.Data) && fmt.Sprint(a.Header) == fmt.Sprint(b.Header)
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

// BenchmarkAppendNoSync is the spool's own cost, without the fsync.
func BenchmarkAppendNoSync(b *testing.B) {
	s := mustOpen(b, b.TempDir(), Options{MaxBytes: 1 << 40, NoSync: true})
	m := msg(1)
	m.Data = bytes.Repeat([]byte("x"), 1500)
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Append(m); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDrain replays records written without fsync.
func BenchmarkDrain(b *testing.B) {
	m := msg(1)
	m.Data = bytes.Repeat([]byte("x"), 1500)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		s := mustOpen(b, b.TempDir(), Options{MaxBytes: 1 << 40, NoSync: true})
		for range 1000 {
			_ = s.Append(m)
		}
		b.StartTimer()
		if got := collect(b, s); len(got) != 1000 {
			b.Fatal(len(got))
		}
	}
}

// BenchmarkResync opens a segment with 4 MiB of garbage between two
// records: the cost of scanning past damage.
func BenchmarkResync(b *testing.B) {
	dir := b.TempDir()
	s := mustOpen(b, dir, Options{MaxBytes: 1 << 40, NoSync: true})
	_ = s.Append(msg(0))
	_ = s.Append(msg(1))
	s.Close()
	seg := segPath(dir, 1)
	sp := spans(b, seg)
	clean, _ := os.ReadFile(seg)
	garbage := make([]byte, 4<<20)
	for i := range garbage {
		garbage[i] = byte(i*2654435761>>13) ^ byte(i>>7)
	}
	damaged := slices.Insert(slices.Clone(clean), int(sp[1][0]), garbage...)
	b.SetBytes(int64(len(garbage)))
	b.ReportAllocs()
	for b.Loop() {
		os.WriteFile(seg, damaged, 0o600)
		s, err := OpenOptions(dir, Options{MaxBytes: 1 << 40, NoSync: true}, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, n := s.Stats(); n != 2 || s.Corrupt() != 1 {
			b.Fatalf("%d records, %d corrupt", n, s.Corrupt())
		}
	}
}

// TestEachReadsWithoutReplaying: Each lists the records a Drain would
// replay, oldest first, across a partial drain, a new segment and a
// reopen, and replays nothing: Drain still gets every one of them.
func TestEachReadsWithoutReplaying(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir, 1<<20, nil)
	for i := range 4 {
		_ = s.Append(msg(i))
	}
	calls := 0
	if _, err := s.Drain(context.Background(), func(context.Context, *nats.Msg) error {
		calls++
		if calls == 2 {
			return errors.New("nats down")
		}
		return nil
	}); err == nil {
		t.Fatal("drain did not stop")
	}
	_ = s.Append(msg(4)) // a new segment
	each := func(s *Spool) []int {
		var got []*nats.Msg
		if err := s.Each(func(m *nats.Msg) error { got = append(got, m); return nil }); err != nil {
			t.Fatal(err)
		}
		return ids(got)
	}
	want := fmt.Sprint([]int{1, 2, 3, 4})
	if got := each(s); fmt.Sprint(got) != want {
		t.Fatalf("Each %v, want %s", got, want)
	}
	if _, n := s.Stats(); n != 4 {
		t.Fatalf("%d records after Each, want 4", n)
	}
	_ = s.Close()
	// The replay cursor lives in memory: after a reopen, the acked record
	// of a partly drained segment comes back (Drain replays it too, a
	// duplicate by its Nats-Msg-Id).
	s, _ = Open(dir, 1<<20, nil)
	want = fmt.Sprint([]int{0, 1, 2, 3, 4})
	if got := each(s); fmt.Sprint(got) != want {
		t.Fatalf("Each after reopen %v, want %s", got, want)
	}
	stop := errors.New("stop")
	n := 0
	if err := s.Each(func(*nats.Msg) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Fatalf("Each did not stop at fn's error: %v after %d", err, n)
	}
	if got := collect(t, s); fmt.Sprint(ids(got)) != want {
		t.Fatalf("drained %v after Each, want %s", ids(got), want)
	}
}
