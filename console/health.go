package console

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
)

type healthData struct {
	Ready, NATS, Stream, Bucket, Spool, Cert     string
	ReadyOK, NATSOK, StreamOK, BucketOK, SpoolOK bool
	Edge                                         string
	Allowlist                                    int
	Rates                                        []rate
}

// health shows readiness, the NATS connection, the stream, the token
// bucket, this replica's spool, the certificate, the allowlist and the
// recent callback rates.
func (c *Console) health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	d := healthData{Allowlist: -1, Ready: "ready", ReadyOK: true, Edge: c.o.Edge}
	if c.o.Ready != nil {
		if err := c.o.Ready(ctx); err != nil {
			d.Ready, d.ReadyOK = "not ready: "+err.Error(), false
		}
	}
	st := c.o.NATS.Status()
	d.NATS, d.NATSOK = st.String(), st == nats.CONNECTED
	if s, err := c.o.JS.Stream(ctx, c.o.Stream); err != nil {
		d.Stream = err.Error()
	} else if info, err := s.Info(ctx); err != nil {
		d.Stream = err.Error()
	} else {
		d.StreamOK = true
		d.Stream = c.o.Stream + ": " + itoa(info.State.Msgs) + " messages, " + itoa(info.State.Bytes) + " bytes, " +
			itoa(uint64(info.State.Consumers)) + " consumers, " + strconv.Itoa(max(1, info.Config.Replicas)) + " replica(s)"
		if info.Cluster != nil && info.Cluster.Leader != "" {
			d.Stream += ", leader " + info.Cluster.Leader
		}
	}
	switch {
	case c.o.TokenBucket == "":
		d.Bucket = "unknown"
	default:
		if kv, err := c.o.JS.KeyValue(ctx, c.o.TokenBucket); err != nil {
			d.Bucket = c.o.TokenBucket + ": " + err.Error()
		} else if bs, err := kv.Status(ctx); err != nil {
			d.Bucket = c.o.TokenBucket + ": " + err.Error()
		} else {
			d.BucketOK = true
			d.Bucket = c.o.TokenBucket + ": " + itoa(bs.Values()) + " values, " + itoa(bs.Bytes()) + " bytes, history " +
				strconv.FormatInt(bs.History(), 10)
			if ttl := bs.TTL(); ttl > 0 {
				d.Bucket += ", kept " + days(ttl)
			}
		}
	}
	if c.o.Spool != nil {
		bytes, records := c.o.Spool()
		d.SpoolOK = records == 0
		d.Spool = strconv.FormatInt(records, 10) + " callbacks waiting for NATS (" + strconv.FormatInt(bytes, 10) + " bytes)"
		if records == 0 {
			d.Spool = "empty"
		}
	} else {
		d.Spool = "unknown"
	}
	if c.o.CertExpiry != nil {
		if t := c.o.CertExpiry(); !t.IsZero() {
			d.Cert = "expires " + t.UTC().Format(time.RFC3339)
		}
	}
	if c.o.AllowlistSize != nil {
		d.Allowlist = c.o.AllowlistSize()
	}
	d.Rates = c.rates.now()
	c.render(w, r, http.StatusOK, "health.html", page{Title: "Health", Nav: "health", Data: d})
}

// days writes d in days when it is a whole number of them.
func days(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + " days"
	}
	return d.String()
}
