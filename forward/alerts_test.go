package forward

import (
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// TestAlertRulesNameForwardMetrics: every daraja_edge_forward_* metric
// named by deploy/prometheus/alerts.yaml is one the forwarder exports,
// and the rules cover what an operator must hear about: an open circuit,
// growing lag, dead letters and failing attempts.
func TestAlertRulesNameForwardMetrics(t *testing.T) {
	p := parser.NewParser(parser.Options{})
	groups, errs := rulefmt.ParseFile("../deploy/prometheus/alerts.yaml", false, model.UTF8Validation, p, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Fatal(err)
	}
	exported := MetricNames()
	named := map[string]bool{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			ast, err := p.ParseExpr(r.Expr)
			if err != nil {
				t.Fatalf("%s: %v", r.Alert, err)
			}
			parser.Inspect(ast, func(n parser.Node, _ []parser.Node) error {
				vs, ok := n.(*parser.VectorSelector)
				if !ok || !strings.HasPrefix(vs.Name, "daraja_edge_forward_") {
					return nil
				}
				name := vs.Name
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if base, ok := strings.CutSuffix(name, suffix); ok && slices.Contains(exported, base) {
						name = base
					}
				}
				if !slices.Contains(exported, name) {
					t.Errorf("%s names %s, which the forwarder does not export", r.Alert, vs.Name)
				}
				named[name] = true
				return nil
			})
		}
	}
	for _, must := range []string{"daraja_edge_forward_circuit_open", "daraja_edge_forward_lag",
		"daraja_edge_forward_dead_letters_total", "daraja_edge_forward_attempts_total"} {
		if !named[must] {
			t.Errorf("no alert rule on %s", must)
		}
	}
}
