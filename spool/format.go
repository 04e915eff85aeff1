package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"slices"

	"github.com/nats-io/nats.go"
)

// fsys is the filesystem the spool works through: the real one, or in
// tests one that injects faults.
type fsys interface {
	OpenFile(name string, flag int, perm os.FileMode) (file, error)
	Remove(name string) error
	Rename(oldpath, newpath string) error
	SyncDir(dir string) error
}

// file is the part of *os.File the spool uses.
type file interface {
	io.Writer
	io.ReaderAt
	Sync() error
	Truncate(size int64) error
	Stat() (os.FileInfo, error)
	Close() error
}

type osFS struct{}

func (osFS) OpenFile(name string, flag int, perm os.FileMode) (file, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (osFS) Remove(name string) error             { return os.Remove(name) }
func (osFS) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }

func (osFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	return errors.Join(err, d.Close())
}

type format int

const (
	formatCurrent       format = iota // a valid header copy
	formatLegacy                      // no header: records from offset 0
	formatTornHeader                  // shorter than a header: created, never written
	formatDamagedHeader               // the magic is there but no copy checks out
)

// segHeader builds the two header copies for a salt.
func segHeader(salt [8]byte) [segHdr]byte {
	var h [segHdr]byte
	copy(h[:8], segMagic)
	copy(h[8:16], salt[:])
	binary.BigEndian.PutUint32(h[16:20], crc32.Checksum(h[:16], crcTable))
	copy(h[segHdrCopy:], h[:segHdrCopy])
	return h
}

// parseSegHeader reads the first segHdr bytes of a segment (fewer if it is
// shorter) and returns the CRC seed of its records.
func parseSegHeader(b []byte) (uint32, format) {
	magic := false
	for i := 0; i+segHdrCopy <= len(b) && i < segHdr; i += segHdrCopy {
		c := b[i : i+segHdrCopy]
		if string(c[:8]) != segMagic {
			continue
		}
		magic = true
		if crc32.Checksum(c[:16], crcTable) == binary.BigEndian.Uint32(c[16:20]) {
			return crc32.Update(0, crcTable, c[8:16]), formatCurrent
		}
	}
	switch {
	case len(b) < segHdr && bytes.HasPrefix([]byte(segMagic), b[:min(len(b), len(segMagic))]):
		return 0, formatTornHeader
	case magic:
		return 0, formatDamagedHeader
	}
	// A legacy segment starts with a record length (first byte 0), but
	// that byte may be the damage: resynchronisation finds what follows.
	return 0, formatLegacy
}

// reader reads records from a segment through a window, resynchronising
// past damage.
type reader struct {
	r      io.ReaderAt
	end    int64
	hdr    int
	legacy bool
	seed   uint32
	win    []byte
	winOff int64
	big    []byte // a payload larger than the window
}

const windowSize = 64 << 10

func newReader(r io.ReaderAt, seg *segment) *reader {
	rd := &reader{r: r, end: seg.end, hdr: recHeader, legacy: seg.legacy, seed: seg.seed}
	if seg.legacy {
		rd.hdr, rd.seed = legacyHeader, 0
	}
	return rd
}

// bytes returns the n bytes at off, fewer only at the end of the segment.
// The slice is valid until the next call.
func (r *reader) bytes(off int64, n int) ([]byte, error) {
	if off >= r.end {
		return nil, nil
	}
	if int64(n) > r.end-off {
		n = int(r.end - off)
	}
	if off >= r.winOff && off+int64(n) <= r.winOff+int64(len(r.win)) {
		i := off - r.winOff
		return r.win[i : i+int64(n)], nil
	}
	if n > windowSize {
		r.big = slices.Grow(r.big[:0], n)[:n]
		if err := r.readAt(r.big, off); err != nil {
			return nil, err
		}
		return r.big, nil
	}
	if cap(r.win) < windowSize {
		r.win = make([]byte, windowSize)
	}
	r.win = r.win[:min(int64(windowSize), r.end-off)]
	if err := r.readAt(r.win, off); err != nil {
		r.win = r.win[:0]
		return nil, err
	}
	r.winOff = off
	return r.win[:n], nil
}

func (r *reader) readAt(b []byte, off int64) error {
	got, err := r.r.ReadAt(b, off)
	if got == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF // shortened behind the spool's back
	}
	return fmt.Errorf("at %d: %w", off+int64(got), err)
}

type status int

const (
	recOK   status = iota
	recEOF         // off is the end
	recBad         // no valid record starts at off
	recTorn        // a record starts at off but the segment ends inside it
)

// at reads the record starting at off, if one does.
func (r *reader) at(off int64) (*nats.Msg, int64, status, error) {
	h, err := r.bytes(off, r.hdr)
	if err != nil {
		return nil, 0, 0, err
	}
	if len(h) == 0 {
		return nil, 0, recEOF, nil
	}
	if len(h) < r.hdr {
		return nil, 0, recTorn, nil
	}
	n := binary.BigEndian.Uint32(h[0:4])
	if n == 0 || n > maxRecord {
		return nil, 0, recBad, nil
	}
	var sum uint32
	if r.legacy {
		sum = binary.BigEndian.Uint32(h[4:8])
	} else {
		if crc32.Update(r.seed, crcTable, h[0:4]) != binary.BigEndian.Uint32(h[4:8]) {
			return nil, 0, recBad, nil
		}
		sum = binary.BigEndian.Uint32(h[8:12])
	}
	next := off + int64(r.hdr) + int64(n)
	if next > r.end {
		return nil, 0, recTorn, nil
	}
	p, err := r.bytes(off+int64(r.hdr), int(n))
	if err != nil {
		return nil, 0, 0, err
	}
	if crc32.Update(r.seed, crcTable, p) != sum {
		return nil, 0, recBad, nil
	}
	m, err := decode(p)
	if err != nil {
		return nil, 0, recBad, nil
	}
	return m, next, recOK, nil
}

// damage is a stretch of a segment that holds no valid record.
type damage struct {
	start, end int64
	tail       bool // no valid record after it
	torn       bool // a tail a crash mid-append explains: a cut record, or zeros
}

// next returns the first valid record at or after off and the offset after
// it (-1 at the end), with the stretch skipped to find it, if any. Errors
// are I/O errors, never damage.
func (r *reader) next(off int64) (*nats.Msg, int64, *damage, error) {
	m, next, st, err := r.at(off)
	switch {
	case err != nil:
		return nil, 0, nil, err
	case st == recOK:
		return m, next, nil, nil
	case st == recEOF:
		return nil, -1, nil, nil
	}
	first := st
	for o := off + 1; o < r.end; o++ {
		m, next, st, err := r.at(o)
		if err != nil {
			return nil, 0, nil, err
		}
		if st == recOK {
			return m, next, &damage{start: off, end: o}, nil
		}
	}
	d := &damage{start: off, end: r.end, tail: true, torn: first == recTorn}
	if !d.torn {
		z, err := r.zeros(off)
		if err != nil {
			return nil, 0, nil, err
		}
		d.torn = z
	}
	return nil, -1, d, nil
}

// zeros reports whether every byte from off to the end is zero.
func (r *reader) zeros(off int64) (bool, error) {
	for off < r.end {
		b, err := r.bytes(off, windowSize)
		if err != nil {
			return false, err
		}
		for _, c := range b {
			if c != 0 {
				return false, nil
			}
		}
		off += int64(len(b))
	}
	return true, nil
}
