package lazyfs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var modes = []NamespaceMode{StrictNamespace, JournaledNamespace}

// syncPath fsyncs the file or directory at p.
func syncPath(t *testing.T, p string) {
	t.Helper()
	fd, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if err := fd.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", p, err)
	}
}

// writeSynced creates p with data and fsyncs it and its directory: durable
// in every mode.
func writeSynced(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	syncPath(t, p)
	syncPath(t, filepath.Dir(p))
}

func crash(t *testing.T, f *FS) {
	t.Helper()
	if err := f.Crash(); err != nil {
		t.Fatal(err)
	}
}

// after reads name from the backing directory after a crash; nil when
// missing.
func after(t *testing.T, f *FS, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.BackingDir(), name))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func exists(t *testing.T, f *FS, name string) bool {
	t.Helper()
	_, err := os.Lstat(filepath.Join(f.BackingDir(), name))
	return err == nil
}

func TestSyncedWriteSurvivesCrash(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			f := MountT(t, "", Options{Namespace: mode})
			data := bytes.Repeat([]byte("0123456789"), 20_000) // 200 kB: several chunks
			writeSynced(t, filepath.Join(f.MountPoint(), "a"), data)
			crash(t, f)
			if got := after(t, f, "a"); !bytes.Equal(got, data) {
				t.Fatalf("after crash: %d bytes, want %d", len(got), len(data))
			}
		})
	}
}

func TestUnsyncedWriteLost(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			f := MountT(t, "", Options{Namespace: mode})
			p := filepath.Join(f.MountPoint(), "a")
			writeSynced(t, p, []byte("version one"))
			if err := os.WriteFile(p, []byte("version two, longer"), 0o644); err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(p); string(got) != "version two, longer" {
				t.Fatalf("before crash read %q", got)
			}
			crash(t, f)
			if got := after(t, f, "a"); string(got) != "version one" {
				t.Fatalf("after crash %q, want the synced version", got)
			}
			if s := f.Stats(); s.LostFiles != 1 {
				t.Fatalf("Stats.LostFiles = %d, want 1", s.LostFiles)
			}
		})
	}
}

func TestUnsyncedAppendLosesOnlyTail(t *testing.T) {
	f := MountT(t, "", Options{})
	p := filepath.Join(f.MountPoint(), "log")
	head := bytes.Repeat([]byte("h"), chunkSize+100) // the tail starts inside a shared chunk
	writeSynced(t, p, head)
	fd, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fd.Write([]byte("tail never synced")); err != nil {
		t.Fatal(err)
	}
	fd.Close()
	if st, _ := os.Stat(p); st.Size() != int64(len(head))+17 {
		t.Fatalf("size before crash %d", st.Size())
	}
	crash(t, f)
	if got := after(t, f, "log"); !bytes.Equal(got, head) {
		t.Fatalf("after crash %d bytes (suffix %q), want the %d synced ones", len(got), got[max(0, len(got)-20):], len(head))
	}
}

func TestUnsyncedOverwriteInPlaceLost(t *testing.T) {
	// The overwrite lands in chunks the synced state shares.
	f := MountT(t, "", Options{})
	p := filepath.Join(f.MountPoint(), "f")
	synced := bytes.Repeat([]byte("s"), 2*chunkSize)
	writeSynced(t, p, synced)
	fd, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if _, err := fd.WriteAt(bytes.Repeat([]byte("u"), 100), chunkSize-50); err != nil {
		t.Fatal(err)
	}
	crash(t, f)
	if got := after(t, f, "f"); !bytes.Equal(got, synced) {
		t.Fatalf("after crash the unsynced overwrite is on disk: %d bytes, %d of them 'u'", len(got), bytes.Count(got, []byte("u")))
	}
}

func TestOSyncWriteSurvives(t *testing.T) {
	f := MountT(t, "", Options{})
	p := filepath.Join(f.MountPoint(), "a")
	writeSynced(t, p, nil)
	fd, err := os.OpenFile(p, os.O_WRONLY|os.O_SYNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fd.Write([]byte("o_sync data")); err != nil {
		t.Fatal(err)
	}
	crash(t, f)
	fd.Close()
	if got := after(t, f, "a"); string(got) != "o_sync data" {
		t.Fatalf("after crash %q", got)
	}
	if s := f.Stats(); s.SyncWrites != 1 {
		t.Fatalf("Stats.SyncWrites = %d", s.SyncWrites)
	}
}

func TestCreateNeedsDirectorySync(t *testing.T) {
	for _, tc := range []struct {
		mode NamespaceMode
		want string // "" = file lost
	}{
		{StrictNamespace, ""},
		{JournaledNamespace, "data"},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			f := MountT(t, "", Options{Namespace: tc.mode})
			if err := os.Mkdir(filepath.Join(f.MountPoint(), "d"), 0o755); err != nil {
				t.Fatal(err)
			}
			syncPath(t, f.MountPoint())
			p := filepath.Join(f.MountPoint(), "d", "new")
			if err := os.WriteFile(p, []byte("data"), 0o644); err != nil {
				t.Fatal(err)
			}
			syncPath(t, p) // the file, not its directory
			crash(t, f)
			if got := after(t, f, "d/new"); string(got) != tc.want {
				t.Fatalf("after crash %q, want %q", got, tc.want)
			}
			if !exists(t, f, "d") {
				t.Fatal("directory d, synced in the root, is gone")
			}
		})
	}
}

func TestSyncedFileInUnsyncedDirectoryKeepsData(t *testing.T) {
	// The directory fsync comes after the file's: the file is there, with
	// the data synced before.
	f := MountT(t, "", Options{})
	p := filepath.Join(f.MountPoint(), "a")
	if err := os.WriteFile(p, []byte("early"), 0o644); err != nil {
		t.Fatal(err)
	}
	syncPath(t, p)
	syncPath(t, f.MountPoint())
	crash(t, f)
	if got := after(t, f, "a"); string(got) != "early" {
		t.Fatalf("after crash %q", got)
	}
}

func TestRenameNeedsDirectorySync(t *testing.T) {
	for _, tc := range []struct {
		mode    NamespaceMode
		syncDir bool
		old     string // content under the old name after the crash
		new     string // under the new name
	}{
		{StrictNamespace, false, "v2", ""},
		{StrictNamespace, true, "", "v2"},
		{JournaledNamespace, false, "", "v2"},
	} {
		t.Run(fmt.Sprintf("%s/dirsync=%v", tc.mode, tc.syncDir), func(t *testing.T) {
			f := MountT(t, "", Options{Namespace: tc.mode})
			mnt := f.MountPoint()
			writeSynced(t, filepath.Join(mnt, "a"), []byte("v1"))
			p := filepath.Join(mnt, "a")
			if err := os.WriteFile(p, []byte("v2"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(p, filepath.Join(mnt, "b")); err != nil {
				t.Fatal(err)
			}
			syncPath(t, filepath.Join(mnt, "b")) // data durable, whatever its name
			if tc.syncDir {
				syncPath(t, mnt)
			}
			crash(t, f)
			if got := after(t, f, "a"); string(got) != tc.old {
				t.Fatalf("old name after crash %q, want %q", got, tc.old)
			}
			if got := after(t, f, "b"); string(got) != tc.new {
				t.Fatalf("new name after crash %q, want %q", got, tc.new)
			}
		})
	}
}

func TestRemovalsNeedDirectorySync(t *testing.T) {
	f := MountT(t, "", Options{})
	mnt := f.MountPoint()
	writeSynced(t, filepath.Join(mnt, "file"), []byte("kept"))
	if err := os.Mkdir(filepath.Join(mnt, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	syncPath(t, mnt)
	if err := os.Remove(filepath.Join(mnt, "file")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(mnt, "dir")); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(mnt); len(ents) != 0 {
		t.Fatalf("entries before crash: %v", ents)
	}
	crash(t, f)
	if got := after(t, f, "file"); string(got) != "kept" {
		t.Fatalf("unlinked file after crash %q, want it back", got)
	}
	if !exists(t, f, "dir") {
		t.Fatal("removed directory not back after crash")
	}
}

func TestReadYourWrites(t *testing.T) {
	f := MountT(t, "", Options{})
	mnt := f.MountPoint()
	if err := os.MkdirAll(filepath.Join(mnt, "x", "y"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(mnt, "x", "y", "f")
	fd, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if _, err := fd.WriteAt([]byte("world"), 6); err != nil {
		t.Fatal(err)
	}
	if _, err := fd.WriteAt([]byte("hello"), 0); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil || string(got) != "hello\x00world" {
		t.Fatalf("read %q, %v", got, err)
	}
	ents, err := os.ReadDir(filepath.Join(mnt, "x", "y"))
	if err != nil || len(ents) != 1 || ents[0].Name() != "f" {
		t.Fatalf("readdir %v, %v", ents, err)
	}
	if st, err := fd.Stat(); err != nil || st.Size() != 11 {
		t.Fatalf("stat %v, %v", st, err)
	}
	crash(t, f)
	if exists(t, f, "x") {
		t.Fatal("nothing was synced, yet x survived")
	}
}

func TestTruncate(t *testing.T) {
	f := MountT(t, "", Options{})
	p := filepath.Join(f.MountPoint(), "t")
	data := bytes.Repeat([]byte{0xaa}, chunkSize+5000)
	writeSynced(t, p, data)

	// Shrink then grow again: the regrown bytes read as zeros.
	if err := os.Truncate(p, 10); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 20); err != nil {
		t.Fatal(err)
	}
	want := append(bytes.Repeat([]byte{0xaa}, 10), make([]byte, 10)...)
	if got, _ := os.ReadFile(p); !bytes.Equal(got, want) {
		t.Fatalf("after shrink and grow %x", got)
	}
	// Shrink an unsynced chunk, then write past the end: the gap reads as
	// zeros, not as the bytes cut off.
	u := filepath.Join(f.MountPoint(), "u")
	if err := os.WriteFile(u, bytes.Repeat([]byte{0xbb}, 100), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(u, 10); err != nil {
		t.Fatal(err)
	}
	ufd, err := os.OpenFile(u, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ufd.WriteAt([]byte{1}, 50); err != nil {
		t.Fatal(err)
	}
	ufd.Close()
	want = append(append(bytes.Repeat([]byte{0xbb}, 10), make([]byte, 40)...), 1)
	if got, _ := os.ReadFile(u); !bytes.Equal(got, want) {
		t.Fatalf("shrunk then written past the end: %x", got)
	}
	// O_TRUNC is a truncation too.
	q := filepath.Join(f.MountPoint(), "q")
	writeSynced(t, q, []byte("synced"))
	if err := os.WriteFile(q, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(q); string(got) != "x" {
		t.Fatalf("after O_TRUNC and a write: %q", got)
	}
	crash(t, f)
	if got := after(t, f, "t"); !bytes.Equal(got, data) {
		t.Fatalf("unsynced truncation reached the disk: %d bytes", len(got))
	}
	if got := after(t, f, "q"); string(got) != "synced" {
		t.Fatalf("unsynced O_TRUNC reached the disk: %q", got)
	}
}

func TestSyncedTruncateSurvives(t *testing.T) {
	f := MountT(t, "", Options{})
	p := filepath.Join(f.MountPoint(), "t")
	writeSynced(t, p, bytes.Repeat([]byte{1}, 3*chunkSize))
	fd, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if err := fd.Truncate(chunkSize + 7); err != nil {
		t.Fatal(err)
	}
	if err := fd.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := fd.Truncate(2 * chunkSize); err != nil { // unsynced regrowth
		t.Fatal(err)
	}
	crash(t, f)
	if got := after(t, f, "t"); !bytes.Equal(got, bytes.Repeat([]byte{1}, chunkSize+7)) {
		t.Fatalf("after crash %d bytes, want %d", len(got), chunkSize+7)
	}
}

func TestEveryOperationFailsAfterCrash(t *testing.T) {
	f := MountT(t, "", Options{})
	mnt := f.MountPoint()
	p := filepath.Join(mnt, "a")
	writeSynced(t, p, []byte("data"))
	if err := os.Mkdir(filepath.Join(mnt, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	open, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	crash(t, f)
	if err := f.Crash(); !errors.Is(err, ErrCrashed) {
		t.Fatalf("second Crash: %v", err)
	}
	ops := []struct {
		name string
		op   func() error
	}{
		{"open", func() error { _, err := os.Open(p); return err }},
		{"create", func() error { _, err := os.Create(filepath.Join(mnt, "new")); return err }},
		{"stat", func() error { _, err := os.Stat(p); return err }},
		{"fstat", func() error { _, err := open.Stat(); return err }},
		{"read", func() error { _, err := open.ReadAt(make([]byte, 4), 0); return err }},
		{"write", func() error { _, err := open.WriteAt([]byte("x"), 0); return err }},
		{"fsync", open.Sync},
		{"ftruncate", func() error { return open.Truncate(0) }},
		{"readdir", func() error { _, err := dir.ReadDir(-1); return err }},
		{"dir fsync", dir.Sync},
		{"mkdir", func() error { return os.Mkdir(filepath.Join(mnt, "e"), 0o755) }},
		{"rename", func() error { return os.Rename(p, filepath.Join(mnt, "b")) }},
		{"unlink", func() error { return os.Remove(p) }},
		{"rmdir", func() error { return os.Remove(filepath.Join(mnt, "d")) }},
		{"chmod", func() error { return os.Chmod(p, 0o600) }},
		{"statfs", func() error { var st syscall.Statfs_t; return syscall.Statfs(mnt, &st) }},
	}
	for _, o := range ops {
		if err := o.op(); !errors.Is(err, syscall.EIO) {
			t.Errorf("%s after crash: %v, want EIO", o.name, err)
		}
	}
	dir.Close()
	if err := open.Close(); err != nil { // FOPEN_NOFLUSH: close never reaches the filesystem
		t.Errorf("close after crash: %v", err)
	}
	if got := after(t, f, "a"); string(got) != "data" {
		t.Fatalf("backing file after crash %q", got)
	}
}

func TestSharedMmapRefused(t *testing.T) {
	// A shared mapping would write behind the model's back; FOPEN_DIRECT_IO
	// makes the kernel refuse it.
	f := MountT(t, "", Options{})
	p := filepath.Join(f.MountPoint(), "m")
	writeSynced(t, p, make([]byte, 4096))
	fd, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	b, err := syscall.Mmap(int(fd.Fd()), 0, 4096, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err == nil {
		_ = syscall.Munmap(b)
		t.Fatal("shared writable mmap accepted")
	}
	if !errors.Is(err, syscall.ENODEV) {
		t.Fatalf("mmap: %v, want ENODEV", err)
	}
}

func TestMountRefusesNesting(t *testing.T) {
	Require(t)
	backing := t.TempDir()
	inside := filepath.Join(backing, "mnt")
	if err := os.Mkdir(inside, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ backing, mnt string }{
		{backing, inside},
		{inside, backing},
		{backing, backing},
	} {
		if f, err := Mount(tc.backing, tc.mnt, Options{}); err == nil {
			f.Unmount()
			t.Errorf("Mount(%s, %s) accepted", tc.backing, tc.mnt)
		}
	}
}

func TestConcurrentWriters(t *testing.T) {
	f := MountT(t, "", Options{Namespace: JournaledNamespace})
	mnt := f.MountPoint()
	shared := filepath.Join(mnt, "shared")
	writeSynced(t, shared, nil)
	const writers, rounds, size = 8, 40, 1000
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			errs <- func() error {
				own, err := os.Create(filepath.Join(mnt, fmt.Sprintf("w%d", w)))
				if err != nil {
					return err
				}
				defer own.Close()
				sh, err := os.OpenFile(shared, os.O_WRONLY, 0)
				if err != nil {
					return err
				}
				defer sh.Close()
				rec := bytes.Repeat([]byte{byte('a' + w)}, size)
				for r := range rounds {
					if _, err := own.Write(rec); err != nil {
						return err
					}
					if _, err := sh.WriteAt(rec, int64((r*writers+w)*size)); err != nil {
						return err
					}
					if r%4 == 0 {
						if err := own.Sync(); err != nil {
							return err
						}
						if err := sh.Sync(); err != nil {
							return err
						}
					}
				}
				if err := own.Sync(); err != nil {
					return err
				}
				return sh.Sync()
			}()
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	crash(t, f)
	sh := after(t, f, "shared")
	if len(sh) != writers*rounds*size {
		t.Fatalf("shared file %d bytes after crash, want %d", len(sh), writers*rounds*size)
	}
	for w := range writers {
		own := after(t, f, fmt.Sprintf("w%d", w))
		if !bytes.Equal(own, bytes.Repeat([]byte{byte('a' + w)}, rounds*size)) {
			t.Errorf("writer %d: %d bytes after crash", w, len(own))
		}
		for r := range rounds {
			off := (r*writers + w) * size
			if !bytes.Equal(sh[off:off+size], bytes.Repeat([]byte{byte('a' + w)}, size)) {
				t.Fatalf("shared record of writer %d round %d damaged", w, r)
			}
		}
	}
}

func TestCleanUnmountKeepsEverythingAndRemounts(t *testing.T) {
	Require(t)
	backing := t.TempDir()
	f, err := Mount(backing, t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	mnt := f.MountPoint()
	if err := os.MkdirAll(filepath.Join(mnt, "a", "b"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "a", "b", "f"), []byte("never synced"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := f.Unmount(); err != nil {
		t.Fatal(err)
	}
	if err := f.Unmount(); err != nil {
		t.Fatalf("second Unmount: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(backing, "a", "b", "f")); string(got) != "never synced" {
		t.Fatalf("after a clean unmount: %q, %v", got, err)
	}
	if st, _ := os.Stat(filepath.Join(backing, "a", "b", "f")); st.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v", st.Mode())
	}

	// A new mount of the same backing directory starts from it, and its
	// content counts as synced.
	g := MountT(t, backing, Options{})
	p := filepath.Join(g.MountPoint(), "a", "b", "f")
	if got, err := os.ReadFile(p); string(got) != "never synced" {
		t.Fatalf("remounted: %q, %v", got, err)
	}
	if err := os.WriteFile(p, []byte("lost"), 0o640); err != nil {
		t.Fatal(err)
	}
	crash(t, g)
	if got := after(t, g, "a/b/f"); string(got) != "never synced" {
		t.Fatalf("after crash of the remount: %q", got)
	}
}

func TestUnmountAfterCrashWhileFilesOpen(t *testing.T) {
	Require(t)
	f, err := Mount(t.TempDir(), t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	fd, err := os.Create(filepath.Join(f.MountPoint(), "held"))
	if err != nil {
		t.Fatal(err)
	}
	crash(t, f)
	if err := f.Unmount(); err != nil { // busy: detached lazily
		t.Fatal(err)
	}
	if slices.Contains(mountPoints(t), f.MountPoint()) {
		t.Fatal("still mounted after Unmount")
	}
	if _, err := fd.Write([]byte("x")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write on a held descriptor after Unmount: %v", err)
	}
	fd.Close()
}

func mountPoints(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var mps []string
	for line := range bytes.Lines(b) {
		if fields := bytes.Fields(line); len(fields) > 4 {
			mps = append(mps, unescapeMountinfo(string(fields[4])))
		}
	}
	return mps
}

// TestHelperMountAndHang is the child process of the tests below: it
// mounts at $LAZYFS_HELPER_MOUNT and waits to be killed, or with
// $LAZYFS_HELPER_EXIT set, exits at once holding a file on the mount open,
// as a test killed by its timeout does.
func TestHelperMountAndHang(t *testing.T) {
	mnt := os.Getenv("LAZYFS_HELPER_MOUNT")
	if mnt == "" {
		t.Skip("helper process for TestStaleMountSwept")
	}
	if _, err := Mount(t.TempDir(), mnt, Options{}); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("LAZYFS_HELPER_EXIT") != "" {
		fd, err := os.Create(filepath.Join(mnt, "held"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fd.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		os.Exit(3)
	}
	fmt.Println("mounted")
	time.Sleep(time.Minute)
}

// helper starts TestHelperMountAndHang with a mount point whose name holds
// a space (mountinfo escapes it); it is killed when the test ends.
func helper(t *testing.T, env ...string) (cmd *exec.Cmd, mnt string) {
	t.Helper()
	mnt = filepath.Join(t.TempDir(), "stale mount")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(os.Args[0], "-test.run=^TestHelperMountAndHang$", "-test.v")
	cmd.Env = append(append(os.Environ(), "LAZYFS_HELPER_MOUNT="+mnt), env...)
	return cmd, mnt
}

func TestProcessDyingWithAFileOpenExits(t *testing.T) {
	Require(t)
	cmd, mnt := helper(t, "LAZYFS_HELPER_EXIT=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second): // a hang, not a slow exit
		_ = syscall.Unmount(mnt, syscall.MNT_FORCE) // aborts the connection: frees the child
		<-done
		t.Fatal("a process that died holding a file open on its own mount hung in exit")
	}
	if slices.Contains(mountPoints(t), mnt) {
		sweepStale()
	}
	if slices.Contains(mountPoints(t), mnt) {
		t.Fatal("stale mount not swept")
	}
}

func TestStaleMountSwept(t *testing.T) {
	Require(t)
	cmd, mnt := helper(t)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait(); sweepStale() })
	buf := make([]byte, 4096)
	var seen []byte
	for !bytes.Contains(seen, []byte("mounted")) {
		n, err := out.Read(buf)
		seen = append(seen, buf[:n]...)
		if err != nil {
			t.Fatalf("helper ended before mounting: %v: %s", err, seen)
		}
	}
	if !slices.Contains(mountPoints(t), mnt) {
		t.Fatal("helper says mounted, mountinfo disagrees")
	}
	if slices.Contains(staleMounts(), mnt) {
		t.Fatal("a mount whose process lives was taken as stale")
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	if !slices.Contains(mountPoints(t), mnt) {
		t.Fatal("the mount went away with its process: nothing to sweep")
	}
	sweepStale()
	if slices.Contains(mountPoints(t), mnt) {
		t.Fatal("stale mount not swept")
	}
}

// TestIgnoreSyncLoses: on a mount that lies about its flushes, a file
// written and fsynced (and its directory fsynced, and a write through
// O_SYNC) is lost at a crash, in both modes; Sync still makes things
// durable.
func TestIgnoreSyncLoses(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			f := MountT(t, "", Options{Namespace: mode, IgnoreSync: true})
			writeSynced(t, filepath.Join(f.MountPoint(), "base"), []byte("made durable by Sync"))
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			writeSynced(t, filepath.Join(f.MountPoint(), "base"), []byte("fsynced, not durable"))
			writeSynced(t, filepath.Join(f.MountPoint(), "new"), []byte("fsynced, not durable"))
			fd, err := os.OpenFile(filepath.Join(f.MountPoint(), "osync"), os.O_CREATE|os.O_WRONLY|os.O_SYNC, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := fd.Write([]byte("O_SYNC, not durable")); err != nil {
				t.Fatal(err)
			}
			fd.Close()
			syncPath(t, f.MountPoint())
			st := f.Stats()
			if st.FileSyncs < 2 || st.DirSyncs < 3 || st.SyncWrites != 1 {
				t.Errorf("syncs not counted: %+v", st)
			}
			crash(t, f)
			if got := string(after(t, f, "base")); got != "made durable by Sync" {
				t.Errorf("base after crash: %q", got)
			}
			for _, name := range []string{"new", "osync"} {
				if exists(t, f, name) {
					t.Errorf("%s survived the crash on a mount that ignores fsync", name)
				}
			}
		})
	}
}

// TestUnlinksCounted: Stats.Unlinks counts unlink(2), not rmdir or
// rename.
func TestUnlinksCounted(t *testing.T) {
	f := MountT(t, "", Options{})
	m := f.MountPoint()
	for _, name := range []string{"a", "b", "c"} {
		if err := os.WriteFile(filepath.Join(m, name), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(m, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(m, "c"), filepath.Join(m, "c2")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b", "d"} {
		if err := os.Remove(filepath.Join(m, name)); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.Stats().Unlinks; n != 2 {
		t.Fatalf("Stats.Unlinks = %d, want 2", n)
	}
}

// TestHelperRequire is the child process of TestRequireUnderCI: it calls
// Require and says so if Require let it through.
func TestHelperRequire(t *testing.T) {
	if os.Getenv("LAZYFS_HELPER_REQUIRE") == "" {
		t.Skip("helper process for TestRequireUnderCI")
	}
	Require(t)
	fmt.Println("REQUIRE PASSED")
}

// TestRequireUnderCI: on a machine without lazyfs (forced here through
// EnvUnavailable), Require skips a test, naming why; with CI=true it fails
// it, so CI cannot pass by skipping.
func TestRequireUnderCI(t *testing.T) {
	run := func(env ...string) (string, error) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperRequire$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), append([]string{"LAZYFS_HELPER_REQUIRE=1"}, env...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, c := range []struct {
		name     string
		env      []string
		wantFail bool
		want     string
	}{
		{"unavailable, CI=true: fails", []string{EnvUnavailable + "=no FUSE here", "CI=true"}, true, "--- FAIL: TestHelperRequire"},
		{"unavailable, no CI: skips", []string{EnvUnavailable + "=no FUSE here", "CI="}, false, "--- SKIP: TestHelperRequire"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := run(c.env...)
			if (err != nil) != c.wantFail {
				t.Fatalf("exit error %v, want failure %t:\n%s", err, c.wantFail, out)
			}
			if !strings.Contains(out, c.want) || !strings.Contains(out, "no FUSE here") {
				t.Fatalf("want %q and the reason in the output:\n%s", c.want, out)
			}
			if strings.Contains(out, "REQUIRE PASSED") {
				t.Fatalf("Require let an unavailable lazyfs through:\n%s", out)
			}
		})
	}
	if Available() == nil {
		t.Run("available, CI=true: passes", func(t *testing.T) {
			out, err := run("CI=true")
			if err != nil || !strings.Contains(out, "REQUIRE PASSED") {
				t.Fatalf("Require on a machine with lazyfs: %v\n%s", err, out)
			}
		})
	}
}
