//go:build faults

// Package faults is daraja-edge's fault suite: NATS outages, a killed
// edge (with NATS up, and with NATS down so its spool holds the work), a
// failed cluster node, racing replicas and expiring tokens. Each scenario
// prints one line
//
//	FAULTS <scenario> sent=N ok=N failed=N stored=N lost=N duplicated=N
//
// sent: callbacks delivered (first attempts); ok: answered 200; failed:
// anything else, including no answer at all; stored: callback messages on
// <prefix>.cb.>; lost: callbacks answered 200 that are not there;
// duplicated: extra copies of a transaction (the same Daraja-Transaction-Id
// stored more than once, under one Nats-Msg-Id or several).
//
// Run with: go test -race -tags faults -v ./test/faults
package faults

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/internal/edgetest"
	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/daraja-edge/daraja-edge/publish"
	"github.com/daraja-edge/daraja-edge/verify"
)

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// newNATS starts a nats-server outside every edge that can be stopped and
// started again on the same port and store, alone or as one of a cluster.
func newNATS(t testing.TB, name string, clusterPort int, routes []int) *natstest.Node {
	t.Helper()
	o := &server.Options{ServerName: name}
	if clusterPort != 0 {
		o.Cluster = server.ClusterOpts{Name: "faults", Host: "127.0.0.1", Port: clusterPort}
		for _, p := range routes {
			o.Routes = append(o.Routes, server.RoutesFromStr("nats://127.0.0.1:"+strconv.Itoa(p))...)
		}
	}
	return natstest.NewNodeWith(t, o)
}

func edgeConfig(t testing.TB, natsURL string) config.Config { return edgetest.Config(t, natsURL) }

// runningEdge is an edge the suite talks to over HTTP only: in-process
// (edgetest.Start) or a child process (childEdge).
type runningEdge struct {
	public string
	admin  string
}

func startEdge(t testing.TB, cfg config.Config) *runningEdge {
	e := edgetest.Start(t, cfg)
	return &runningEdge{public: e.Public, admin: e.Admin}
}

func issue(t testing.TB, adminAddr string, req verify.IssueRequest) verify.IssueResponse {
	return edgetest.Issue(t, adminAddr, req)
}

func issueN(t *testing.T, e *runningEdge, n int) []verify.IssueResponse {
	out := make([]verify.IssueResponse, n)
	for i := range out {
		out[i] = issue(t, e.admin, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
	}
	return out
}

// stkBody is an STK callback whose transaction id is the checkout id.
func stkBody(id string) []byte {
	return []byte(`{"Body":{"stkCallback":{"MerchantRequestID":"m-` + id + `","CheckoutRequestID":"` + id +
		`","ResultCode":0,"ResultDesc":"ok","CallbackMetadata":{"Item":[{"Name":"Amount","Value":1.00},{"Name":"PhoneNumber","Value":254700000001}]}}}}`)
}

// post delivers one callback; status 0 means no answer (connection error).
func post(publicAddr string, kind daraja.Kind, token string, body []byte) int {
	status, _ := edgetest.Post(publicAddr, kind, token, body)
	return status
}

// delivery is one callback sent and what it got.
type delivery struct {
	token  verify.IssueResponse
	txID   string
	status int // 0: no answer
}

// tally counts what a scenario did, for the printed figures.
type tally struct {
	mu         sync.Mutex
	deliveries []delivery
}

func (ta *tally) record(d delivery) {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	ta.deliveries = append(ta.deliveries, d)
}

func (ta *tally) add(o *tally) {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	ta.deliveries = append(ta.deliveries, o.deliveries...)
}

// counts: sent, answered 200, answered otherwise, not answered at all.
func (ta *tally) counts() (sent, ok, refused, unanswered int) {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	for _, d := range ta.deliveries {
		switch d.status {
		case http.StatusOK:
			ok++
		case 0:
			unanswered++
		default:
			refused++
		}
	}
	return len(ta.deliveries), ok, refused, unanswered
}

func (ta *tally) with(status int) []delivery {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	var out []delivery
	for _, d := range ta.deliveries {
		if d.status == status {
			out = append(out, d)
		}
	}
	return out
}

// stored is what the stream holds on <prefix>.cb.>.
type stored struct {
	total   int
	byTx    map[string]int            // Daraja-Transaction-Id → messages
	idsByTx map[string]map[string]int // Daraja-Transaction-Id → Nats-Msg-Id → messages
}

// duplicated is the number of extra copies of any transaction.
func (s stored) duplicated() int {
	n := 0
	for _, c := range s.byTx {
		n += c - 1
	}
	return n
}

// readStored reads every message on daraja.cb.> with an ordered consumer.
func readStored(t *testing.T, js jetstream.JetStream) stored {
	t.Helper()
	s := stored{byTx: map[string]int{}, idsByTx: map[string]map[string]int{}}
	natstest.ReadSubjects(t, js, "DARAJA", "daraja.cb.>", func(m jetstream.Msg) {
		s.total++
		tx, id := m.Headers().Get(publish.HeaderTransactionID), m.Headers().Get(publish.HeaderMsgID)
		s.byTx[tx]++
		if s.idsByTx[tx] == nil {
			s.idsByTx[tx] = map[string]int{}
		}
		s.idsByTx[tx][id]++
	})
	return s
}

// verifyStream checks that every callback answered 200 (by ta, or by the
// retries of callbacks ta left unanswered) is on the stream exactly once
// and no transaction is stored twice, and prints the scenario's FAULTS line
// (ta's figures, then extra).
func verifyStream(t *testing.T, name string, js jetstream.JetStream, ta *tally, extra string, retries ...*tally) stored {
	t.Helper()
	s := readStored(t, js)
	sent, ok, refused, unanswered := ta.counts()
	answered := ta.with(http.StatusOK)
	for _, r := range retries {
		answered = append(answered, r.with(http.StatusOK)...)
	}
	lost := 0
	seen := map[string]bool{}
	for _, d := range answered {
		if seen[d.txID] {
			continue // delivered again (a race, a retry): one transaction
		}
		seen[d.txID] = true
		if s.byTx[d.txID] == 0 {
			lost++
			t.Errorf("callback %s was answered 200 and is not on the stream", d.txID)
		}
	}
	for tx, n := range s.byTx {
		if n > 1 {
			t.Errorf("transaction %s is on the stream %d times (Nats-Msg-Ids %v)", tx, n, s.idsByTx[tx])
		}
	}
	msg := fmt.Sprintf("FAULTS %s sent=%d ok=%d failed=%d stored=%d lost=%d duplicated=%d",
		name, sent, ok, refused+unanswered, s.total, lost, s.duplicated())
	if unanswered > 0 {
		msg += fmt.Sprintf(" unanswered=%d", unanswered)
	}
	if extra != "" {
		msg += " " + extra
	}
	t.Log(msg)
	fmt.Fprintln(os.Stderr, msg)
	return s
}

// floor fails the test unless at least min of the tally's callbacks were
// answered 200: without it, an edge refusing everything loses nothing.
func floor(t *testing.T, ta *tally, min int, why string) {
	t.Helper()
	if _, ok, _, _ := ta.counts(); ok < min {
		t.Errorf("only %d callbacks answered 200, want at least %d (%s)", ok, min, why)
	}
}

func connect(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	return nc, js
}

// tokenStatus is the token's state as the admin API reports it.
func tokenStatus(t *testing.T, adminAddr, id string) verify.Status {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+adminAddr+"/v1/tokens/"+id, nil)
	req.Header.Set("Authorization", "Bearer "+edgetest.AdminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("token status: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("token status %s: %d %s", id, resp.StatusCode, body)
	}
	var st verify.Status
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("token status %s: %v", id, err)
	}
	return st
}

// metric reads one sample from the admin /metrics ("name" or
// "name{labels}"); missing reads as 0.
func metric(adminAddr, name string) (float64, error) {
	resp, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.LastIndexByte(line, ' '); i > 0 && line[:i] == name {
			return strconv.ParseFloat(line[i+1:], 64)
		}
	}
	return 0, sc.Err()
}

// waitSpoolEmpty waits until each edge's spool holds nothing.
func waitSpoolEmpty(t *testing.T, edges ...*runningEdge) {
	t.Helper()
	for _, e := range edges {
		var n float64
		var err error
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if n, err = metric(e.admin, "daraja_edge_spool_records"); err == nil && n == 0 {
				break
			}
		}
		if err != nil || n != 0 {
			t.Errorf("edge %s: %v records still spooled (%v)", e.admin, n, err)
		}
	}
}

func readyz(adminAddr string) int {
	resp, err := http.Get("http://" + adminAddr + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func waitForJetStream(t *testing.T, urls string) {
	t.Helper()
	_, js := connect(t, urls)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatal("JetStream cluster not ready")
}

// expiring is a set of short-lived tokens: idle ones that get no callback
// and used ones whose callback was answered 200 before they expired.
type expiring struct {
	idle, used []string
}

// issueExpiring issues idle tokens that expire in a second and used ones
// whose callbacks (recorded in ta) are answered 200 at once.
func issueExpiring(t *testing.T, e *runningEdge, ta *tally, idle, used int) expiring {
	t.Helper()
	var x expiring
	for range idle {
		x.idle = append(x.idle, issue(t, e.admin, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", TTL: "1s"}).ID)
	}
	for i := range used {
		tok := issue(t, e.admin, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", TTL: "3s"})
		tx := fmt.Sprintf("ws_CO_used_%d_%s", i, tok.ID)
		status := post(e.public, daraja.STKCallback, tok.Token, stkBody(tx))
		if status != http.StatusOK {
			t.Fatalf("callback for a short-lived token: %d", status)
		}
		ta.record(delivery{token: tok, txID: tx, status: status})
		x.used = append(x.used, tok.ID)
	}
	return x
}

// check waits for every idle token's missing event, then for that of a
// probe token issued (through adminAddr) only then, expiring in a second:
// once the probe's event is there, the edge has swept again after the
// idle tokens' events, so a second event for any of them would be there
// too. Every idle token must have exactly one event, every used one none.
// It returns the figures for the FAULTS line.
func (x expiring) check(t *testing.T, js jetstream.JetStream, adminAddr string) string {
	t.Helper()
	edgetest.WaitMissing(t, js, x.idle, 60*time.Second)
	probe := issue(t, adminAddr, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379", TTL: "1s"})
	got := edgetest.WaitMissing(t, js, []string{probe.ID}, 60*time.Second)
	dup, usedWithEvent := 0, 0
	for _, id := range x.idle {
		if got[id] != 1 {
			t.Errorf("token %s expired without a callback: %d missing events, want 1", id, got[id])
		}
		if got[id] > 1 {
			dup += got[id] - 1
		}
	}
	for _, id := range x.used {
		if got[id] != 0 {
			t.Errorf("token %s got its callback: %d missing events, want none", id, got[id])
			usedWithEvent++
		}
	}
	return fmt.Sprintf("expired=%d missing_events=%d missing_duplicated=%d used_with_event=%d",
		len(x.idle), len(got)-1, dup, usedWithEvent)
}
