//go:build faults

// Package faults is daraja-edge's fault suite: NATS outages, a killed
// edge, a failed cluster node, racing replicas and expiring tokens, each
// printing what was sent, accepted, published, lost and duplicated.
// Run with: go test -race -tags faults -v ./test/faults
package faults

import (
	"context"
	"errors"
	"fmt"
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
	"github.com/daraja-edge/daraja-edge/edge"
	"github.com/daraja-edge/daraja-edge/internal/edgetest"
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

// natsNode is a nats-server that can be stopped and started again on the
// same port and store.
type natsNode struct {
	opts *server.Options
	srv  *server.Server
}

func newNATS(t testing.TB, name string, clusterPort int, routes []int) *natsNode {
	t.Helper()
	o := &server.Options{
		ServerName: name, Host: "127.0.0.1", Port: freePort(t),
		JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
	}
	if clusterPort != 0 {
		o.Cluster = server.ClusterOpts{Name: "faults", Host: "127.0.0.1", Port: clusterPort}
		for _, p := range routes {
			o.Routes = append(o.Routes, server.RoutesFromStr("nats://127.0.0.1:"+strconv.Itoa(p))...)
		}
	}
	n := &natsNode{opts: o}
	n.start(t)
	t.Cleanup(n.stop)
	return n
}

func (n *natsNode) start(t testing.TB) {
	t.Helper()
	s, err := server.NewServer(n.opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(20 * time.Second) {
		t.Fatalf("nats %s did not start", n.opts.ServerName)
	}
	n.srv = s
}

func (n *natsNode) stop() {
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		n.srv = nil
	}
}

func (n *natsNode) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.opts.Port) }

func edgeConfig(t testing.TB, natsURL string) config.Config { return edgetest.Config(t, natsURL) }

// runningEdge is an in-process edge.
type runningEdge struct {
	srv    *edge.Server
	public string
	admin  string
}

func startEdge(t testing.TB, cfg config.Config) *runningEdge {
	e := edgetest.Start(t, cfg)
	return &runningEdge{srv: e.Srv, public: e.Public, admin: e.Admin}
}

func issue(t testing.TB, adminAddr string, req verify.IssueRequest) verify.IssueResponse {
	return edgetest.Issue(t, adminAddr, req)
}

// stkBody is an STK callback for checkout id.
func stkBody(id string) []byte {
	return []byte(`{"Body":{"stkCallback":{"MerchantRequestID":"m-` + id + `","CheckoutRequestID":"` + id +
		`","ResultCode":0,"ResultDesc":"ok","CallbackMetadata":{"Item":[{"Name":"Amount","Value":1.00},{"Name":"PhoneNumber","Value":254700000001}]}}}}`)
}

// post delivers one callback; status 0 means no answer (connection error).
func post(publicAddr string, kind daraja.Kind, token string, body []byte) int {
	status, _ := edgetest.Post(publicAddr, kind, token, body)
	return status
}

// tally counts what a scenario did, for the printed figures.
type tally struct {
	mu                                  sync.Mutex
	sent, accepted, refused, unanswered int
	acceptedIDs                         []string // Nats-Msg-Id of every 200
}

func (ta *tally) record(status int, msgID string) {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	ta.sent++
	switch {
	case status == http.StatusOK:
		ta.accepted++
		ta.acceptedIDs = append(ta.acceptedIDs, msgID)
	case status == 0:
		ta.unanswered++
	default:
		ta.refused++
	}
}

// verifyStream reads every message of the stream and checks that each
// accepted callback is there exactly once. It prints the figures.
func verifyStream(t *testing.T, name string, js jetstream.JetStream, ta *tally) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	counts := map[string]int{}
	stream, err := js.Stream(ctx, "DARAJA")
	if err != nil {
		t.Fatal(err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("reading message %d: %v", seq, err)
		}
		if strings.HasPrefix(m.Subject, "daraja.cb.") {
			counts[m.Header.Get("Nats-Msg-Id")]++
			total++
		}
	}
	lost, dup := 0, 0
	for _, id := range ta.acceptedIDs {
		if counts[id] == 0 {
			lost++
			t.Errorf("accepted callback %s is not on the stream", id)
		}
	}
	for id, n := range counts {
		if n > 1 {
			dup += n - 1
			t.Errorf("callback %s is on the stream %d times", id, n)
		}
	}
	msg := fmt.Sprintf("FAULTS %-28s sent=%d accepted=%d refused=%d unanswered=%d published=%d lost=%d duplicated=%d",
		name, ta.sent, ta.accepted, ta.refused, ta.unanswered, total, lost, dup)
	t.Log(msg)
	fmt.Fprintln(os.Stderr, msg)
}

// waitIdle waits until no edge has spooled or deferred work left.
func waitIdle(t *testing.T, edges ...*runningEdge) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		busy := false
		for _, e := range edges {
			if sp, d := e.srv.Pending(); sp > 0 || d > 0 {
				busy = true
			}
		}
		if !busy {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, e := range edges {
		sp, d := e.srv.Pending()
		t.Errorf("edge still has %d spooled and %d deferred", sp, d)
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
