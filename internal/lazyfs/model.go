package lazyfs

import (
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// chunkSize is the unit of copy-on-write between a file's volatile data and
// its durable snapshot: an fsync shares chunks, a later write copies only the
// chunk it touches.
const chunkSize = 64 << 10

// chunk is part of a file. b holds the chunk's first len(b) bytes; the rest,
// up to chunkSize, reads as zeros. A frozen chunk belongs to a durable
// snapshot and is never written again.
type chunk struct {
	b      []byte
	frozen bool
}

// content is the data of a regular file: chunks (nil for a hole) and size.
type content struct {
	chunks []*chunk
	size   int64
}

// writable returns chunk i ready to be written up to byte end (exclusive,
// within the chunk), copying it first if it is frozen and growing it with
// zeros.
func (c *content) writable(i int, end int) *chunk {
	for len(c.chunks) <= i {
		c.chunks = append(c.chunks, nil)
	}
	ch := c.chunks[i]
	switch {
	case ch == nil:
		ch = &chunk{}
	case ch.frozen:
		ch = &chunk{b: slices.Clone(ch.b)}
	}
	if len(ch.b) < end {
		old := len(ch.b)
		if cap(ch.b) >= end {
			ch.b = ch.b[:end]
			clear(ch.b[old:])
		} else {
			nb := make([]byte, end, min(chunkSize, max(end, 2*cap(ch.b))))
			copy(nb, ch.b)
			ch.b = nb
		}
	}
	c.chunks[i] = ch
	return ch
}

func (c *content) writeAt(p []byte, off int64) {
	for len(p) > 0 {
		i, in := int(off/chunkSize), int(off%chunkSize)
		n := min(len(p), chunkSize-in)
		ch := c.writable(i, in+n)
		copy(ch.b[in:], p[:n])
		p, off = p[n:], off+int64(n)
		c.size = max(c.size, off)
	}
}

func (c *content) readAt(p []byte, off int64) int {
	if off >= c.size {
		return 0
	}
	p = p[:min(int64(len(p)), c.size-off)]
	n := len(p)
	for len(p) > 0 {
		i, in := int(off/chunkSize), int(off%chunkSize)
		m := min(len(p), chunkSize-in)
		clear(p[:m])
		if i < len(c.chunks) && c.chunks[i] != nil && in < len(c.chunks[i].b) {
			copy(p[:m], c.chunks[i].b[in:])
		}
		p, off = p[m:], off+int64(m)
	}
	return n
}

func (c *content) truncate(size int64) {
	if size >= c.size {
		c.size = size
		return
	}
	keep := int((size + chunkSize - 1) / chunkSize)
	if keep < len(c.chunks) {
		clear(c.chunks[keep:])
		c.chunks = c.chunks[:keep]
	}
	if in := int(size % chunkSize); in != 0 && keep-1 < len(c.chunks) {
		if ch := c.chunks[keep-1]; ch != nil && len(ch.b) > in {
			if ch.frozen {
				ch = &chunk{b: slices.Clone(ch.b[:in])}
				c.chunks[keep-1] = ch
			} else {
				ch.b = ch.b[:in] // writable zeroes the bytes past len when it regrows
			}
		}
	}
	c.size = size
}

// snapshot freezes c's chunks and returns a copy sharing them.
func (c *content) snapshot() *content {
	for _, ch := range c.chunks {
		if ch != nil {
			ch.frozen = true
		}
	}
	return &content{chunks: slices.Clone(c.chunks), size: c.size}
}

// inode is one file or directory of the model. Every field is guarded by
// FS.mu.
type inode struct {
	ino   uint64
	dir   bool
	perm  uint32 // permission bits
	uid   uint32
	gid   uint32
	atime time.Time
	mtime time.Time
	ctime time.Time
	nlink uint32 // names in the volatile namespace

	// Regular files: what a reader sees, and what the disk holds (nil: an
	// empty file, as a never-synced inode is after a crash).
	data       *content
	synced     *content
	syncedPerm uint32
	dirty      bool

	// Directories: the volatile entries, the durable ones, and the volatile
	// parent (nil for the root and for a removed directory).
	entries map[string]*inode
	durable map[string]*inode
	parent  *inode
}

func (in *inode) size() int64 {
	if in.dir {
		return int64(len(in.entries))
	}
	return in.data.size
}

// loadTree reads the directory dir on the real disk into a tree whose
// volatile and durable states are both what the disk holds.
func (f *FS) loadTree(d *inode, dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read backing directory: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		info, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("stat backing file: %w", err)
		}
		var child *inode
		switch {
		case info.IsDir():
			child = f.newInode(true, uint32(info.Mode().Perm()))
			child.parent = d
			if err := f.loadTree(child, p); err != nil {
				return err
			}
		case info.Mode().IsRegular():
			child = f.newInode(false, uint32(info.Mode().Perm()))
			if err := loadFile(child.data, p); err != nil {
				return err
			}
			child.synced, child.syncedPerm = child.data.snapshot(), child.perm
		default:
			return fmt.Errorf("backing directory holds %s of type %s: only directories and regular files are supported", p, info.Mode().Type())
		}
		child.mtime = info.ModTime()
		child.nlink++
		d.entries[e.Name()] = child
	}
	d.durable = maps.Clone(d.entries)
	return nil
}

func loadFile(c *content, path string) error {
	fd, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open backing file: %w", err)
	}
	defer fd.Close()
	buf := make([]byte, chunkSize)
	var off int64
	for {
		n, err := io.ReadFull(fd, buf)
		if n > 0 {
			c.writeAt(buf[:n], off)
			off += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read backing file: %w", err)
		}
	}
}

// commitAll makes the durable state equal to the volatile one, as a sync(2)
// before a clean unmount does.
func (f *FS) commitAll(d *inode) {
	d.durable = maps.Clone(d.entries)
	for _, child := range d.entries {
		if child.dir {
			f.commitAll(child)
		} else if child.dirty || child.synced == nil {
			f.syncFile(child)
		}
	}
	clear(f.dirtyDirs)
}

// syncFile makes in's data, size and permissions durable.
func (f *FS) syncFile(in *inode) {
	in.synced, in.syncedPerm, in.dirty = in.data.snapshot(), in.perm, false
}

// syncDir makes d's entries durable (not d's own entry in its parent).
func (f *FS) syncDir(d *inode) {
	if _, ok := f.dirtyDirs[d]; ok {
		d.durable = maps.Clone(d.entries)
		delete(f.dirtyDirs, d)
	}
}

// commitNamespace makes every namespace change so far durable, as a journal
// commit does.
func (f *FS) commitNamespace() {
	for d := range f.dirtyDirs {
		d.durable = maps.Clone(d.entries)
	}
	clear(f.dirtyDirs)
}

// materialize replaces the contents of the backing directory with the
// durable tree.
func (f *FS) materialize() error {
	ents, err := os.ReadDir(f.backing)
	if err != nil {
		return fmt.Errorf("read backing directory: %w", err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(f.backing, e.Name())); err != nil {
			return fmt.Errorf("clear backing directory: %w", err)
		}
	}
	return writeDurable(f.root, f.backing, map[*inode]bool{f.root: true})
}

// writeDurable writes d's durable entries under dir. onPath breaks the cycles
// a half-synced directory rename can leave in the durable tree (a real disk
// would need fsck there); such a directory is written once.
func writeDurable(d *inode, dir string, onPath map[*inode]bool) error {
	for _, name := range slices.Sorted(maps.Keys(d.durable)) {
		child, p := d.durable[name], filepath.Join(dir, name)
		if child.dir {
			if onPath[child] {
				continue
			}
			if err := os.Mkdir(p, os.FileMode(child.perm)|0o700); err != nil {
				return fmt.Errorf("write backing directory: %w", err)
			}
			onPath[child] = true
			err := writeDurable(child, p, onPath)
			delete(onPath, child)
			if err != nil {
				return err
			}
			continue
		}
		if err := writeFile(p, child.synced, child.syncedPerm); err != nil {
			return err
		}
	}
	return nil
}

func writeFile(path string, c *content, perm uint32) error {
	if c == nil {
		c = &content{}
	}
	fd, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, os.FileMode(perm)|0o600)
	if err != nil {
		return fmt.Errorf("write backing file: %w", err)
	}
	for i, ch := range c.chunks {
		off := int64(i) * chunkSize
		if ch == nil || len(ch.b) == 0 || off >= c.size {
			continue
		}
		b := ch.b[:min(int64(len(ch.b)), c.size-off)]
		if _, err := fd.WriteAt(b, off); err != nil {
			fd.Close()
			return fmt.Errorf("write backing file: %w", err)
		}
	}
	if err := fd.Truncate(c.size); err != nil {
		fd.Close()
		return fmt.Errorf("write backing file: %w", err)
	}
	if err := fd.Close(); err != nil {
		return fmt.Errorf("write backing file: %w", err)
	}
	return nil
}
