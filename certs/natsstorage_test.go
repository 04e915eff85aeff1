package certs

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/internal/natstest"
)

func newStorage(t *testing.T, owner string) *NATSStorage {
	t.Helper()
	_, js := natstest.Connect(t, natstest.Server(t))
	s, err := NewNATSStorage(context.Background(), js, "test_certs", 1, owner)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNATSStorageFiles(t *testing.T) {
	ctx := context.Background()
	s := newStorage(t, "a")
	files := map[string]string{
		"certificates/127.0.0.1_14000-dir/callbacks.edge.test/callbacks.edge.test.crt": "cert",
		"certificates/127.0.0.1_14000-dir/callbacks.edge.test/callbacks.edge.test.key": "key",
		"certificates/127.0.0.1_14000-dir/*.wild.test/*.wild.test.crt":                 "wild",
		"acme/127.0.0.1_14000-dir/users/ops@edge.test/ops.json":                        "user",
		".hidden.": "dots",
	}
	for k, v := range files {
		if err := s.Store(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range files {
		got, err := s.Load(ctx, k)
		if err != nil || string(got) != v {
			t.Errorf("Load(%q) = %q, %v", k, got, err)
		}
	}
	if _, err := s.Load(ctx, "nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing key: %v", err)
	}
	got, err := s.List(ctx, "certificates/127.0.0.1_14000-dir", false)
	want := []string{"certificates/127.0.0.1_14000-dir/*.wild.test", "certificates/127.0.0.1_14000-dir/callbacks.edge.test"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("List = %q, %v", got, err)
	}
	got, _ = s.List(ctx, "certificates", true)
	if len(got) != 3 {
		t.Errorf("recursive List = %q", got)
	}
	info, err := s.Stat(ctx, "certificates/127.0.0.1_14000-dir")
	if err != nil || info.IsTerminal {
		t.Errorf("directory Stat = %+v, %v", info, err)
	}
	info, err = s.Stat(ctx, "acme/127.0.0.1_14000-dir/users/ops@edge.test/ops.json")
	if err != nil || !info.IsTerminal || info.Size != 4 || info.Modified.IsZero() {
		t.Errorf("file Stat = %+v, %v", info, err)
	}
	if !s.Exists(ctx, "acme") || s.Exists(ctx, "acm") {
		t.Error("Exists")
	}
	if err := s.Delete(ctx, "certificates/127.0.0.1_14000-dir/callbacks.edge.test"); err != nil {
		t.Fatal(err)
	}
	if s.Exists(ctx, "certificates/127.0.0.1_14000-dir/callbacks.edge.test/callbacks.edge.test.key") || !s.Exists(ctx, "certificates/127.0.0.1_14000-dir/*.wild.test") {
		t.Error("Delete of a directory")
	}
	if err := s.Delete(ctx, "never"); err != nil {
		t.Errorf("deleting a missing key: %v", err)
	}
}

// TestNATSStorageLocks: many lockers, one holder at a time; a stale lock
// is taken over.
func TestNATSStorageLocks(t *testing.T) {
	ctx := context.Background()
	a := newStorage(t, "a")
	b := &NATSStorage{kv: a.kv, owner: "b", held: map[string]uint64{}}
	var inside, maxInside atomic.Int32
	var wg sync.WaitGroup
	for i := range 8 {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Lock(ctx, "issue_cert_callbacks.edge.test"); err != nil {
				t.Error(err)
				return
			}
			n := inside.Add(1)
			for {
				m := maxInside.Load()
				if n <= m || maxInside.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(20 * time.Millisecond)
			inside.Add(-1)
			if err := s.Unlock(ctx, "issue_cert_callbacks.edge.test"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if maxInside.Load() != 1 {
		t.Fatalf("%d holders at once", maxInside.Load())
	}

	// A holder that died: its lock is stale and is taken over.
	stale, _ := json.Marshal(lockRecord{Owner: "dead", Expires: time.Now().Add(-time.Second)})
	if _, err := a.kv.Put(ctx, lockKey("renew"), stale); err != nil {
		t.Fatal(err)
	}
	ok, err := b.TryLock(ctx, "renew")
	if err != nil || !ok {
		t.Fatalf("stale lock not taken over: %v %v", ok, err)
	}
	if ok, _ := a.TryLock(ctx, "renew"); ok {
		t.Fatal("a live lock was taken")
	}
	if err := b.RenewLockLease(ctx, "renew", time.Minute); err != nil {
		t.Fatal(err)
	}
	ctx2, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := a.Lock(ctx2, "renew"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock on a held lock: %v", err)
	}
	if err := a.Unlock(ctx, "renew"); err == nil {
		t.Error("unlocked a lock it does not hold")
	}
}

func FuzzEncodeKey(f *testing.F) {
	for _, k := range []string{"certificates/a/b.crt", ".x.", "*.wild", "a=b", "ünï"} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		enc := encodeKey(key)
		if decodeKey(enc) != key {
			t.Fatalf("round trip %q → %q → %q", key, enc, decodeKey(enc))
		}
		for i := 0; i < len(enc); i++ {
			c := enc[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '/' || c == '.' || c == '=') {
				t.Fatalf("%q encodes to invalid key %q", key, enc)
			}
		}
		if len(enc) > 0 && (enc[0] == '.' || enc[len(enc)-1] == '.') {
			t.Fatalf("%q encodes to %q", key, enc)
		}
	})
}
