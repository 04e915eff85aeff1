package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/edge"
)

// runChild is the edge process of the idle, soak and refused scenarios,
// so its memory and CPU are measured apart from the load generator's. It
// logs as in production (JSON, info) to path + ".log".
func runChild(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var cfg config.Config
	if err := json.Unmarshal(data, &cfg); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if prof := os.Getenv("DARAJA_BENCH_CHILD_PROFILE"); prof != "" {
		f, err := os.Create(prof)
		if err != nil {
			return err
		}
		_ = pprof.StartCPUProfile(f)
		defer func() { pprof.StopCPUProfile(); _ = f.Close() }()
	}
	log, closeLog, err := productionLogger(path + ".log")
	if err != nil {
		return err
	}
	defer closeLog()
	srv, err := edge.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// goroutines reads go_goroutines from the edge's /metrics.
func goroutines(admin string) int { return int(metric(admin, "go_goroutines")) }

// metric reads one unlabelled sample from the edge's /metrics.
func metric(admin, name string) float64 {
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			n, _ := strconv.ParseFloat(rest, 64)
			return n
		}
	}
	return -1
}

// runSeparate runs the edge as a child process and measures its RSS and
// goroutines: with many idle keep-alive connections (idle), or over a long
// run at a fixed rate (soak).
func runSeparate(o options) error {
	dir, err := os.MkdirTemp("", "daraja-load-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := config.Default()
	cfg.Listen = freeAddr()
	cfg.TLS.Storage = filepath.Join(dir, "certs")
	cfg.Allowlist.CIDRs = []string{"127.0.0.2/31", "127.0.0.4/30", "127.0.0.8/29"}
	natsAddr := freeAddr()
	cfg.NATS.Embedded = config.Embedded{Listen: natsAddr, StoreDir: filepath.Join(dir, "nats")}
	cfg.Spool.Dir = filepath.Join(dir, "spool")
	cfg.Admin.Listen, cfg.Admin.APIKeys, cfg.Admin.KeyFile = freeAddr(), []string{adminKey}, filepath.Join(dir, "admin.key")
	cfg.Limits.IdleTimeout = 10 * time.Minute // hold idle connections for the measurement
	cfg.Log.Level = "info"
	if o.sync != "" {
		cfg.NATS.Embedded.Sync = o.sync
	}
	if o.scenario == "refused" {
		cfg.Limits.RejectsPerSecond, cfg.Limits.RejectsBurst = 1e9, 1e9 // measure refusals, not the limiter
	}
	if o.scenario == "soak" {
		cfg.Tokens.DefaultTTL = o.ttl
	}
	data, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "edge.json")
	if err := os.WriteFile(cfgPath, data, 0o600); err != nil {
		return err
	}
	cmd := exec.Command(os.Args[0], "-child", cfgPath)
	cmd.Stderr = os.Stderr
	if o.profile != "" {
		// The edge process's whole-run CPU profile.
		cmd.Env = append(os.Environ(), "DARAJA_BENCH_CHILD_PROFILE="+o.profile)
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() }()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get("http://" + cfg.Admin.Listen + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("child edge not ready")
		}
	}
	pid := cmd.Process.Pid
	nc, err := nats.Connect("nats://" + natsAddr)
	if err != nil {
		return err
	}
	defer nc.Close()
	w := &world{nc: nc}
	for i := range o.sources {
		w.srcs = append(w.srcs, "127.0.0."+strconv.Itoa(2+i))
	}
	fmt.Printf("edge pid %d (logging JSON at info to %s.log, nats.embedded.sync %q): RSS %d MiB, %d goroutines at rest\n", pid, cfgPath, cfg.NATS.Embedded.Sync, rssKiB(pid)>>10, goroutines(cfg.Admin.Listen))

	tlsCfg := &tls.Config{InsecureSkipVerify: true} // the child's own self-signed certificate; TLS is not under test here
	switch o.scenario {
	case "idle":
		samples, err := w.issue(o.idle, "idle")
		if err != nil {
			return err
		}
		restRSS := rssKiB(pid)
		var conns []net.Conn
		for i := range o.idle {
			d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(w.srcs[i%len(w.srcs)])}}
			c, err := tls.DialWithDialer(d, "tcp", cfg.Listen, tlsCfg)
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			// One callback, then the connection stays open, idle.
			s := samples[i]
			fmt.Fprintf(c, "POST %s?t=%s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
				s.kind.Path(), s.token, len(s.body), s.body)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				return fmt.Errorf("connection %d: %w", i, err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				return fmt.Errorf("connection %d: status %d", i, resp.StatusCode)
			}
			conns = append(conns, c)
		}
		time.Sleep(3 * time.Second)
		rss := rssKiB(pid)
		heapOpen := metric(cfg.Admin.Listen, "go_memstats_heap_inuse_bytes") + metric(cfg.Admin.Listen, "go_memstats_stack_inuse_bytes")
		fmt.Printf("IDLE %d keep-alive TLS connections, each after one accepted callback: edge RSS %d MiB → %d MiB (+%d MiB), %d goroutines\n",
			len(conns), restRSS>>10, rss>>10, (rss-restRSS)>>10, goroutines(cfg.Admin.Listen))
		for _, c := range conns {
			c.Close()
		}
		// The same edge once the connections are gone: what stays is the
		// callbacks' and tokens' share (JetStream, the token copy).
		time.Sleep(5 * time.Second)
		heapClosed := metric(cfg.Admin.Listen, "go_memstats_heap_inuse_bytes") + metric(cfg.Admin.Listen, "go_memstats_stack_inuse_bytes")
		fmt.Printf("IDLE heap+stack in use with the connections open %d MiB, after closing them %d MiB: %.1f KiB per idle connection, %d MiB for %d\n",
			int64(heapOpen)>>20, int64(heapClosed)>>20, (heapOpen-heapClosed)/1024/float64(len(conns)), int64(heapOpen-heapClosed)>>20, len(conns))
		return nil
	case "soak":
		return soak(o, cfg, pid, w, tlsCfg)
	case "refused":
		return refusedCPU(o, cfg, pid, w, tlsCfg)
	}
	return nil
}
