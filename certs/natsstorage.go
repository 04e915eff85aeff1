package certs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSStorage is a certmagic.Storage on a JetStream key-value bucket, so
// edge replicas sharing NATS share certificates, ACME accounts, challenge
// tokens and locks: N replicas obtain one certificate between them.
type NATSStorage struct {
	kv    jetstream.KeyValue
	owner string // this process, written into the locks it holds

	mu   sync.Mutex
	held map[string]uint64 // lock key → revision of our lock record
}

// Interface guards.
var (
	_ certmagic.Storage          = (*NATSStorage)(nil)
	_ certmagic.TryLocker        = (*NATSStorage)(nil)
	_ certmagic.LockLeaseRenewer = (*NATSStorage)(nil)
)

// lockLease is how long a lock lives unless renewed: a holder that dies
// frees it after this.
const lockLease = 2 * time.Minute

// NewNATSStorage opens (creating) the bucket. owner names this process in
// the locks it takes.
func NewNATSStorage(ctx context.Context, js jetstream.JetStream, bucket string, replicas int, owner string) (*NATSStorage, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "daraja-edge certificates, ACME accounts and locks (certmagic)",
		History:     1,
		Replicas:    replicas,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("certs: storage bucket %s: %w", bucket, err)
	}
	return &NATSStorage{kv: kv, owner: owner, held: map[string]uint64{}}, nil
}

// encodeKey maps a certmagic key (a slash path of arbitrary characters) to
// a valid KV key: letters, digits, "-", "_", "/" and "." pass; anything
// else, and a leading or trailing dot, becomes "=XX".
func encodeKey(key string) string {
	var b strings.Builder
	for i := 0; i < len(key); i++ {
		c := key[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '/' ||
			(c == '.' && i != 0 && i != len(key)-1)
		if ok {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "=%02X", c)
		}
	}
	return b.String()
}

func decodeKey(k string) string {
	var b strings.Builder
	for i := 0; i < len(k); i++ {
		if k[i] == '=' && i+2 < len(k) {
			var c byte
			if _, err := fmt.Sscanf(k[i+1:i+3], "%02X", &c); err == nil {
				b.WriteByte(c)
				i += 2
				continue
			}
		}
		b.WriteByte(k[i])
	}
	return b.String()
}

const dataPrefix = "d/"

func dataKey(key string) string { return dataPrefix + encodeKey(strings.Trim(key, "/")) }

// Store saves value at key.
func (s *NATSStorage) Store(ctx context.Context, key string, value []byte) error {
	if _, err := s.kv.Put(ctx, dataKey(key), value); err != nil {
		return fmt.Errorf("certs: store %s: %w", key, err)
	}
	return nil
}

// Load returns the value at key, or fs.ErrNotExist.
func (s *NATSStorage) Load(ctx context.Context, key string) ([]byte, error) {
	e, err := s.kv.Get(ctx, dataKey(key))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fs.ErrNotExist
	}
	if err != nil {
		return nil, fmt.Errorf("certs: load %s: %w", key, err)
	}
	return e.Value(), nil
}

// keys lists every stored certmagic key.
func (s *NATSStorage) keys(ctx context.Context) ([]string, error) {
	lister, err := s.kv.ListKeys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer func() { _ = lister.Stop() }() // the listing ended; Stop only cleans up
	var out []string
	for k := range lister.Keys() {
		if rest, ok := strings.CutPrefix(k, dataPrefix); ok {
			out = append(out, decodeKey(rest))
		}
	}
	return out, nil
}

// Delete removes key, or every key under it when it is a directory.
func (s *NATSStorage) Delete(ctx context.Context, key string) error {
	key = strings.Trim(key, "/")
	all, err := s.keys(ctx)
	if err != nil {
		return fmt.Errorf("certs: delete %s: %w", key, err)
	}
	for _, k := range all {
		if k == key || strings.HasPrefix(k, key+"/") {
			if err := s.kv.Purge(ctx, dataKey(k)); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
				return fmt.Errorf("certs: delete %s: %w", k, err)
			}
		}
	}
	return nil
}

// Exists reports whether key is a file or a directory.
func (s *NATSStorage) Exists(ctx context.Context, key string) bool {
	_, err := s.Stat(ctx, key)
	return err == nil
}

// List returns the keys under path: every file below it when recursive,
// else its direct children (files and directories).
func (s *NATSStorage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	path = strings.Trim(path, "/")
	all, err := s.keys(ctx)
	if err != nil {
		return nil, fmt.Errorf("certs: list %s: %w", path, err)
	}
	prefix := path + "/"
	if path == "" {
		prefix = ""
	}
	seen := map[string]bool{}
	var out []string
	for _, k := range all {
		rest, ok := strings.CutPrefix(k, prefix)
		if !ok || rest == "" {
			continue
		}
		if !recursive {
			if child, _, deeper := strings.Cut(rest, "/"); deeper {
				k = prefix + child
			}
		}
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	if len(out) == 0 {
		return nil, fs.ErrNotExist
	}
	slices.Sort(out)
	return out, nil
}

// Stat describes key.
func (s *NATSStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	key = strings.Trim(key, "/")
	e, err := s.kv.Get(ctx, dataKey(key))
	if err == nil {
		return certmagic.KeyInfo{Key: key, Modified: e.Created(), Size: int64(len(e.Value())), IsTerminal: true}, nil
	}
	if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return certmagic.KeyInfo{}, fmt.Errorf("certs: stat %s: %w", key, err)
	}
	all, err := s.keys(ctx)
	if err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("certs: stat %s: %w", key, err)
	}
	for _, k := range all {
		if strings.HasPrefix(k, key+"/") {
			return certmagic.KeyInfo{Key: key, IsTerminal: false}, nil
		}
	}
	return certmagic.KeyInfo{}, fs.ErrNotExist
}

type lockRecord struct {
	Owner   string    `json:"owner"`
	Expires time.Time `json:"expires"`
}

func lockKey(name string) string { return "l/" + encodeKey(name) }

// TryLock takes the lock if it is free or stale.
func (s *NATSStorage) TryLock(ctx context.Context, name string) (bool, error) {
	key := lockKey(name)
	rec, _ := json.Marshal(lockRecord{Owner: s.owner, Expires: time.Now().Add(lockLease)})
	rev, err := s.kv.Create(ctx, key, rec)
	if err == nil {
		s.mu.Lock()
		s.held[name] = rev
		s.mu.Unlock()
		return true, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return false, fmt.Errorf("certs: lock %s: %w", name, err)
	}
	// Taken: steal it only if its holder let it go stale.
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil // released meanwhile: the next try will get it
	}
	if err != nil {
		return false, fmt.Errorf("certs: lock %s: %w", name, err)
	}
	var cur lockRecord
	if json.Unmarshal(e.Value(), &cur) == nil && time.Now().Before(cur.Expires) {
		return false, nil
	}
	rev, err = s.kv.Update(ctx, key, rec, e.Revision())
	if err != nil {
		return false, nil // someone else stole or renewed it first
	}
	s.mu.Lock()
	s.held[name] = rev
	s.mu.Unlock()
	return true, nil
}

// Lock blocks until the lock is taken or ctx ends.
func (s *NATSStorage) Lock(ctx context.Context, name string) error {
	for {
		ok, err := s.TryLock(ctx, name)
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// RenewLockLease extends a lock this process holds.
func (s *NATSStorage) RenewLockLease(ctx context.Context, name string, lease time.Duration) error {
	s.mu.Lock()
	rev, ok := s.held[name]
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("certs: renew lock %s: not held", name)
	}
	rec, _ := json.Marshal(lockRecord{Owner: s.owner, Expires: time.Now().Add(max(lease, lockLease))})
	newRev, err := s.kv.Update(ctx, lockKey(name), rec, rev)
	if err != nil {
		return fmt.Errorf("certs: renew lock %s: %w", name, err)
	}
	s.mu.Lock()
	s.held[name] = newRev
	s.mu.Unlock()
	return nil
}

// Unlock releases a lock this process holds.
func (s *NATSStorage) Unlock(ctx context.Context, name string) error {
	s.mu.Lock()
	rev, ok := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("certs: unlock %s: not held", name)
	}
	err := s.kv.Purge(ctx, lockKey(name), jetstream.LastRevision(rev))
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("certs: unlock %s: %w", name, err)
	}
	return nil
}
