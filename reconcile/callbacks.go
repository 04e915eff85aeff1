package reconcile

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/publish"
)

// Callback is what reconciliation needs of one callback on the stream.
type Callback struct {
	Subject    string
	Kind       daraja.Kind
	Shortcode  string
	Receipt    string // M-Pesa receipt; empty for failed results
	ResultCode string
	Amount     Cents
	HasAmount  bool
	Time       time.Time // when M-Pesa says it happened, else when the edge received it
	MSISDN     string    // masked
	Success    bool
	// Linked is a reversal's OriginalTransactionID: the receipt it reverses.
	Linked string
}

// FromMessage reads a stream message. ok is false for messages that are
// not callbacks (missing events, validations) or that do not parse.
func FromMessage(prefix, subject string, headers map[string][]string, body []byte) (Callback, bool) {
	if !strings.HasPrefix(subject, prefix+".cb.") {
		return Callback{}, false
	}
	get := func(k string) string {
		if v := headers[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	kind := daraja.Kind(get(publish.HeaderKind))
	if !kind.Valid() {
		// <prefix>.cb.<kind a>.<kind b>.<shortcode>.<token>
		parts := strings.Split(strings.TrimPrefix(subject, prefix+".cb."), ".")
		if len(parts) >= 2 {
			kind = daraja.Kind(parts[0] + "." + parts[1])
		}
	}
	switch kind {
	case daraja.C2BConfirmation, daraja.STKCallback, daraja.B2CResult, daraja.B2BResult, daraja.ReversalResult:
	default:
		return Callback{}, false
	}
	cb, err := daraja.Parse(kind, body)
	if err != nil {
		return Callback{}, false
	}
	out := Callback{Subject: subject, Kind: kind, ResultCode: cb.ResultCode, Shortcode: cb.Shortcode}
	if out.Shortcode == "" {
		out.Shortcode = get(publish.HeaderShortcode)
	}
	if out.Shortcode == "" {
		if parts := strings.Split(subject, "."); len(parts) >= 6 {
			out.Shortcode = parts[len(parts)-2]
		}
	}
	var desc string
	out.Time, out.Linked, desc = bodyInfo(kind, body)
	out.Success = kind == daraja.C2BConfirmation || cb.ResultCode == "0" || reversalSucceeded(kind, cb.ResultCode, desc)
	if out.Success {
		out.Receipt = cb.Receipt
	}
	if a, err := ParseAmount(cb.Amount); err == nil && cb.Amount != "" {
		out.Amount, out.HasAmount = max(a, -a), true
	}
	out.MSISDN = daraja.MaskMSISDN(cb.MSISDN)
	if out.MSISDN == "" && cb.MSISDNHash != "" {
		out.MSISDN = daraja.MaskMSISDN(cb.MSISDNHash)
	}
	if out.Time.IsZero() {
		out.Time, _ = time.Parse(time.RFC3339Nano, get(publish.HeaderReceivedAt))
	}
	return out, true
}

// reversalSucceeded reports Safaricom's documented success of a reversal:
// ResultCode 21 with the ResultDesc "The service request is processed
// successfully" (testdata/callbacks/reversal.result__success.json). 21 on
// any other kind, or with another description, is not a success.
func reversalSucceeded(kind daraja.Kind, code, desc string) bool {
	return kind == daraja.ReversalResult && code == "21" &&
		strings.Contains(strings.ToLower(desc), "processed successfully")
}

// bodyInfo reads what Parse does not: the time M-Pesa puts in the body,
// in East Africa Time (C2B TransTime, STK TransactionDate, a B2C result's
// TransactionCompletedDateTime, a B2B or reversal result's
// TransCompletedTime), a reversal's OriginalTransactionID and a result's
// ResultDesc.
func bodyInfo(kind daraja.Kind, body []byte) (t time.Time, linked, desc string) {
	var b struct {
		TransTime json.RawMessage
		Body      struct {
			StkCallback struct {
				CallbackMetadata struct {
					Item []struct {
						Name  string
						Value json.RawMessage
					}
				}
			} `json:"stkCallback"`
		}
		Result struct {
			ResultDesc       json.RawMessage
			ResultParameters struct {
				ResultParameter json.RawMessage
			}
		}
	}
	_ = json.Unmarshal(body, &b) // Parse accepted it; a field of another shape stays empty
	text := func(raw json.RawMessage) string {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s
		}
		return strings.TrimSpace(string(raw))
	}
	var s string
	switch kind {
	case daraja.C2BConfirmation:
		s = text(b.TransTime)
	case daraja.STKCallback:
		for _, it := range b.Body.StkCallback.CallbackMetadata.Item {
			if it.Name == "TransactionDate" {
				s = text(it.Value)
				break
			}
		}
	default:
		desc = text(b.Result.ResultDesc)
		var params []struct {
			Key   string
			Value json.RawMessage
		}
		raw := bytes.TrimSpace(b.Result.ResultParameters.ResultParameter)
		if len(raw) > 0 && raw[0] == '{' {
			raw = append(append([]byte{'['}, raw...), ']')
		}
		_ = json.Unmarshal(raw, &params)
		for _, p := range params {
			switch p.Key {
			case "TransactionCompletedDateTime", "TransCompletedTime", "FinalisedTime":
				if s == "" {
					s = text(p.Value)
				}
			case "OriginalTransactionID":
				if v := text(p.Value); linked == "" && safeReceipt(v) {
					linked = v
				}
			}
		}
	}
	if s == "" {
		return time.Time{}, linked, desc
	}
	t, err := ParseTime(s, EAT)
	if err != nil {
		return time.Time{}, linked, desc
	}
	return t, linked, desc
}

// ExportLine is one line of `tail --export` and of --callbacks.
type ExportLine struct {
	Subject string            `json:"subject"`
	Headers map[string]string `json:"headers"`
	Body    json.RawMessage   `json:"body"`
}

// ReadExport reads an NDJSON export. Bad lines are problems, not errors;
// an error is a read failure.
func ReadExport(r io.Reader, prefix string) ([]Callback, []Problem, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var (
		out      []Callback
		problems []Problem
		n        int
	)
	for sc.Scan() {
		n++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var raw struct {
			Subject string                     `json:"subject"`
			Headers map[string]json.RawMessage `json:"headers"`
			Body    json.RawMessage            `json:"body"`
		}
		if err := json.Unmarshal(line, &raw); err != nil || raw.Subject == "" {
			problems = append(problems, Problem{n, "not an export line"})
			continue
		}
		h := map[string][]string{}
		for k, v := range raw.Headers {
			var one string
			var many []string
			if json.Unmarshal(v, &one) == nil {
				h[k] = []string{one}
			} else if json.Unmarshal(v, &many) == nil {
				h[k] = many
			}
		}
		if !strings.HasPrefix(raw.Subject, prefix+".cb.") {
			continue
		}
		cb, ok := FromMessage(prefix, raw.Subject, h, raw.Body)
		if !ok {
			if k := daraja.Kind(first(h[publish.HeaderKind])); k == daraja.C2BValidation || k.Valid() && strings.HasSuffix(string(k), "timeout") || k == daraja.StatusResult || k == daraja.BalanceResult {
				continue
			}
			problems = append(problems, Problem{n, "callback body does not parse"})
			continue
		}
		out = append(out, cb)
	}
	if err := sc.Err(); err != nil {
		return out, problems, fmt.Errorf("line %d: %w", n+1, err)
	}
	return out, problems, nil
}

func first(v []string) string {
	if len(v) > 0 {
		return v[0]
	}
	return ""
}
