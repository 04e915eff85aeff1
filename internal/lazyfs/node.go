package lazyfs

import (
	"context"
	"maps"
	"slices"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// node is go-fuse's handle on an inode of the model. go-fuse may make
// several for one inode (one per lookup); it keeps the first, matched by
// inode number.
type node struct {
	fs.Inode
	lfs *FS
	in  *inode
}

// openFlags: no page cache (every read and write reaches the model), and
// no FLUSH at close(2). A FLUSH cannot be interrupted, so a process that
// serves the mount and dies holding a file open would hang in exit forever,
// waiting on itself (kernel 5.16+ honours FOPEN_NOFLUSH). The price: close(2)
// never fails, not even after Crash.
const openFlags = fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH

// handle is an open file; flags are the open(2) flags.
type handle struct{ flags uint32 }

const (
	renameNoreplace = 1 // RENAME_NOREPLACE
	renameExchange  = 2 // RENAME_EXCHANGE
)

var (
	_ fs.NodeLookuper  = (*node)(nil)
	_ fs.NodeGetattrer = (*node)(nil)
	_ fs.NodeSetattrer = (*node)(nil)
	_ fs.NodeOpener    = (*node)(nil)
	_ fs.NodeReader    = (*node)(nil)
	_ fs.NodeWriter    = (*node)(nil)
	_ fs.NodeFsyncer   = (*node)(nil)
	_ fs.NodeFlusher   = (*node)(nil)
	_ fs.NodeCreater   = (*node)(nil)
	_ fs.NodeMkdirer   = (*node)(nil)
	_ fs.NodeUnlinker  = (*node)(nil)
	_ fs.NodeRmdirer   = (*node)(nil)
	_ fs.NodeRenamer   = (*node)(nil)
	_ fs.NodeOpendirer = (*node)(nil)
	_ fs.NodeReaddirer = (*node)(nil)
	_ fs.NodeStatfser  = (*node)(nil)
)

func stable(in *inode) fs.StableAttr {
	if in.dir {
		return fs.StableAttr{Ino: in.ino, Mode: fuse.S_IFDIR}
	}
	return fs.StableAttr{Ino: in.ino, Mode: fuse.S_IFREG}
}

// fill sets a from in. f.mu is held.
func fill(in *inode, a *fuse.Attr) {
	a.Ino = in.ino
	a.Size = uint64(in.size())
	a.Blocks = (a.Size + 511) / 512
	a.Blksize = 4096
	a.Uid, a.Gid = in.uid, in.gid
	a.SetTimes(&in.atime, &in.mtime, &in.ctime)
	if in.dir {
		a.Mode = fuse.S_IFDIR | in.perm
		a.Nlink = 2
		for _, child := range in.entries {
			if child.dir {
				a.Nlink++
			}
		}
	} else {
		a.Mode = fuse.S_IFREG | in.perm
		a.Nlink = max(in.nlink, 1)
	}
}

func (n *node) lock() syscall.Errno {
	n.lfs.mu.Lock()
	return n.lfs.check()
}

func (n *node) unlock() { n.lfs.mu.Unlock() }

// markDirty records that d's entries changed. f.mu is held.
func (n *node) markDirty(d *inode) {
	d.mtime = time.Now()
	d.ctime = d.mtime
	n.lfs.dirtyDirs[d] = struct{}{}
}

func caller(ctx context.Context) (uid, gid uint32) {
	if c, ok := fuse.FromContext(ctx); ok {
		return c.Uid, c.Gid
	}
	return 0, 0
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	defer n.unlock()
	if e := n.lock(); e != 0 {
		return nil, e
	}
	child, ok := n.in.entries[name]
	if !ok {
		return nil, syscall.ENOENT
	}
	fill(child, &out.Attr)
	return n.NewInode(ctx, &node{lfs: n.lfs, in: child}, stable(child)), 0
}

func (n *node) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	defer n.unlock()
	if e := n.lock(); e != 0 {
		return e
	}
	fill(n.in, &out.Attr)
	return 0
}

func (n *node) Setattr(ctx context.Context, fh fs.FileHandle, sa *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	defer n.unlock()
	if e := n.lock(); e != 0 {
		return e
	}
	in, now := n.in, time.Now()
	if sz, ok := sa.GetSize(); ok {
		if in.dir {
			return syscall.EISDIR
		}
		in.data.truncate(int64(sz))
		in.dirty, in.mtime = true, now
	}
	if m, ok := sa.GetMode(); ok {
		in.perm = m & 0o7777
	}
	if uid, ok := sa.GetUID(); ok {
		in.uid = uid
	}
	if gid, ok := sa.GetGID(); ok {
		in.gid = gid
	}
	if t, ok := sa.GetATime(); ok {
		in.atime = t
	}
	if t, ok := sa.GetMTime(); ok {
		in.mtime = t
	}
	in.ctime = now
	fill(in, &out.Attr)
	return 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	defer n.unlock()
	if e := n.lock(); e != 0 {
		return nil, 0, e
	}
	if n.in.dir {
		return nil, 0, syscall.EISDIR
	}
	// O_TRUNC arrives as a separate SETATTR: go-fuse does not negotiate
	// atomic O_TRUNC, so the kernel strips it from these flags.
	return &handle{flags: flags}, openFlags, 0
}

func (n *node) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	defer n.unlock()
	if e := n.lock(); e != 0 {
		return nil, e
	}
	if n.in.dir {
		return nil, syscall.EISDIR
	}
	k := n.in.data.readAt(dest, off)
	return fuse.ReadResultData(dest[:k]), 0
}

func (n *node) Write(ctx context.Context, fh fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	defer n.unlock()
	if e := n.lock(); e != 0 {
		return 0, e
	}
	in, f := n.in, n.lfs
	var flags uint32
	if h, ok := fh.(*handle); ok {
		flags = h.flags
	}
	if flags&syscall.O_APPEND != 0 {
		off = in.data.size
	}
	in.data.writeAt(data, off)
	in.dirty, in.mtime = true, time.Now()
	f.stats.Writes++
	f.stats.WriteBytes += uint64(len(data))
	if flags&syscall.O_DSYNC != 0 { // O_SYNC includes O_DSYNC
		f.stats.SyncWrites++
		n.syncLocked()
	}
	return uint32(len(data)), 0
}

// syncLocked is fsync(2) of n. f.mu is held. With Options.IgnoreSync it
// is counted and does nothing else.
func (n *node) syncLocked() {
	f := n.lfs
	if f.opts.IgnoreSync {
		if n.in.dir {
			f.stats.DirSyncs++
		} else {
			f.stats.FileSyncs++
		}
		return
	}
	if n.in.dir {
		f.stats.DirSyncs++
		f.syncDir(n.in)
	} else {
		f.stats.FileSyncs++
		f.syncFile(n.in)
	}
	if f.opts.Namespace == JournaledNamespace {
		f.commitNamespace()
	}
}

func (n *node) Fsync(ctx context.Context, fh fs.FileHandle, flags uint32) syscall.Errno {
	defer n.unlock()
	if e := n.lock(); e != 0 {
		return e
	}
	n.syncLocked()
	return 0
}

func (n *node) Flush(ctx context.Context, fh fs.FileHandle) syscall.Errno {
	defer n.unlock()
	return n.lock()
}

func (n *node) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	defer n.unlock()
	if e := n.lock(); e != 0 {
		return nil, nil, 0, e
	}
	d := n.in
	if _, ok := d.entries[name]; ok {
		return nil, nil, 0, syscall.EEXIST
	}
	child := n.lfs.newInode(false, mode)
	child.uid, child.gid = caller(ctx)
	child.nlink = 1
	d.entries[name] = child
	n.markDirty(d)
	fill(child, &out.Attr)
	return n.NewInode(ctx, &node{lfs: n.lfs, in: child}, stable(child)), &handle{flags: flags}, openFlags, 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	defer n.unlock()
	if e := n.lock(); e != 0 {
		return nil, e
	}
	d := n.in
	if _, ok := d.entries[name]; ok {
		return nil, syscall.EEXIST
	}
	child := n.lfs.newInode(true, mode)
	child.uid, child.gid = caller(ctx)
	child.parent = d
	d.entries[name] = child
	n.markDirty(d)
	fill(child, &out.Attr)
	return n.NewInode(ctx, &node{lfs: n.lfs, in: child}, stable(child)), 0
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	defer n.unlock()
	if e := n.lock(); e != 0 {
		return e
	}
	child, ok := n.in.entries[name]
	switch {
	case !ok:
		return syscall.ENOENT
	case child.dir:
		return syscall.EISDIR
	}
	delete(n.in.entries, name)
	child.nlink--
	child.ctime = time.Now()
	n.markDirty(n.in)
	n.lfs.stats.Unlinks++
	return 0
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	defer n.unlock()
	if e := n.lock(); e != 0 {
		return e
	}
	child, ok := n.in.entries[name]
	switch {
	case !ok:
		return syscall.ENOENT
	case !child.dir:
		return syscall.ENOTDIR
	case len(child.entries) > 0:
		return syscall.ENOTEMPTY
	}
	delete(n.in.entries, name)
	child.parent = nil
	n.markDirty(n.in)
	return 0
}

// inside says whether d is dir or below it in the volatile tree.
func inside(d, dir *inode) bool {
	for p := d; p != nil; p = p.parent {
		if p == dir {
			return true
		}
	}
	return false
}

func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	defer n.unlock()
	if e := n.lock(); e != 0 {
		return e
	}
	od, nd := n.in, np.in
	src, ok := od.entries[name]
	if !ok {
		return syscall.ENOENT
	}
	dst, exists := nd.entries[newName]
	switch {
	case flags&^(renameNoreplace|renameExchange) != 0, flags == renameNoreplace|renameExchange:
		return syscall.EINVAL
	case flags&renameExchange != 0:
		if !exists {
			return syscall.ENOENT
		}
		if (src.dir && inside(nd, src)) || (dst.dir && inside(od, dst)) {
			return syscall.EINVAL
		}
		od.entries[name], nd.entries[newName] = dst, src
		if src.dir {
			src.parent = nd
		}
		if dst.dir {
			dst.parent = od
		}
	default:
		if exists {
			switch {
			case flags&renameNoreplace != 0:
				return syscall.EEXIST
			case dst == src:
				return 0
			case src.dir && !dst.dir:
				return syscall.ENOTDIR
			case !src.dir && dst.dir:
				return syscall.EISDIR
			case dst.dir && len(dst.entries) > 0:
				return syscall.ENOTEMPTY
			}
		}
		if src.dir && inside(nd, src) {
			return syscall.EINVAL
		}
		if exists {
			if dst.dir {
				dst.parent = nil
			} else {
				dst.nlink--
			}
		}
		delete(od.entries, name)
		nd.entries[newName] = src
		if src.dir {
			src.parent = nd
		}
	}
	src.ctime = time.Now()
	n.markDirty(od)
	n.markDirty(nd)
	return 0
}

func (n *node) Opendir(ctx context.Context) syscall.Errno {
	defer n.unlock()
	if e := n.lock(); e != 0 {
		return e
	}
	if !n.in.dir {
		return syscall.ENOTDIR
	}
	return 0
}

func (n *node) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	defer n.unlock()
	if e := n.lock(); e != 0 {
		return nil, e
	}
	list := make([]fuse.DirEntry, 0, len(n.in.entries))
	for _, name := range slices.Sorted(maps.Keys(n.in.entries)) {
		child := n.in.entries[name]
		list = append(list, fuse.DirEntry{Name: name, Ino: child.ino, Mode: stable(child).Mode})
	}
	return fs.NewListDirStream(list), 0
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	defer n.unlock()
	if e := n.lock(); e != 0 {
		return e
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(n.lfs.backing, &st); err != nil {
		return fs.ToErrno(err)
	}
	out.FromStatfsT(&st)
	return 0
}
