//go:build powercut

package powercut

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/internal/lazyfs"
	"github.com/daraja-edge/daraja-edge/verify"
)

// nodeSpec is what a child NATS node runs with.
type nodeSpec struct {
	Name   string   `json:"name"`
	Host   string   `json:"host"`
	Store  string   `json:"store"`
	Routes []string `json:"routes"`
	// NoSync: fsync on NATS's default schedule (every two minutes) instead
	// of before every ack. The control's nodes: it must lose.
	NoSync bool `json:"no_sync"`
}

const (
	clientPort  = 4222
	clusterPort = 6222
)

// Pings between the nodes, and from the nodes to their clients. NATS's
// defaults (routes: a ping every 30 s, clients: every 2 min, two
// unanswered allowed) leave a connection that a partition silently broke
// (a link down: no FIN, no RST, TCP retransmissions backing off) standing
// for a minute or more after the heal, and the healed node's replicas not
// current until it goes. A short interval finds such a connection stale in
// a few seconds, so it is redialled at once after the heal. Operators of
// deploy/'s cluster may want the same (cluster { ping_interval: "2s",
// ping_max: 3 } and ping_interval/ping_max at the top level) where a
// partition without resets (a cloud network, a firewall that drops) is
// possible.
const (
	nodePingInterval = 2 * time.Second
	nodeMaxPingsOut  = 3
)

// runChildNATS runs one JetStream cluster node (sync_interval: always,
// unless the spec says NoSync) from the spec at path until SIGTERM (or
// SIGKILL).
func runChildNATS(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var spec nodeSpec
	if err := json.Unmarshal(data, &spec); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	o := &server.Options{
		ServerName: spec.Name, Host: spec.Host, Port: clientPort,
		JetStream: true, StoreDir: spec.Store, SyncAlways: !spec.NoSync, NoSigs: true,
		PingInterval: nodePingInterval, MaxPingsOut: nodeMaxPingsOut,
		Cluster: server.ClusterOpts{Name: "powercut", Host: spec.Host, Port: clusterPort,
			PingInterval: nodePingInterval, MaxPingsOut: nodeMaxPingsOut},
	}
	for _, r := range spec.Routes {
		o.Routes = append(o.Routes, server.RoutesFromStr(r)...)
	}
	s, err := server.NewServer(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child nats:", err)
		return 1
	}
	s.ConfigureLogger()
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		fmt.Fprintln(os.Stderr, "child nats: not ready within 30s")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	s.Shutdown()
	s.WaitForShutdown()
	return 0
}

// clusterNode is one node: its namespace, its store on a lazy filesystem
// (remounted over what survived after each cut), its process.
type clusterNode struct {
	i      int
	name   string
	ns     string
	noSync bool
	lfs    *lazyfs.FS
	proc   *child
	gen    int
}

func (n *clusterNode) start(t *testing.T) {
	t.Helper()
	var routes []string
	for j := 1; j <= 3; j++ {
		if j != n.i {
			routes = append(routes, fmt.Sprintf("nats://%s:%d", nodeAddr(j), clusterPort))
		}
	}
	spec, _ := json.Marshal(nodeSpec{Name: n.name, Host: nodeAddr(n.i), Store: n.lfs.MountPoint(), Routes: routes, NoSync: n.noSync})
	path := filepath.Join(t.TempDir(), n.name+".json")
	if err := os.WriteFile(path, spec, 0o600); err != nil {
		t.Fatal(err)
	}
	n.gen++
	n.proc = startChild(t, fmt.Sprintf("%s-%d", n.name, n.gen), "nats", path, n.ns)
}

// cut is the node's power cut: the process dies at once, its disk loses
// what was not synced, and the mount goes.
func (n *clusterNode) cut(t *testing.T) lazyfs.Stats {
	t.Helper()
	n.proc.kill(t)
	if err := n.lfs.Crash(); err != nil {
		t.Fatal(err)
	}
	st := n.lfs.Stats()
	if err := n.lfs.Unmount(); err != nil {
		t.Fatal(err)
	}
	return st
}

// powerOn mounts what survived and starts the node on it.
func (n *clusterNode) powerOn(t *testing.T) {
	t.Helper()
	n.lfs = lazyfs.MountT(t, n.lfs.BackingDir(), lazyfs.Options{Namespace: lazyfs.JournaledNamespace})
	n.start(t)
}

func clusterURLs() string {
	return fmt.Sprintf("nats://%s:%d,nats://%s:%d,nats://%s:%d", nodeAddr(1), clientPort, nodeAddr(2), clientPort, nodeAddr(3), clientPort)
}

// nodeJS connects to the nodes at url (inside the hub); closed when the
// test ends.
func nodeJS(t *testing.T, topo *topology, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.SetCustomDialer(natsDialer{topo}), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true),
		nats.ReconnectWait(100*time.Millisecond), nats.Timeout(3*time.Second), nats.PingInterval(nodePingInterval), nats.MaxPingsOutstanding(nodeMaxPingsOut))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	return nc, js
}

// streamInfo asks for DARAJA's info through a fresh connection to node i.
func streamInfo(topo *topology, i int) (*jetstream.StreamInfo, error) {
	nc, err := nats.Connect(fmt.Sprintf("nats://%s:%d", nodeAddr(i), clientPort), nats.SetCustomDialer(natsDialer{topo}),
		nats.Timeout(2*time.Second), nats.NoReconnect())
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, "DARAJA")
	if err != nil {
		return nil, err
	}
	return s.CachedInfo(), nil
}

// deadline bounds a whole case: every wait in it ends by then at the
// latest, and says so.
type deadline time.Time

// bound is d, or what is left before the deadline if that is less.
func (dl deadline) bound(d time.Duration) time.Duration {
	return min(d, time.Until(time.Time(dl)))
}

// waitFor polls cond until it holds, for at most d (and not past dl).
func waitFor(t *testing.T, dl deadline, what string, d time.Duration, cond func() error) {
	t.Helper()
	limit := dl.bound(d)
	end := time.Now().Add(limit)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(end) {
			if limit < d {
				t.Fatalf("%s not within the case's own deadline (%s left of %s): %v", what, limit.Round(time.Millisecond), d, err)
			}
			t.Fatalf("%s not within %s: %v", what, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// healthy: node i sees a stream leader and every replica current.
func healthy(topo *topology, i int) error {
	info, err := streamInfo(topo, i)
	if err != nil {
		return err
	}
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return errors.New("no stream leader")
	}
	if len(info.Cluster.Replicas) != 2 {
		return fmt.Errorf("%d other replicas", len(info.Cluster.Replicas))
	}
	for _, p := range info.Cluster.Replicas {
		if !p.Current || p.Offline {
			return fmt.Errorf("replica %s not current", p.Name)
		}
	}
	return nil
}

// cluster is three NATS nodes (R3), each in a namespace of its own with
// its store on a lazy filesystem, and the edges in front of them in the
// hub namespace.
type cluster struct {
	topo  *topology
	nodes []*clusterNode
	js    jetstream.JetStream
	dl    deadline
}

// startCluster builds the namespaces (named after name), starts the three
// nodes and waits until they can place an R3 stream.
func startCluster(t *testing.T, name string, noSync bool, dl deadline) *cluster {
	t.Helper()
	lazyfs.Require(t)
	c := &cluster{topo: newTopology(t, name, 3), dl: dl}
	for i := range 3 {
		n := &clusterNode{i: i + 1, name: fmt.Sprintf("n%d", i+1), ns: c.topo.nodes[i], noSync: noSync,
			lfs: lazyfs.MountT(t, "", lazyfs.Options{Namespace: lazyfs.JournaledNamespace})}
		n.start(t)
		c.nodes = append(c.nodes, n)
	}
	_, c.js = nodeJS(t, c.topo, clusterURLs())
	waitFor(t, dl, "JetStream cluster", 60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := c.js.AccountInfo(ctx); err != nil {
			return err
		}
		// A meta leader alone is not enough: an R3 stream needs all three
		// peers placed ("no suitable peers for placement" otherwise, seen
		// on a loaded machine). Place one and remove it.
		if _, err := c.js.CreateStream(ctx, jetstream.StreamConfig{Name: "PROBE", Subjects: []string{"probe.>"}, Replicas: 3}); err != nil {
			return err
		}
		return c.js.DeleteStream(ctx, "PROBE")
	})
	return c
}

// startEdges starts n edges in the hub, in front of the cluster (R3
// stream and buckets), and waits until they are ready.
func (c *cluster) startEdges(t *testing.T, n int) []*api {
	t.Helper()
	tlsf := makeTLS(t)
	var apis []*api
	for i := range n {
		conf := edgeConf{
			public: fmt.Sprintf("127.0.0.1:%d", 8443+i), admin: fmt.Sprintf("127.0.0.1:%d", 9090+i),
			embedded: fmt.Sprintf("127.0.0.1:%d", 4222+i), natsURL: clusterURLs(), replicas: 3,
			storeDir: t.TempDir(), spoolDir: filepath.Join(t.TempDir(), "spool"), tls: tlsf, certStorage: t.TempDir(),
		}
		path, _ := writeConf(t, conf)
		// One after the other: two edges creating the R3 stream at once on
		// a loaded machine, one gave up ("publish: stream DARAJA: context
		// deadline exceeded").
		ch := startChild(t, fmt.Sprintf("edge%d", i+1), "edge", path, c.topo.hub)
		a := newAPI(conf.public, conf.admin, tlsf.roots, c.topo.dial)
		a.waitReady(t, ch, c.dl.bound(90*time.Second))
		apis = append(apis, a)
	}
	return apis
}

// leader is the node (1-based) that leads the stream.
func (c *cluster) leader(t *testing.T) int {
	t.Helper()
	var idx int
	waitFor(t, c.dl, "a stream leader", 60*time.Second, func() error {
		for i := 1; i <= 3; i++ {
			info, err := streamInfo(c.topo, i)
			if err != nil || info.Cluster == nil || info.Cluster.Leader == "" {
				continue
			}
			for _, n := range c.nodes {
				if n.name == info.Cluster.Leader {
					idx = n.i
					return nil
				}
			}
		}
		return errors.New("no node names a leader")
	})
	return idx
}

// cutAll cuts the power under the three nodes at once, then powers them
// on over what survived.
func (c *cluster) cutAll(t *testing.T) {
	t.Helper()
	for _, n := range c.nodes {
		n.proc.kill(t)
	}
	for _, n := range c.nodes {
		if err := n.lfs.Crash(); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range c.nodes {
		st := n.lfs.Stats()
		if err := n.lfs.Unmount(); err != nil {
			t.Fatal(err)
		}
		t.Logf("all three cut: %s lazyfs %+v", n.name, st)
	}
	for _, n := range c.nodes {
		n.powerOn(t)
	}
}

// clusterDeadline bounds TestCluster as a whole (alone it takes about 40 s
// on two cores; the suite must end within two minutes).
const clusterDeadline = 110 * time.Second

// TestCluster: an R3 JetStream cluster (sync_interval: always), each node
// in a network namespace of its own with its store on a lazy filesystem,
// two edges in front. Mid-load the power is cut under one node (the
// stream leader), which comes back; then the stream leader is partitioned
// away and healed; then the power is cut under all three at once, and
// they come back. Every callback answered 200 (stored on the stream, or
// spooled by an edge while the stream was out of reach) is on the stream
// exactly once afterwards.
func TestCluster(t *testing.T) {
	t.Parallel()
	clusterCaseStarted()
	defer markClusterUp()
	started := time.Now()
	dl := deadline(started.Add(clusterDeadline))
	c := startCluster(t, "r3", false, dl)
	topo, nodes, js := c.topo, c.nodes, c.js
	apis := c.startEdges(t, 2)
	waitFor(t, dl, "stream replicas current", 60*time.Second, func() error { return healthy(topo, 1) })
	t.Logf("cluster and edges ready in %s", time.Since(started).Round(time.Millisecond))
	markClusterUp()
	mark := time.Now()

	// While the stream leader is partitioned away, an edge whose NATS
	// connection is on that node cannot issue tokens (the token bucket
	// write waits on the lost node until the client's ping timeout), so
	// callbacks during the partition use tokens issued before it, from the
	// edge they are sent to. Their callbacks still get 200: stored, or
	// spooled once the stream's ack times out.
	var partitioned atomic.Bool
	preissued := map[*api]func(context.Context, *api) (verify.IssueResponse, error){}
	for _, a := range apis {
		preissued[a] = pool(issueN(t, a, 40))
	}
	ld := &load{pace: 20 * time.Millisecond, next: func(ctx context.Context, a *api) (verify.IssueResponse, error) {
		if !partitioned.Load() {
			return a.issue(ctx)
		}
		tok, err := preissued[a](ctx, a)
		if errors.Is(err, errNoTokens) {
			return tok, errors.New("pre-issued tokens used up") // the worker waits
		}
		return tok, err
	}}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { ld.run("cluster", apis, workers/4, stop); close(done) }()
	defer func() {
		select {
		case <-done:
		default:
			close(stop)
			<-done
		}
	}()
	more := func(n int64) {
		t.Helper()
		ld.waitOK(t, ld.ok.Load()+n, dl.bound(90*time.Second))
	}
	phase := func(what string) {
		t.Logf("phase %s: %s (%d answered 200)", what, time.Since(mark).Round(time.Millisecond), ld.ok.Load())
		mark = time.Now()
	}

	// 1. Power cut under one node, the stream leader, mid-load.
	more(80)
	first := c.leader(t)
	st := nodes[first-1].cut(t)
	t.Logf("power cut under n%d (stream leader) after %d answered 200; lazyfs %+v", first, ld.ok.Load(), st)
	phase("load until the first cut")
	more(50) // the other two carry on
	phase("load on two nodes")
	nodes[first-1].powerOn(t)
	waitFor(t, dl, fmt.Sprintf("n%d caught up", first), 60*time.Second, func() error { return healthy(topo, first) })
	phase("node back and caught up")
	more(30)

	// 2. Partition the stream leader away, then heal.
	cutOff := c.leader(t)
	partitioned.Store(true)
	topo.partition(t, cutOff)
	t.Logf("n%d (stream leader) partitioned away after %d answered 200", cutOff, ld.ok.Load())
	other := cutOff%3 + 1
	waitFor(t, dl, "a new leader on the majority side", 60*time.Second, func() error {
		info, err := streamInfo(topo, other)
		if err != nil {
			return err
		}
		if info.Cluster == nil || info.Cluster.Leader == "" || info.Cluster.Leader == nodes[cutOff-1].name {
			return errors.New("still no new leader")
		}
		return nil
	})
	phase("new leader elected")
	more(16) // half of them wait out a publish timeout (3 s) on the edge cut off
	phase("load during the partition")
	topo.heal(t, cutOff)
	partitioned.Store(false)
	waitFor(t, dl, fmt.Sprintf("n%d caught up after the heal", cutOff), 60*time.Second, func() error { return healthy(topo, cutOff) })
	phase("healed and caught up")
	more(20)

	// 3. Power cut under all three at once.
	before := ld.ok.Load()
	c.cutAll(t)
	waitFor(t, dl, "the cluster back with a meta leader and every replica current", 60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := js.AccountInfo(ctx); err != nil {
			return fmt.Errorf("account info (meta leader): %w", err)
		}
		return healthy(topo, 1)
	})
	phase("all three back")
	more(20)
	close(stop)
	<-done
	t.Logf("all three cut after %d answered 200; %d at the end", before, ld.ok.Load())

	// Every edge hands its spool to the stream.
	for i, a := range apis {
		waitFor(t, dl, fmt.Sprintf("edge%d spool replayed", i+1), 60*time.Second, func() error {
			if n := a.metric("daraja_edge_spool_records"); n != 0 {
				return fmt.Errorf("%g records spooled", n)
			}
			if s, body := a.get("/readyz"); s != http.StatusOK {
				return fmt.Errorf("not ready: %s", body)
			}
			return nil
		})
	}
	phase("spools replayed")
	res := checkRecovered(t, apis[0], js, ld)
	phase("verified")
	res.extra = fmt.Sprintf("nodes=3 replicas=3 netns=%s first_cut=n%d partitioned=n%d spooled_edge1=%g spooled_edge2=%g",
		topo.hub, first, cutOff, apis[0].metric(`daraja_edge_spool_replayed_total{outcome="stored"}`)+apis[0].metric(`daraja_edge_spool_replayed_total{outcome="duplicate"}`),
		apis[1].metric(`daraja_edge_spool_replayed_total{outcome="stored"}`)+apis[1].metric(`daraja_edge_spool_replayed_total{outcome="duplicate"}`))
	report(t, "cluster-r3", res)
	if res.answered < 200 {
		t.Errorf("only %d callbacks answered 200 (want at least 200): the cuts were not under load", res.answered)
	}
	t.Logf("cluster case took %s", time.Since(started).Round(time.Millisecond))
	if time.Now().After(time.Time(dl)) {
		t.Errorf("the cluster case took %s, past its own deadline of %s", time.Since(started).Round(time.Millisecond), clusterDeadline)
	}
}

// clusterControlDeadline bounds TestClusterControl.
const clusterControlDeadline = 90 * time.Second

// TestClusterControl is the cluster case's control: the same R3 cluster
// and an edge in front, but nodes that fsync on NATS's default schedule
// instead of before every ack. Mid-load the power is cut under all three
// at once; the callbacks answered 200 must not all be there afterwards,
// or the cluster case could not see a loss.
func TestClusterControl(t *testing.T) {
	t.Parallel()
	clusterCaseStarted()
	started := time.Now()
	dl := deadline(started.Add(clusterControlDeadline))
	c := startCluster(t, "ctl", true, dl)
	apis := c.startEdges(t, 1)
	ld := &load{pace: 10 * time.Millisecond}
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { ld.run("cluster-control", apis, workers/4, stop); close(done) }()
	ld.waitOK(t, 150, dl.bound(60*time.Second))
	c.cutAll(t)
	close(stop)
	<-done
	t.Logf("all three cut after %d answered 200", ld.ok.Load())

	// The stream may be gone, or back with a leader and less in it.
	var s stored
	waitFor(t, dl, "the cluster back", 60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := c.js.AccountInfo(ctx); err != nil {
			return err
		}
		if _, err := c.js.Stream(ctx, "DARAJA"); errors.Is(err, jetstream.ErrStreamNotFound) {
			s = stored{byTx: map[string]int{}, idsByTx: map[string]map[string]int{}}
			return nil
		} else if err != nil {
			return err
		}
		for i := 1; i <= 3; i++ {
			if info, err := streamInfo(c.topo, i); err == nil && info.Cluster != nil && info.Cluster.Leader != "" {
				s = readStored(t, c.js)
				return nil
			}
		}
		return errors.New("the stream has no leader")
	})
	res := count(ld.deliveries(), s)
	res.extra = fmt.Sprintf("nodes=3 replicas=3 sync=2m netns=%s", c.topo.hub)
	report(t, "cluster-r3/control-nosync", res)
	if res.answered < 150 {
		t.Errorf("only %d callbacks answered 200", res.answered)
	}
	if res.lost == 0 {
		t.Fatal("the control lost nothing: the cluster case cannot see a loss")
	}
	t.Logf("cluster control took %s", time.Since(started).Round(time.Millisecond))
}
