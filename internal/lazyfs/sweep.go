package lazyfs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// fsType is the FUSE subtype: mounts show as "fuse.lazyfs".
const fsType = "lazyfs"

// ownerTag is the mount source recorded in /proc/self/mountinfo:
// lazyfs:<pid>:<process start time>. It tells a later run whether the
// process that served a mount is gone (a pid alone can be reused).
func ownerTag() string {
	return fmt.Sprintf("%s:%d:%s", fsType, os.Getpid(), startTime(os.Getpid()))
}

// startTime is field 22 of /proc/<pid>/stat, or "" when there is no such
// process or it is a zombie (exited, maybe stuck closing files on its own
// mount).
func startTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// The command name (field 2) may hold spaces; it ends at the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3
	if len(f) < 20 || f[0] == "Z" {
		return ""
	}
	return f[19]
}

// staleMounts lists the mount points of lazyfs mounts whose serving process
// is gone.
func staleMounts() []string {
	fd, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer fd.Close()
	var stale []string
	sc := bufio.NewScanner(fd)
	for sc.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superoptions
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+2 >= len(fields) || fields[sep+1] != "fuse."+fsType {
			continue
		}
		tag := strings.Split(fields[sep+2], ":")
		if len(tag) != 3 || tag[0] != fsType {
			continue
		}
		pid, err := strconv.Atoi(tag[1])
		if err != nil {
			continue
		}
		if st := startTime(pid); st != "" && st == tag[2] {
			continue // its process is alive: not ours to touch
		}
		stale = append(stale, unescapeMountinfo(fields[4]))
	}
	return stale
}

// unescapeMountinfo undoes the octal escapes (\040 for a space, …) of a
// mountinfo path.
func unescapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// sweepStale unmounts lazyfs mounts left by processes that died while
// mounted (a test killed by its timeout): a forced unmount first, which
// aborts the FUSE connection and so frees a process stuck in a request to
// itself, then a lazy one (MNT_DETACH) for a mount still busy. Empty mount
// points are removed. Errors are ignored: a sweep is best effort.
func sweepStale() {
	for _, mp := range staleMounts() {
		_ = syscall.Unmount(mp, syscall.MNT_FORCE)
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err == nil || errors.Is(err, syscall.EINVAL) {
			_ = os.Remove(mp)
		}
	}
}
