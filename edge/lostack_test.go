package edge

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/internal/natstest"
	"github.com/daraja-edge/daraja-edge/verify"
	"github.com/nats-io/nats.go/jetstream"
)

// ackDropper is a TCP proxy between an edge and its NATS server. Armed, it
// watches what clients send for the next callback publish ("PUB
// <prefix>.cb." or "HPUB <prefix>.cb."), forwards it to the server, and
// from then on discards everything the server sends back on that
// connection: the stream stores the callback and the edge never sees the
// ack. Cut closes such connections, so the client reconnects (through the
// proxy, disarmed, as normal).
type ackDropper struct {
	t       *testing.T
	ln      net.Listener
	target  string
	pattern []byte

	mu     sync.Mutex
	armed  bool
	conns  map[*proxied]struct{}
	caught chan struct{} // receives once per publish caught
	wg     sync.WaitGroup
}

type proxied struct {
	client, server net.Conn
	dropping       atomic.Bool
	once           sync.Once
}

func (p *proxied) close() {
	p.once.Do(func() { _ = p.client.Close(); _ = p.server.Close() })
}

func newAckDropper(t *testing.T, target, prefix string) *ackDropper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &ackDropper{t: t, ln: ln, target: target, pattern: []byte("PUB " + prefix + ".cb."),
		conns: map[*proxied]struct{}{}, caught: make(chan struct{}, 8)}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			c.close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// URL is the proxy's NATS URL.
func (p *ackDropper) URL() string { return "nats://" + p.ln.Addr().String() }

// Arm makes the proxy drop the replies to the next callback publish.
func (p *ackDropper) Arm() {
	p.mu.Lock()
	p.armed = true
	p.mu.Unlock()
}

// Cut closes every connection whose replies are being dropped.
func (p *ackDropper) Cut() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for c := range p.conns {
		if c.dropping.Load() {
			c.close()
			n++
		}
	}
	return n
}

func (p *ackDropper) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		pc := &proxied{client: c, server: s}
		p.mu.Lock()
		p.conns[pc] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.up(pc)
		go p.down(pc)
	}
}

// up copies client → server, looking for the publish to catch. The reply
// stops flowing before the publish reaches the server, so the ack cannot
// slip through.
func (p *ackDropper) up(pc *proxied) {
	defer p.wg.Done()
	defer p.forget(pc)
	buf := make([]byte, 64<<10)
	var carry []byte // the end of the previous read: a pattern split across two
	for {
		n, err := pc.client.Read(buf)
		if n > 0 {
			seen := append(carry, buf[:n]...)
			p.mu.Lock()
			if p.armed && bytes.Contains(seen, p.pattern) {
				p.armed = false
				pc.dropping.Store(true)
				p.caught <- struct{}{}
			}
			p.mu.Unlock()
			carry = append(carry[:0], seen[max(0, len(seen)-len(p.pattern)):]...)
			if _, werr := pc.server.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// down copies server → client, discarding everything once the
// connection's publish was caught.
func (p *ackDropper) down(pc *proxied) {
	defer p.wg.Done()
	defer p.forget(pc)
	buf := make([]byte, 64<<10)
	for {
		n, err := pc.server.Read(buf)
		if n > 0 && !pc.dropping.Load() {
			if _, werr := pc.client.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *ackDropper) forget(pc *proxied) {
	pc.close()
	p.mu.Lock()
	delete(p.conns, pc)
	p.mu.Unlock()
}

// TestLostAckLeavesOneCallback: the stream stores a callback but its ack
// never reaches the edge (a proxy between the edge and NATS drops every
// reply after the publish). The edge cannot know the callback is stored:
// it spools it and answers 200, or, when the spool cannot take it either,
// answers 503. Either way, read from the stream and the admin API rather
// than from logs:
//   - the token's state is what the stream holds: consumed by that one
//     callback;
//   - the spool's replay is recognised as the same callback (a duplicate,
//     dropped and counted), and Daraja's retry is answered 200 with
//     nothing new stored: the stream holds exactly one copy;
//   - at the token's expiry the missing-callback sweep finds the callback
//     (its marker says so) and publishes no missing event, while a token
//     that got nothing still yields exactly one.
func TestLostAckLeavesOneCallback(t *testing.T) {
	t.Cleanup(quickSweeps())
	t.Cleanup(quickDrains())
	for _, c := range []struct {
		name   string
		spool  bool // the spool takes the callback
		status int  // what Daraja gets for the callback whose ack was lost
	}{
		{"spooled", true, http.StatusOK},
		{"spool full", false, http.StatusServiceUnavailable},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ns := natstest.Server(t)
			_, direct := natstest.Connect(t, ns) // the test's own view, not through the proxy
			cfg := testConfig(t)
			px := newAckDropper(t, ns.Addr().String(), cfg.NATS.SubjectPrefix)
			cfg.NATS.URL = px.URL()
			if !c.spool {
				cfg.Spool.MaxBytes = 1 // takes nothing
			}
			h := startConfig(t, cfg)
			ctx := context.Background()
			stream, err := direct.Stream(ctx, cfg.NATS.Stream.Name)
			if err != nil {
				t.Fatal(err)
			}
			stored := func() uint64 {
				t.Helper()
				info, err := stream.Info(ctx)
				if err != nil {
					t.Fatal(err)
				}
				return info.State.Msgs
			}

			body := fixture(t, "b2c_result_success.json")
			const txID = "AG_20191219_00004e48cf7e3533f581"
			tok := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "600000", TTL: "30s"})
			silent := h.issue(verify.IssueRequest{Kinds: []daraja.Kind{daraja.B2CResult}, Shortcode: "600000", TTL: "3s"})

			px.Arm()
			reconnects := h.srv.broker.Conn.Stats().Reconnects
			r := h.callback(allowedSrc, daraja.B2CResult, tok.Token, body)
			select {
			case <-px.caught:
			default:
				t.Fatal("the proxy saw no callback publish: the test lost nothing")
			}
			if r.status != c.status {
				t.Fatalf("Daraja got %d %s, want %d", r.status, r.body, c.status)
			}
			if n := stored(); n != 1 {
				t.Fatalf("the stream holds %d messages after the publish whose ack was lost, want 1", n)
			}
			if c.spool && h.srv.Pending() != 1 {
				t.Fatalf("%d records spooled, want the callback", h.srv.Pending())
			}

			// The lost connection goes; the edge reconnects through the
			// proxy, which forwards everything again.
			if px.Cut() != 1 {
				t.Fatal("no connection to cut")
			}
			waitUntil(t, 60*time.Second, func() bool {
				return h.srv.broker.Conn.Stats().Reconnects > reconnects && h.srv.broker.Conn.IsConnected()
			})
			st := h.tokenState(tok.ID)
			if st.State != verify.StateConsumed || st.ConsumedBy != txID {
				t.Fatalf("token after the lost ack: %s by %q, want consumed by %s (the stream holds it)", st.State, st.ConsumedBy, txID)
			}
			if c.spool {
				// The replay is the same callback: dropped as a duplicate.
				waitUntil(t, 60*time.Second, func() bool { return h.srv.Pending() == 0 })
				if v := h.scrape()[`daraja_edge_spool_replayed_total{outcome="duplicate"}`]; v != 1 {
					t.Errorf("spool replays counted as duplicate: %v, want 1", v)
				}
			}
			if r := h.callback(allowedSrc, daraja.B2CResult, tok.Token, body); r.status != http.StatusOK || r.body != accepted {
				t.Fatalf("Daraja's retry: %d %s, want 200", r.status, r.body)
			}
			// Callbacks only: the silent token's missing event may land
			// already on a slow machine (its ttl is 3 s).
			var msgs []*jetstream.RawStreamMsg
			var subjects []string
			for _, m := range h.messages() {
				subjects = append(subjects, m.Subject)
				if strings.HasPrefix(m.Subject, cfg.NATS.SubjectPrefix+".cb.") {
					msgs = append(msgs, m)
				}
			}
			if len(msgs) != 1 || msgs[0].Header.Get("Nats-Msg-Id") != "b2c.result:"+txID || !bytes.Equal(msgs[0].Data, body) {
				t.Fatalf("the stream holds %d callbacks (messages on %q), want exactly one copy of the callback", len(msgs), subjects)
			}

			// Expiry: the sweep settles each token. The one with its
			// callback is marked "callback" and gets no missing event; the
			// silent one gets exactly one.
			markers, err := direct.KeyValue(ctx, MissingBucket(cfg.NATS.SubjectPrefix))
			if err != nil {
				t.Fatal(err)
			}
			settled := func(id string) string {
				e, err := markers.Get(ctx, id)
				if err != nil {
					return ""
				}
				return string(e.Value())
			}
			waitUntil(t, 120*time.Second, func() bool { return settled(tok.ID) != "" && settled(silent.ID) != "" })
			if m := settled(tok.ID); m != "callback" {
				t.Errorf("the token whose ack was lost was settled as %q, want callback", m)
			}
			ev := h.missingEvents()
			if len(ev) != 1 || ev[0].Header.Get("Daraja-Token-Id") != silent.ID {
				var ids []string
				for _, m := range ev {
					ids = append(ids, m.Header.Get("Daraja-Token-Id"))
				}
				t.Errorf("missing events for %v, want exactly one, for %s", ids, silent.ID)
			}
			callbacks := 0
			for _, m := range h.messages() {
				if strings.HasPrefix(m.Subject, cfg.NATS.SubjectPrefix+".cb.") {
					callbacks++
				}
			}
			if callbacks != 1 {
				t.Errorf("after expiry the stream holds %d callbacks, want 1", callbacks)
			}
		})
	}
}
