//go:build linux

package edge

import (
	"errors"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSpoolReadOnlyNotReady: the spool directory remounted read-only while
// the edge runs (what a filesystem does after an I/O error, and what stops
// root, unlike a chmod) makes /readyz answer 503 naming the spool; writable
// again, /readyz is green. It needs the right to mount (root in a
// container with CAP_SYS_ADMIN, or a CI runner); without it, it is skipped
// and TestSpoolUnwritableNotReady still covers the check.
func TestSpoolReadOnlyNotReady(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to bind-mount the spool directory read-only")
	}
	h := start(t, nil)
	h.waitReadyz(http.StatusOK, "ready")
	dir := h.cfg.Spool.Dir
	if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
		if errors.Is(err, syscall.EPERM) {
			t.Skipf("bind mount refused: %v", err)
		}
		t.Fatal(err)
	}
	mounted := true
	unmount := func() {
		if mounted {
			if err := syscall.Unmount(dir, 0); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
			}
			mounted = false
		}
	}
	t.Cleanup(unmount)
	// EBUSY while a readiness probe holds a file open for writing: retry.
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err = syscall.Mount("", dir, "", syscall.MS_REMOUNT|syscall.MS_BIND|syscall.MS_RDONLY, ""); !errors.Is(err, syscall.EBUSY) {
			break
		}
	}
	if err != nil {
		t.Fatalf("remount %s read-only: %v", dir, err)
	}
	body := h.waitReadyz(http.StatusServiceUnavailable, "spool directory cannot be written")
	if !strings.Contains(body, "read-only") {
		t.Errorf("/readyz does not say why: %s", body)
	}
	unmount()
	h.waitReadyz(http.StatusOK, "ready")
}
