// Package spool keeps accepted callbacks on local disk while NATS cannot
// take them: append-only segment files of checksummed records, fsynced
// before Append returns, replayed in order and deleted only once acked.
package spool

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// ErrFull means the spool reached its size limit.
var ErrFull = errors.New("spool: full")

const (
	segmentExt = ".spool"
	recHeader  = 8       // uint32 length + uint32 CRC-32C of the payload
	maxRecord  = 4 << 20 // a record larger than this is damage, not data
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Spool is a directory of segment files. Appends go to the active segment;
// a drain seals it and replays sealed segments oldest first. It is safe for
// concurrent use.
type Spool struct {
	dir string
	max int64
	log *zap.Logger

	mu         sync.Mutex
	active     *os.File
	activeSeq  uint64
	activeSize int64
	size       int64 // bytes in every segment
	records    int64 // records not yet drained
	cursor     map[uint64]int64
	closed     bool

	drainMu sync.Mutex // one drain at a time
}

// Open opens (creating) the spool in dir, recovering every segment up to its
// last whole record: a tail torn by a crash mid-write is cut off.
func Open(dir string, maxBytes int64, log *zap.Logger) (*Spool, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	s := &Spool{dir: dir, max: maxBytes, log: log.Named("spool"), cursor: map[uint64]int64{}}
	segs, err := s.segments()
	if err != nil {
		return nil, err
	}
	for _, seq := range segs {
		n, good, err := s.recover(seq)
		if err != nil {
			return nil, err
		}
		s.size += good
		s.records += n
		s.activeSeq = seq
	}
	if s.records > 0 {
		s.log.Warn("spool holds callbacks not yet on NATS; they will be replayed",
			zap.Int64("records", s.records), zap.Int64("bytes", s.size))
	}
	return s, nil
}

func (s *Spool) path(seq uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%020d%s", seq, segmentExt))
}

// segments lists segment numbers, oldest first.
func (s *Spool) segments() ([]uint64, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	var out []uint64
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), segmentExt)
		if !ok || e.IsDir() {
			continue
		}
		if seq, err := strconv.ParseUint(name, 10, 64); err == nil {
			out = append(out, seq)
		}
	}
	slices.Sort(out)
	return out, nil
}

// recover scans a segment and truncates it after its last whole record.
func (s *Spool) recover(seq uint64) (records, good int64, err error) {
	f, err := os.OpenFile(s.path(seq), os.O_RDWR, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	r := bufio.NewReader(f)
	for {
		_, n, rerr := readRecord(r)
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				st, _ := f.Stat()
				s.log.Error("spool segment damaged; keeping the records before the damage",
					zap.String("segment", s.path(seq)), zap.Int64("kept_bytes", good),
					zap.Int64("cut_bytes", st.Size()-good), zap.Error(rerr))
				if err := f.Truncate(good); err != nil {
					return 0, 0, fmt.Errorf("spool: truncate damaged %s: %w", s.path(seq), err)
				}
				if err := f.Sync(); err != nil {
					return 0, 0, fmt.Errorf("spool: %w", err)
				}
			}
			return records, good, nil
		}
		records++
		good += n
	}
}

// errDamaged marks a record that is cut short or fails its checksum.
var errDamaged = errors.New("damaged record")

// readRecord reads one record; io.EOF only at a clean record boundary.
func readRecord(r *bufio.Reader) (*nats.Msg, int64, error) {
	var hdr [recHeader]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, 0, io.EOF
		}
		return nil, 0, errDamaged
	}
	n := binary.BigEndian.Uint32(hdr[0:4])
	if n == 0 || n > maxRecord {
		return nil, 0, errDamaged
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		return nil, 0, errDamaged
	}
	if crc32.Checksum(payload, crcTable) != binary.BigEndian.Uint32(hdr[4:8]) {
		return nil, 0, errDamaged
	}
	msg, err := decode(payload)
	if err != nil {
		return nil, 0, errDamaged
	}
	return msg, int64(recHeader + n), nil
}

// Append writes msg and fsyncs it. It returns ErrFull when the record
// would take the spool past its size limit.
func (s *Spool) Append(msg *nats.Msg) error {
	payload := encode(msg)
	rec := make([]byte, recHeader+len(payload))
	binary.BigEndian.PutUint32(rec[0:4], uint32(len(payload)))
	binary.BigEndian.PutUint32(rec[4:8], crc32.Checksum(payload, crcTable))
	copy(rec[recHeader:], payload)

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("spool: closed")
	}
	if s.size+int64(len(rec)) > s.max {
		return ErrFull
	}
	if s.active == nil {
		if err := s.openActive(); err != nil {
			return err
		}
	}
	if _, err := s.active.Write(rec); err != nil {
		// A partial write is cut off by the next Open; keep the size honest
		// by starting a fresh segment.
		s.sealLocked()
		return fmt.Errorf("spool: write: %w", err)
	}
	if err := s.active.Sync(); err != nil {
		s.sealLocked()
		return fmt.Errorf("spool: fsync: %w", err)
	}
	s.activeSize += int64(len(rec))
	s.size += int64(len(rec))
	s.records++
	return nil
}

func (s *Spool) openActive() error {
	s.activeSeq++
	f, err := os.OpenFile(s.path(s.activeSeq), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("spool: create segment: %w", err)
	}
	if d, err := os.Open(s.dir); err == nil {
		_ = d.Sync() // make the new name durable
		d.Close()
	}
	s.active, s.activeSize = f, 0
	return nil
}

func (s *Spool) sealLocked() {
	if s.active != nil {
		_ = s.active.Close()
		s.active = nil
	}
}

// Stats returns the bytes on disk and the records not yet replayed.
func (s *Spool) Stats() (bytes, records int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size, s.records
}

// Full reports whether the spool is within a large record of its limit.
func (s *Spool) Full() bool {
	b, _ := s.Stats()
	return b+maxRecord/64 > s.max
}

// Drain seals the active segment and replays every sealed segment, oldest
// first, through publish. A segment is deleted once all its records were
// published; on the first error Drain stops and the next call resumes at
// the record that failed. It returns how many records were published.
func (s *Spool) Drain(ctx context.Context, publish func(context.Context, *nats.Msg) error) (int, error) {
	s.drainMu.Lock()
	defer s.drainMu.Unlock()
	s.mu.Lock()
	if s.records == 0 {
		s.mu.Unlock()
		return 0, nil
	}
	s.sealLocked()
	s.mu.Unlock()

	segs, err := s.segments()
	if err != nil {
		return 0, err
	}
	total := 0
	for _, seq := range segs {
		n, err := s.drainSegment(ctx, seq, publish)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

func (s *Spool) drainSegment(ctx context.Context, seq uint64, publish func(context.Context, *nats.Msg) error) (int, error) {
	s.mu.Lock()
	if s.active != nil && seq == s.activeSeq {
		s.mu.Unlock()
		return 0, nil // opened by an Append after the seal: next drain
	}
	start := s.cursor[seq]
	s.mu.Unlock()

	f, err := os.Open(s.path(seq))
	if err != nil {
		return 0, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("spool: %w", err)
	}
	if _, err := f.Seek(start, io.SeekStart); err != nil {
		return 0, fmt.Errorf("spool: %w", err)
	}
	r := bufio.NewReader(f)
	off, n := start, 0
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		msg, size, err := readRecord(r)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// Open recovered every segment, so this is new damage.
			return n, fmt.Errorf("spool: segment %d at %d: %w", seq, off, err)
		}
		if err := publish(ctx, msg); err != nil {
			return n, err
		}
		off += size
		n++
		s.mu.Lock()
		s.cursor[seq] = off
		s.records--
		s.mu.Unlock()
	}
	f.Close()
	if err := os.Remove(s.path(seq)); err != nil {
		return n, fmt.Errorf("spool: remove drained segment: %w", err)
	}
	s.mu.Lock()
	delete(s.cursor, seq)
	s.size -= st.Size()
	s.mu.Unlock()
	return n, nil
}

// Close closes the active segment. Safe twice.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.sealLocked()
	return nil
}

// encode lays a message out as: subject, header pairs, data, each
// length-prefixed with a uvarint.
func encode(m *nats.Msg) []byte {
	b := make([]byte, 0, len(m.Subject)+len(m.Data)+256)
	b = binary.AppendUvarint(b, uint64(len(m.Subject)))
	b = append(b, m.Subject...)
	keys := make([]string, 0, len(m.Header))
	pairs := 0
	for k, vs := range m.Header {
		keys = append(keys, k)
		pairs += len(vs)
	}
	slices.Sort(keys)
	b = binary.AppendUvarint(b, uint64(pairs))
	for _, k := range keys {
		for _, v := range m.Header[k] {
			b = binary.AppendUvarint(b, uint64(len(k)))
			b = append(b, k...)
			b = binary.AppendUvarint(b, uint64(len(v)))
			b = append(b, v...)
		}
	}
	return append(b, m.Data...)
}

func decode(b []byte) (*nats.Msg, error) {
	next := func() (string, error) {
		n, w := binary.Uvarint(b)
		if w <= 0 || n > uint64(len(b)-w) {
			return "", errDamaged
		}
		s := string(b[w : w+int(n)])
		b = b[w+int(n):]
		return s, nil
	}
	subj, err := next()
	if err != nil || subj == "" {
		return nil, errDamaged
	}
	pairs, w := binary.Uvarint(b)
	if w <= 0 || pairs > uint64(len(b)) {
		return nil, errDamaged
	}
	b = b[w:]
	m := &nats.Msg{Subject: subj, Header: nats.Header{}}
	for range pairs {
		k, err := next()
		if err != nil {
			return nil, err
		}
		v, err := next()
		if err != nil {
			return nil, err
		}
		m.Header[k] = append(m.Header[k], v)
	}
	m.Data = append([]byte(nil), b...)
	return m, nil
}
