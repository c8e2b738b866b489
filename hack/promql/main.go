// Command promql-names prints, for each PromQL expression in the alert rule
// files and Grafana dashboards given, the metric names it selects, one JSON
// object per line: {"file", "where", "expr", "metrics"}. An expression that
// does not parse is an error. tests/monitoring.rs holds every name to what a
// running pod's /metrics exposes.
package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

type found struct {
	File    string   `json:"file"`
	Where   string   `json:"where"`
	Expr    string   `json:"expr"`
	Metrics []string `json:"metrics"`
}

func names(expr string) ([]string, error) {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	out := []string{}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			name := vs.Name
			if name == "" {
				for _, m := range vs.LabelMatchers {
					if m.Name == "__name__" {
						name = m.Value
					}
				}
			}
			if name != "" && !seen[name] {
				seen[name] = true
				out = append(out, name)
			}
		}
		return nil
	})
	return out, nil
}

// dashboardExprs walks a Grafana dashboard and returns each target's expr
// with the panel title it belongs to.
func dashboardExprs(v any, where string, out *[][2]string) {
	switch t := v.(type) {
	case map[string]any:
		if title, ok := t["title"].(string); ok {
			where = title
		}
		if e, ok := t["expr"].(string); ok && e != "" {
			*out = append(*out, [2]string{where, e})
		}
		for _, c := range t {
			dashboardExprs(c, where, out)
		}
	case []any:
		for _, c := range t {
			dashboardExprs(c, where, out)
		}
	}
}

func run(file string, enc *json.Encoder) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var exprs [][2]string
	if strings.HasSuffix(file, ".json") {
		var v any
		if err := json.Unmarshal(data, &v); err != nil {
			return err
		}
		dashboardExprs(v, "", &exprs)
	} else {
		groups, errs := rulefmt.Parse(data, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.Default())
		if len(errs) > 0 {
			return errs[0]
		}
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				exprs = append(exprs, [2]string{g.Name + "/" + r.Alert + r.Record, r.Expr})
			}
		}
	}
	if len(exprs) == 0 {
		return fmt.Errorf("no expressions")
	}
	for _, e := range exprs {
		ms, err := names(e[1])
		if err != nil {
			return fmt.Errorf("%s: %s: %w", e[0], e[1], err)
		}
		if err := enc.Encode(found{filepath.Base(file), e[0], e[1], ms}); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	enc := json.NewEncoder(os.Stdout)
	for _, f := range os.Args[1:] {
		if err := run(f, enc); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", f, err)
			os.Exit(1)
		}
	}
}
