package main

import (
	"encoding/json"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/daraja-edge/daraja-edge/forward"
	"github.com/daraja-edge/daraja-edge/internal/edgetest"
	"github.com/daraja-edge/daraja-edge/recovery"
)

// TestAlertRulesAndDashboard: deploy/prometheus/alerts.yaml parses with
// Prometheus's own rule parser, and every daraja_edge_* metric that the
// rules and the Grafana dashboard name is one the running edge exports.
func TestAlertRulesAndDashboard(t *testing.T) {
	e := edgetest.Start(t, edgetest.Config(t, ""))
	// The forwarder's and recovery's collectors register only where
	// forward: and recovery: are configured.
	exported := slices.Concat(e.Srv.MetricNames(), forward.MetricNames(), recovery.MetricNames())
	if !slices.Contains(exported, "daraja_edge_requests_total") {
		t.Fatalf("the edge's metric names look wrong: %v", exported)
	}
	p := parser.NewParser(parser.Options{})
	groups, errs := rulefmt.ParseFile("deploy/prometheus/alerts.yaml", false, model.UTF8Validation, p, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Error(err)
	}
	var exprs []string
	if groups != nil {
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				exprs = append(exprs, r.Expr)
			}
		}
	}
	if len(exprs) < 10 {
		t.Fatalf("only %d alert rules", len(exprs))
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	data, err := os.ReadFile("deploy/grafana/daraja-edge.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	for _, pn := range dash.Panels {
		for _, tg := range pn.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, expr := range exprs {
		ast, err := p.ParseExpr(expr)
		if err != nil {
			t.Errorf("%q: %v", expr, err)
			continue
		}
		parser.Inspect(ast, func(n parser.Node, _ []parser.Node) error {
			vs, ok := n.(*parser.VectorSelector)
			if !ok || !strings.HasPrefix(vs.Name, "daraja_edge_") {
				return nil
			}
			name := vs.Name
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if base, ok := strings.CutSuffix(name, suffix); ok && slices.Contains(exported, base) {
					name = base
				}
			}
			if !slices.Contains(exported, name) {
				t.Errorf("%q names %s, which the edge does not export", expr, vs.Name)
			}
			return nil
		})
	}
}

// pagedMetrics are the metrics whose alert must page (severity: page): a
// callback answered 200 and then lost (a store behind what was
// acknowledged), and spool records skipped as damaged (callbacks answered
// 200 that will not reach the stream as they were).
var pagedMetrics = []string{"daraja_edge_stream_acknowledged_lost", "daraja_edge_spool_corrupt_total"}

// TestAlertRulesPage: deploy/prometheus/alerts.yaml has, for each of
// pagedMetrics, an alert rule whose expression reads that metric and whose
// severity is page: deleting the rule, or lowering it to a ticket, fails
// here.
func TestAlertRulesPage(t *testing.T) {
	p := parser.NewParser(parser.Options{})
	groups, errs := rulefmt.ParseFile("deploy/prometheus/alerts.yaml", false, model.UTF8Validation, p, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Fatal(err)
	}
	for _, metric := range pagedMetrics {
		paged := false
		var readers []string // alerts reading metric, with their severity
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				if r.Alert == "" {
					continue
				}
				ast, err := p.ParseExpr(r.Expr)
				if err != nil {
					t.Fatalf("%s: %q: %v", r.Alert, r.Expr, err)
				}
				reads := false
				parser.Inspect(ast, func(n parser.Node, _ []parser.Node) error {
					if vs, ok := n.(*parser.VectorSelector); ok && vs.Name == metric {
						reads = true
					}
					return nil
				})
				if reads {
					readers = append(readers, r.Alert+" (severity "+r.Labels["severity"]+")")
					paged = paged || r.Labels["severity"] == "page"
				}
			}
		}
		if !paged {
			t.Errorf("no alert rule on %s pages (severity: page); rules reading it: %v", metric, readers)
		}
	}
	// Every condition an operator must hear about has a rule at all.
	read := map[string]bool{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if ast, err := p.ParseExpr(r.Expr); err == nil && r.Alert != "" {
				parser.Inspect(ast, func(n parser.Node, _ []parser.Node) error {
					if vs, ok := n.(*parser.VectorSelector); ok {
						read[strings.TrimSuffix(vs.Name, "_bucket")] = true
					}
					return nil
				})
			}
		}
	}
	for _, must := range alertedMetrics {
		if !read[must] {
			t.Errorf("no alert rule reads %s", must)
		}
	}
}

// alertedMetrics must each be read by some alert rule: the forwarder's open
// circuit, lag, dead letters and failing attempts, recovery's outcomes,
// slow answers, the spool, NATS and the token copy.
var alertedMetrics = []string{
	"daraja_edge_forward_circuit_open", "daraja_edge_forward_lag",
	"daraja_edge_forward_dead_letters_total", "daraja_edge_forward_attempts_total",
	"daraja_edge_recovery_outcomes_total", "daraja_edge_request_duration_seconds",
	"daraja_edge_spool_stuck", "daraja_edge_nats_connected", "daraja_edge_token_cache_full",
	"daraja_edge_certificate_expiry_timestamp_seconds", "daraja_edge_reusable_tokens_expiring",
}
