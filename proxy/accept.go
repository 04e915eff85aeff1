package proxy

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"
)

// AcceptOptions configure RefuseAtAccept.
type AcceptOptions struct {
	// Policy returns the policy in force (Handler.Policy). It is read for
	// every connection, so a reload applies from the next one. Nil, or a
	// nil policy: every connection goes through.
	Policy func() *Policy
	// Refused is called once for each connection closed at accept, in the
	// accepting goroutine: it must be cheap and must not block (a counter).
	// Optional.
	Refused func(netip.Addr)
	// Exempt, when set and true, lets a connection that would be refused
	// through to the TLS handshake (and the handler, which refuses it
	// there). It is asked only about connections about to be refused. For
	// ACME's TLS-ALPN-01: the CA's validators connect from addresses no
	// allowlist holds, while a challenge is pending. Optional.
	Exempt func() bool
	// Log receives the refusal lines (nil: none).
	Log *zap.Logger
	// KeepAlive, when positive, turns TCP keep-alive on (with this period)
	// for the connections let through. Listen with keep-alive off
	// (net.ListenConfig{KeepAlive: -1}) and set this: a refused connection
	// then costs no keep-alive system calls.
	KeepAlive time.Duration
}

// Bounds of the refusal log: a source gets at most one line a second; at
// most refusalLinesPerSecond sources get a line of their own in any second,
// and every refusal without a line is counted in one summary line a second.
const (
	refusalSlots          = 1024 // sources remembered (a fixed table: a flood of sources costs no memory)
	refusalLinesPerSecond = 20
	refusalLogEvery       = time.Second
)

// RefuseAtAccept wraps the public listener so that, when the allowlist is
// enforced, a connection from a TCP peer that is neither in the allowlist
// nor a trusted proxy is closed as soon as it is accepted: no TLS
// handshake, no goroutine, no request. Such a peer is the client whatever
// it sends (its X-Forwarded-For or PROXY header is never believed), so the
// handler could only refuse it. A trusted proxy's connections go through:
// the client behind it is known only from its headers. It sends a reset
// (SO_LINGER 0), so no TIME_WAIT is left behind. In report-only mode every
// connection goes through to the handler, which decides as before.
//
// Wrap the raw TCP listener, beneath a PROXY protocol listener if there is
// one, so that the peer seen is the TCP peer.
//
// Accept never returns an error for a refused connection: it goes on to
// the next one, so http.Server neither backs off nor stops. Errors of the
// wrapped listener are returned as they are.
func RefuseAtAccept(ln net.Listener, o AcceptOptions) net.Listener {
	log := o.Log
	if log == nil {
		log = zap.NewNop()
	}
	return &refusingListener{Listener: ln, o: o, logs: &refusalLog{log: log.Named("accept"), now: time.Now}}
}

type refusingListener struct {
	net.Listener
	o    AcceptOptions
	logs *refusalLog
}

// Accept returns the next connection that is not refused.
func (l *refusingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src, refuse := l.refuses(c)
		if !refuse {
			if tc, ok := c.(*net.TCPConn); ok && l.o.KeepAlive > 0 {
				_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: l.o.KeepAlive, Interval: l.o.KeepAlive, Count: 9})
			}
			return c, nil
		}
		if l.o.Refused != nil {
			l.o.Refused(src)
		}
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
		l.logs.refused(src)
	}
}

// Close closes the listener and writes the pending summary line.
func (l *refusingListener) Close() error {
	err := l.Listener.Close()
	l.logs.flush(true)
	return err
}

// refuses reports whether c is to be closed at accept, and its source.
func (l *refusingListener) refuses(c net.Conn) (netip.Addr, bool) {
	if l.o.Policy == nil {
		return netip.Addr{}, false
	}
	p := l.o.Policy()
	if !p.refusesAtAccept() {
		return netip.Addr{}, false
	}
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	src := ta.AddrPort().Addr().Unmap().WithZone("")
	if p.Allow.Contains(src) || p.ClientIP.Trusts(src) || (l.o.Exempt != nil && l.o.Exempt()) {
		return src, false
	}
	return src, true
}

// refusesAtAccept reports whether peers outside Allow (and not trusted
// proxies) are refused before any request is read: the allowlist is
// enforced.
func (p *Policy) refusesAtAccept() bool {
	return p != nil && !p.ReportOnly
}

// refusalLog writes the refusal lines within their bounds, without
// blocking on anything but its own short critical section.
type refusalLog struct {
	log *zap.Logger
	now func() time.Time

	mu     sync.Mutex
	slots  [refusalSlots]refusalSlot
	window time.Time // start of the current second of individual lines
	lines  int       // individual lines written in it
	quiet  int64     // refusals without a line since the last summary
	timer  *time.Timer
}

// refusalSlot is the last line written for a source.
type refusalSlot struct {
	src netip.Addr
	at  time.Time
}

func slotOf(a netip.Addr) int {
	b := a.As16()
	x := binary.BigEndian.Uint64(b[:8])*0x9e3779b97f4a7c15 ^ binary.BigEndian.Uint64(b[8:])
	x *= 0xff51afd7ed558ccd
	return int(x >> 54) // top 10 bits: 0..1023
}

// refused records one refusal of src: a line of its own when neither src
// nor its slot had one in the last second and the second's budget allows,
// else counted for the summary.
func (r *refusalLog) refused(src netip.Addr) {
	now := r.now()
	r.mu.Lock()
	s := &r.slots[slotOf(src)]
	line := false
	if !s.src.IsValid() || now.Sub(s.at) >= refusalLogEvery { // free, or its last line is a second old
		if now.Sub(r.window) >= refusalLogEvery {
			r.window, r.lines = now, 0
		}
		if r.lines < refusalLinesPerSecond {
			r.lines++
			s.src, s.at = src, now
			line = true
		}
	}
	if !line {
		r.quiet++
		if r.timer == nil {
			r.timer = time.AfterFunc(refusalLogEvery, func() { r.flush(false) })
		}
	}
	r.mu.Unlock()
	if line {
		r.log.Warn("connection refused at accept: source not in the allowlist", zap.String("source", src.String()))
	}
}

// flush writes the summary of the refusals without a line of their own.
func (r *refusalLog) flush(stop bool) {
	r.mu.Lock()
	n := r.quiet
	r.quiet = 0
	if r.timer != nil && stop {
		r.timer.Stop()
	}
	r.timer = nil
	r.mu.Unlock()
	if n > 0 {
		r.log.Warn("connections refused at accept without a line of their own (at most one line a second per source)",
			zap.Int64("connections", n))
	}
}
