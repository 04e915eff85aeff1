package main

import (
	"context"
	"encoding/json"
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
		in.Callbacks, in.StreamStart, err = readStream(ctx, c, cfg, stderr)
		if err != nil {
			return &exitError{code: 2, msg: fmt.Sprintf("reconcile: %v", err)}
		}
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
		n, err := publishFindings(ctx, c, cfg, report.MissingFindings())
		if err != nil {
			return fmt.Errorf("reconcile: publish: %w", err)
		}
		fmt.Fprintf(stderr, "reconcile: published %d missing-callback findings\n", n)
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

// readStream reads every callback on <prefix>.cb.> up to the stream's last
// sequence at start, with an ordered consumer. start is the time of the
// first message still kept when older ones have aged out (zero when none
// has).
func readStream(ctx context.Context, nc *nats.Conn, cfg config.Config, progress io.Writer) (cbs []reconcile.Callback, start time.Time, err error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, start, fmt.Errorf("stream: %w", err)
	}
	name, prefix := cfg.NATS.Stream.Name, cfg.NATS.SubjectPrefix
	s, err := js.Stream(ctx, name)
	if err != nil {
		return nil, start, fmt.Errorf("stream %s: %w", name, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, start, fmt.Errorf("stream %s: %w", name, err)
	}
	last := info.State.LastSeq
	if info.State.FirstSeq > 1 {
		start = info.State.FirstTime
		if info.State.Msgs == 0 {
			start = time.Now()
		}
	}
	if info.State.Msgs == 0 {
		return nil, start, nil
	}
	cons, err := js.OrderedConsumer(ctx, name, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{prefix + ".cb.>"}, DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, start, fmt.Errorf("stream %s: %w", name, err)
	}
	ci, err := cons.Info(ctx)
	if err != nil {
		return nil, start, fmt.Errorf("stream %s: %w", name, err)
	}
	if ci.NumPending == 0 {
		return nil, start, nil
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, start, fmt.Errorf("stream %s: %w", name, err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	total := ci.NumPending
	var n uint64
	lastProgress := time.Now()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil, start, ctx.Err()
			}
			return nil, start, fmt.Errorf("stream %s: %w", name, err)
		}
		meta, err := m.Metadata()
		if err != nil {
			return nil, start, fmt.Errorf("stream %s: %w", name, err)
		}
		if meta.Sequence.Stream > last {
			break
		}
		n++
		if cb, ok := reconcile.FromMessage(prefix, m.Subject(), m.Headers(), m.Data()); ok {
			cbs = append(cbs, cb)
		}
		if total > 1000 && time.Since(lastProgress) > time.Second {
			lastProgress = time.Now()
			fmt.Fprintf(progress, "reconcile: read %d of %d messages from stream %s\n", n, total, name)
		}
		if meta.Sequence.Stream >= last || meta.NumPending == 0 {
			break
		}
	}
	if total > 1000 {
		fmt.Fprintf(progress, "reconcile: read %d messages from stream %s, %d callbacks\n", n, name, len(cbs))
	}
	return cbs, start, nil
}

// missingEvent is the body of a reconcile missing-callback finding.
type missingEvent struct {
	Source    string   `json:"source"` // "reconcile"
	Receipt   string   `json:"receipt"`
	Kind      string   `json:"kind"`
	Kinds     []string `json:"kinds"`
	Shortcode string   `json:"shortcode"`
	Amount    string   `json:"amount"`
	Time      string   `json:"time"`
	Statement string   `json:"statement"`
}

// publishFindings puts each missing-callback finding on
// <prefix>.missing.<kind>.<shortcode>, Nats-Msg-Id reconcile:<receipt>.
func publishFindings(ctx context.Context, nc *nats.Conn, cfg config.Config, fs []reconcile.Finding) (int, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, err
	}
	subj := publish.Subjects{Prefix: cfg.NATS.SubjectPrefix}
	n := 0
	for _, f := range fs {
		sc := f.Shortcode
		if sc == "" {
			sc = "unknown"
		}
		ev := missingEvent{Source: "reconcile", Receipt: f.Receipt, Kind: f.MissingKind(), Kinds: strings.Split(f.Kind, "|"),
			Shortcode: f.Shortcode, Amount: f.Amount.String(), Time: f.Time.Format(time.RFC3339), Statement: f.Source}
		b, _ := json.Marshal(ev)
		if _, err := js.Publish(ctx, subj.Missing(ev.Kind, sc), b, jetstream.WithMsgID("reconcile:"+f.Receipt)); err != nil {
			return n, fmt.Errorf("%s: %w", f.Receipt, err)
		}
		n++
	}
	return n, nil
}
