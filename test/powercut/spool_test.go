//go:build powercut

package powercut

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/daraja-edge/daraja-edge/internal/lazyfs"
	"github.com/daraja-edge/daraja-edge/verify"
)

// natsNode is a nats-server outside the edge, in this process, that can be
// stopped and started again on its port: with JetStream on its store, or
// without JetStream at all (plain), so that an edge is connected to NATS
// and still cannot store anything.
type natsNode struct {
	opts *server.Options
	srv  *server.Server
}

// newNATS starts a JetStream server (sync always unless syncAlways is
// false) with its store at storeDir ("": a new temporary directory).
func newNATS(t *testing.T, storeDir string, syncAlways bool) *natsNode {
	t.Helper()
	_, port, _ := net.SplitHostPort(freeAddr(t))
	p, _ := strconv.Atoi(port)
	if storeDir == "" {
		storeDir = t.TempDir()
	}
	n := &natsNode{opts: &server.Options{Host: "127.0.0.1", Port: p, JetStream: true, StoreDir: storeDir,
		SyncAlways: syncAlways, NoSigs: true, NoLog: true}}
	n.start(t)
	t.Cleanup(n.stop)
	return n
}

func (n *natsNode) start(t *testing.T) {
	t.Helper()
	n.run(t, n.opts)
}

// startPlain starts the server on the same port without JetStream: the
// edge connects, and every publish fails at once (no responders).
func (n *natsNode) startPlain(t *testing.T) {
	t.Helper()
	o := *n.opts
	o.JetStream, o.StoreDir = false, ""
	n.run(t, &o)
}

func (n *natsNode) run(t *testing.T, o *server.Options) {
	t.Helper()
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(20 * time.Second) {
		t.Fatal("nats-server did not start")
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

// spoolEdge is an edge on a remote NATS whose spool directory is on a
// lazy filesystem, run as a child process.
type spoolEdge struct {
	nats *natsNode
	lfs  *lazyfs.FS
	conf edgeConf
	path string
	api  *api
	tls  tlsFiles
}

// newSpoolEdge mounts the spool's filesystem with opts and configures an
// edge on nats (a new JetStream server on a normal directory when nil).
func newSpoolEdge(t *testing.T, opts lazyfs.Options, nats *natsNode) *spoolEdge {
	t.Helper()
	if nats == nil {
		nats = newNATS(t, "", true)
	}
	e := &spoolEdge{nats: nats, lfs: lazyfs.MountT(t, "", opts), tls: makeTLS(t)}
	e.conf = edgeConf{
		public: freeAddr(t), admin: freeAddr(t), embedded: freeAddr(t), natsURL: e.nats.url(),
		storeDir: t.TempDir(), spoolDir: filepath.Join(e.lfs.MountPoint(), "spool"),
		tls: e.tls, certStorage: t.TempDir(),
	}
	e.path, _ = writeConf(t, e.conf)
	e.api = newAPI(e.conf.public, e.conf.admin, e.tls.roots, nil)
	return e
}

func (e *spoolEdge) start(t *testing.T) *child {
	t.Helper()
	c := startChild(t, "edge", "edge", e.path, "")
	e.api.waitReady(t, c, 60*time.Second)
	return c
}

func (e *spoolEdge) cut(t *testing.T, c *child) lazyfs.Stats {
	t.Helper()
	c.kill(t)
	if err := e.lfs.Crash(); err != nil {
		t.Fatal(err)
	}
	e.api.close()
	return e.lfs.Stats()
}

// restart starts a new edge in this process on the spool that survived;
// it returns once the spool is replayed.
func (e *spoolEdge) restart(t *testing.T) *inProcess {
	t.Helper()
	conf := e.conf
	conf.public, conf.admin, conf.embedded = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	conf.natsURL = e.nats.url()
	conf.spoolDir = filepath.Join(e.lfs.BackingDir(), "spool")
	path, _ := writeConf(t, conf)
	r := startInProcess(t, path, e.tls.roots)
	deadline := time.Now().Add(60 * time.Second)
	for r.srv.Pending() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("spool not replayed within 60s: %d records left", r.srv.Pending())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return r
}

// issueN issues n tokens through a's admin API, in parallel.
func issueN(t *testing.T, a *api, n int) []verify.IssueResponse {
	t.Helper()
	out := make([]verify.IssueResponse, n)
	var wg sync.WaitGroup
	var failed atomic.Int64
	var next atomic.Int64
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				tok, err := a.issue(context.Background())
				if err != nil {
					failed.Add(1)
					return
				}
				out[i] = tok
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Fatalf("%d token issues failed", failed.Load())
	}
	return out
}

// natsDown stops NATS and waits until the edge says it is not ready.
func (e *spoolEdge) natsDown(t *testing.T) {
	t.Helper()
	e.nats.stop()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if s, _ := e.api.get("/readyz"); s != http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the edge still ready 30s after NATS stopped")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// segments lists the spool's segment files on the mount.
func (e *spoolEdge) segments(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(e.conf.spoolDir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, en := range ents {
		if strings.HasSuffix(en.Name(), ".spool") {
			out = append(out, en.Name())
		}
	}
	return out
}

// testSpoolMidLoad: NATS is down, so the edge answers 200 for callbacks
// it has fsynced to its spool; the power is cut mid-load; NATS comes back
// and a new edge on what survived replays the spool. Every 200 is on the
// stream once, its token consumed. The control runs the same edge with its
// spool on a disk that ignores fsync: it must lose.
func testSpoolMidLoad(t *testing.T) {
	for _, c := range []struct {
		name    string
		control bool
	}{{name: "fsync"}, {name: "control-disk-ignores-fsync", control: true}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			phase := phases(t)
			e := newSpoolEdge(t, lazyfs.Options{Namespace: lazyfs.StrictNamespace, IgnoreSync: c.control}, nil)
			ch := e.start(t)
			toks := issueN(t, e.api, 300)
			phase("edge ready, tokens issued")
			e.natsDown(t)
			ld := &load{next: pool(toks)}
			stop, done := make(chan struct{}), make(chan struct{})
			go func() { ld.run("spool", []*api{e.api}, workers, stop); close(done) }()
			ld.waitOK(t, 150, 90*time.Second)
			st := e.cut(t, ch)
			close(stop)
			<-done
			phase("load while NATS is down")
			t.Logf("cut after %d answered 200 (spooled); lazyfs %+v", ld.ok.Load(), st)
			if ld.ok.Load() >= int64(len(toks)) {
				t.Fatal("every callback was answered before the cut: not mid-load")
			}

			e.nats.start(t)
			r := e.restart(t)
			phase("restarted and replayed")
			_, js := connectJS(t, e.nats.url())
			name := "spool-mid-load"
			if c.control {
				name += "/" + c.name
				res := count(ld.deliveries(), readStored(t, js))
				res.extra = fmt.Sprintf("replayed_stored=%g", r.replayed("stored"))
				report(t, name, res)
				if res.lost == 0 {
					t.Fatal("the control lost nothing: this test cannot see a loss")
				}
				return
			}
			res := checkRecovered(t, r.api, js, ld)
			res.extra = fmt.Sprintf("replayed_stored=%g replayed_duplicate=%g", r.replayed("stored"), r.replayed("duplicate"))
			report(t, name, res)
		})
	}
}

// testSpoolReplayCut: callbacks are spooled (answered 200) while the edge
// is connected to a NATS server without JetStream, so that the edge's
// replay attempts (once a second) seal its spool into several segments;
// then JetStream comes back and the edge replays them, one segment after
// the other, deleting each once all its records are acknowledged. The
// power is cut under the whole machine (the spool's disk and NATS's) as
// soon as the first segment's removal is durable, the rest of the spool
// not yet replayed. A new NATS and a new edge on what survived: every 200
// is on the stream exactly once (what was replayed but not yet deleted is
// dropped as a duplicate).
//
// The control is specific to the replay: a NATS that acknowledges before
// its data is on disk (fsync every two minutes), so the replay marks its
// progress (deletes the segment) before what it replayed is durable. The
// same cut must lose the first segment's callbacks.
func testSpoolReplayCut(t *testing.T) {
	for _, c := range []struct {
		name       string
		syncAlways bool
	}{{name: "nats-sync-always", syncAlways: true}, {name: "control-nats-acks-before-fsync"}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			phase := phases(t)
			natsFS := lazyfs.MountT(t, "", lazyfs.Options{Namespace: lazyfs.JournaledNamespace})
			ns := newNATS(t, filepath.Join(natsFS.MountPoint(), "nats"), c.syncAlways)
			e := newSpoolEdge(t, lazyfs.Options{Namespace: lazyfs.StrictNamespace}, ns)
			ch := e.start(t)
			toks := issueN(t, e.api, 150)
			// The stream, the buckets and the tokens are durable: the control
			// loses only what it acknowledges from now on.
			if err := natsFS.Sync(); err != nil {
				t.Fatal(err)
			}

			phase("edge ready, tokens issued")
			// JetStream goes; the edge stays connected to a plain server.
			ns.stop()
			ns.startPlain(t)
			waitConnectedNoStream(t, e.api)
			phase("connected to NATS without JetStream")
			// Three batches, each sealed into a segment of its own by the
			// next replay attempt (which fails: no JetStream). The first
			// is small, so that the cut after its removal finds the rest
			// of the spool not yet replayed.
			ld := &load{next: pool(toks)}
			for batch, size := range []int64{20, 60, 60} {
				failures := e.api.metric("daraja_edge_spool_replay_failures_total")
				// Each publish waits out the JetStream client's retries on
				// "no responders" (about half a second) before the spool
				// takes it: many workers.
				runUntil(ld, fmt.Sprintf("replay%d", batch), e.api, 2*workers, ld.ok.Load()+size)
				waitMetricAbove(t, e.api, "daraja_edge_spool_replay_failures_total", failures, 30*time.Second)
			}
			spooled := ld.ok.Load()
			if _, unanswered, refused := tally(ld); refused+unanswered > 0 {
				t.Fatalf("%d callbacks refused, %d unanswered while spooling", refused, unanswered)
			}
			segs := e.segments(t)
			phase(fmt.Sprintf("%d callbacks spooled in %d segments", spooled, len(segs)))
			if len(segs) < 3 {
				t.Fatalf("the spool holds %v: not sealed into three segments", segs)
			}

			// JetStream comes back; the cut comes once the first segment's
			// removal is durable (unlinked, then its directory fsynced) and
			// a few records of the next are on the stream: those are
			// replayed again after the restart, as duplicates.
			nc, _ := connectJS(t, ns.url())
			var onStream atomic.Int64
			if _, err := nc.Subscribe("daraja.cb.>", func(*nats.Msg) { onStream.Add(1) }); err != nil {
				t.Fatal(err)
			}
			before := e.lfs.Stats()
			ns.stop()
			ns.start(t)
			waitConnected(t, nc)
			// From here the spool's only directory fsyncs are those after a
			// drained segment's removal.
			deadline := time.Now().Add(60 * time.Second)
			var firstRemoved int64 = -1
			for {
				st := e.lfs.Stats()
				if firstRemoved < 0 && st.Unlinks > before.Unlinks && st.DirSyncs > before.DirSyncs {
					firstRemoved = onStream.Load()
				}
				if firstRemoved >= 0 && onStream.Load() >= firstRemoved+3 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no segment removed and the next one replayed within 60s of JetStream's return: lazyfs %+v, %d on the stream", st, onStream.Load())
				}
				time.Sleep(time.Millisecond)
			}
			phase("JetStream back, first segment replayed")
			ch.kill(t)
			if err := e.lfs.Crash(); err != nil {
				t.Fatal(err)
			}
			if err := natsFS.Crash(); err != nil {
				t.Fatal(err)
			}
			ns.stop()
			e.api.close()
			var left []string
			for _, f := range listTree(filepath.Join(e.lfs.BackingDir(), "spool")) {
				if strings.Contains(f, ".spool(") {
					left = append(left, f)
				}
			}
			t.Logf("cut with %d seen on the stream (%d when the first segment's removal was durable); left of the spool: %v", onStream.Load(), firstRemoved, left)

			ns.opts.StoreDir = filepath.Join(natsFS.BackingDir(), "nats")
			ns.start(t)
			r := e.restart(t)
			phase("restarted and replayed")
			_, js := connectJS(t, ns.url())
			extra := fmt.Sprintf("segments=%d segments_left=%d replayed_stored=%g replayed_duplicate=%g",
				len(segs), len(left), r.replayed("stored"), r.replayed("duplicate"))
			if c.syncAlways {
				res := checkRecovered(t, r.api, js, ld)
				phase("verified")
				res.extra = extra
				report(t, "spool-replay-cut", res)
				if len(left) == 0 {
					t.Error("the whole spool was replayed before the cut: not a cut during a replay")
				}
				if r.replayed("duplicate") == 0 {
					t.Log("no record was replayed twice: the cut fell between two segments")
				}
				return
			}
			res := count(ld.deliveries(), readStored(t, js))
			res.extra = extra
			report(t, "spool-replay-cut/"+c.name, res)
			if res.lost == 0 {
				t.Fatal("the control lost nothing: this test cannot see a loss in a replay")
			}
		})
	}
}

// runUntil runs ld against a from workers until it has n callbacks
// answered 200 (or its tokens run out).
func runUntil(ld *load, name string, a *api, workers int, n int64) {
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stop)
		for ld.ok.Load() < n {
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	ld.run(name, []*api{a}, workers, stop)
	close(done)
}

// tally counts ld's deliveries: answered 200, not answered, answered
// otherwise.
func tally(ld *load) (ok, unanswered, refused int) {
	for _, d := range ld.deliveries() {
		switch d.status {
		case http.StatusOK:
			ok++
		case 0:
			unanswered++
		default:
			refused++
		}
	}
	return ok, unanswered, refused
}

// waitConnectedNoStream waits until the edge is connected to NATS but
// cannot reach its stream.
func waitConnectedNoStream(t *testing.T, a *api) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, body := a.get("/readyz")
		if s != http.StatusOK && strings.Contains(body, "stream") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the edge not connected to a NATS without JetStream within 30s: %d %s", s, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitMetricAbove waits until an unlabelled (or fully labelled) sample on
// a's /metrics exceeds v.
func waitMetricAbove(t *testing.T, a *api, name string, v float64, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for a.metric(name) <= v {
		if time.Now().After(deadline) {
			t.Fatalf("%s still %g after %s", name, a.metric(name), d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// replayed reads daraja_edge_spool_replayed_total{outcome}.
func (e *inProcess) replayed(outcome string) float64 {
	return e.api.metric(`daraja_edge_spool_replayed_total{outcome="` + outcome + `"}`)
}

func waitConnected(t *testing.T, nc *nats.Conn) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !nc.IsConnected() {
		if time.Now().After(deadline) {
			t.Fatal("not reconnected to NATS within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
