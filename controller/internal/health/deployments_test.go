package health

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// The monitoring files shipped under deployments/ are tested here because
// tests must live in a Go module and these files describe this package's
// states.
var (
	prometheusDir = filepath.Join("..", "..", "..", "deployments", "prometheus")
	rulesFile     = filepath.Join(prometheusDir, "ferry.rules.yml")
	rulesTestFile = filepath.Join(prometheusDir, "ferry.rules.test.yml")
	metricsReadme = filepath.Join(prometheusDir, "README.md")
	dashboardFile = filepath.Join("..", "..", "..", "deployments", "grafana", "ferry.json")
)

// exportedMetrics are the names the controller exports (the contract listed
// in deployments/prometheus/README.md), histograms with their series suffixes.
var exportedMetrics = map[string]bool{
	"ferry_nodes":                                   true,
	"ferry_node_unhealthy":                          true,
	"ferry_heartbeats_received_total":               true,
	"ferry_heartbeat_age_seconds_bucket":            true,
	"ferry_heartbeat_age_seconds_sum":               true,
	"ferry_heartbeat_age_seconds_count":             true,
	"ferry_heartbeat_max_age_seconds":               true,
	"ferry_rollouts":                                true,
	"ferry_rollout_nodes":                           true,
	"ferry_rollout_last_progress_timestamp_seconds": true,
	"ferry_artifact_bytes_served_total":             true,
	"ferry_artifacts_damaged":                       true,
	"ferry_peer_bad_pieces_total":                   true,
	"ferry_install_duration_seconds_bucket":         true,
	"ferry_install_duration_seconds_sum":            true,
	"ferry_install_duration_seconds_count":          true,
	"ferry_gossip_health_score":                     true,
	"ferry_gossip_members":                          true,
	"ferry_build_info":                              true,
	"grpc_server_started_total":                     true,
	"grpc_server_handled_total":                     true,
	"grpc_server_msg_received_total":                true,
	"grpc_server_msg_sent_total":                    true,
	"grpc_server_handling_seconds_bucket":           true,
	"grpc_server_handling_seconds_sum":              true,
	"grpc_server_handling_seconds_count":            true,
}

// requiredAlerts are the alerts the health-view issue asks for.
var requiredAlerts = []string{"FerryNodeDown", "FerryNodesUnreachable", "FerryRolloutStuck", "FerryControllerGossipDegraded"}

var (
	// Removed before looking for metric names: string literals, label
	// matchers and the label lists of by/without/on/ignoring/group_left.
	promStrings  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promMatchers = regexp.MustCompile(`\{[^}]*\}`)
	promLabelSet = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promRange    = regexp.MustCompile(`\[[^\]]*\]`)
	promIdent    = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
)

// metricNames returns the ferry_ and grpc_ metric names a PromQL expression
// reads.
func metricNames(expr string) []string {
	e := promStrings.ReplaceAllString(expr, `""`)
	e = promMatchers.ReplaceAllString(e, "")
	e = promLabelSet.ReplaceAllString(e, "")
	e = promRange.ReplaceAllString(e, "")
	var out []string
	for _, id := range promIdent.FindAllString(e, -1) {
		if strings.HasPrefix(id, "ferry_") || strings.HasPrefix(id, "grpc_") {
			out = append(out, id)
		}
	}
	return out
}

func TestMetricNames(t *testing.T) {
	tests := []struct {
		expr string
		want []string
	}{
		{`sum by (group) (ferry_nodes{state="down"}) > 0`, []string{"ferry_nodes"}},
		{`sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total{grpc_code!="OK"}[5m]))`, []string{"grpc_server_handled_total"}},
		{`histogram_quantile(0.9, sum by (le) (rate(ferry_heartbeat_age_seconds_bucket[$__rate_interval])))`, []string{"ferry_heartbeat_age_seconds_bucket"}},
		{`label_values(ferry_nodes, group)`, []string{"ferry_nodes"}},
		{`ferry_nodes_typo / on (group) ferry_nodes`, []string{"ferry_nodes_typo", "ferry_nodes"}},
		{`up{job="ferry_controller"}`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			if got := metricNames(tt.expr); !slices.Equal(got, tt.want) {
				t.Errorf("metricNames = %q, want %q", got, tt.want)
			}
		})
	}
}

// checkExpr fails the test when expr reads a metric the controller does not
// export, or reads none at all.
func checkExpr(t *testing.T, where, expr string) {
	t.Helper()
	names := metricNames(expr)
	if len(names) == 0 {
		t.Errorf("%s: %q reads no Ferry or gRPC metric", where, expr)
	}
	for _, n := range names {
		if !exportedMetrics[n] {
			t.Errorf("%s: %q reads %s, which the controller does not export (see deployments/prometheus/README.md)", where, expr, n)
		}
	}
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

type ruleTestFile struct {
	Tests []struct {
		AlertRuleTest []struct {
			Alertname string           `yaml:"alertname"`
			ExpAlerts []map[string]any `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

// readYAML decodes path into v; strict refuses keys v does not declare.
func readYAML(t *testing.T, path string, v any, strict bool) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(strict)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func TestAlertRules(t *testing.T) {
	var rules ruleFile
	readYAML(t, rulesFile, &rules, true)
	var tests ruleTestFile
	readYAML(t, rulesTestFile, &tests, false)
	tested := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, at := range tc.AlertRuleTest {
			if len(at.ExpAlerts) > 0 {
				tested[at.Alertname] = true
			}
		}
	}
	seen := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			name := r.Alert + r.Record
			checkExpr(t, rulesFile+": "+name, r.Expr)
			if r.Alert == "" {
				continue
			}
			if seen[r.Alert] {
				t.Errorf("alert %s defined twice", r.Alert)
			}
			seen[r.Alert] = true
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("alert %s: severity %q, want warning or critical", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s needs a summary and a description", r.Alert)
			}
			if !tested[r.Alert] {
				t.Errorf("alert %s is never seen firing in %s", r.Alert, rulesTestFile)
			}
		}
	}
	for _, a := range requiredAlerts {
		if !seen[a] {
			t.Errorf("alert %s missing from %s", a, rulesFile)
		}
	}
}

func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not on PATH; install it (Debian: apt-get install prometheus) to check deployments/prometheus/ferry.rules.yml")
	}
	abs, err := filepath.Abs(prometheusDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"check", "rules", "ferry.rules.yml"},
		{"test", "rules", "ferry.rules.test.yml"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			cmd := exec.Command(promtool, args...)
			cmd.Dir = abs
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		})
	}
}

func TestMetricsReadmeListsEveryMetric(t *testing.T) {
	data, err := os.ReadFile(metricsReadme)
	if err != nil {
		t.Fatal(err)
	}
	for m := range exportedMetrics {
		base := m
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(m, suffix); ok && exportedMetrics[b+"_bucket"] {
				base = b
			}
		}
		if !bytes.Contains(data, []byte("`"+base+"`")) {
			t.Errorf("%s does not list %s", metricsReadme, base)
		}
	}
}

type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ X, Y, W, H int } `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // collapsed rows
}

func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard needs a uid and a title")
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		if v.Type == "query" {
			checkExpr(t, "variable "+v.Name, v.Definition)
		}
	}
	if !vars["datasource"] {
		t.Error("dashboard has no datasource variable; panels must not hard-code a data source")
	}
	ids := map[int]string{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if other, dup := ids[p.ID]; dup {
				t.Errorf("panels %q and %q share id %d", other, p.Title, p.ID)
			}
			ids[p.ID] = p.Title
			if p.GridPos.X+p.GridPos.W > 24 || p.GridPos.W <= 0 || p.GridPos.H <= 0 {
				t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, p.GridPos)
			}
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q does not use the ${datasource} variable", p.Title)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				if refs[tg.RefID] {
					t.Errorf("panel %q: refId %q used twice", p.Title, tg.RefID)
				}
				refs[tg.RefID] = true
				checkExpr(t, "panel "+p.Title, tg.Expr)
			}
		}
	}
	walk(d.Panels)
	// Every health state an operator acts on has a panel.
	for _, state := range []string{"down", "unreachable", "suspect", "stale"} {
		if !bytes.Contains(data, []byte(`state=\"`+state+`\"`)) && !bytes.Contains(data, []byte(state+"|")) && !bytes.Contains(data, []byte("|"+state)) {
			t.Errorf("dashboard shows no %s nodes", state)
		}
	}
}
