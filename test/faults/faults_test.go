//go:build faults

package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/edge"
	"github.com/daraja-edge/daraja-edge/verify"
)

// send delivers n STK callbacks, each on its own fresh token, with
// concurrency workers, calling between(i) before callback i.
func send(t *testing.T, edges []*runningEdge, tokens []verify.IssueResponse, workers int, between func(i int)) *tally {
	ta := &tally{}
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				e := edges[i%len(edges)]
				id := "ws_CO_" + tokens[i].ID // unique per token, whatever the batch
				ta.record(post(e.public, daraja.STKCallback, tokens[i].Token, stkBody(id)), "stk.callback:"+id)
			}
		}()
	}
	for i := range tokens {
		if between != nil {
			between(i)
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return ta
}

func issueN(t *testing.T, e *runningEdge, n int) []verify.IssueResponse {
	out := make([]verify.IssueResponse, n)
	for i := range out {
		out[i] = issue(t, e.admin, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
	}
	return out
}

// TestNATSOutage: NATS stops during a stream of callbacks and comes back;
// every accepted callback is on the stream once.
func TestNATSOutage(t *testing.T) {
	node := newNATS(t, "solo", 0, nil)
	e := startEdge(t, edgeConfig(t, node.url()))
	tokens := issueN(t, e, 90)
	var spooled int64
	var deferred int
	ta := send(t, []*runningEdge{e}, tokens, 3, func(i int) {
		switch i {
		case 30:
			node.stop()
		case 45:
			if st := readyz(e.admin); st != http.StatusServiceUnavailable {
				t.Errorf("readyz during the outage: %d", st)
			}
		case 60:
			time.Sleep(200 * time.Millisecond) // let the last in-flight callbacks land
			spooled, deferred = e.srv.Pending()
			node.start(t)
		}
	})
	t.Logf("during the outage: %d callbacks spooled, %d token consumptions held locally", spooled, deferred)
	if spooled < 20 || deferred < 20 {
		t.Errorf("the outage did not exercise the spool: %d spooled, %d deferred", spooled, deferred)
	}
	waitIdle(t, e)
	if st := readyz(e.admin); st != http.StatusOK {
		t.Errorf("readyz after the outage: %d", st)
	}
	_, js := connect(t, node.url())
	if ta.accepted < 80 {
		t.Errorf("only %d of %d accepted through the outage", ta.accepted, ta.sent)
	}
	verifyStream(t, "nats outage", js, ta)
	// Consumptions made during the outage reached the bucket.
	nc, _ := connect(t, node.url())
	for _, tok := range tokens[30:60] {
		reply, err := nc.Request("daraja.tokens.status", []byte(`{"id":"`+tok.ID+`"}`), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var st verify.Status
		_ = json.Unmarshal(reply.Data, &st)
		if st.State != verify.StateConsumed {
			t.Errorf("token %s used during the outage is %q", tok.ID, st.State)
		}
	}
}

// TestEdgeKilled: the edge (a child process with embedded NATS) is killed
// with SIGKILL during a stream of callbacks and restarted; every callback
// that got a 200 is on the stream.
func TestEdgeKilled(t *testing.T) {
	dir := t.TempDir()
	cfg := edgeConfig(t, "")
	cfg.Listen = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg.Admin.Listen = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	natsPort := freePort(t)
	cfg.NATS.Embedded = config.Embedded{Listen: fmt.Sprintf("127.0.0.1:%d", natsPort), StoreDir: filepath.Join(dir, "nats")}
	cfg.Spool.Dir = filepath.Join(dir, "spool")
	cfgJSON, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "edge.json")
	if err := os.WriteFile(cfgPath, cfgJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	e := &runningEdge{public: cfg.Listen, admin: cfg.Admin.Listen}

	child := startChild(t, cfgPath, e.admin)
	tokens := issueN(t, e, 200)
	var killed sync.Once
	ta := send(t, []*runningEdge{e}, tokens[:150], 4, func(i int) {
		if i == 100 {
			killed.Do(func() {
				_ = child.Process.Kill() // SIGKILL: no shutdown, no drain
				_ = child.Wait()
			})
		}
	})
	child = startChild(t, cfgPath, e.admin)
	// The restarted edge keeps serving the rest.
	rest := send(t, []*runningEdge{e}, tokens[150:], 4, nil)
	ta.sent += rest.sent
	ta.accepted += rest.accepted
	ta.refused += rest.refused
	ta.unanswered += rest.unanswered
	ta.acceptedIDs = append(ta.acceptedIDs, rest.acceptedIDs...)
	_, js := connect(t, fmt.Sprintf("nats://127.0.0.1:%d", natsPort))
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) { // the restarted edge replays its spool within a second or two
		if s, err := js.Stream(context.Background(), "DARAJA"); err == nil {
			if info, err := s.Info(context.Background()); err == nil && int(info.State.Msgs) >= ta.accepted {
				break
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	verifyStream(t, "edge killed (SIGKILL)", js, ta)
	// SIGTERM is a clean stop: exit status 0.
	_ = child.Process.Signal(syscall.SIGTERM)
	if err := child.Wait(); err != nil {
		t.Errorf("edge after SIGTERM: %v", err)
	}
}

// startChild runs this test binary as an edge (see TestMain) and waits
// until its admin listener is ready.
func startChild(t *testing.T, cfgPath, adminAddr string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "DARAJA_EDGE_FAULTS_CHILD="+cfgPath)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + adminAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return cmd
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("child edge not ready")
	return nil
}

// TestMain doubles as the child edge of TestEdgeKilled.
func TestMain(m *testing.M) {
	if path := os.Getenv("DARAJA_EDGE_FAULTS_CHILD"); path != "" {
		os.Exit(childEdge(path))
	}
	os.Exit(m.Run())
}

func childEdge(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var cfg config.Config
	if err := json.Unmarshal(data, &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	srv, err := edge.New(ctx, cfg, nil)
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

// TestClusterNodeLost: three NATS nodes (R3 stream and bucket), two edges;
// one node is killed under load. Nothing lost, nothing duplicated.
func TestClusterNodeLost(t *testing.T) {
	ports := []int{freePort(t), freePort(t), freePort(t)}
	var nodes []*natsNode
	for i, p := range ports {
		nodes = append(nodes, newNATS(t, "n"+strconv.Itoa(i), p, ports))
	}
	urls := nodes[0].url() + "," + nodes[1].url() + "," + nodes[2].url()
	waitForJetStream(t, urls)
	var edges []*runningEdge
	for range 2 {
		cfg := edgeConfig(t, urls)
		cfg.NATS.Stream.Replicas = 3
		edges = append(edges, startEdge(t, cfg))
	}
	tokens := issueN(t, edges[0], 150)
	ta := send(t, edges, tokens, 4, func(i int) {
		if i == 50 {
			nodes[2].stop()
		}
	})
	waitIdle(t, edges...)
	_, js := connect(t, nodes[0].url()+","+nodes[1].url())
	verifyStream(t, "cluster node lost", js, ta)
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

// TestReplicasRaceOneToken: one token, many concurrent deliveries through
// two edges, half of them one callback and half another. Exactly one
// callback wins: its deliveries all get 200 (first or duplicate), the
// other's all get 403 (replay), and the stream holds one message.
func TestReplicasRaceOneToken(t *testing.T) {
	node := newNATS(t, "solo", 0, nil)
	edges := []*runningEdge{startEdge(t, edgeConfig(t, node.url())), startEdge(t, edgeConfig(t, node.url()))}
	_, js := connect(t, node.url())
	rounds := 5
	ta := &tally{}
	for round := range rounds {
		tok := issue(t, edges[0].admin, verify.IssueRequest{Kinds: []daraja.Kind{daraja.STKCallback}, Shortcode: "174379"})
		a, b := fmt.Sprintf("ws_race_%d_A", round), fmt.Sprintf("ws_race_%d_B", round)
		statuses := map[string][]int{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id := a
				if i%2 == 1 {
					id = b
				}
				st := post(edges[i%2].public, daraja.STKCallback, tok.Token, stkBody(id))
				if i%4 >= 2 { // spread each callback over both edges
					st = post(edges[(i+1)%2].public, daraja.STKCallback, tok.Token, stkBody(id))
				}
				mu.Lock()
				statuses[id] = append(statuses[id], st)
				mu.Unlock()
			}()
		}
		wg.Wait()
		winner, loser := a, b
		if statuses[a][0] != http.StatusOK {
			winner, loser = b, a
		}
		for _, st := range statuses[winner] {
			if st != http.StatusOK {
				t.Errorf("round %d: winner %s got %v", round, winner, statuses[winner])
				break
			}
		}
		for _, st := range statuses[loser] {
			if st != http.StatusForbidden {
				t.Errorf("round %d: loser %s got %v", round, loser, statuses[loser])
				break
			}
		}
		for id, sts := range statuses {
			for _, st := range sts {
				ta.record(st, "stk.callback:"+id)
			}
		}
		ta.acceptedIDs = dedupe(ta.acceptedIDs)
	}
	verifyStream(t, "two replicas, one token", js, ta)
	if n := streamMsgs(t, js); n != rounds {
		t.Errorf("stream holds %d messages, want %d (one per token)", n, rounds)
	}
}

func streamMsgs(t *testing.T, js jetstream.JetStream) int {
	t.Helper()
	s, err := js.Stream(context.Background(), "DARAJA")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return int(info.State.Msgs)
}

func dedupe(ids []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// TestMissingOncePerToken: expired unconsumed tokens produce exactly one
// missing event each, with two replicas sweeping.
func TestMissingOncePerToken(t *testing.T) {
	node := newNATS(t, "solo", 0, nil)
	edges := []*runningEdge{startEdge(t, edgeConfig(t, node.url())), startEdge(t, edgeConfig(t, node.url()))}
	_, js := connect(t, node.url())
	var want []string
	for i := range 6 {
		tok := issue(t, edges[i%2].admin, verify.IssueRequest{
			Kinds: []daraja.Kind{daraja.B2CResult, daraja.B2CTimeout}, Shortcode: "600000", Reference: fmt.Sprintf("PAYOUT-%d", i), TTL: "1s",
		})
		want = append(want, tok.ID)
	}
	// One of them is used in time: no missing event for it.
	used := issue(t, edges[0].admin, verify.IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "600000", TTL: "1s"})
	if st := post(edges[1].public, daraja.B2CResult, used.Token,
		[]byte(`{"Result":{"ResultCode":0,"ConversationID":"AG_used","TransactionID":"X"}}`)); st != http.StatusOK {
		t.Fatalf("used token: %d", st)
	}
	reusable := issue(t, edges[0].admin, verify.IssueRequest{Kinds: []daraja.Kind{daraja.C2BConfirmation}, Shortcode: "600638", TTL: "1s", Reusable: true})
	_ = reusable

	got := map[string]int{}
	// Sweeps run every 5s on each replica; give both two chances.
	time.Sleep(12 * time.Second)
	cons, err := js.OrderedConsumer(context.Background(), "DARAJA", jetstream.OrderedConsumerConfig{FilterSubjects: []string{"daraja.missing.>"}})
	if err != nil {
		t.Fatal(err)
	}
	for {
		m, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		if err != nil {
			break
		}
		var ev struct {
			TokenID string   `json:"token_id"`
			Kinds   []string `json:"kinds"`
		}
		_ = json.Unmarshal(m.Data(), &ev)
		if m.Subject() != "daraja.missing.b2c.result.600000" || len(ev.Kinds) != 2 {
			t.Errorf("missing event on %s: %s", m.Subject(), m.Data())
		}
		got[ev.TokenID]++
	}
	for _, id := range want {
		if got[id] != 1 {
			t.Errorf("token %s: %d missing events, want 1", id, got[id])
		}
	}
	if got[used.ID] != 0 || got[reusable.ID] != 0 {
		t.Errorf("missing events for a used (%d) or reusable (%d) token", got[used.ID], got[reusable.ID])
	}
	msg := fmt.Sprintf("FAULTS %-28s expired=%d missing_events=%d replicas=2", "missing callbacks", len(want), len(got))
	t.Log(msg)
	fmt.Fprintln(os.Stderr, msg)
}

func readyz(adminAddr string) int {
	resp, err := http.Get("http://" + adminAddr + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
