// Package natstest runs a real embedded nats-server with JetStream for tests.
package natstest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server starts a JetStream-enabled nats-server on a random loopback port
// with its store in a temporary directory; it stops when the test ends.
func Server(t testing.TB) *server.Server { return ServerWith(t, &server.Options{}) }

// ServerWith is Server with extra options (authentication, TLS, …); the
// address, JetStream and store fields of o are set by it.
func ServerWith(t testing.TB, o *server.Options) *server.Server {
	t.Helper()
	o.Host, o.Port, o.JetStream, o.StoreDir, o.NoSigs, o.NoLog = "127.0.0.1", server.RANDOM_PORT, true, t.TempDir(), true, true
	ns, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// Connect connects to ns and returns the connection and its JetStream
// context; the connection closes when the test ends.
func Connect(t testing.TB, ns *server.Server) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return ConnectURL(t, ns.ClientURL())
}

// ConnectURL is Connect to addr (a comma-separated list for a cluster) with
// extra options.
func ConnectURL(t testing.TB, addr string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// Node is a JetStream-enabled nats-server that a test can stop and start
// again on the same port and store, as NATS going away and coming back.
type Node struct {
	t    testing.TB
	opts *server.Options
	srv  *server.Server
}

// NewNode starts a restartable server (see Server); it stops when the test
// ends.
func NewNode(t testing.TB) *Node { return NewNodeWith(t, &server.Options{}) }

// NewNodeWith is NewNode with options of the test's own (a name, a
// cluster); loopback, JetStream, a temporary store and quiet logs are
// filled in where o leaves them empty.
func NewNodeWith(t testing.TB, o *server.Options) *Node {
	t.Helper()
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = server.RANDOM_PORT
	}
	if o.StoreDir == "" {
		o.StoreDir = t.TempDir()
	}
	o.JetStream, o.NoSigs, o.NoLog = true, true, true
	n := &Node{t: t, opts: o}
	n.Start()
	t.Cleanup(n.Stop)
	return n
}

// Server is the running server (nil while stopped).
func (n *Node) Server() *server.Server { return n.srv }

// URL is the client URL, the same across restarts.
func (n *Node) URL() string { return fmt.Sprintf("nats://%s:%d", n.opts.Host, n.opts.Port) }

// Start starts the server (again) on its port and store.
func (n *Node) Start() {
	n.t.Helper()
	if n.srv != nil {
		return
	}
	o := n.opts.Clone()
	ns, err := server.NewServer(o)
	if err != nil {
		n.t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(20 * time.Second) {
		n.t.Fatal("nats-server did not start")
	}
	n.opts.Port = ns.Addr().(*net.TCPAddr).Port // a random port is kept from the first start
	n.srv = ns
}

// Stop shuts the server down and waits until it is gone. Safe twice.
func (n *Node) Stop() {
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		n.srv = nil
	}
}

// Cluster starts size JetStream servers routed into one cluster on
// loopback, each with its own store, and returns once the cluster can
// place a stream with size replicas (a meta leader alone is not enough on
// a loaded machine: placement needs every peer). They stop when the test
// ends. ClusterURLs joins their client URLs for nats.Connect.
func Cluster(t testing.TB, size int) []*server.Server {
	t.Helper()
	ports := make([]int, size)
	for i := range ports {
		ports[i] = freePort(t)
	}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, server.RoutesFromStr(fmt.Sprintf("nats://127.0.0.1:%d", p))...)
	}
	servers := make([]*server.Server, size)
	for i := range servers {
		o := &server.Options{ServerName: fmt.Sprintf("n%d", i+1), Host: "127.0.0.1", Port: server.RANDOM_PORT,
			JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
			Cluster: server.ClusterOpts{Name: "natstest", Host: "127.0.0.1", Port: ports[i]}, Routes: routes}
		ns, err := server.NewServer(o)
		if err != nil {
			t.Fatal(err)
		}
		go ns.Start()
		t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
		servers[i] = ns
	}
	for _, ns := range servers {
		if !ns.ReadyForConnections(20 * time.Second) {
			t.Fatalf("nats-server %s did not start", ns.Name())
		}
	}
	nc, err := nats.Connect(ClusterURLs(servers))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: "NATSTEST_PROBE", Subjects: []string{"natstest.probe.>"},
			Replicas: size})
		if err == nil {
			err = js.DeleteStream(ctx, "NATSTEST_PROBE")
		}
		cancel()
		if err == nil {
			return servers
		}
		if time.Now().After(deadline) {
			t.Fatalf("JetStream cluster of %d cannot place a stream: %v", size, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// ClusterURLs is the servers' client URLs, comma-separated.
func ClusterURLs(servers []*server.Server) string {
	urls := make([]string, len(servers))
	for i, ns := range servers {
		urls[i] = ns.ClientURL()
	}
	return strings.Join(urls, ",")
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// ReadSubjects hands every message of stream on filter to each, in order,
// with an ordered consumer, and returns the stream's last sequence. A
// cluster just back from a power cut may take a while to place a consumer
// although the stream answers, so each attempt (and each empty fetch) is
// bounded and tried again for up to a minute; then the test fails.
func ReadSubjects(t testing.TB, js jetstream.JetStream, stream, filter string, each func(jetstream.Msg)) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		t.Fatalf("stream %s info: %v", stream, err)
	}
	want := 0
	for _, n := range info.State.Subjects {
		want += int(n)
	}
	if want == 0 {
		return info.State.LastSeq
	}
	var cons jetstream.Consumer
	for {
		actx, acancel := context.WithTimeout(ctx, 10*time.Second)
		cons, err = js.OrderedConsumer(actx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
		acancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("consumer on %s: %v", filter, err)
		}
		t.Logf("consumer on %s: %v; trying again", filter, err)
	}
	for read := 0; read < want; {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("fetch on %s after %d of %d messages: %v", filter, read, want, err)
			}
			t.Logf("fetch on %s: %v; trying again", filter, err)
			time.Sleep(200 * time.Millisecond)
			continue
		}
		got := 0
		for m := range batch.Messages() {
			got++
			read++
			each(m)
		}
		if got == 0 && ctx.Err() != nil {
			t.Fatalf("read %d of %d messages on %s", read, want, filter)
		}
	}
	return info.State.LastSeq
}
