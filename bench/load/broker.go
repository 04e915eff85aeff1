package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/publish"
)

// brokerOnly measures the broker alone, in the same run and on the same
// server as the keep-alive rounds, with o.conns publishers each waiting
// for its ack: (a) what the baseline does, an unconditional publish to one
// subject of the baseline's stream; (b) what the edge does, a publish with
// Nats-Expected-Last-Subject-Sequence: 0 on a fresh per-token subject of
// the edge's stream, with the edge's headers. Interleaved a, b, a, b, a, b.
func brokerOnly(ctx context.Context, w *world, o options) error {
	d := min(o.duration, 4*time.Second)
	cb := publish.Callback{Kind: string(daraja.B2CResult), Shortcode: "600000", ResultCode: "0", Reference: "ORDER-1",
		SourceIP: "127.0.0.2", Edge: "bench", Body: body(daraja.B2CResult, "x")}
	subjects := publish.Subjects{Prefix: w.cfg.NATS.SubjectPrefix}
	var seq atomic.Int64
	pass := func(conditional bool) (float64, error) {
		var n atomic.Int64
		var failed atomic.Int64
		deadline := time.Now().Add(d)
		start := time.Now()
		var wg sync.WaitGroup
		for range o.conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(deadline) {
					i := seq.Add(1)
					var msg *nats.Msg
					if conditional {
						c := cb
						c.TransactionID = fmt.Sprintf("broker_%09d", i)
						c.TokenID = tokenID()
						c.ReceivedAt = time.Now()
						msg = c.Msg(subjects.Callback(c.Kind, c.Shortcode, c.TokenID))
						msg.Header[publish.HeaderExpectFirst] = []string{"0"}
					} else {
						tx := fmt.Sprintf("broker_%09d", i)
						msg = &nats.Msg{Subject: baselineSubject, Data: cb.Body, Header: nats.Header{
							jetstream.MsgIDHeader: {"baseline:" + tx}, publish.HeaderTransactionID: {tx}}}
					}
					if _, err := w.js.PublishMsg(ctx, msg); err != nil {
						failed.Add(1)
						continue
					}
					n.Add(1)
				}
			}()
		}
		wg.Wait()
		if f := failed.Load(); f > 0 {
			return 0, fmt.Errorf("broker-only: %d publishes failed", f)
		}
		return float64(n.Load()) / time.Since(start).Seconds(), nil
	}
	var ratios, as, bs []float64
	for range 3 {
		a, err := pass(false)
		if err != nil {
			return err
		}
		b, err := pass(true)
		if err != nil {
			return err
		}
		as, bs, ratios = append(as, a), append(bs, b), append(ratios, b/a)
	}
	m, lo, hi := medianSpread(ratios)
	fmt.Printf("BROKER ONLY (%d publishers, %s each, same server): one subject unconditional %s msg/s; fresh per-token subject with expected-last-subject-sequence 0 %s msg/s; RATIO median %.2f (spread %.2f–%.2f)\n",
		o.conns, d, fmtList(as, "%.0f"), fmtList(bs, "%.0f"), m, lo, hi)
	return nil
}

// tokenID is a random id in the shape of a token id (16 base32 characters).
func tokenID() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])[:16]
}

// runMemory measures what stored callbacks on distinct per-token subjects
// cost the NATS server's heap: it fills a stream configured like the edge's
// with o.stored callbacks (the edge's headers, one fresh subject each) and
// reads the heap after GC, then after a restart of the server on the same
// store, and the same for callbacks on one shared subject as the control.
// The server syncs on its default interval (not before every ack): this
// measures memory, not durability.
func runMemory(o options) error {
	fmt.Printf("machine: %s/%s, %d CPUs, %s; scenario memory: %d stored callbacks; nats-server with sync on its default interval (fill speed; memory does not depend on it)\n",
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), o.stored)
	for _, v := range []struct{ distinct, msgID bool }{{true, true}, {true, false}, {false, true}} {
		if err := memoryPass(o.stored, v.distinct, v.msgID); err != nil {
			return err
		}
	}
	return nil
}

func heapAfterGC() uint64 {
	var m runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func memoryPass(n int, distinct, msgID bool) error {
	dir, err := os.MkdirTemp("", "daraja-mem-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := config.Default()
	subjects := publish.Subjects{Prefix: cfg.NATS.SubjectPrefix}
	start := func() (*server.Server, error) {
		ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true,
			StoreDir: filepath.Join(dir, "nats"), NoSigs: true, NoLog: true})
		if err != nil {
			return nil, err
		}
		go ns.Start()
		if !ns.ReadyForConnections(30 * time.Second) {
			return nil, fmt.Errorf("nats-server did not start")
		}
		return ns, nil
	}
	before := heapAfterGC()
	ns, err := start()
	if err != nil {
		return err
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		return err
	}
	js, _ := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	ctx := context.Background()
	if _, err := publish.EnsureStream(ctx, js, publish.StreamOptions{Name: cfg.NATS.Stream.Name, Subjects: subjects.StreamSubjects(),
		Replicas: 1, DuplicateWindow: cfg.NATS.Stream.DuplicateWindow, MaxAge: cfg.NATS.Stream.MaxAge}); err != nil {
		return err
	}
	empty := heapAfterGC()
	t0 := time.Now()
	cb := publish.Callback{Kind: string(daraja.B2CResult), Shortcode: "600000", ResultCode: "0", Reference: "ORDER-1",
		SourceIP: "196.201.214.200", Edge: "bench", Body: body(daraja.B2CResult, "x")}
	shared := tokenID()
	for i := range n {
		c := cb
		c.TransactionID = fmt.Sprintf("MEM%012d", i)
		c.TokenID = shared
		if distinct {
			c.TokenID = tokenID()
		}
		c.ReceivedAt = time.Now()
		msg := c.Msg(subjects.Callback(c.Kind, c.Shortcode, c.TokenID))
		if distinct {
			msg.Header[publish.HeaderExpectFirst] = []string{"0"}
		}
		if !msgID {
			delete(msg.Header, publish.HeaderMsgID)
		}
		for {
			_, err := js.PublishMsgAsync(msg)
			if err == nil {
				break
			}
			if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				return err
			}
			<-js.PublishAsyncComplete()
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(10 * time.Minute):
		return fmt.Errorf("acks did not complete")
	}
	fill := time.Since(t0)
	st, err := js.Stream(ctx, cfg.NATS.Stream.Name)
	if err != nil {
		return err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	nc.Close()
	full := heapAfterGC()
	ns.Shutdown()
	ns.WaitForShutdown()
	down := heapAfterGC()
	t1 := time.Now()
	ns, err = start()
	if err != nil {
		return err
	}
	nc, err = nats.Connect(ns.ClientURL())
	if err != nil {
		return err
	}
	js, _ = jetstream.New(nc)
	st, err = js.Stream(ctx, cfg.NATS.Stream.Name)
	if err != nil {
		return err
	}
	again, err := st.Info(ctx)
	if err != nil {
		return err
	}
	restart := time.Since(t1)
	nc.Close()
	restarted := heapAfterGC()
	ns.Shutdown()
	ns.WaitForShutdown()
	what := "distinct per-token subjects"
	if !distinct {
		what = "one shared subject (control)"
	}
	if msgID {
		what += ", with Nats-Msg-Id (24h duplicate window)"
	} else {
		what += ", without Nats-Msg-Id"
	}
	if info.State.Msgs != uint64(n) || again.State.Msgs != uint64(n) {
		return fmt.Errorf("stream holds %d (after restart %d) of %d", info.State.Msgs, again.State.Msgs, n)
	}
	fmt.Printf("MEMORY %d callbacks on %s (%d subjects): filled in %s; server heap after GC %d MiB empty → %d MiB full: %.0f B per stored callback; after a restart %.0f B per stored callback (restart to a ready stream %s)\n",
		n, what, info.State.NumSubjects, fill.Round(time.Millisecond), (empty-before)>>20, (full-before)>>20,
		float64(int64(full)-int64(empty))/float64(n), float64(int64(restarted)-int64(down))/float64(n), restart.Round(time.Millisecond))
	return nil
}
