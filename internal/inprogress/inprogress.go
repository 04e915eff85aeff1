// Package inprogress keeps a JetStream message from being redelivered while
// its work runs longer than the consumer's ack wait.
package inprogress

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Keep sends m an in-progress ack every interval until stop is called.
// stop returns once no in-progress ack can follow, so none is sent after
// the message is settled; it is safe to call twice.
func Keep(m jetstream.Msg, every time.Duration) (stop func()) {
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(max(every, time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = m.InProgress()
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done); <-exited }) }
}
