//go:build powercut

// Package powercut cuts the power under a running daraja-edge: its data
// directory on a lazy filesystem (internal/lazyfs) that drops whatever was
// not fsynced, the edge in a child process of this test binary killed with
// SIGKILL at the moment of the cut, then a new edge started on what
// survived. Every callback the edge answered 200 must be on the stream
// exactly once, every token whose callback got 200 must read consumed by
// that transaction, and every other token must still read issued, so
// Daraja's retry lands. Each case has a control that must lose (NATS
// syncing on an interval, a disk that ignores fsync), so the test is shown
// able to see a loss. The cases:
//
//   - TestSingleNode/EmbeddedMidLoad: embedded NATS, cut mid-load (and
//     missing-callback events across the cut); control: sync 2m.
//   - TestSingleNode/FirstStart: cut within a second of a first start;
//     control: sync 2m.
//   - TestSingleNode/SpoolMidLoad: NATS down, callbacks spooled, cut;
//     control: the spool on a disk that ignores fsync.
//   - TestSingleNode/SpoolReplayCut: cut under the spool and NATS while the
//     spool is replayed; control: a NATS that acks before its fsync, so the
//     replay deletes what is not yet durable.
//   - TestSingleNode/ACMECertificate: an ACME certificate in NATS storage
//     (Pebble); control: sync 2m.
//   - TestCluster: an R3 cluster in network namespaces, one node cut, the
//     leader partitioned and healed, all three cut; TestClusterControl:
//     nodes that sync every 2 minutes, all three cut.
//
// Each case prints
//
//	POWERCUT <case> answered=N stored=N lost=N duplicated=N
//
// answered: callbacks answered 200 before the cut; stored: callback
// messages on <prefix>.cb.> after recovery, before any retry; lost:
// callbacks answered 200 that are not there; duplicated: extra copies of a
// transaction (the same Daraja-Transaction-Id stored more than once, under
// one Nats-Msg-Id or several). The ACME case prints its orders and whether
// the certificate survived instead.
//
// It needs Linux, root and /dev/fuse (and ip netns for the cluster case);
// without them it skips, except with CI=true, where a skip is a failure
// (TestSingleNode/RequireUnderCI shows both). The whole suite takes about
// a minute on two cores: the cases run four at a time (defaultParallel),
// and TestCluster has a deadline of its own.
//
// Run with: go test -race -count=1 -timeout 6m -tags powercut -v ./test/powercut
//
// TestMeasureSync (DARAJA_POWERCUT_MEASURE=1, without -race) measures what
// nats.embedded.sync costs instead.
package powercut

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/daraja-edge/daraja-edge/certs"
	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/edge"
	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/daraja-edge/daraja-edge/verify"
)

const (
	// source is the allowlisted loopback address callbacks come from.
	source   = "127.0.0.2"
	adminKey = "powercut-admin-key-0123456789"
	shortID  = "174379"
	// Environment of a child process (see TestMain).
	envRole = "DARAJA_POWERCUT_ROLE"
	envArg  = "DARAJA_POWERCUT_ARG"
)

// defaultParallel is how many cases run at once unless -test.parallel is
// given: the two cluster cases (top-level tests of their own, so they
// start at once, see TestSingleNode) and two single-node cases. They spend
// most of their time waiting on child processes (edges, NATS nodes,
// elections); with two at a time (GOMAXPROCS on a two-core machine) the
// suite would not end within two minutes.
const defaultParallel = 4

// TestMain doubles as the child processes: an edge (role "edge", argument
// a YAML config file) and a nats-server cluster node (role "nats", a JSON
// options file).
func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "edge":
		os.Exit(runChildEdge(os.Getenv(envArg)))
	case "nats":
		os.Exit(runChildNATS(os.Getenv(envArg)))
	}
	flag.Parse()
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if !given && runtime.GOMAXPROCS(0) < defaultParallel {
		_ = flag.Set("test.parallel", strconv.Itoa(defaultParallel))
	}
	os.Exit(m.Run())
}

// TestSingleNode runs the cases with one edge (and one NATS server, or its
// own embedded one), each case and each of its variants in parallel. They
// are grouped under one top-level test so that there are only three at the
// top (this one and the two cluster cases) and all three start at once
// with -test.parallel 3 or more: the order in which Go starts parallel
// tests is not the order they are declared in, and the longest case, the
// cluster's, started last would take the suite past two minutes.
func TestSingleNode(t *testing.T) {
	t.Parallel()
	// Its subtests wait for a free slot as soon as this function returns,
	// and could take the slots before a cluster case has taken its own;
	// they also start after the cluster is up (see clusterUp).
	waitClusterCases(40 * time.Second)
	for _, c := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"EmbeddedMidLoad", testEmbeddedMidLoad},
		{"SpoolReplayCut", testSpoolReplayCut},
		{"SpoolMidLoad", testSpoolMidLoad},
		{"FirstStart", testFirstStart},
		{"ACMECertificate", testACMECertificate},
		{"RequireUnderCI", testRequireUnderCI},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			c.run(t)
		})
	}
}

// clusterCases counts the cluster cases that have started (holding their
// parallel slot).
var clusterCases = make(chan struct{}, 2)

// clusterCaseStarted is called by each cluster case once it runs.
func clusterCaseStarted() { clusterCases <- struct{}{} }

// clusterUp is closed once TestCluster's cluster and edges are up (or the
// case has ended): the single-node cases start then, so that the longest
// case starts its nodes and edges on a machine not yet busy with theirs.
var (
	clusterUp     = make(chan struct{})
	clusterUpOnce sync.Once
)

func markClusterUp() { clusterUpOnce.Do(func() { close(clusterUp) }) }

// waitClusterCases waits until both cluster cases have started and
// TestCluster's cluster is up, if -test.run selects TestCluster at all,
// for at most d.
func waitClusterCases(d time.Duration) {
	if !selected("TestCluster") {
		return
	}
	timeout := time.After(d)
	for range cap(clusterCases) {
		select {
		case <-clusterCases:
		case <-timeout:
			return
		}
	}
	select {
	case <-clusterUp:
	case <-timeout:
	}
}

// selected says whether the top-level test name matches -test.run's first
// element (and not -test.skip's), as go test matches it.
func selected(name string) bool {
	match := func(flagName string) (bool, bool) {
		f := flag.Lookup(flagName)
		if f == nil || f.Value.String() == "" {
			return false, false
		}
		first, _, _ := strings.Cut(f.Value.String(), "/")
		ok, err := regexp.MatchString(first, name)
		return ok, err == nil
	}
	if skip, valid := match("test.skip"); valid && skip {
		return false
	}
	if run, valid := match("test.run"); valid {
		return run
	}
	return true
}

// runChildEdge runs an edge on the config file at path, loaded as serve
// loads it, until SIGTERM (or SIGKILL).
func runChildEdge(path string) int {
	cfg, err := config.LoadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child edge:", err)
		return 1
	}
	zc := zap.NewProductionConfig()
	zc.OutputPaths, zc.ErrorOutputPaths = []string{"stderr"}, []string{"stderr"}
	log, err := zc.Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	srv, err := edge.New(ctx, cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child edge:", err)
		return 1
	}
	if err := srv.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "child edge:", err)
		return 1
	}
	return 0
}

// tlsFiles is a self-signed certificate for the edges, in PEM files, and
// the pool that trusts it: callbacks go over verified TLS.
type tlsFiles struct {
	cert, key string
	roots     *x509.CertPool
}

func makeTLS(t *testing.T, hosts ...string) tlsFiles {
	t.Helper()
	c, err := certs.SelfSigned(append([]string{"localhost", "127.0.0.1"}, hosts...), 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	f := tlsFiles{cert: filepath.Join(dir, "cert.pem"), key: filepath.Join(dir, "key.pem"), roots: x509.NewCertPool()}
	if err := os.WriteFile(f.cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	f.roots.AddCert(leaf)
	return f
}

// edgeConf is what a test sets in an edge's config file.
type edgeConf struct {
	public, admin string // host:port; port 0 picks one
	embedded      string // embedded NATS listen (with natsURL "")
	natsURL       string // remote NATS; "" embeds
	storeDir      string
	spoolDir      string
	sync          string // nats.embedded.sync; "" is the default (always)
	replicas      int
	tls           tlsFiles
	certStorage   string    // tls.storage: a directory, or "nats"
	dataDir       string    // the admin key file's directory ("": certStorage)
	acme          *acmeConf // tls.mode acme instead of files
}

// acmeConf is tls.acme for an edge in acme mode.
type acmeConf struct {
	domain, directory, caRoot, httpListen string
}

// yaml renders c as the operator would write it.
func (c edgeConf) yaml() []byte {
	var b strings.Builder
	q := func(s string) string { return strconv.Quote(s) }
	if c.acme != nil {
		fmt.Fprintf(&b, "public_url: %s\nlisten: %s\n", q("https://"+c.acme.domain), q(c.public))
		fmt.Fprintf(&b, "tls:\n  mode: acme\n  storage: %s\n  acme:\n    domains: [%s]\n    email: %s\n    directory: %s\n    ca_root: %s\n    http_listen: %s\n",
			q(c.certStorage), q(c.acme.domain), q("ops@edge.test"), q(c.acme.directory), q(c.acme.caRoot), q(c.acme.httpListen))
	} else {
		fmt.Fprintf(&b, "public_url: %s\nlisten: %s\n", q("https://localhost:8443"), q(c.public))
		fmt.Fprintf(&b, "tls:\n  mode: files\n  cert_file: %s\n  key_file: %s\n  storage: %s\n", q(c.tls.cert), q(c.tls.key), q(c.certStorage))
	}
	fmt.Fprintf(&b, "allowlist:\n  mode: enforce\n  presets: []\n  cidrs: [%s]\n", q(source+"/32"))
	fmt.Fprintf(&b, "nats:\n")
	if c.natsURL != "" {
		fmt.Fprintf(&b, "  url: %s\n", q(c.natsURL))
	}
	fmt.Fprintf(&b, "  embedded:\n    listen: %s\n    store_dir: %s\n", q(c.embedded), q(c.storeDir))
	if c.sync != "" {
		fmt.Fprintf(&b, "    sync: %s\n", q(c.sync))
	}
	if c.replicas > 0 {
		fmt.Fprintf(&b, "  stream:\n    replicas: %d\n", c.replicas)
	}
	fmt.Fprintf(&b, "spool:\n  dir: %s\n", q(c.spoolDir))
	dataDir := c.dataDir
	if dataDir == "" {
		dataDir = c.certStorage
	}
	fmt.Fprintf(&b, "admin:\n  listen: %s\n  api_keys: [%s]\n  key_file: %s\n  auth_failures_per_second: 1000\n",
		q(c.admin), q(adminKey), q(filepath.Join(dataDir, "admin.key")))
	fmt.Fprintf(&b, "log:\n  level: info\n")
	return []byte(b.String())
}

// writeConf writes c to a new file and checks that it loads.
func writeConf(t *testing.T, c edgeConf) (string, config.Config) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "edge.yaml")
	if err := os.WriteFile(path, c.yaml(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.LoadFile(path)
	if err != nil {
		t.Fatalf("config %s:\n%s\n%v", path, c.yaml(), err)
	}
	return path, cfg
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// child is a process re-executed from this test binary.
type child struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
	err    error
	log    string // its stderr
}

// startChild runs this binary as role with arg; with netns set, inside
// that network namespace (nsenter --net, so it shares this process's
// mounts). It is killed when the test ends, or when this process dies.
func startChild(t *testing.T, name, role, arg, netns string) *child {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{self, "-test.run=^$"}
	if netns != "" {
		args = append([]string{"nsenter", "--net=" + filepath.Join("/run/netns", netns), "--"}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), envRole+"="+role, envArg+"="+arg)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{name: name, cmd: cmd, exited: make(chan struct{}), log: logPath}
	go func() { c.err = cmd.Wait(); close(c.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-c.exited
		if t.Failed() {
			t.Logf("%s log (last lines):\n%s", name, c.tail(40))
		}
	})
	return c
}

// kill is the power cut for the process: SIGKILL, no shutdown, no drain,
// no last write. It returns once the process is gone.
func (c *child) kill(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatal(err)
	}
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not die within 30s of SIGKILL", c.name)
	}
}

// stop is a graceful stop (SIGTERM).
func (c *child) stop(t *testing.T) {
	t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(40 * time.Second):
		t.Fatalf("%s did not stop within 40s of SIGTERM", c.name)
	}
}

func (c *child) alive() bool {
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

func (c *child) tail(n int) string {
	b, _ := os.ReadFile(c.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// api reaches an edge's public and admin listeners.
type api struct {
	public, admin string
	cb            *http.Client // callbacks, from source, verified TLS
	adm           *http.Client
}

// dialer opens connections; in the cluster case it dials inside a
// network namespace.
type dialer func(ctx context.Context, network, laddr, raddr string) (net.Conn, error)

// hostDial dials from this process's namespace: loopback only.
func hostDial(ctx context.Context, network, laddr, raddr string) (net.Conn, error) {
	if host, _, err := net.SplitHostPort(raddr); err != nil || !net.ParseIP(host).IsLoopback() {
		return nil, fmt.Errorf("powercut: refusing to dial %s outside loopback", raddr)
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	if laddr != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(laddr)}
	}
	return d.DialContext(ctx, network, raddr)
}

func newAPI(public, admin string, roots *x509.CertPool, dial dialer) *api {
	if dial == nil {
		dial = hostDial
	}
	return &api{
		public: public, admin: admin,
		cb: &http.Client{
			Timeout: 10 * time.Second,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
					return dial(ctx, network, source, addr)
				},
				TLSClientConfig:     &tls.Config{RootCAs: roots, ServerName: "localhost", MinVersion: tls.VersionTLS12},
				MaxIdleConnsPerHost: 64,
			},
		},
		adm: &http.Client{
			Timeout: 10 * time.Second,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
					return dial(ctx, network, "", addr)
				},
				MaxIdleConnsPerHost: 64,
			},
		},
	}
}

func (a *api) close() {
	a.cb.CloseIdleConnections()
	a.adm.CloseIdleConnections()
}

// issue asks the admin API for a single-use STK token.
func (a *api) issue(ctx context.Context) (verify.IssueResponse, error) {
	return a.issueTTL(ctx, "1h")
}

// issueTTL asks for a single-use STK token that expires after ttl.
func (a *api) issueTTL(ctx context.Context, ttl string) (verify.IssueResponse, error) {
	b, _ := json.Marshal(verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: shortID, TTL: ttl})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+a.admin+"/v1/tokens", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err := a.adm.Do(req)
	if err != nil {
		return verify.IssueResponse{}, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return verify.IssueResponse{}, fmt.Errorf("issue: %d %s", resp.StatusCode, body)
	}
	var out verify.IssueResponse
	if err := json.Unmarshal(body, &out); err != nil {
		return out, fmt.Errorf("issue: %w", err)
	}
	return out, nil
}

// errNoTokens ends a load whose tokens ran out.
var errNoTokens = errors.New("no tokens left")

// pool hands out tokens issued beforehand (for loads while NATS is down).
func pool(toks []verify.IssueResponse) func(context.Context, *api) (verify.IssueResponse, error) {
	var mu sync.Mutex
	return func(context.Context, *api) (verify.IssueResponse, error) {
		mu.Lock()
		defer mu.Unlock()
		if len(toks) == 0 {
			return verify.IssueResponse{}, errNoTokens
		}
		tok := toks[0]
		toks = toks[1:]
		return tok, nil
	}
}

// status reads a token's state; 404 reads as state "".
func (a *api) status(t *testing.T, id string) verify.Status {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+a.admin+"/v1/tokens/"+id, nil)
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err := a.adm.Do(req)
	if err != nil {
		t.Errorf("token status: %v", err) // not Fatal: called from several goroutines
		return verify.Status{ID: id, State: "unreadable"}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusNotFound {
		return verify.Status{ID: id}
	}
	var st verify.Status
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &st) != nil {
		t.Errorf("token status %s: %d %s", id, resp.StatusCode, body)
		return verify.Status{ID: id, State: "unreadable"}
	}
	return st
}

// post delivers one STK callback; 0 means no answer.
func (a *api) post(ctx context.Context, token, tx string) int {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+a.public+daraja.STKCallback.Path()+"?t="+token, bytes.NewReader(stkBody(tx)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.cb.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func (a *api) get(path string) (int, string) {
	resp, err := a.adm.Get("http://" + a.admin + path)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metric reads one unlabelled sample from /metrics; missing reads as 0.
func (a *api) metric(name string) float64 {
	_, body := a.get("/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// waitReady polls /readyz until 200; a child that exits first fails.
func (a *api) waitReady(t *testing.T, c *child, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		if s, _ := a.get("/readyz"); s == http.StatusOK {
			return
		}
		if c != nil && !c.alive() {
			t.Fatalf("%s exited before it was ready: %v\n%s", c.name, c.err, c.tail(30))
		}
		if time.Now().After(deadline) {
			_, body := a.get("/readyz")
			t.Fatalf("edge not ready within %s: %s", d, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stkBody is an STK callback whose transaction id is the checkout id.
func stkBody(tx string) []byte {
	return []byte(`{"Body":{"stkCallback":{"MerchantRequestID":"m-` + tx + `","CheckoutRequestID":"` + tx +
		`","ResultCode":0,"ResultDesc":"ok","CallbackMetadata":{"Item":[{"Name":"Amount","Value":1.00},{"Name":"PhoneNumber","Value":254700000001}]}}}}`)
}

// delivery is one callback sent and what it got (0: no answer).
type delivery struct {
	tok    verify.IssueResponse
	tx     string
	status int
}

// load sends callbacks, each with a token issued for it just before.
type load struct {
	mu     sync.Mutex
	sent   []delivery
	issued []verify.IssueResponse // tokens issued (201) that no callback was sent for
	ok     atomic.Int64
	// next gives each callback its token; nil issues one through the
	// target's admin API.
	next func(ctx context.Context, a *api) (verify.IssueResponse, error)
	// pace is each worker's pause after a callback: it bounds the load
	// (and so the work of checking it afterwards) in a case that mostly
	// waits on elections.
	pace time.Duration
}

func (l *load) record(d delivery) {
	l.mu.Lock()
	l.sent = append(l.sent, d)
	l.mu.Unlock()
	if d.status == http.StatusOK {
		l.ok.Add(1)
	}
}

func (l *load) deliveries() []delivery {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]delivery(nil), l.sent...)
}

// run sends from workers goroutines, each issuing a token then posting
// its callback, until stop is closed; the deliveries' transaction ids
// start with name. It returns when every worker has stopped.
func (l *load) run(name string, targets []*api, workers int, stop <-chan struct{}) {
	var wg sync.WaitGroup
	var seq atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-stop; cancel() }()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				a := targets[(w+int(seq.Load()))%len(targets)]
				next := l.next
				if next == nil {
					next = func(ctx context.Context, a *api) (verify.IssueResponse, error) { return a.issue(ctx) }
				}
				tok, err := next(ctx, a)
				if errors.Is(err, errNoTokens) {
					return
				}
				if err != nil {
					time.Sleep(20 * time.Millisecond) // the edge is gone or refusing: no spin
					continue
				}
				tx := fmt.Sprintf("ws_CO_%s_%06d", name, seq.Add(1))
				if ctx.Err() != nil {
					l.mu.Lock()
					l.issued = append(l.issued, tok)
					l.mu.Unlock()
					return
				}
				// The callback itself is not cut short by stop: it gets
				// whatever answer the edge gives (none once it is killed).
				l.record(delivery{tok: tok, tx: tx, status: a.post(context.Background(), tok.Token, tx)})
				if l.pace > 0 {
					select {
					case <-ctx.Done():
					case <-time.After(l.pace):
					}
				}
			}
		}()
	}
	wg.Wait()
	cancel()
}

// waitOK waits until at least n callbacks were answered 200.
func (l *load) waitOK(t *testing.T, n int64, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for l.ok.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d callbacks answered 200 within %s, want %d", l.ok.Load(), d, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stored is what the stream holds on <prefix>.cb.>.
type stored struct {
	total   int
	byTx    map[string]int
	idsByTx map[string]map[string]int
	lastSeq uint64
}

func (s stored) duplicated() int {
	n := 0
	for _, c := range s.byTx {
		n += c - 1
	}
	return n
}

// readStored reads every callback message with an ordered consumer.
func readStored(t *testing.T, js jetstream.JetStream) stored {
	t.Helper()
	s := stored{byTx: map[string]int{}, idsByTx: map[string]map[string]int{}}
	s.lastSeq = natstest.ReadSubjects(t, js, "DARAJA", "daraja.cb.>", func(m jetstream.Msg) {
		s.total++
		tx, id := m.Headers().Get("Daraja-Transaction-Id"), m.Headers().Get("Nats-Msg-Id")
		s.byTx[tx]++
		if s.idsByTx[tx] == nil {
			s.idsByTx[tx] = map[string]int{}
		}
		s.idsByTx[tx][id]++
	})
	return s
}

func connectJS(t *testing.T, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(100 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	return nc, js
}

// result is one case's figures.
type result struct {
	answered, stored, lost, duplicated int
	unanswered, refused                int // before the cut
	storedUnanswered                   int // cut off, yet stored (token consumed)
	resentOK                           int // retries answered 200 after recovery
	extra                              string
}

func (r result) line(name string) string {
	s := fmt.Sprintf("POWERCUT %s answered=%d stored=%d lost=%d duplicated=%d", name, r.answered, r.stored, r.lost, r.duplicated)
	s += fmt.Sprintf(" unanswered=%d refused=%d cut_stored=%d resent_ok=%d", r.unanswered, r.refused, r.storedUnanswered, r.resentOK)
	if r.extra != "" {
		s += " " + r.extra
	}
	return s
}

func report(t *testing.T, name string, r result) {
	t.Helper()
	line := r.line(name)
	t.Log(line)
	fmt.Fprintln(os.Stderr, line)
}

// count tallies the deliveries against what the stream holds.
func count(ds []delivery, s stored) result {
	r := result{stored: s.total, duplicated: s.duplicated()}
	seen := map[string]bool{}
	for _, d := range ds {
		switch d.status {
		case http.StatusOK:
			if seen[d.tx] {
				continue
			}
			seen[d.tx] = true
			r.answered++
			if s.byTx[d.tx] == 0 {
				r.lost++
			}
		case 0:
			r.unanswered++
		default:
			r.refused++
		}
	}
	return r
}

// checkRecovered is the verdict on an edge that must have lost nothing:
// every 200 on the stream once, its token consumed by it; every callback
// without a 200 stored with its token consumed, or not stored with its
// token issued, and sent again now it is answered 200; tokens issued
// without a callback still issued. Afterwards every transaction is on the
// stream exactly once.
func checkRecovered(t *testing.T, a *api, js jetstream.JetStream, ld *load) result {
	t.Helper()
	ds := ld.deliveries()
	s := readStored(t, js)
	r := count(ds, s)
	for tx, n := range s.byTx {
		if n > 1 {
			t.Errorf("transaction %s is on the stream %d times (Nats-Msg-Ids %v)", tx, n, s.idsByTx[tx])
		}
	}
	ctx := context.Background()
	states := make([]verify.Status, len(ds))
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < len(ds); i = int(next.Add(1)) - 1 {
				states[i] = a.status(t, ds[i].tok.ID)
			}
		}()
	}
	wg.Wait()
	var resend []delivery
	for i, d := range ds {
		st := states[i]
		switch {
		case d.status == http.StatusOK:
			if s.byTx[d.tx] == 0 {
				t.Errorf("callback %s was answered 200 and is not on the stream (token %s)", d.tx, st.State)
			}
			if st.State != verify.StateConsumed || st.ConsumedBy != d.tx {
				t.Errorf("callback %s was answered 200; its token reads %q consumed by %q", d.tx, st.State, st.ConsumedBy)
			}
		case s.byTx[d.tx] > 0:
			r.storedUnanswered++
			if st.State != verify.StateConsumed || st.ConsumedBy != d.tx {
				t.Errorf("callback %s (answer %d) is stored; its token reads %q consumed by %q", d.tx, d.status, st.State, st.ConsumedBy)
			}
			resend = append(resend, d)
		default:
			if st.State != verify.StateIssued {
				t.Errorf("callback %s (answer %d) is not stored; its token reads %q (consumed by %q): Daraja's retry cannot land",
					d.tx, d.status, st.State, st.ConsumedBy)
			}
			resend = append(resend, d)
		}
	}
	ld.mu.Lock()
	idle := append([]verify.IssueResponse(nil), ld.issued...)
	ld.mu.Unlock()
	for _, tok := range idle {
		if st := a.status(t, tok.ID); st.State != verify.StateIssued {
			t.Errorf("token %s was issued (201) and never used; it reads %q", tok.ID, st.State)
		}
	}
	for _, d := range resend {
		if status := a.post(ctx, d.tok.Token, d.tx); status == http.StatusOK {
			r.resentOK++
		} else {
			t.Errorf("retry of %s after recovery: %d, want 200", d.tx, status)
		}
	}
	after := readStored(t, js)
	for _, d := range ds {
		if n := after.byTx[d.tx]; n > 1 || (n == 0 && (d.status == http.StatusOK || slicesContains(resend, d))) {
			t.Errorf("after the retries %s is on the stream %d times, want once", d.tx, n)
		}
	}
	if r.lost > 0 || r.duplicated > 0 {
		t.Errorf("lost %d, duplicated %d", r.lost, r.duplicated)
	}
	return r
}

func slicesContains(ds []delivery, d delivery) bool {
	for _, x := range ds {
		if x.tx == d.tx {
			return true
		}
	}
	return false
}

// inProcess is an edge run in this process on the config file at path,
// its log observed: the edge that starts on what survived the cut.
type inProcess struct {
	srv  *edge.Server
	logs *observer.ObservedLogs
	api  *api
}

func startInProcess(t *testing.T, path string, roots *x509.CertPool) *inProcess {
	t.Helper()
	cfg, err := config.LoadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	srv, err := edge.New(context.Background(), cfg, zap.New(core))
	if err != nil {
		t.Fatalf("edge on what survived: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	e := &inProcess{srv: srv, logs: logs, api: newAPI(srv.PublicAddr().String(), srv.AdminAddr().String(), roots, nil)}
	t.Cleanup(func() {
		e.api.close()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("edge Run: %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("edge did not stop within 60s")
		}
	})
	e.api.waitReady(t, nil, 60*time.Second)
	return e
}

// lossReported says whether the edge logged that acknowledged callbacks
// were lost.
func (e *inProcess) lossReported() bool {
	return e.logs.FilterMessageSnippet("acknowledged callbacks were lost").Len() > 0
}

// watermark reads the acknowledged sequence an embedded edge recorded
// (0 when the file is missing).
func watermark(t *testing.T, storeDir string) uint64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(storeDir, "daraja-edge.acked"))
	if errors.Is(err, fs.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	_, v, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
	n, _ := strconv.ParseUint(v, 10, 64)
	return n
}

// phases logs how long each phase of a case took.
func phases(t *testing.T) func(what string) {
	mark := time.Now()
	return func(what string) {
		t.Helper()
		t.Logf("phase %s: %s", what, time.Since(mark).Round(time.Millisecond))
		mark = time.Now()
	}
}

// listTree lists the files under dir with their sizes: evidence of what a
// cut left.
func listTree(dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			out = append(out, rel+"/")
			return nil
		}
		info, err := d.Info()
		if err == nil {
			out = append(out, fmt.Sprintf("%s(%d)", rel, info.Size()))
		}
		return nil
	})
	return out
}
