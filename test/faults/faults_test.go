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
	"go.uber.org/zap"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/edge"
	"github.com/daraja-edge/daraja-edge/internal/edgetest"
	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/daraja-edge/daraja-edge/verify"
)

// send delivers one STK callback per token (transaction id "ws_CO_<token
// id>"), spread over edges, with concurrency workers, calling between(i)
// before handing out callback i.
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
				id := "ws_CO_" + tokens[i].ID
				ta.record(delivery{token: tokens[i], txID: id, status: post(e.public, daraja.STKCallback, tokens[i].Token, stkBody(id))})
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

// TestNATSOutage: NATS stops during a stream of callbacks and comes back;
// the edge answers through the outage from its spool, and every callback
// answered 200 is on the stream once, its token consumed.
func TestNATSOutage(t *testing.T) {
	node := newNATS(t, "solo", 0, nil)
	e := startEdge(t, edgeConfig(t, node.URL()))
	tokens := issueN(t, e, 90)
	var spooled float64
	ta := send(t, []*runningEdge{e}, tokens, 3, func(i int) {
		switch i {
		case 30:
			node.Stop()
		case 45:
			if st := readyz(e.admin); st != http.StatusServiceUnavailable {
				t.Errorf("readyz during the outage: %d", st)
			}
		case 60:
			spooled, _ = metric(e.admin, "daraja_edge_spooled_total")
			node.Start()
		}
	})
	t.Logf("during the outage: %v callbacks spooled", spooled)
	if spooled < 20 {
		t.Errorf("the outage did not exercise the spool: %v callbacks spooled of 30 sent", spooled)
	}
	waitSpoolEmpty(t, e)
	if st := readyz(e.admin); st != http.StatusOK {
		t.Errorf("readyz after the outage: %d", st)
	}
	_, js := connect(t, node.URL())
	// The spool makes the outage invisible to Daraja: every callback is
	// answered 200, in the outage too. The floor leaves room for the three
	// in flight when NATS stopped.
	floor(t, ta, len(tokens)-3, "the spool answers through an outage")
	s := verifyStream(t, "nats-outage", js, ta, fmt.Sprintf("spooled=%v", spooled))
	// Callbacks answered during the outage consumed their tokens.
	for _, tok := range tokens[30:60] {
		tx := "ws_CO_" + tok.ID
		st := tokenStatus(t, e.admin, tok.ID)
		if s.byTx[tx] > 0 && (st.State != verify.StateConsumed || st.UsedBy[daraja.STKCallback] != tx) {
			t.Errorf("token %s used during the outage: state %q used by %v", tok.ID, st.State, st.UsedBy)
		}
	}
}

// childEdge is an edge in a child process of this test binary (see
// TestMain), which the suite can SIGKILL and start again.
type childEdge struct {
	runningEdge
	cfgPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	err     error
}

// childConfig writes cfg (fixed ports, so a restart serves the same
// addresses) for a child edge.
func childConfig(t *testing.T, natsURL string) *childEdge {
	dir := t.TempDir()
	cfg := edgeConfig(t, natsURL)
	cfg.Listen = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg.Admin.Listen = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg.Spool.Dir = filepath.Join(dir, "spool")
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := &childEdge{runningEdge: runningEdge{public: cfg.Listen, admin: cfg.Admin.Listen}, cfgPath: filepath.Join(dir, "edge.json")}
	if err := os.WriteFile(c.cfgPath, cfgJSON, 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// start runs the child and waits until its /readyz answers 200.
func (c *childEdge) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "DARAJA_EDGE_FAULTS_CHILD="+c.cfgPath)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.cmd, c.exited = cmd, make(chan struct{})
	exited := c.exited
	go func() { c.err = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	deadline := time.Now().Add(60 * time.Second)
	for readyz(c.admin) != http.StatusOK {
		select {
		case <-exited:
			t.Fatalf("child edge exited before it was ready: %v", c.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("child edge not ready within a minute")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill sends SIGKILL: no shutdown, no drain, no last write.
func (c *childEdge) kill(t *testing.T) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-c.exited
	// Daraja's next attempt comes on a new connection.
	edgetest.Client.CloseIdleConnections()
}

// TestMain doubles as the child edge of the killed-edge scenarios.
func TestMain(m *testing.M) {
	if path := os.Getenv("DARAJA_EDGE_FAULTS_CHILD"); path != "" {
		os.Exit(runChild(path))
	}
	os.Exit(m.Run())
}

func runChild(path string) int {
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
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
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

// checkUnanswered: a callback that got no answer (cut off by the kill) is
// either on the stream with its token consumed, or not on it with its token
// still issued, so Daraja's retry lands; never consumed without a
// callback. Then every one of them is sent again: each is answered 200.
// It returns the retries and a summary (how many of the cut-off callbacks
// were already stored, how many were not, how many retries got 200).
func checkUnanswered(t *testing.T, e *runningEdge, js jetstream.JetStream, ta *tally) (*tally, string) {
	t.Helper()
	s := readStored(t, js)
	retries := &tally{}
	cutStored, cutIssued := 0, 0
	for _, d := range ta.with(0) {
		st := tokenStatus(t, e.admin, d.token.ID)
		switch {
		case s.byTx[d.txID] > 0:
			cutStored++
			if st.State != verify.StateConsumed {
				t.Errorf("unanswered %s is on the stream but its token is %q", d.txID, st.State)
			}
		default:
			cutIssued++
			if st.State != verify.StateIssued {
				t.Errorf("unanswered %s is not on the stream and its token is %q (used by %v): Daraja's retry cannot land",
					d.txID, st.State, st.UsedBy)
			}
		}
		status := post(e.public, daraja.STKCallback, d.token.Token, stkBody(d.txID))
		retries.record(delivery{token: d.token, txID: d.txID, status: status})
		if status != http.StatusOK {
			t.Errorf("retry of unanswered %s: %d, want 200", d.txID, status)
		}
	}
	return retries, fmt.Sprintf("cut_stored=%d cut_issued=%d retried_ok=%d", cutStored, cutIssued, len(retries.with(http.StatusOK)))
}

// killRounds bounds the tries at a kill that cuts off a request: each
// round sends a batch of callbacks and kills the edge in the middle of it.
const killRounds = 6

// TestEdgeKilled: the edge, a child process in front of a NATS server of
// its own, is SIGKILLed during a stream of callbacks and restarted. Every
// callback answered 200 is on the stream exactly once; every callback cut
// off by the kill is either stored (token consumed) or not (token issued),
// and sent again it is answered 200 and stored once. A kill that cuts off
// nothing proves nothing: the kill is tried again, in a new batch, until
// one does (at most killRounds times).
//
// Tokens that expire in a second, issued before the kill without a
// callback, expire while the edge restarts: the restarted edge publishes
// exactly one missing-callback event for each, and none for the
// short-lived tokens whose callbacks were answered 200 before the kill.
func TestEdgeKilled(t *testing.T) {
	const workers = 8
	node := newNATS(t, "solo", 0, nil)
	e := childConfig(t, node.URL())
	e.start(t)
	_, js := connect(t, node.URL())
	ta := &tally{}
	var exp expiring
	rounds := 0
	for ; rounds < killRounds && len(ta.with(0)) == 0; rounds++ {
		if rounds == 0 {
			exp = issueExpiring(t, &e.runningEdge, ta, 3, 2)
		}
		tokens := issueN(t, &e.runningEdge, 80)
		// The kill comes from the dispatcher while every worker is
		// mid-request, and no new request is handed out until the edge
		// is back: a callback without an answer was cut off by the kill.
		ta.add(send(t, []*runningEdge{&e.runningEdge}, tokens, workers, func(i int) {
			if i == 40 {
				e.kill(t)
				e.start(t)
			}
		}))
	}
	cutOff := len(ta.with(0))
	t.Logf("%d callbacks cut off by the kill (after %d rounds)", cutOff, rounds)
	if cutOff == 0 {
		t.Fatalf("no callback was cut off by the kill in %d rounds: the scenario shows nothing", rounds)
	}
	retries, cut := checkUnanswered(t, &e.runningEdge, js, ta)
	// Only the callbacks in flight at each kill may go unanswered.
	sent, _, _, _ := ta.counts()
	floor(t, ta, sent-rounds*workers, "only requests in flight at the kill may fail")
	missing := exp.check(t, js, e.admin)
	verifyStream(t, "edge-killed", js, ta, fmt.Sprintf("kill_rounds=%d %s %s", rounds, cut, missing), retries)
	// SIGTERM is a clean stop: exit status 0.
	_ = e.cmd.Process.Signal(syscall.SIGTERM)
	<-e.exited
	if e.err != nil {
		t.Errorf("edge after SIGTERM: %v", e.err)
	}
}

// TestEdgeKilledWhileSpooling: NATS is down, so the edge answers from its
// spool; the edge is SIGKILLed with callbacks in the spool; NATS comes back
// and the edge is restarted: it replays the spool, and every callback
// answered 200 (all of them while NATS was down) is on the stream once. As
// in TestEdgeKilled, the kill is tried again until it cuts off a request.
func TestEdgeKilledWhileSpooling(t *testing.T) {
	const workers = 4
	node := newNATS(t, "solo", 0, nil)
	e := childConfig(t, node.URL())
	e.start(t)
	// With NATS up, a first few land directly (and the edge's copy of the
	// tokens is current).
	ta := send(t, []*runningEdge{&e.runningEdge}, issueN(t, &e.runningEdge, 10), workers, nil)
	var spooledAtKill float64
	rounds := 0
	for ; rounds < killRounds && len(ta.with(0)) == 0; rounds++ {
		tokens := issueN(t, &e.runningEdge, 100)
		node.Stop()
		ta.add(send(t, []*runningEdge{&e.runningEdge}, tokens, workers, func(i int) {
			switch i {
			case 75:
				spooledAtKill, _ = metric(e.admin, "daraja_edge_spool_records")
			case 80: // 80 callbacks into the outage, workers mid-request
				e.kill(t)
				node.Start()
				e.start(t)
			}
		}))
		waitSpoolEmpty(t, &e.runningEdge)
	}
	cutOff := len(ta.with(0))
	t.Logf("%v callbacks in the spool shortly before the last kill; %d callbacks cut off (after %d rounds)", spooledAtKill, cutOff, rounds)
	if cutOff == 0 {
		t.Fatalf("no callback was cut off by the kill in %d rounds: the scenario shows nothing", rounds)
	}
	if spooledAtKill < 40 {
		t.Errorf("only %v callbacks in the spool before the kill: the spool was not exercised", spooledAtKill)
	}
	_, js := connect(t, node.URL())
	retries, cut := checkUnanswered(t, &e.runningEdge, js, ta)
	sent, _, _, _ := ta.counts()
	floor(t, ta, sent-rounds*workers, "the spool answers through the outage; only requests in flight at the kill may fail")
	verifyStream(t, "edge-killed-nats-down", js, ta, fmt.Sprintf("kill_rounds=%d spooled_at_kill=%v %s", rounds, spooledAtKill, cut), retries)
}

// TestClusterNodeLost: three NATS nodes (R3 stream and bucket), two edges;
// one node is stopped under load. Nothing lost, nothing duplicated.
func TestClusterNodeLost(t *testing.T) {
	const workers = 4
	ports := []int{freePort(t), freePort(t), freePort(t)}
	var nodes []*natstest.Node
	for i, p := range ports {
		nodes = append(nodes, newNATS(t, "n"+strconv.Itoa(i), p, ports))
	}
	urls := nodes[0].URL() + "," + nodes[1].URL() + "," + nodes[2].URL()
	waitForJetStream(t, urls)
	var edges []*runningEdge
	for range 2 {
		cfg := edgeConfig(t, urls)
		cfg.NATS.Stream.Replicas = 3
		edges = append(edges, startEdge(t, cfg))
	}
	tokens := issueN(t, edges[0], 150)
	ta := send(t, edges, tokens, workers, func(i int) {
		if i == 50 {
			nodes[2].Stop()
		}
	})
	waitSpoolEmpty(t, edges...)
	// Two of three nodes keep quorum, and the spool covers the election:
	// every callback is answered 200.
	floor(t, ta, len(tokens), "two of three nodes keep quorum and the spool covers the rest")
	_, js := connect(t, nodes[0].URL()+","+nodes[1].URL())
	verifyStream(t, "cluster-node-lost", js, ta, "")
}

// TestReplicasRaceOneToken: one token, many concurrent deliveries through
// two edges, half of them one callback and half another. Exactly one
// callback wins: its deliveries all get 200 (first or duplicate), the
// other's all get 403 (replay), and the stream holds the winner once.
func TestReplicasRaceOneToken(t *testing.T) {
	node := newNATS(t, "solo", 0, nil)
	edges := []*runningEdge{startEdge(t, edgeConfig(t, node.URL())), startEdge(t, edgeConfig(t, node.URL()))}
	_, js := connect(t, node.URL())
	const rounds = 5
	ta := &tally{}
	var losers []string
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
				ta.record(delivery{token: tok, txID: id, status: st})
			}()
		}
		wg.Wait()
		winner, loser := a, b
		if statuses[a][0] != http.StatusOK {
			winner, loser = b, a
		}
		losers = append(losers, loser)
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
	}
	floor(t, ta, rounds*10, "every delivery of each round's winner is answered 200")
	s := verifyStream(t, "replicas-one-token", js, ta, "")
	if s.total != rounds {
		t.Errorf("stream holds %d callbacks, want %d (one per token)", s.total, rounds)
	}
	for _, l := range losers {
		if s.byTx[l] != 0 {
			t.Errorf("the losing callback %s is on the stream", l)
		}
	}
}

// TestMissingOncePerToken: expired unconsumed tokens produce exactly one
// missing event each, with two replicas sweeping; a used or reusable token
// produces none.
func TestMissingOncePerToken(t *testing.T) {
	node := newNATS(t, "solo", 0, nil)
	edges := []*runningEdge{startEdge(t, edgeConfig(t, node.URL())), startEdge(t, edgeConfig(t, node.URL()))}
	_, js := connect(t, node.URL())
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

	cons, err := js.OrderedConsumer(context.Background(), "DARAJA", jetstream.OrderedConsumerConfig{FilterSubjects: []string{"daraja.missing.>"}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	events := 0
	read := func(until time.Time) {
		for time.Now().Before(until) {
			m, err := cons.Next(jetstream.FetchMaxWait(time.Second))
			if err != nil {
				continue
			}
			var ev struct {
				TokenID string   `json:"token_id"`
				Kinds   []string `json:"kinds"`
			}
			_ = json.Unmarshal(m.Data(), &ev)
			if ev.TokenID != used.ID && ev.TokenID != reusable.ID && (m.Subject() != "daraja.missing.b2c.result.600000" || len(ev.Kinds) != 2) {
				t.Errorf("missing event on %s: %s", m.Subject(), m.Data())
			}
			got[ev.TokenID]++
			events++
		}
	}
	// Wait for the six (sweeps run every 5s on each replica), then give
	// both replicas two more sweeps to send a second one, which they must
	// not.
	for deadline := time.Now().Add(30 * time.Second); len(got) < len(want) && time.Now().Before(deadline); {
		read(time.Now().Add(time.Second))
	}
	read(time.Now().Add(11 * time.Second))
	dup := 0
	for _, id := range want {
		if got[id] != 1 {
			t.Errorf("token %s: %d missing events, want 1", id, got[id])
		}
		if got[id] > 1 {
			dup += got[id] - 1
		}
	}
	if got[used.ID] != 0 || got[reusable.ID] != 0 {
		t.Errorf("missing events for a used (%d) or reusable (%d) token", got[used.ID], got[reusable.ID])
	}
	msg := fmt.Sprintf("FAULTS missing-callbacks expired=%d missing_events=%d tokens_with_event=%d duplicated=%d replicas=2",
		len(want), events, len(got), dup)
	t.Log(msg)
	fmt.Fprintln(os.Stderr, msg)
}
