package console

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

func zapID(id string) zap.Field { return zap.String("token_id", id) }

type sample struct {
	at     time.Time
	counts map[string]float64
}

type rate struct {
	Outcome string
	PerMin  string
}

// rates samples daraja_edge_requests_total by outcome every 15 s and
// keeps 10 minutes.
type rates struct {
	g  prometheus.Gatherer
	mu sync.Mutex
	s  []sample
}

func newRates(g prometheus.Gatherer) *rates { return &rates{g: g} }

func (r *rates) run(ctx context.Context) {
	if r.g == nil {
		return
	}
	t := time.NewTicker(15 * time.Second)
	defer t.Stop()
	for {
		r.take()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (r *rates) take() {
	mfs, err := r.g.Gather()
	if err != nil {
		return
	}
	s := sample{at: time.Now(), counts: map[string]float64{}}
	for _, mf := range mfs {
		if mf.GetName() != "daraja_edge_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" {
					s.counts[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	r.mu.Lock()
	r.s = append(r.s, s)
	if len(r.s) > 41 {
		r.s = r.s[1:]
	}
	r.mu.Unlock()
}

// now returns per-minute rates over the sampled window.
func (r *rates) now() []rate {
	if r.g == nil {
		return nil
	}
	r.take()
	r.mu.Lock()
	defer r.mu.Unlock()
	first, last := r.s[0], r.s[len(r.s)-1]
	mins := last.at.Sub(first.at).Minutes()
	var out []rate
	for _, o := range []string{"accepted", "duplicate", "rejected", "spooled", "failed"} {
		v := last.counts[o] - first.counts[o]
		txt := strconv.FormatFloat(v, 'f', 0, 64) + " in " + strconv.FormatFloat(mins, 'f', 1, 64) + " min"
		if mins > 0 {
			txt = strconv.FormatFloat(v/mins, 'f', 1, 64) + "/min (" + txt + ")"
		}
		out = append(out, rate{o, txt})
	}
	return out
}
