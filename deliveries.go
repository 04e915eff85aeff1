package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/daraja-edge/daraja-edge/forward"
)

// cmdDeliveriesList prints GET /v1/deliveries of one destination, or of
// each destination of the config, as {"deliveries":[…]}.
func cmdDeliveriesList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := commandFlags("deliveries list", stderr)
	destination := fs.String("destination", "", "the forward.destinations[].name to list (default: every destination of the config)")
	tx := fs.String("tx", "", "only the deliveries of this transaction id")
	state := fs.String("state", "", "only deliveries in this state: pending, delivered or dead")
	a := addAdminFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch *state {
	case "", forward.StatePending, forward.StateDelivered, forward.StateDead:
	default:
		return commandError("deliveries list", "deliveries list: --state is pending, delivered or dead, not %q", *state)
	}
	dests := []string{*destination}
	if *destination == "" {
		cfg, _, err := clientConfig(*a.config, stderr)
		if err != nil {
			return err
		}
		dests = dests[:0]
		for _, d := range cfg.Forward.Destinations {
			dests = append(dests, d.Name)
		}
		if len(dests) == 0 {
			return commandError("deliveries list", "deliveries list: name --destination (the config has no forward.destinations)")
		}
	}
	all := []forward.Delivery{}
	for _, d := range dests {
		q := url.Values{"destination": {d}}
		if *tx != "" {
			q.Set("tx", *tx)
		}
		if *state != "" {
			q.Set("state", *state)
		}
		out, err := a.call(ctx, "deliveries list", http.MethodGet, "/v1/deliveries?"+q.Encode(), nil, http.StatusOK, stderr)
		if err != nil {
			return err
		}
		var page struct {
			Deliveries []forward.Delivery `json:"deliveries"`
		}
		if err := json.Unmarshal(out, &page); err != nil {
			return fmt.Errorf("deliveries list: answer of the admin API for %s: %w", d, err)
		}
		all = append(all, page.Deliveries...)
	}
	var b bytes.Buffer
	if err := json.NewEncoder(&b).Encode(map[string]any{"deliveries": all}); err != nil {
		return fmt.Errorf("deliveries list: %w", err)
	}
	return printJSON(stdout, b.Bytes())
}

// cmdDeliveriesReplay asks POST /v1/deliveries/replay to deliver callbacks
// to a destination again, and prints the stream sequences queued.
func cmdDeliveriesReplay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := commandFlags("deliveries replay", stderr)
	destination := fs.String("destination", "", "the forward.destinations[].name to deliver to")
	sequence := fs.Uint64("sequence", 0, "replay the callback at this stream sequence")
	tx := fs.String("tx", "", "replay the callbacks of this transaction id")
	since := fs.String("since", "", "with --until: replay the callbacks received in this time range (RFC 3339)")
	until := fs.String("until", "", "end of the time range (RFC 3339)")
	dlq := fs.Bool("dlq", false, "replay every callback on the destination's dead-letter subject")
	a := addAdminFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *destination == "" {
		return commandError("deliveries replay", "deliveries replay: --destination is required")
	}
	req := forward.ReplayRequest{Destination: *destination, Sequence: *sequence, TX: *tx, DLQ: *dlq}
	selectors := 0
	for _, set := range []bool{*sequence != 0, *tx != "", *since != "" || *until != "", *dlq} {
		if set {
			selectors++
		}
	}
	if selectors != 1 {
		return commandError("deliveries replay", "deliveries replay: name one of --sequence, --tx, --since with --until, or --dlq")
	}
	if *since != "" || *until != "" {
		var err error
		if req.Since, err = time.Parse(time.RFC3339Nano, *since); err != nil {
			return commandError("deliveries replay", "deliveries replay: --since %q is not an RFC 3339 time such as 2026-03-15T10:00:00+03:00", *since)
		}
		if req.Until, err = time.Parse(time.RFC3339Nano, *until); err != nil {
			return commandError("deliveries replay", "deliveries replay: --until %q is not an RFC 3339 time such as 2026-03-15T12:00:00+03:00", *until)
		}
		if !req.Until.After(req.Since) {
			return commandError("deliveries replay", "deliveries replay: --until must be after --since")
		}
	}
	out, err := a.call(ctx, "deliveries replay", http.MethodPost, "/v1/deliveries/replay", req, http.StatusAccepted, stderr)
	if err != nil {
		return err
	}
	return printJSON(stdout, out)
}
