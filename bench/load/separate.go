package main

import (
	"bufio"
	"bytes"
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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/edge"
)

// runChild is the edge process of the idle and soak scenarios, so its
// memory is measured apart from the load generator's.
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
	srv, err := edge.New(ctx, cfg, nil)
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
	cfg.Log.Level = "error"
	data, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "edge.json")
	if err := os.WriteFile(cfgPath, data, 0o600); err != nil {
		return err
	}
	cmd := exec.Command(os.Args[0], "-child", cfgPath)
	cmd.Stderr = os.Stderr
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
	fmt.Printf("edge pid %d: RSS %d MiB, %d goroutines at rest\n", pid, rssKiB(pid)>>10, goroutines(cfg.Admin.Listen))

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
		if o.rate <= 0 {
			return fmt.Errorf("soak needs -rate")
		}
		n := int(o.duration.Seconds()*o.rate) + 1000
		samples, err := w.issue(n, "soak")
		if err != nil {
			return err
		}
		stop := make(chan struct{})
		done := make(chan *result, 1)
		go func() {
			done <- loadChild(cfg.Listen, w, o, samples, tlsCfg, stop)
		}()
		start := time.Now()
		t := time.NewTicker(o.duration / 10)
		defer t.Stop()
		for i := 0; i < 10; i++ {
			<-t.C
			fmt.Printf("SOAK t=%-6s edge RSS %4d MiB, %5d goroutines\n", time.Since(start).Round(time.Second), rssKiB(pid)>>10, goroutines(cfg.Admin.Listen))
		}
		close(stop)
		res := <-done
		fmt.Println(res)
		return nil
	}
	return nil
}

// loadChild sends samples at o.rate over keep-alive connections until stop.
func loadChild(addr string, w *world, o options, samples []sample, tlsCfg *tls.Config, stop chan struct{}) *result {
	res := &result{name: "soak", errors: map[string]int{}}
	clients := make([]*http.Client, o.conns)
	for i := range clients {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(w.srcs[i%len(w.srcs)])}}
		clients[i] = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, TLSClientConfig: tlsCfg}}
	}
	interval := time.Duration(float64(time.Second) / o.rate)
	start := time.Now()
	sem := make(chan struct{}, o.conns)
	results := make(chan int, o.conns)
	sent := 0
	for i := 0; i < len(samples); i++ {
		select {
		case <-stop:
			i = len(samples)
			continue
		default:
		}
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		sem <- struct{}{}
		sent++
		go func(s sample, c *http.Client) {
			defer func() { <-sem }()
			resp, err := c.Post("https://"+addr+s.kind.Path()+"?t="+s.token, "application/json", bytes.NewReader(s.body))
			if err != nil {
				results <- 0
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			results <- resp.StatusCode
		}(samples[i], clients[i%len(clients)])
		for drained := false; !drained; {
			select {
			case st := <-results:
				res.record(st)
			default:
				drained = true
			}
		}
	}
	for range o.conns {
		sem <- struct{}{}
	}
	close(results)
	for st := range results {
		res.record(st)
	}
	res.sent = sent
	res.elapsed = time.Since(start)
	return res
}

func (r *result) record(status int) {
	if status == http.StatusOK {
		r.ok++
	} else {
		r.errors[strconv.Itoa(status)]++
	}
}
