// Package lazyfs is a FUSE test filesystem that loses what was not synced
// when the power is cut, like Jepsen's LazyFS.
//
// A mount serves a tree held in memory, loaded from a backing directory at
// Mount. Two states are kept: the volatile one, which every reader sees
// (read-your-writes), and the durable one, which is what a disk would hold
// after a power cut. Only these reach the durable state:
//
//   - a file's data, size and permissions: fsync or fdatasync of that file,
//     or a write through a descriptor opened with O_SYNC or O_DSYNC;
//   - a directory's entries (create, mkdir, rename, unlink, rmdir): fsync of
//     that directory, in the default StrictNamespace mode. In
//     JournaledNamespace mode any fsync, of a file or a directory, also
//     commits every namespace change made so far, as ext4's journal does
//     (ext4 with data=ordered commits the running transaction, which holds
//     all metadata changes, on any fsync, and syncs a new file's parent).
//
// Truncation is part of a file's data: it is durable with that file's fsync.
// Nothing is written back in the background: a power cut is assumed to come
// before any writeback, the worst case POSIX allows. Timestamps, owners and
// link counts are not modelled durably.
//
// Crash drops everything unsynced, fails every later operation on the mount
// with EIO, and rewrites the backing directory to hold exactly the durable
// state, so a test can start a new process on it at once (directly, or on a
// new Mount of it). Unmount without Crash is a clean shutdown: everything is
// synced and written to the backing directory. Until Crash or Unmount the
// backing directory is not touched.
//
// Files are opened with FOPEN_DIRECT_IO, so no read is served from the
// kernel's page cache and no write is held there; a shared mmap is
// therefore refused with ENODEV (nats-server v2.15.2 does not use mmap).
// They are also opened with FOPEN_NOFLUSH: close(2) never reaches the
// filesystem (and so never fails, even after Crash), because a FLUSH cannot
// be interrupted and a test process that dies holding a file open on its
// own mount would otherwise hang in exit. Symlinks, hard links, special
// files, xattrs and fallocate are not supported. The whole tree is held in
// memory (copy-on-write in 64 KiB chunks between the volatile and durable
// states), so it suits stores of tens of megabytes, not gigabytes.
//
// Mounting needs Linux, /dev/fuse and root (go-fuse mounts with mount(2)
// directly, no fusermount). Available says why not; Require and MountT turn
// that into a skip, or a failure when CI=true.
package lazyfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// NamespaceMode says when directory changes become durable.
type NamespaceMode int

const (
	// StrictNamespace: a directory's entries are durable only after an
	// fsync of that directory (strict POSIX). A new file fsynced but whose
	// directory never was is lost at a crash.
	StrictNamespace NamespaceMode = iota
	// JournaledNamespace: any fsync or fdatasync, of a file or a directory,
	// makes every namespace change made so far durable (ext4 data=ordered).
	// Other files' data stays volatile; ext4's flush of a file renamed over
	// another (auto_da_alloc) and its 5-second journal commit are not
	// modelled.
	JournaledNamespace
)

func (m NamespaceMode) String() string {
	switch m {
	case StrictNamespace:
		return "strict"
	case JournaledNamespace:
		return "journaled"
	}
	return fmt.Sprintf("NamespaceMode(%d)", int(m))
}

// Options configure a mount.
type Options struct {
	// Namespace chooses when creates, renames and removals become durable.
	// The zero value is StrictNamespace.
	Namespace NamespaceMode
	// Debug logs every FUSE request (go-fuse's own debug output).
	Debug bool
	// IgnoreSync makes the mount a disk that lies about its flushes: fsync,
	// fdatasync and O_SYNC/O_DSYNC writes succeed and are counted, but make
	// nothing durable. Only Sync (or a clean Unmount) does. A control for
	// tests: a program that relies on fsync loses what it wrote at Crash,
	// so a test that expects no loss is shown able to see one.
	IgnoreSync bool
}

// Stats counts what a mount has seen.
type Stats struct {
	Writes     uint64 // write requests
	WriteBytes uint64 // bytes written
	FileSyncs  uint64 // fsync/fdatasync of a regular file
	DirSyncs   uint64 // fsync of a directory
	SyncWrites uint64 // writes through an O_SYNC/O_DSYNC descriptor
	Unlinks    uint64 // files removed with unlink(2)
	Crashed    bool
	// Set by Crash: what it dropped.
	LostFiles int // reachable files with unsynced data
	LostDirs  int // directories with unsynced entries
}

// FS is a mounted lazy filesystem.
type FS struct {
	backing    string
	mountPoint string
	opts       Options
	server     *fuse.Server

	mu        sync.Mutex
	root      *inode
	nextIno   uint64
	dirtyDirs map[*inode]struct{}
	stats     Stats
	crashed   bool // every operation fails with EIO
	closed    bool // unmounted
	written   bool // the backing directory holds the final state
}

// ErrCrashed is returned by Crash when the mount already crashed.
var ErrCrashed = errors.New("lazyfs: already crashed")

// EnvUnavailable, set to a reason in the environment, makes Available
// report lazyfs as unavailable: how a test shows that Require fails under
// CI=true on a machine without FUSE.
const EnvUnavailable = "DARAJA_LAZYFS_UNAVAILABLE"

// Available reports why lazyfs cannot mount on this machine, or nil.
func Available() error {
	if why := os.Getenv(EnvUnavailable); why != "" {
		return fmt.Errorf("lazyfs: unavailable (%s=%s)", EnvUnavailable, why)
	}
	if os.Geteuid() != 0 {
		return errors.New("lazyfs: needs root to mount FUSE with mount(2) (no fusermount)")
	}
	fd, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("lazyfs: no usable /dev/fuse: %w", err)
	}
	fd.Close()
	return nil
}

// Require skips t when lazyfs cannot mount here, naming why; with CI=true
// in the environment it fails t instead, so CI cannot pass by skipping.
func Require(t testing.TB) {
	t.Helper()
	if err := Available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but %v", err)
		}
		t.Skip(err)
	}
}

// MountT mounts a lazy filesystem over backingDir (a new temporary
// directory when empty) at a new temporary mount point, after Require.
// It is unmounted when the test ends.
func MountT(t testing.TB, backingDir string, opts Options) *FS {
	t.Helper()
	Require(t)
	if backingDir == "" {
		backingDir = t.TempDir()
	}
	mnt := t.TempDir() // removed after the unmount below: cleanups run last-in first-out
	f, err := Mount(backingDir, mnt, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := f.Unmount(); err != nil {
			t.Errorf("lazyfs unmount: %v", err)
		}
	})
	return f
}

// Mount loads backingDir into memory and mounts it at mountPoint (an
// existing empty directory). Stale lazyfs mounts left by dead processes are
// lazily unmounted first.
func Mount(backingDir, mountPoint string, opts Options) (*FS, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	sweepStale()
	backingDir, err := filepath.Abs(backingDir)
	if err != nil {
		return nil, fmt.Errorf("lazyfs: backing directory: %w", err)
	}
	mountPoint, err = filepath.Abs(mountPoint)
	if err != nil {
		return nil, fmt.Errorf("lazyfs: mount point: %w", err)
	}
	if within(mountPoint, backingDir) || within(backingDir, mountPoint) {
		return nil, fmt.Errorf("lazyfs: backing directory %s and mount point %s must not contain each other", backingDir, mountPoint)
	}
	f := &FS{backing: backingDir, mountPoint: mountPoint, opts: opts, nextIno: fuse.FUSE_ROOT_ID, dirtyDirs: map[*inode]struct{}{}}
	f.root = f.newInode(true, 0o755)
	if err := f.loadTree(f.root, backingDir); err != nil {
		return nil, fmt.Errorf("lazyfs: load %s: %w", backingDir, err)
	}
	zero := time.Duration(0)
	server, err := fs.Mount(mountPoint, &node{lfs: f, in: f.root}, &fs.Options{
		MountOptions: fuse.MountOptions{
			DirectMountStrict: true,
			FsName:            ownerTag(),
			Name:              fsType,
			DisableXAttrs:     true,
			Debug:             opts.Debug,
		},
		EntryTimeout:    &zero,
		AttrTimeout:     &zero,
		NegativeTimeout: &zero,
		RootStableAttr:  &fs.StableAttr{Ino: f.root.ino, Mode: fuse.S_IFDIR},
	})
	if err != nil {
		return nil, fmt.Errorf("lazyfs: mount %s: %w", mountPoint, err)
	}
	f.server = server
	return f, nil
}

// within says whether p is dir or below it (both absolute and clean).
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// MountPoint is where the filesystem is mounted.
func (f *FS) MountPoint() string { return f.mountPoint }

// BackingDir is the directory that holds the durable state after Crash or
// Unmount.
func (f *FS) BackingDir() string { return f.backing }

// Stats returns the counters so far.
func (f *FS) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

// Sync makes everything durable, as sync(2) does.
func (f *FS) Sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.crashed || f.closed {
		return fmt.Errorf("lazyfs: sync: %w", syscall.EIO)
	}
	f.commitAll(f.root)
	return nil
}

// Crash cuts the power: everything not synced is dropped, every later
// operation on the mount fails with EIO, and the backing directory is
// rewritten to hold exactly what was synced.
func (f *FS) Crash() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.crashed {
		return ErrCrashed
	}
	if f.closed {
		return errors.New("lazyfs: crash after unmount")
	}
	f.crashed, f.stats.Crashed = true, true
	f.stats.LostFiles, f.stats.LostDirs = countDirty(f.root), len(f.dirtyDirs)
	if err := f.materialize(); err != nil {
		return fmt.Errorf("lazyfs: crash: %w", err)
	}
	f.written = true
	return nil
}

func countDirty(d *inode) int {
	n := 0
	for _, child := range d.entries {
		if child.dir {
			n += countDirty(child)
		} else if child.dirty {
			n++
		}
	}
	return n
}

// Unmount unmounts the filesystem. Without a Crash before it, it is a clean
// shutdown: everything is synced and the backing directory holds the final
// state. A mount still in use (open files) is detached lazily. Unmount is
// idempotent.
func (f *FS) Unmount() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	crashed := f.crashed
	f.mu.Unlock()

	var errs []error
	if err := f.server.Unmount(); err != nil {
		// Busy: a process still holds files open. Detach it; the go-fuse loops
		// end when the last descriptor closes, and every request until then
		// fails (EIO), since the mount is closed below.
		if derr := syscall.Unmount(f.mountPoint, syscall.MNT_DETACH); derr != nil {
			errs = append(errs, fmt.Errorf("lazyfs: unmount %s: %w (lazy: %w)", f.mountPoint, err, derr))
		} else if !crashed {
			errs = append(errs, fmt.Errorf("lazyfs: clean unmount of %s while in use (%w): detached, later writes fail", f.mountPoint, err))
		}
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	if !f.written {
		f.commitAll(f.root)
		if err := f.materialize(); err != nil {
			errs = append(errs, fmt.Errorf("lazyfs: unmount: %w", err))
		}
		f.written = true
	}
	return errors.Join(errs...)
}

func (f *FS) newInode(dir bool, perm uint32) *inode {
	now := time.Now()
	in := &inode{ino: f.nextIno, dir: dir, perm: perm & 0o7777, atime: now, mtime: now, ctime: now}
	f.nextIno++
	if dir {
		in.entries, in.durable = map[string]*inode{}, map[string]*inode{}
	} else {
		in.data, in.syncedPerm = &content{}, in.perm
	}
	return in
}

// check says whether the mount still serves operations. f.mu is held.
func (f *FS) check() syscall.Errno {
	if f.crashed || f.closed {
		return syscall.EIO
	}
	return 0
}
