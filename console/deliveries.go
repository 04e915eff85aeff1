package console

import (
	"cmp"
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/daraja-edge/daraja-edge/daraja"
	"github.com/daraja-edge/daraja-edge/forward"
)

// delivery is one delivery record as the console shows it: the
// transaction id masked, times in UTC.
type delivery struct {
	Destination string
	Seq         uint64
	Kind        string
	Shortcode   string
	Tx          string
	State       string
	NextAt      string
	Replays     int
	Attempts    []attempt
}

type attempt struct {
	At     string
	Status int
	Error  string
}

func (c *Console) showDelivery(d forward.Delivery) delivery {
	out := delivery{Destination: d.Destination, Seq: d.Sequence, Kind: d.Kind, Shortcode: d.Shortcode,
		Tx: daraja.MaskTransactionID(daraja.Kind(d.Kind), d.TransactionID), State: d.State, Replays: d.Replays}
	if !d.NextAt.IsZero() && d.State == forward.StatePending {
		out.NextAt = d.NextAt.UTC().Format(time.RFC3339)
	}
	for _, a := range d.Attempts {
		e := c.maskText(a.Error)
		if a.Status != 0 && e == "HTTP "+strconv.Itoa(a.Status) {
			e = "" // the status says it already
		}
		out.Attempts = append(out.Attempts, attempt{At: a.At.UTC().Format(time.RFC3339), Status: a.Status, Error: e})
	}
	return out
}

// deliveriesOf reads the delivery records of stream sequence seq
// (transaction id tx) at every destination.
func (c *Console) deliveriesOf(ctx context.Context, seq uint64, tx string) ([]delivery, string) {
	if c.o.Deliveries == nil || tx == "" {
		return nil, ""
	}
	var out []delivery
	for _, dest := range c.o.Destinations {
		ds, err := c.o.Deliveries.Deliveries(ctx, dest, tx, "", 1000)
		if err != nil {
			return out, "Delivery records could not be read: " + err.Error()
		}
		for _, d := range ds {
			if d.Sequence == seq {
				out = append(out, c.showDelivery(d))
			}
		}
	}
	return out, ""
}

type deliveriesData struct {
	Destinations []string
	Destination  string
	Tx, State    string
	States       []string
	List         []delivery
	Searched     bool
}

// deliveries lists a destination's delivery records, of one transaction
// id and in one state when given (the filter stays in the URL).
func (c *Console) deliveries(w http.ResponseWriter, r *http.Request) {
	p := page{Title: "Deliveries", Nav: "deliveries"}
	if c.o.Deliveries == nil {
		p.Error = "Forwarding is not configured (forward.destinations): there are no deliveries."
		c.render(w, r, http.StatusNotFound, "deliveries.html", p)
		return
	}
	q := r.URL.Query()
	d := deliveriesData{Destinations: c.o.Destinations, Destination: q.Get("destination"), Tx: q.Get("tx"), State: q.Get("state"),
		States: []string{forward.StatePending, forward.StateDelivered, forward.StateDead}}
	if d.Destination == "" {
		d.Destination = c.o.Destinations[0]
	}
	switch {
	case !slices.Contains(c.o.Destinations, d.Destination):
		p.Error = "No destination " + d.Destination + "."
	case d.State != "" && !slices.Contains(d.States, d.State):
		p.Error = "State must be pending, delivered or dead."
	case len(d.Tx) > 128:
		p.Error = "That transaction id is too long."
	default:
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		ds, err := c.o.Deliveries.Deliveries(ctx, d.Destination, d.Tx, d.State, 200)
		if err != nil && !errors.Is(err, forward.ErrUnknownDestination) {
			p.Error = "Delivery records could not be read: " + err.Error()
		}
		d.Searched = err == nil
		for _, x := range ds {
			d.List = append(d.List, c.showDelivery(x))
		}
		slices.SortFunc(d.List, func(a, b delivery) int { return cmp.Compare(b.Seq, a.Seq) }) // newest first
	}
	p.Data = d
	c.render(w, r, http.StatusOK, "deliveries.html", p)
}
