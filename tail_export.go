package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// exportLine is one line of `tail --export`, the format `reconcile
// --callbacks` reads: the subject, the headers (first value of each) and
// the body as the JSON it is. The body is the callback byte for byte: it
// holds phone numbers, and a B2B body may echo a token in its
// QueueTimeOutURL; an export file is as secret as the stream.
type exportLine struct {
	Subject string            `json:"subject"`
	Headers map[string]string `json:"headers"`
	Body    json.RawMessage   `json:"body"`
}

// writeExport writes m as one export line. A body that is not JSON (no
// vetted callback is) is written as a JSON string, so the line stays one
// valid object.
func writeExport(w io.Writer, m *nats.Msg) error {
	l := exportLine{Subject: m.Subject, Headers: make(map[string]string, len(m.Header))}
	for k, v := range m.Header {
		if len(v) > 0 {
			l.Headers[k] = v[0]
		}
	}
	if json.Valid(m.Data) {
		l.Body = m.Data
	} else {
		b, _ := json.Marshal(string(m.Data))
		l.Body = b
	}
	b, err := json.Marshal(l)
	if err != nil {
		return fmt.Errorf("export %s: %w", m.Subject, err)
	}
	b = append(b, '\n')
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}

// exportStream writes every message of stream on subjects, from the
// stream's first, as export lines, and returns once it has caught up: at
// the stream's last message when it began, when a message says nothing is
// pending after it, or when a fetch finds nothing (an empty stream). What
// lands meanwhile may or may not be included: an export is a snapshot.
func exportStream(ctx context.Context, js jetstream.JetStream, stream string, subjects []string, w io.Writer) error {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("tail --export: stream %s: %w", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("tail --export: stream %s: %w", stream, err)
	}
	last := info.State.LastSeq
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: subjects, DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("tail --export: stream %s: %w", stream, err)
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	for {
		if err := ctx.Err(); err != nil {
			return errors.Join(bw.Flush(), err)
		}
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return errors.Join(bw.Flush(), fmt.Errorf("tail --export: %w", err))
		}
		n, caughtUp := 0, false
		for m := range batch.Messages() {
			n++
			if err := writeExport(bw, &nats.Msg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()}); err != nil {
				return err
			}
			if md, err := m.Metadata(); err == nil && (md.NumPending == 0 || md.Sequence.Stream >= last) {
				caughtUp = true
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			return errors.Join(bw.Flush(), fmt.Errorf("tail --export: %w", err))
		}
		if n == 0 || caughtUp {
			if err := bw.Flush(); err != nil {
				return fmt.Errorf("export: %w", err)
			}
			return nil
		}
	}
}
