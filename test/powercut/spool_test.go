//go:build powercut

package powercut

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/daraja-edge/daraja-edge/internal/lazyfs"
	"github.com/daraja-edge/daraja-edge/publish"
	"github.com/daraja-edge/daraja-edge/spool"
	"github.com/daraja-edge/daraja-edge/verify"
)

// natsNode is a nats-server outside the edge (sync always, on a normal
// directory) that can be stopped and started again on its port and store.
type natsNode struct {
	opts *server.Options
	srv  *server.Server
}

func newNATS(t *testing.T) *natsNode {
	t.Helper()
	_, port, _ := net.SplitHostPort(freeAddr(t))
	p, _ := strconv.Atoi(port)
	n := &natsNode{opts: &server.Options{Host: "127.0.0.1", Port: p, JetStream: true, StoreDir: t.TempDir(),
		SyncAlways: true, NoSigs: true, NoLog: true}}
	n.start(t)
	t.Cleanup(n.stop)
	return n
}

func (n *natsNode) start(t *testing.T) {
	t.Helper()
	s, err := server.NewServer(n.opts)
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

func newSpoolEdge(t *testing.T) *spoolEdge {
	t.Helper()
	e := &spoolEdge{nats: newNATS(t), lfs: lazyfs.MountT(t, "", lazyfs.Options{Namespace: lazyfs.StrictNamespace}), tls: makeTLS(t)}
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

// TestSpoolMidLoad: NATS is down, so the edge answers 200 for callbacks
// it has fsynced to its spool; the power is cut mid-load; NATS comes back
// and a new edge on what survived replays the spool. Every 200 is on the
// stream once, its token consumed.
func TestSpoolMidLoad(t *testing.T) {
	t.Parallel() // at most GOMAXPROCS at once: the cluster case mostly waits on elections
	e := newSpoolEdge(t)
	ch := e.start(t)
	toks := issueN(t, e.api, 400)
	e.natsDown(t)
	ld := &load{next: pool(toks)}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { ld.run("spool", []*api{e.api}, workers, stop); close(done) }()
	ld.waitOK(t, 150, 90*time.Second)
	st := e.cut(t, ch)
	close(stop)
	<-done
	t.Logf("cut after %d answered 200 (spooled); lazyfs %+v", ld.ok.Load(), st)
	if ld.ok.Load() >= int64(len(toks)) {
		t.Fatal("every callback was answered before the cut: not mid-load")
	}

	e.nats.start(t)
	r := e.restart(t)
	_, js := connectJS(t, e.nats.url())
	res := checkRecovered(t, r.api, js, ld)
	res.extra = fmt.Sprintf("replayed_stored=%g replayed_duplicate=%g", r.replayed("stored"), r.replayed("duplicate"))
	report(t, "spool-mid-load", res)
}

// TestSpoolReplayCut: callbacks spooled while NATS was down (answered 200)
// are being replayed when the power is cut; a new edge on what survived
// replays the rest. Every 200 is on the stream exactly once: what was
// replayed before the cut but not yet marked done in the spool is dropped
// as a duplicate, not stored twice.
func TestSpoolReplayCut(t *testing.T) {
	t.Parallel() // at most GOMAXPROCS at once: the cluster case mostly waits on elections
	const spooled = 300
	e := newSpoolEdge(t)
	ch := e.start(t)
	toks := issueN(t, e.api, spooled)
	e.natsDown(t)
	ld := &load{next: pool(toks)}
	ld.run("replay", []*api{e.api}, workers, make(chan struct{})) // ends when the tokens run out
	if n := ld.ok.Load(); n != spooled {
		t.Fatalf("%d of %d spooled callbacks answered 200", n, spooled)
	}

	// NATS comes back; the power goes when a third of the spool is on the
	// stream.
	e.nats.start(t)
	nc, js := connectJS(t, e.nats.url())
	var seen atomic.Int64
	trigger := make(chan struct{})
	sub, err := nc.Subscribe("daraja.cb.>", func(*nats.Msg) {
		if seen.Add(1) == spooled/3 {
			close(trigger)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	select {
	case <-trigger:
	case <-time.After(60 * time.Second):
		t.Fatalf("replay did not reach %d callbacks within 60s (%d)", spooled/3, seen.Load())
	}
	st := e.cut(t, ch)
	_ = sub.Unsubscribe()
	before := readStored(t, js)
	t.Logf("cut with %d of %d replayed; lazyfs %+v", before.total, spooled, st)
	if before.total >= spooled {
		t.Fatalf("the replay finished (%d) before the cut: not a cut during a replay", before.total)
	}

	r := e.restart(t)
	res := checkRecovered(t, r.api, js, ld)
	res.extra = fmt.Sprintf("on_stream_at_cut=%d replayed_stored=%g replayed_duplicate=%g",
		before.total, r.replayed("stored"), r.replayed("duplicate"))
	report(t, "spool-replay-cut", res)
	if r.replayed("duplicate") == 0 {
		t.Log("no record was replayed twice: the cut fell right after the spool marked its progress")
	}
}

// replayed reads daraja_edge_spool_replayed_total{outcome}.
func (e *inProcess) replayed(outcome string) float64 {
	return e.api.metric(`daraja_edge_spool_replayed_total{outcome="` + outcome + `"}`)
}

// TestSpoolControlNoFsync is the spool's control, at the level of the
// edge's durable path (publish.Durable over the spool, as the edge wires
// them) since the edge's config has no way to skip the spool's fsync:
// with spool.Options.NoSync, callbacks spooled (what the edge answers 200
// for) while NATS is down do not survive a power cut, whether it comes
// while spooling or during the replay.
func TestSpoolControlNoFsync(t *testing.T) {
	t.Parallel() // at most GOMAXPROCS at once: the cluster case mostly waits on elections
	for _, duringReplay := range []bool{false, true} {
		name := "spool-mid-load/control-no-fsync"
		if duringReplay {
			name = "spool-replay-cut/control-no-fsync"
		}
		t.Run(name, func(t *testing.T) {
			const n = 200
			ctx := context.Background()
			lfs := lazyfs.MountT(t, "", lazyfs.Options{Namespace: lazyfs.StrictNamespace})
			ns := newNATS(t)
			nc, js := connectJS(t, ns.url(), nats.ReconnectBufSize(-1))
			subjects := publish.Subjects{Prefix: "daraja"}
			stream, err := publish.EnsureStream(ctx, js, publish.StreamOptions{Name: "DARAJA", Subjects: subjects.StreamSubjects(),
				Replicas: 1, DuplicateWindow: time.Hour, MaxAge: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			pub := publish.New(nc, js, stream, 3*time.Second)
			sp, err := spool.OpenOptions(filepath.Join(lfs.MountPoint(), "spool"), spool.Options{MaxBytes: 1 << 30, NoSync: true}, nil)
			if err != nil {
				t.Fatal(err)
			}
			d := publish.NewDurable(pub, sp, subjects, nil, nil)
			ns.stop()
			var ds []delivery
			for i := range n {
				tx := fmt.Sprintf("ws_CO_control_%04d", i)
				c := &publish.Callback{Kind: "stk.callback", Shortcode: shortID, TransactionID: tx, TokenID: fmt.Sprintf("tok%04d", i),
					ReceivedAt: time.Now(), Body: stkBody(tx)}
				out, err := d.Store(ctx, c.Msg(subjects.Callback(c.Kind, c.Shortcode, c.TokenID)), true)
				if err != nil || out != publish.Spooled {
					t.Fatalf("store %d: %v %v", i, out, err)
				}
				ds = append(ds, delivery{tx: tx, status: http.StatusOK}) // the edge's 200
			}
			ns.start(t)
			waitConnected(t, nc)
			if duringReplay {
				var replayed int
				_, err := sp.Drain(ctx, func(ctx context.Context, m *nats.Msg) error {
					if replayed == n/3 {
						if err := lfs.Crash(); err != nil {
							t.Fatal(err)
						}
						return fmt.Errorf("power cut")
					}
					replayed++
					_, err := pub.Store(ctx, m, false)
					return err
				})
				if err == nil {
					t.Fatal("drain ended without the cut")
				}
			} else if err := lfs.Crash(); err != nil {
				t.Fatal(err)
			}
			_ = sp.Close()
			sp2, err := spool.Open(filepath.Join(lfs.BackingDir(), "spool"), 1<<30, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = sp2.Close() })
			if _, err := publish.NewDurable(pub, sp2, subjects, nil, nil).Drain(ctx); err != nil {
				t.Fatal(err)
			}
			res := count(ds, readStored(t, js))
			report(t, name, res)
			if res.lost == 0 {
				t.Fatal("the control lost nothing: this test cannot see a loss")
			}
		})
	}
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
