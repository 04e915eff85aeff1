package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/daraja-edge/daraja-edge/publish"
)

// productionLogger is the edge's logger as `daraja-edge serve` builds it
// (serve.go newLogger: zap's production JSON encoder, RFC 3339 nanosecond
// times, a locked unbuffered writer, info level), writing to path instead
// of stderr: every accepted callback costs its info line, as in production.
func productionLogger(path string) (*zap.Logger, func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("edge log: %w", err)
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	ws := zapcore.Lock(zapcore.AddSync(f))
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(encCfg), ws, zap.NewAtomicLevelAt(zap.InfoLevel)), zap.ErrorOutput(ws))
	return log, func() { _ = log.Sync(); _ = f.Close() }, nil
}

// verdict is what a verification found, by transaction id.
type verdict struct {
	sent, ok   int // requests sent, answered 200
	stored     int // messages on the stream carrying one of the sent transaction ids
	lost       int // answered 200, not on the stream
	duplicated int // transactions stored more than once (under one id or two)
	unanswered int // stored but not answered 200 (client gave up, or refused after storing)
}

func (v verdict) String() string {
	s := fmt.Sprintf("verified ok=%d stored=%d lost=%d duplicated=%d", v.ok, v.stored, v.lost, v.duplicated)
	if v.unanswered > 0 {
		s += fmt.Sprintf(" stored_unanswered=%d", v.unanswered)
	}
	return s
}

// check fails a verdict with anything lost or duplicated, or with fewer
// than floor of the sent requests answered 200.
func (v verdict) check(floor float64) error {
	switch {
	case v.lost > 0 || v.duplicated > 0:
		return fmt.Errorf("%s: callbacks lost or duplicated", v)
	case v.ok == 0 || float64(v.ok) < floor*float64(v.sent):
		return fmt.Errorf("%s: only %d of %d sent were answered 200 (floor %.0f%%)", v, v.ok, v.sent, 100*floor)
	}
	return nil
}

// lastSeq is the stream's last sequence now: what a load adds comes after.
func lastSeq(ctx context.Context, js jetstream.JetStream, stream string) (uint64, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq, nil
}

// verifyStream reads stream from sequence after+1 on filter and groups
// its messages by Daraja-Transaction-Id: every transaction in answered
// must be there exactly once, and no sent transaction may be there twice
// (under one Nats-Msg-Id or two).
func verifyStream(ctx context.Context, js jetstream.JetStream, stream, filter string, after uint64, sent, answered []string) (verdict, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	v := verdict{sent: len(sent), ok: len(answered)}
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return v, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return v, err
	}
	want := make(map[string]int, len(sent))
	for _, id := range sent {
		want[id] = 0
	}
	ids := map[string]map[string]bool{} // transaction → message ids it was stored under
	if info.State.LastSeq > after {
		cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter},
			DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: after + 1})
		if err != nil {
			return v, err
		}
		last := info.State.LastSeq
		for done := false; !done; {
			batch, err := cons.Fetch(2000, jetstream.FetchMaxWait(2*time.Second))
			if err != nil {
				return v, err
			}
			n := 0
			for m := range batch.Messages() {
				n++
				md, _ := m.Metadata()
				tx := m.Headers().Get(publish.HeaderTransactionID)
				if c, ok := want[tx]; ok {
					want[tx] = c + 1
					v.stored++
					if ids[tx] == nil {
						ids[tx] = map[string]bool{}
					}
					ids[tx][m.Headers().Get(publish.HeaderMsgID)] = true
				}
				if md != nil && md.Sequence.Stream >= last {
					done = true
				}
			}
			if batch.Error() != nil {
				return v, batch.Error()
			}
			if n == 0 {
				break // nothing more on the filter up to last
			}
		}
	}
	ok := make(map[string]bool, len(answered))
	for _, id := range answered {
		ok[id] = true
		if want[id] == 0 {
			v.lost++
		}
	}
	for id, c := range want {
		if c > 1 {
			v.duplicated++
		}
		if c > 0 && !ok[id] {
			v.unanswered++
		}
	}
	return v, nil
}

// median and spread of xs.
func medianSpread(xs []float64) (med, lo, hi float64) {
	if len(xs) == 0 {
		return 0, 0, 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	med = s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return med, s[0], s[n-1]
}

func fmtList(xs []float64, format string) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf(format, x)
	}
	return strings.Join(parts, ", ")
}

// split is the edge's time per accepted callback, read from its own
// request log lines: the whole handler ("latency") and the part of it spent
// waiting for the stream's ack ("ack_latency"); what is left is the edge's
// own work (source, token, body, log line, message).
type split struct {
	n                 int
	handler, ack, own [3]time.Duration // p50, p99, p999
}

func (s split) String() string {
	f := func(d [3]time.Duration) string {
		return fmt.Sprintf("p50=%s p99=%s p999=%s", d[0].Round(time.Microsecond), d[1].Round(time.Microsecond), d[2].Round(time.Microsecond))
	}
	return fmt.Sprintf("edge log, %d accepted: handler %s; of it the stream's ack %s; the edge's own work %s", s.n, f(s.handler), f(s.ack), f(s.own))
}

// fileSize is path's size (0 when it cannot be read).
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// splitLatency reads the accepted-callback lines the edge logged from
// offset on.
func splitLatency(path string, offset int64) (split, error) {
	f, err := os.Open(path)
	if err != nil {
		return split{}, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return split{}, err
	}
	var handler, ack, own []time.Duration
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var line struct {
			Msg string `json:"msg"`
			Req struct {
				Outcome    string  `json:"outcome"`
				Latency    float64 `json:"latency"`
				AckLatency float64 `json:"ack_latency"`
			} `json:"req"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Msg != "callback" || line.Req.Outcome != "accepted" {
			continue
		}
		h := time.Duration(line.Req.Latency * float64(time.Second))
		a := time.Duration(line.Req.AckLatency * float64(time.Second))
		handler, ack, own = append(handler, h), append(ack, a), append(own, h-a)
	}
	if err := sc.Err(); err != nil {
		return split{}, err
	}
	q := func(v []time.Duration) (out [3]time.Duration) {
		if len(v) == 0 {
			return out
		}
		slices.Sort(v)
		for i, p := range []float64{0.5, 0.99, 0.999} {
			out[i] = v[min(len(v)-1, int(float64(len(v))*p))]
		}
		return out
	}
	return split{n: len(handler), handler: q(handler), ack: q(ack), own: q(own)}, nil
}
