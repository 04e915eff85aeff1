package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"

	"github.com/nats-io/nats.go"
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

// tailExporter has tailPrinter's print, for `tail --export`.
type tailExporter struct {
	mu     sync.Mutex
	w      io.Writer
	stderr io.Writer
}

func (e *tailExporter) print(m *nats.Msg) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := writeExport(e.w, m); err != nil {
		fmt.Fprintln(e.stderr, "daraja-edge tail:", err)
	}
}
