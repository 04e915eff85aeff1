package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/daraja-edge/daraja-edge/config"
	"github.com/daraja-edge/daraja-edge/publish"
	"github.com/daraja-edge/daraja-edge/reconcile"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// cmdReconcile compares M-Pesa statements with the callbacks on the stream
// (or in a `tail --export` file) and prints a report. Exit 0: nothing to
// report; 1: discrepancies; 2: bad input, one line per problem.
func cmdReconcile(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("reconcile", stderr)
	cfgPath := configFlag(fs, "configuration file (NATS address, subject prefix, stream)")
	var statements listFlag
	fs.Var(&statements, "statement", "statement file: G2 .csv/.xlsx/.xls, \"Statements for …\" .csv, Pull Transactions .json, or any CSV with --columns (repeatable)")
	callbacks := fs.String("callbacks", "", "read callbacks from this `tail --export` NDJSON file instead of the stream")
	format := fs.String("format", "text", "report format: text, json or csv")
	tz := fs.String("tz", "", "time zone of statement times (default East Africa Time, UTC+3)")
	columns := fs.String("columns", "", "column map for other CSVs: receipt=NAME,time=NAME,in=NAME,out=NAME[,amount=…,details=…,status=…,party=…]")
	publishMissing := fs.Bool("publish", false, "publish each missing callback on <prefix>.missing.<kind>.<shortcode> (Nats-Msg-Id reconcile:<receipt>)")
	natsURL := fs.String("nats", "", "NATS URL (default from the config)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	var bad []string
	switch *format {
	case "text", "json", "csv":
	default:
		bad = append(bad, fmt.Sprintf("--format %q: want text, json or csv", *format))
	}
	if len(statements) == 0 {
		bad = append(bad, "no --statement given")
	}
	opts := reconcile.Options{}
	if *tz != "" {
		loc, err := time.LoadLocation(*tz)
		if err != nil {
			bad = append(bad, fmt.Sprintf("--tz %q: %v", *tz, err))
		}
		opts.Location = loc
	}
	if *columns != "" {
		m, err := parseColumns(*columns)
		if err != nil {
			bad = append(bad, err.Error())
		}
		opts.Columns = m
	}
	var sts []*reconcile.Statement
	for _, p := range statements {
		data, err := readLimited(p)
		if err == nil {
			var st *reconcile.Statement
			if st, err = reconcile.Read(p, data, opts); err == nil {
				sts = append(sts, st)
				continue
			}
		}
		bad = append(bad, err.Error())
	}
	if len(bad) > 0 {
		for _, b := range bad {
			fmt.Fprintln(stderr, "reconcile:", b)
		}
		return &exitError{code: 2}
	}
	path, err := findConfig(*cfgPath, false)
	if err != nil {
		return err
	}
	cfg, _, err := clientConfig(path, stderr)
	if err != nil {
		return err
	}
	in := reconcile.Input{Statements: sts}
	var published map[string]bool // receipts of reconcile's events on the stream
	var nc *nats.Conn
	connect := func() (*nats.Conn, error) {
		if nc != nil {
			return nc, nil
		}
		url := *natsURL
		if url == "" {
			url = cfg.NATS.URL
		}
		if url == "" {
			url = "nats://" + loopbackAddr(cfg.NATS.Embedded.Listen)
		}
		o := []nats.Option{nats.Name("daraja-edge reconcile")}
		if cfg.NATS.CredentialsFile != "" && *natsURL == "" {
			o = append(o, nats.UserCredentials(cfg.NATS.CredentialsFile))
		}
		c, err := nats.Connect(url, o...)
		if err != nil {
			return nil, &exitError{code: 2, msg: fmt.Sprintf("reconcile: connect to NATS: %v", err)}
		}
		nc = c
		return nc, nil
	}
	defer func() {
		if nc != nil {
			nc.Close()
		}
	}()
	if *callbacks != "" {
		f, err := os.Open(*callbacks)
		if err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("reconcile: --callbacks: %v", err)}
		}
		in.Callbacks, in.CallbackProblems, err = reconcile.ReadExport(f, cfg.NATS.SubjectPrefix)
		f.Close()
		if err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("reconcile: --callbacks %s: %v", *callbacks, err)}
		}
		in.CallbackSource = *callbacks
	} else {
		c, err := connect()
		if err != nil {
			return err
		}
		in.CallbackSource = "stream " + cfg.NATS.Stream.Name
		sr, err := readStream(ctx, c, cfg, true, *publishMissing, stderr)
		if err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("reconcile: %v", err)}
		}
		in.Callbacks, in.StreamStart, in.StreamCreated, published = sr.callbacks, sr.start, sr.created, sr.published
	}
	report := reconcile.Match(in)
	switch *format {
	case "json":
		err = report.WriteJSON(stdout)
	case "csv":
		err = report.WriteCSV(stdout)
	default:
		err = report.WriteText(stdout)
	}
	if err != nil {
		return fmt.Errorf("reconcile: write report: %w", err)
	}
	if *publishMissing {
		c, err := connect()
		if err != nil {
			return err
		}
		if published == nil { // --callbacks: read what is on the stream now
			sr, err := readStream(ctx, c, cfg, false, true, stderr)
			if err != nil {
				return &exitError{code: 2, msg: fmt.Sprintf("reconcile: %v", err)}
			}
			published = sr.published
		}
		sent, already, err := publishFindings(ctx, c, cfg, report.MissingFindings(), published)
		if err != nil {
			return fmt.Errorf("reconcile: publish: %w", err)
		}
		fmt.Fprintf(stderr, "reconcile: published %d new missing-callback finding(s) on %s.missing.>, %d already there\n",
			sent, cfg.NATS.SubjectPrefix, already)
	}
	if report.Discrepancies() {
		return &exitError{code: 1}
	}
	return nil
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--statement: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, reconcile.MaxStatementBytes+1))
	if err != nil {
		return nil, fmt.Errorf("--statement %s: %w", path, err)
	}
	return data, nil
}

func parseColumns(s string) (map[string]string, error) {
	m := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(part, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || v == "" {
			return nil, fmt.Errorf("--columns: %q is not field=column", part)
		}
		switch k {
		case "receipt", "time", "in", "out", "amount", "details", "status", "party":
		default:
			return nil, fmt.Errorf("--columns: unknown field %q (receipt, time, in, out, amount, details, status, party)", k)
		}
		m[k] = v
	}
	for _, need := range []string{"receipt", "time"} {
		if _, ok := m[need]; !ok {
			return nil, fmt.Errorf("--columns: %s= is required", need)
		}
	}
	_, in := m["in"]
	_, out := m["out"]
	if _, amt := m["amount"]; !amt && !(in && out) {
		return nil, errors.New("--columns: in= and out= (or amount=) are required")
	}
	return m, nil
}

// streamRead is what reconcile takes from the stream.
type streamRead struct {
	callbacks []reconcile.Callback
	// start is how far back the stream holds callbacks: its creation
	// (created true) while nothing has aged out, else the time of the
	// first message still kept.
	start   time.Time
	created bool
	// published are the receipts of reconcile's missing events already on
	// the stream (read only for --publish).
	published map[string]bool
}

// readStream reads, up to the stream's last sequence at start, every
// callback on <prefix>.cb.> (callbacks) and, with missing, reconcile's
// events on <prefix>.missing.> (published), with an ordered consumer. It
// writes a progress line to progress every few seconds and one at the end.
func readStream(ctx context.Context, nc *nats.Conn, cfg config.Config, callbacks, missing bool, progress io.Writer) (streamRead, error) {
	out := streamRead{published: map[string]bool{}}
	js, err := jetstream.New(nc)
	if err != nil {
		return out, fmt.Errorf("stream: %w", err)
	}
	name, prefix := cfg.NATS.Stream.Name, cfg.NATS.SubjectPrefix
	s, err := js.Stream(ctx, name)
	if err != nil {
		return out, fmt.Errorf("stream %s: %w", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return out, fmt.Errorf("stream %s: %w", name, err)
	}
	switch {
	case info.State.FirstSeq <= 1:
		// Nothing has aged out: the stream holds every callback since it
		// was created, and none from before.
		out.start, out.created = info.Created, true
	case info.State.Msgs == 0:
		out.start = time.Now() // everything aged out
	default:
		out.start = info.State.FirstTime
	}
	var filters []string
	if callbacks {
		filters = append(filters, prefix+".cb.>")
	}
	if missing {
		filters = append(filters, prefix+".missing.>")
	}
	last := info.State.LastSeq
	if info.State.Msgs == 0 || len(filters) == 0 {
		return out, nil
	}
	cons, err := js.OrderedConsumer(ctx, name, jetstream.OrderedConsumerConfig{FilterSubjects: filters, DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return out, fmt.Errorf("stream %s: %w", name, err)
	}
	ci, err := cons.Info(ctx)
	if err != nil {
		return out, fmt.Errorf("stream %s: %w", name, err)
	}
	total := ci.NumPending
	var n uint64
	defer func() {
		if callbacks {
			fmt.Fprintf(progress, "reconcile: read %d messages from stream %s: %d callbacks\n", n, name, len(out.callbacks))
		}
	}()
	if total == 0 {
		return out, nil
	}
	it, err := cons.Messages()
	if err != nil {
		return out, fmt.Errorf("stream %s: %w", name, err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	lastProgress := time.Now()
	missingPrefix := prefix + ".missing."
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			return out, fmt.Errorf("stream %s: %w", name, err)
		}
		meta, err := m.Metadata()
		if err != nil {
			return out, fmt.Errorf("stream %s: %w", name, err)
		}
		if meta.Sequence.Stream > last {
			break
		}
		n++
		if strings.HasPrefix(m.Subject(), missingPrefix) {
			if id, ok := strings.CutPrefix(m.Headers().Get(publish.HeaderMsgID), reconcile.MissingMsgID("")); ok {
				out.published[id] = true
			}
		} else if cb, ok := reconcile.FromMessage(prefix, m.Subject(), m.Headers(), m.Data()); ok {
			out.callbacks = append(out.callbacks, cb)
		}
		if time.Since(lastProgress) > 2*time.Second {
			lastProgress = time.Now()
			fmt.Fprintf(progress, "reconcile: read %d of %d messages from stream %s\n", n, total, name)
		}
		if meta.Sequence.Stream >= last || meta.NumPending == 0 {
			break
		}
	}
	return out, nil
}

// publishFindings puts each missing-callback finding on
// <prefix>.missing.<kind>.<shortcode> with Nats-Msg-Id reconcile:<receipt>,
// but for receipts whose event is already on the stream (published, read
// before: the stream's duplicate window may have passed since). sent
// counts the events stored now; already those that were there.
func publishFindings(ctx context.Context, nc *nats.Conn, cfg config.Config, fs []reconcile.Finding, published map[string]bool) (sent, already int, err error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, 0, fmt.Errorf("jetstream: %w", err)
	}
	for _, f := range fs {
		if published[f.Receipt] {
			already++
			continue
		}
		ack, err := js.PublishMsg(ctx, reconcile.MissingMsg(cfg.NATS.SubjectPrefix, f))
		if err != nil {
			return sent, already, fmt.Errorf("%s: %w", f.Receipt, err)
		}
		if ack.Duplicate {
			already++
		} else {
			sent++
		}
	}
	return sent, already, nil
}
