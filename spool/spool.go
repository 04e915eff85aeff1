// Package spool keeps accepted callbacks on local disk while NATS cannot
// take them: append-only segment files of checksummed records, fsynced
// before Append returns, replayed in order and deleted only once acked.
//
// # What survives a power cut
//
// Append returns nil only once the record's bytes are fsynced and, for the
// first record of a segment, once the new segment's name is fsynced into
// the directory (Open fsyncs the parent of any directory it creates). A record Append accepted is therefore on disk when the
// power goes, and the next Open replays it.
//
// An Append that returns an error leaves no record behind: the partial or
// unsynced bytes are truncated away and that truncation is fsynced before
// Append returns, so the record is never replayed (the caller answered
// 503 and Daraja will retry). If even the truncation fails, the segment is
// sealed at its last good record: this process never reads past that
// point, later appends go to a new segment, and the damaged segment is
// drained and deleted as usual. Only if the power is then cut before that
// segment is drained can a record whose fsync failed come back, if its
// bytes reached the disk anyway; it carries its Nats-Msg-Id, so the stream
// keeps one copy within its duplicate window.
//
// A drained segment is deleted and the directory fsynced. A power cut
// between the last ack and that fsync replays those records again with
// their Nats-Msg-Id (at least once, never lost).
//
// Options.NoSync turns every fsync off. It is a test control only: it
// proves a power-cut test can see a loss.
//
// # Damage
//
// Each segment starts with a header (written twice) holding a random salt;
// each record carries a CRC-32C of its length and one of its payload, both
// seeded with the salt. Open keeps every valid record. A record that is cut
// short or fails a checksum is skipped with an error log and counted
// (Corrupt); the reader resynchronises by scanning forward, byte by byte,
// for the next offset holding a valid header and payload, so the records
// after the damage still replay. Because the checksums are seeded with a
// salt that never leaves the disk, a record-shaped byte string inside a
// callback body cannot pass for a record when the real header before it is
// damaged. A torn tail (the last record cut short by a crash, which was
// never acknowledged) is truncated with a warning and not counted.
// A damaged record passes both checksums by chance with odds of about one
// in 2^32; a callback is never replayed changed otherwise. A segment whose
// two header copies are both damaged, or that holds no readable record, is
// renamed to <name>.spool.damaged, kept for an operator, counted and
// logged; the spool never reads it again. The scan costs about 6 ns a byte
// of damage (BenchmarkResync). Segments written before this format (no
// header, unsalted CRC of the payload only) are still read, with the same
// resynchronisation.
//
// # A drain that cannot progress
//
// Stuck reports it (the oldest record failed to replay several times in a
// row, or for too long; see Options), ReplayFailures counts every failed
// attempt and Corrupt every damaged stretch skipped.
package spool

import (
	"context"
	"crypto/rand"
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
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
)

// ErrFull means the spool reached its size limit.
var ErrFull = errors.New("spool: full")

// ErrClosed means the spool was closed.
var ErrClosed = errors.New("spool: closed")

const (
	segmentExt = ".spool"
	damagedExt = ".damaged" // appended to a segment no record of which can be read
	maxRecord  = 4 << 20    // a record larger than this is damage, not data

	// A segment (current format) starts with two copies of a header:
	// magic (8) | salt (8) | CRC-32C of magic and salt (4).
	segMagic   = "DRJSPL2\n"
	segHdrCopy = 20
	segHdr     = 2 * segHdrCopy

	// A record: length (4) | CRC-32C(salt, length) (4) |
	// CRC-32C(salt, payload) (4) | payload.
	recHeader = 12

	// A legacy record (segments without a header): length (4) |
	// CRC-32C(payload) (4) | payload.
	legacyHeader = 8

	// Defaults for Stuck.
	DefaultStuckAttempts = 10
	DefaultStuckAfter    = time.Minute
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Options configures OpenOptions. The zero value of every field but
// MaxBytes is a sensible default.
type Options struct {
	// MaxBytes caps the bytes on disk; an Append past it returns ErrFull.
	MaxBytes int64
	// StuckAttempts and StuckAfter set when Stuck reports a drain that
	// cannot progress: after this many consecutive failed attempts on the
	// oldest record, or this long after the first of them, whichever comes
	// first. Defaults DefaultStuckAttempts and DefaultStuckAfter.
	StuckAttempts int
	StuckAfter    time.Duration
	// NoSync skips every fsync. Test control only: it proves a power-cut
	// test can see a loss. Never set it in production.
	NoSync bool

	fs  fsys             // test seam for faults; nil is the real filesystem
	now func() time.Time // test clock; nil is time.Now
}

// Spool is a directory of segment files. Appends go to the active segment;
// a drain seals it and replays sealed segments oldest first. It is safe for
// concurrent use.
type Spool struct {
	dir  string
	opts Options
	fs   fsys
	log  *zap.Logger

	mu        sync.Mutex
	segs      []*segment // oldest first; the last is active when active != nil
	active    file
	activeSeq uint64 // highest segment number used
	size      int64  // bytes in every segment
	records   int64  // records not yet drained
	closed    bool
	wbuf      []byte // Append's record buffer, reused under mu

	corrupt     int64     // damaged stretches skipped since Open
	replayFails int64     // failed replay attempts since Open
	streak      int       // consecutive failed attempts on the oldest record
	streakSince time.Time // first failure of the streak
	streakErr   error     // last failure of the streak

	drainMu sync.Mutex // one drain at a time
}

// segment is what the spool knows of one file.
type segment struct {
	seq     uint64
	size    int64  // bytes in the file
	end     int64  // read no further: less than size once sealed as damaged
	legacy  bool   // no header, unsalted payload CRC
	seed    uint32 // CRC-32C state after the salt
	cursor  int64  // the next record to replay starts here
	seen    int64  // damage starting before this offset is already counted
	records int64  // records not yet drained
}

// Open opens (creating) the spool in dir with default options, recovering
// every segment: a tail torn by a crash mid-write is cut off and damaged
// records are skipped.
func Open(dir string, maxBytes int64, log *zap.Logger) (*Spool, error) {
	return OpenOptions(dir, Options{MaxBytes: maxBytes}, log)
}

// OpenOptions is Open with options.
func OpenOptions(dir string, opts Options, log *zap.Logger) (*Spool, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if opts.StuckAttempts <= 0 {
		opts.StuckAttempts = DefaultStuckAttempts
	}
	if opts.StuckAfter <= 0 {
		opts.StuckAfter = DefaultStuckAfter
	}
	if opts.now == nil {
		opts.now = time.Now
	}
	fs := opts.fs
	if fs == nil {
		fs = osFS{}
	}
	s := &Spool{dir: dir, opts: opts, fs: fs, log: log.Named("spool")}
	if err := s.makeDir(); err != nil {
		return nil, err
	}
	segs, maxSeq, err := s.list()
	if err != nil {
		return nil, err
	}
	s.activeSeq = maxSeq
	for _, seq := range segs {
		seg, err := s.recover(seq)
		if err != nil {
			return nil, err
		}
		if seg == nil {
			continue
		}
		s.segs = append(s.segs, seg)
		s.size += seg.size
		s.records += seg.records
	}
	if s.records > 0 {
		s.log.Warn("spool holds callbacks not yet on NATS; they will be replayed",
			zap.Int64("records", s.records), zap.Int64("bytes", s.size))
	}
	return s, nil
}

// makeDir creates the spool directory and fsyncs the parent of each
// directory it created, so that the directory itself survives a power cut.
func (s *Spool) makeDir() error {
	var created []string
	for d := filepath.Clean(s.dir); ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		created = append(created, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	if s.opts.NoSync {
		return nil
	}
	for _, d := range slices.Backward(created) {
		if err := s.fs.SyncDir(filepath.Dir(d)); err != nil {
			return fmt.Errorf("spool: fsync %s after creating %s: %w", filepath.Dir(d), d, err)
		}
	}
	return nil
}

func (s *Spool) path(seq uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%020d%s", seq, segmentExt))
}

// list returns segment numbers, oldest first, and the highest number in
// use (damaged segments included).
func (s *Spool) list() ([]uint64, uint64, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, 0, fmt.Errorf("spool: %w", err)
	}
	var out []uint64
	var maxSeq uint64
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		name, damaged := strings.CutSuffix(e.Name(), damagedExt)
		name, ok := strings.CutSuffix(name, segmentExt)
		if !ok {
			continue
		}
		seq, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			continue
		}
		maxSeq = max(maxSeq, seq)
		if !damaged {
			out = append(out, seq)
		}
	}
	slices.Sort(out)
	return out, maxSeq, nil
}

func (s *Spool) sync(f file) error {
	if s.opts.NoSync {
		return nil
	}
	return f.Sync()
}

func (s *Spool) syncDir() error {
	if s.opts.NoSync {
		return nil
	}
	return s.fs.SyncDir(s.dir)
}

// recover scans a segment: it counts the valid records, skips damage, and
// truncates a damaged tail. A nil segment means the file was set aside.
func (s *Spool) recover(seq uint64) (*segment, error) {
	path := s.path(seq)
	f, err := s.fs.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("spool: open %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	seg := &segment{seq: seq, size: st.Size(), end: st.Size()}
	if seg.size == 0 {
		return nil, s.discard(path, "empty spool segment removed")
	}
	var head [segHdr]byte
	n, err := f.ReadAt(head[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("spool: read %s: %w", path, err)
	}
	seed, format := parseSegHeader(head[:n])
	switch format {
	case formatCurrent:
		seg.seed, seg.cursor = seed, segHdr
	case formatLegacy:
		seg.legacy = true
	case formatTornHeader:
		// Records are written only after the header is fsynced.
		return nil, s.discard(path, "spool segment with a torn header and no records removed")
	case formatDamagedHeader:
		return nil, s.setAside(path, seg.size, "spool segment header damaged; its records cannot be checked")
	}

	r := newReader(f, seg)
	off := seg.cursor
	for {
		_, next, dmg, err := r.next(off)
		if err != nil {
			return nil, fmt.Errorf("spool: read %s: %w", path, err)
		}
		if dmg != nil {
			if !dmg.tail {
				s.damaged(path, dmg)
			} else {
				if !dmg.torn && seg.records == 0 {
					return nil, s.setAside(path, seg.size, "spool segment holds no readable record")
				}
				if dmg.torn {
					s.log.Warn("spool segment has a torn tail (a write cut short by a crash); cutting it off",
						zap.String("segment", path), zap.Int64("kept_bytes", dmg.start), zap.Int64("cut_bytes", seg.size-dmg.start))
				} else {
					s.damaged(path, dmg)
				}
				if err := f.Truncate(dmg.start); err != nil {
					return nil, fmt.Errorf("spool: truncate damaged %s: %w", path, err)
				}
				if err := s.sync(f); err != nil {
					return nil, fmt.Errorf("spool: fsync %s: %w", path, err)
				}
				seg.size, seg.end = dmg.start, dmg.start
				break
			}
		}
		if next < 0 {
			break
		}
		seg.records++
		off = next
	}
	seg.seen = seg.size
	return seg, nil
}

// damaged logs and counts a skipped stretch.
func (s *Spool) damaged(path string, d *damage) {
	s.mu.Lock()
	s.corrupt++
	s.mu.Unlock()
	s.log.Error("spool record damaged; skipped it, replaying the records after it",
		zap.String("segment", path), zap.Int64("offset", d.start), zap.Int64("skipped_bytes", d.end-d.start),
		zap.Bool("tail", d.tail))
}

// discard removes a segment that holds nothing.
func (s *Spool) discard(path, msg string) error {
	s.log.Warn(msg, zap.String("segment", path))
	if err := s.fs.Remove(path); err != nil {
		return fmt.Errorf("spool: remove %s: %w", path, err)
	}
	if err := s.syncDir(); err != nil {
		return fmt.Errorf("spool: fsync %s: %w", s.dir, err)
	}
	return nil
}

// setAside renames a segment none of whose records can be read, keeping it
// for an operator, and counts it as damage.
func (s *Spool) setAside(path string, size int64, msg string) error {
	s.mu.Lock()
	s.corrupt++
	s.mu.Unlock()
	s.log.Error(msg+"; set aside", zap.String("segment", path), zap.String("renamed_to", path+damagedExt), zap.Int64("bytes", size))
	if err := s.fs.Rename(path, path+damagedExt); err != nil {
		return fmt.Errorf("spool: set aside %s: %w", path, err)
	}
	if err := s.syncDir(); err != nil {
		return fmt.Errorf("spool: fsync %s: %w", s.dir, err)
	}
	return nil
}

// Append writes msg and fsyncs it. It returns ErrFull when the record
// would take the spool past its size limit. On any error the record is not
// in the spool and will not be replayed.
func (s *Spool) Append(msg *nats.Msg) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	var zero [recHeader]byte
	rec := encode(append(s.wbuf[:0], zero[:]...), msg)
	s.wbuf = rec[:0]
	n := len(rec) - recHeader
	if n > maxRecord {
		return fmt.Errorf("spool: record of %d bytes is over the %d limit", n, maxRecord)
	}
	need := int64(len(rec))
	if s.active == nil {
		need += segHdr
	}
	if s.size+need > s.opts.MaxBytes {
		return ErrFull
	}
	if s.active == nil {
		if err := s.openActive(); err != nil {
			return err
		}
	}
	seg := s.segs[len(s.segs)-1]
	binary.BigEndian.PutUint32(rec[0:4], uint32(n))
	binary.BigEndian.PutUint32(rec[4:8], crc32.Update(seg.seed, crcTable, rec[0:4]))
	binary.BigEndian.PutUint32(rec[8:12], crc32.Update(seg.seed, crcTable, rec[recHeader:]))

	w, err := s.active.Write(rec)
	if err == nil && w != len(rec) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return s.undo(seg, w, fmt.Errorf("spool: write: %w", err))
	}
	if err := s.sync(s.active); err != nil {
		return s.undo(seg, len(rec), fmt.Errorf("spool: fsync: %w", err))
	}
	seg.size += int64(len(rec))
	seg.end = seg.size
	seg.records++
	s.size += int64(len(rec))
	s.records++
	return nil
}

// undo takes a failed append back out of the active segment: the bytes it
// may have left (written is a lower bound) are truncated and the truncation
// fsynced, so that no later replay, in this process or after a power cut,
// sees them. If that fails too, the segment is sealed at its last good
// record and the next append starts a new one.
func (s *Spool) undo(seg *segment, written int, cause error) error {
	terr := s.active.Truncate(seg.size)
	if terr == nil {
		terr = s.sync(s.active)
	}
	if terr == nil {
		return cause
	}
	extra := int64(written)
	if st, err := s.active.Stat(); err == nil && st.Size() >= seg.size {
		extra = st.Size() - seg.size
	}
	s.log.Error("spool could not take back a failed append; sealing the segment at its last good record",
		zap.String("segment", s.path(seg.seq)), zap.Int64("good_bytes", seg.size), zap.Int64("extra_bytes", extra),
		zap.NamedError("append_error", cause), zap.Error(terr))
	seg.end = seg.size
	seg.size += extra
	s.size += extra
	_ = s.active.Close()
	s.active = nil
	return errors.Join(cause, fmt.Errorf("spool: take back failed append: %w", terr))
}

// openActive creates the next segment, its header and its name fsynced.
func (s *Spool) openActive() error {
	s.activeSeq++
	path := s.path(s.activeSeq)
	f, err := s.fs.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("spool: create segment: %w", err)
	}
	var salt [8]byte
	_, _ = rand.Read(salt[:]) // never fails (crypto/rand)
	head := segHeader(salt)
	fail := func(err error) error {
		_ = f.Close()
		_ = s.fs.Remove(path)
		return fmt.Errorf("spool: create segment: %w", err)
	}
	if w, err := f.Write(head[:]); err != nil || w != len(head) {
		return fail(orShortWrite(err))
	}
	if err := s.sync(f); err != nil {
		return fail(err)
	}
	if err := s.syncDir(); err != nil {
		return fail(fmt.Errorf("fsync %s: %w", s.dir, err))
	}
	seg := &segment{seq: s.activeSeq, size: segHdr, end: segHdr, seed: crc32.Update(0, crcTable, salt[:]), cursor: segHdr}
	s.segs = append(s.segs, seg)
	s.size += segHdr
	s.active = f
	return nil
}

func orShortWrite(err error) error {
	if err != nil {
		return err
	}
	return io.ErrShortWrite
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
	return b+maxRecord/64 > s.opts.MaxBytes
}

// Corrupt returns how many damaged stretches (each at least one record, or
// a whole segment whose header is damaged) were skipped since Open. Each
// is logged at Error when found.
func (s *Spool) Corrupt() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.corrupt
}

// ReplayFailures returns how many replay attempts failed since Open: a
// publish error for a record, or a segment that could not be opened, read
// or removed. A cancelled context is not a failure.
func (s *Spool) ReplayFailures() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.replayFails
}

// Stuck returns nil while the spool drains (or is empty), and an error
// describing the problem once the oldest record has failed to replay
// Options.StuckAttempts times in a row (default 10), or
// Options.StuckAfter (default one minute) has passed since the first
// failure in a row (that time runs whether or not Drain is called again).
// Any record replayed, or a drain that finds nothing left to do, clears it.
func (s *Spool) Stuck() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.streak == 0 {
		return nil
	}
	d := s.opts.now().Sub(s.streakSince)
	if s.streak < s.opts.StuckAttempts && d < s.opts.StuckAfter {
		return nil
	}
	return fmt.Errorf("spool: replay stuck: %d attempts in a row failed over %s: %w",
		s.streak, d.Round(time.Second), s.streakErr)
}

// failed records a failed replay attempt.
func (s *Spool) failed(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replayFails++
	if s.streak == 0 {
		s.streakSince = s.opts.now()
	}
	s.streak++
	s.streakErr = err
}

// progressLocked clears the failure streak.
func (s *Spool) progressLocked() {
	s.streak, s.streakErr = 0, nil
}

// Drain seals the active segment and replays every sealed segment, oldest
// first, through publish. A segment is deleted once all its records were
// published; on the first error Drain stops and the next call resumes at
// the record that failed. Damaged records are skipped (see Corrupt). It
// returns how many records were published.
func (s *Spool) Drain(ctx context.Context, publish func(context.Context, *nats.Msg) error) (int, error) {
	s.drainMu.Lock()
	defer s.drainMu.Unlock()
	s.mu.Lock()
	if s.active != nil && s.segs[len(s.segs)-1].records > 0 {
		s.sealLocked()
	}
	sealed := s.segs
	if s.active != nil {
		sealed = sealed[:len(sealed)-1]
	}
	sealed = slices.Clone(sealed)
	if len(sealed) == 0 {
		if s.records == 0 {
			s.progressLocked()
		}
		s.mu.Unlock()
		return 0, nil
	}
	s.mu.Unlock()

	total := 0
	for _, seg := range sealed {
		n, err := s.drainSegment(ctx, seg, publish)
		total += n
		if err != nil {
			return total, err
		}
	}
	s.mu.Lock()
	if s.records == 0 {
		s.progressLocked()
	}
	s.mu.Unlock()
	return total, nil
}

func (s *Spool) drainSegment(ctx context.Context, seg *segment, publish func(context.Context, *nats.Msg) error) (int, error) {
	path := s.path(seg.seq)
	fail := func(err error) error {
		if ctx.Err() == nil {
			s.failed(err)
		}
		return err
	}
	n := 0
	if seg.cursor < seg.end {
		f, err := s.fs.OpenFile(path, os.O_RDONLY, 0)
		if err != nil {
			return 0, fail(fmt.Errorf("spool: open %s: %w", path, err))
		}
		defer f.Close()
		r := newReader(f, seg)
		for {
			if err := ctx.Err(); err != nil {
				return n, err
			}
			msg, next, dmg, err := r.next(seg.cursor)
			if err != nil {
				return n, fail(fmt.Errorf("spool: read %s: %w", path, err))
			}
			if dmg != nil && dmg.start >= seg.seen {
				// Damage written since Open (Open counted what it found).
				s.damaged(path, dmg)
				seg.seen = dmg.end
			}
			if next < 0 {
				break
			}
			if err := publish(ctx, msg); err != nil {
				return n, fail(err)
			}
			n++
			s.mu.Lock()
			seg.cursor = next
			seg.records--
			s.records--
			s.progressLocked()
			s.mu.Unlock()
		}
		_ = f.Close()
	}
	if err := s.fs.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return n, fail(fmt.Errorf("spool: remove drained segment: %w", err))
	}
	if err := s.syncDir(); err != nil {
		// The records are on NATS; a power cut now replays them again
		// under the same Nats-Msg-Id.
		s.log.Warn("spool: directory not fsynced after removing a drained segment",
			zap.String("segment", path), zap.Error(err))
	}
	s.mu.Lock()
	s.segs = slices.DeleteFunc(s.segs, func(x *segment) bool { return x == seg })
	s.size -= seg.size
	s.records -= seg.records // records lost to damage found during the drain
	s.mu.Unlock()
	return n, nil
}

// Each calls fn with every record not yet replayed, oldest first, without
// replaying or removing any: a later Drain still replays them all. It
// stops at fn's first error and returns it. Damaged records are skipped
// (Drain counts and logs them). A record appended while Each runs may or
// may not be seen. Drains wait for Each, and Each for a running drain.
func (s *Spool) Each(fn func(*nats.Msg) error) error {
	s.drainMu.Lock()
	defer s.drainMu.Unlock()
	s.mu.Lock()
	segs := make([]segment, len(s.segs))
	for i, seg := range s.segs {
		segs[i] = *seg // cursor and end as they are now
	}
	s.mu.Unlock()
	for i := range segs {
		if err := s.each(&segs[i], fn); err != nil {
			return err
		}
	}
	return nil
}

func (s *Spool) each(seg *segment, fn func(*nats.Msg) error) error {
	if seg.cursor >= seg.end {
		return nil
	}
	path := s.path(seg.seq)
	f, err := s.fs.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("spool: open %s: %w", path, err)
	}
	defer f.Close()
	r := newReader(f, seg)
	for off := seg.cursor; ; {
		msg, next, _, err := r.next(off)
		if err != nil {
			return fmt.Errorf("spool: read %s: %w", path, err)
		}
		if next < 0 {
			return nil
		}
		if err := fn(msg); err != nil {
			return err
		}
		off = next
	}
}

// Close closes the active segment. Safe twice.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.sealLocked()
	return nil
}

// encode appends a message to b as: subject, header pairs, data, each
// length-prefixed with a uvarint.
func encode(b []byte, m *nats.Msg) []byte {
	b = binary.AppendUvarint(b, uint64(len(m.Subject)))
	b = append(b, m.Subject...)
	var ka [8]string
	keys := ka[:0]
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

// errDamaged marks a payload that does not decode.
var errDamaged = errors.New("damaged record")

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
