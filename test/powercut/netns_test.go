//go:build powercut

package powercut

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/internal/lazyfs"
)

// The cluster case runs in network namespaces of its own, named
// nsPrefix<pid>-<role>: a hub holding a bridge and the edges, and one per
// NATS node, each joined to the hub by a veth pair. No interface joins
// them to this process's namespace, so nothing sent inside can leave the
// machine, and nothing here sends to their addresses except through
// nsDialer. Addresses: subnet below, hub .1, node i .10+i.
const (
	nsPrefix = "pcut-"
	subnet   = "10.213.7."
)

func nodeAddr(i int) string { return subnet + strconv.Itoa(10+i) }

// ipCmd runs ip(8) with args.
func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// envNoNetns, set to a reason, makes netnsAvailable report namespaces as
// unavailable: how TestRequireNetnsUnderCI shows that newTopology fails
// under CI=true on a machine without them.
const envNoNetns = "DARAJA_POWERCUT_NETNS_UNAVAILABLE"

// probes numbers the namespaces netnsAvailable creates and deletes.
var probes atomic.Int64

// netnsAvailable says why the cluster case cannot build its namespaces.
func netnsAvailable() error {
	if why := os.Getenv(envNoNetns); why != "" {
		return fmt.Errorf("network namespaces unavailable (%s=%s)", envNoNetns, why)
	}
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("no ip(8): %w", err)
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		return fmt.Errorf("no nsenter(1): %w", err)
	}
	probe := fmt.Sprintf("%s%d-probe%d", nsPrefix, os.Getpid(), probes.Add(1))
	if err := ipCmd("netns", "add", probe); err != nil {
		return err
	}
	return ipCmd("netns", "del", probe)
}

// sweepOnce runs sweepStaleNetns once per process: the namespaces of
// this process are its running cases' (they delete their own).
var sweepOnce sync.Once

// sweepStaleNetns deletes namespaces of this prefix whose test process is
// gone (a run killed by its timeout), killing what still runs in them.
func sweepStaleNetns() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		rest, ok := strings.CutPrefix(name, nsPrefix)
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil {
			continue
		}
		if pid == os.Getpid() || processAlive(pid) {
			continue // this run's, or another live run's
		}
		killIn(name)
		_ = ipCmd("netns", "del", name)
	}
}

func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && !strings.HasPrefix(strings.TrimSpace(s[i+1:]), "Z")
}

// killIn kills every process in namespace name.
func killIn(name string) {
	out, _ := exec.Command("ip", "netns", "pids", name).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// topology is the hub and the node namespaces.
type topology struct {
	hub   string
	nodes []string // index 0 is node 1
	hubNS *os.File
}

// requireNetns skips t when network namespaces cannot be built here,
// naming why; with CI=true in the environment it fails t instead, so CI
// cannot pass by skipping.
func requireNetns(t *testing.T) {
	t.Helper()
	if err := netnsAvailable(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true but %v", err)
		}
		t.Skip(err)
	}
}

// newTopology builds the namespaces (named after name, which must be
// unique among the cases running at once) and their links; they are
// deleted when the test ends.
func newTopology(t *testing.T, name string, nodes int) *topology {
	t.Helper()
	sweepOnce.Do(sweepStaleNetns)
	requireNetns(t)
	base := fmt.Sprintf("%s%d-%s-", nsPrefix, os.Getpid(), name)
	topo := &topology{hub: base + "hub"}
	t.Cleanup(func() {
		if topo.hubNS != nil {
			topo.hubNS.Close()
		}
		for _, n := range append([]string{topo.hub}, topo.nodes...) {
			killIn(n)
			_ = ipCmd("netns", "del", n)
		}
	})
	run := func(args ...string) {
		t.Helper()
		if err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	run("netns", "add", topo.hub)
	run("-n", topo.hub, "link", "set", "lo", "up")
	run("-n", topo.hub, "link", "add", "br0", "type", "bridge")
	run("-n", topo.hub, "addr", "add", subnet+"1/24", "dev", "br0")
	run("-n", topo.hub, "link", "set", "br0", "up")
	for i := 1; i <= nodes; i++ {
		ns := fmt.Sprintf("%sn%d", base, i)
		topo.nodes = append(topo.nodes, ns)
		run("netns", "add", ns)
		run("-n", ns, "link", "set", "lo", "up")
		// Created inside the hub, its peer moved straight into the
		// node's namespace: no interface ever exists in ours.
		hubEnd := fmt.Sprintf("vn%d", i)
		run("-n", topo.hub, "link", "add", hubEnd, "type", "veth", "peer", "name", "eth0", "netns", ns)
		run("-n", topo.hub, "link", "set", hubEnd, "master", "br0")
		run("-n", topo.hub, "link", "set", hubEnd, "up")
		run("-n", ns, "addr", "add", nodeAddr(i)+"/24", "dev", "eth0")
		run("-n", ns, "link", "set", "eth0", "up")
	}
	f, err := os.Open(filepath.Join("/run/netns", topo.hub))
	if err != nil {
		t.Fatal(err)
	}
	topo.hubNS = f
	return topo
}

// partition cuts node i (1-based) off the hub, and so from every other
// node and the edges; heal joins it again.
func (topo *topology) partition(t *testing.T, i int) {
	t.Helper()
	if err := ipCmd("-n", topo.hub, "link", "set", fmt.Sprintf("vn%d", i), "down"); err != nil {
		t.Fatal(err)
	}
}

func (topo *topology) heal(t *testing.T, i int) {
	t.Helper()
	if err := ipCmd("-n", topo.hub, "link", "set", fmt.Sprintf("vn%d", i), "up"); err != nil {
		t.Fatal(err)
	}
}

// dial opens a connection inside the hub namespace: the socket is created
// on a thread moved into it, which is moved back before it is released.
// Only loopback and the topology's own subnet are dialled.
func (topo *topology) dial(ctx context.Context, network, laddr, raddr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(raddr)
	if err != nil {
		return nil, err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !(ip.IsLoopback() || strings.HasPrefix(host, subnet)) {
		return nil, fmt.Errorf("powercut: refusing to dial %s from the hub namespace", raddr)
	}
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer self.Close()
		if err := setns(topo.hubNS); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("setns hub: %w", err)}
			return
		}
		d := net.Dialer{Timeout: 5 * time.Second}
		if laddr != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(laddr)}
		}
		c, err := d.DialContext(ctx, network, raddr)
		if serr := setns(self); serr != nil {
			// The thread stays locked and in the hub: it ends with this
			// goroutine rather than serve anything else.
			ch <- result{c, err}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// natsDialer is topo.dial for nats.SetCustomDialer.
type natsDialer struct{ topo *topology }

func (d natsDialer) Dial(network, address string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return d.topo.dial(ctx, network, "", address)
}

// setns moves the calling thread into the network namespace f (setns(2):
// the syscall package does not name it, and golang.org/x/sys is not a
// direct dependency).
func setns(f *os.File) error {
	nr, ok := map[string]uintptr{"amd64": 308, "arm64": 268}[runtime.GOARCH]
	if !ok {
		return syscall.ENOSYS
	}
	_, _, errno := syscall.RawSyscall(nr, f.Fd(), syscall.CLONE_NEWNET, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

// TestHelperRequire is the child process of testRequireUnderCI: it runs
// the check the cases run first (lazyfs.Require, or requireNetns, which
// newTopology runs) and says so if it let it through.
func TestHelperRequire(t *testing.T) {
	switch os.Getenv("DARAJA_POWERCUT_HELPER_REQUIRE") {
	case "fuse":
		lazyfs.Require(t)
	case "netns":
		requireNetns(t)
	default:
		t.Skip("helper process for TestSingleNode/RequireUnderCI")
	}
	fmt.Println("REQUIRE PASSED")
}

// testRequireUnderCI: on a machine without FUSE or without network
// namespaces (forced here through the environment), a power-cut case is
// skipped, naming why; with CI=true it fails, so CI cannot pass by
// skipping.
func testRequireUnderCI(t *testing.T) {
	for _, c := range []struct {
		name, check, env, why string
	}{
		{"no-fuse", "fuse", lazyfs.EnvUnavailable, "no FUSE here"},
		{"no-netns", "netns", envNoNetns, "no netns here"},
	} {
		for _, ci := range []string{"true", ""} {
			t.Run(fmt.Sprintf("%s/CI=%s", c.name, ci), func(t *testing.T) {
				t.Parallel()
				self, err := os.Executable()
				if err != nil {
					t.Fatal(err)
				}
				cmd := exec.Command(self, "-test.run=^TestHelperRequire$", "-test.v", "-test.count=1")
				cmd.Env = append(os.Environ(), "DARAJA_POWERCUT_HELPER_REQUIRE="+c.check, c.env+"="+c.why, "CI="+ci)
				out, err := cmd.CombinedOutput()
				want := "--- SKIP: TestHelperRequire"
				if ci == "true" {
					want = "--- FAIL: TestHelperRequire"
					if err == nil {
						t.Fatalf("CI=true and %s: the check passed:\n%s", c.why, out)
					}
				} else if err != nil {
					t.Fatalf("without CI, %s: %v (want a skip):\n%s", c.why, err, out)
				}
				if !strings.Contains(string(out), want) || !strings.Contains(string(out), c.why) {
					t.Fatalf("want %q naming %q:\n%s", want, c.why, out)
				}
				if strings.Contains(string(out), "REQUIRE PASSED") {
					t.Fatalf("the check let an unusable machine through:\n%s", out)
				}
			})
		}
	}
}
