package publish

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Watermark remembers, on local disk and fsynced, the highest stream
// sequence the stream acknowledged to this edge, so a start on a store
// that lost acknowledged writes (a power cut with sync off, a disk
// restored from an old snapshot) is noticed instead of quietly starting
// over. It is for the embedded server, whose store is this machine's.
type Watermark struct {
	path   string
	stream string
	acked  atomic.Uint64 // highest acknowledged sequence seen
	stored atomic.Uint64 // what the file holds
}

// OpenWatermark reads the watermark file at path for stream (0 when there is
// none, or it names another stream).
func OpenWatermark(path, stream string) (*Watermark, uint64, error) {
	w := &Watermark{path: path, stream: stream}
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return w, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("publish: read %s: %w", path, err)
	}
	name, seqText, ok := strings.Cut(strings.TrimSpace(string(data)), " ")
	seq, perr := strconv.ParseUint(seqText, 10, 64)
	if !ok || perr != nil {
		return nil, 0, fmt.Errorf("publish: %s is not \"<stream> <sequence>\": %q", path, data)
	}
	if name != stream {
		return w, 0, nil
	}
	w.acked.Store(seq)
	w.stored.Store(seq)
	return w, seq, nil
}

// Acked records an acknowledged sequence.
func (w *Watermark) Acked(seq uint64) {
	if w == nil {
		return
	}
	for {
		cur := w.acked.Load()
		if seq <= cur || w.acked.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// Reset starts the watermark over at seq (after the loss was reported).
func (w *Watermark) Reset(seq uint64) {
	w.acked.Store(seq)
	w.stored.Store(seq + 1) // force a write
}

// Flush writes the watermark if it moved: a temporary file, fsynced,
// renamed over the old one, and the directory fsynced.
func (w *Watermark) Flush() error {
	if w == nil {
		return nil
	}
	seq := w.acked.Load()
	if seq == w.stored.Load() {
		return nil
	}
	tmp := w.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("publish: watermark: %w", err)
	}
	_, err = fmt.Fprintf(f, "%s %d\n", w.stream, seq)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, w.path)
	}
	if err == nil {
		err = syncDir(filepath.Dir(w.path))
	}
	if err != nil {
		return fmt.Errorf("publish: watermark: %w", err)
	}
	w.stored.Store(seq)
	return nil
}

// Run flushes every interval until ctx ends, then once more.
func (w *Watermark) Run(ctx context.Context, interval time.Duration, onErr func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := w.Flush(); err != nil {
				onErr(err)
			}
			return
		case <-t.C:
			if err := w.Flush(); err != nil {
				onErr(err)
			}
		}
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
