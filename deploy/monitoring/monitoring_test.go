package monitoring

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"github.com/kcbackup/kcbackup/api/v1alpha1"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/kcbackup/kcbackup/test/harness"
)

var update = flag.Bool("update", false, "rewrite prometheusrule.yaml from rules/kcbackup-rules.yaml")

const (
	ruleFile          = "rules/kcbackup-rules.yaml"
	ruleTestFile      = "rules/kcbackup-rules_test.yaml"
	prometheusRule    = "prometheusrule.yaml"
	dashboardFile     = "grafana-dashboard.json"
	runbookFile       = "RUNBOOK.md"
	runbookURLPrefix  = "https://github.com/kcbackup/kcbackup/blob/main/deploy/monitoring/RUNBOOK.md#"
	sidecarJob        = "kcbackup-sidecar"
	operatorJob       = "kcbackup-operator"
	prometheusRuleHdr = `# Generated from rules/kcbackup-rules.yaml, which is the file to edit; regenerate with
#   go test ./deploy/monitoring -run TestPrometheusRuleMatchesRuleFile -update
# TestPrometheusRuleMatchesRuleFile fails when the two differ.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: kcbackup
  labels:
    app.kubernetes.io/name: kcbackup
    app.kubernetes.io/component: monitoring
spec:
`
)

// contractMetrics are the metric names the sidecar and the operator export. Rules,
// unit tests and the dashboard may use these and nothing else with the kcbackup_ prefix,
// so that a typo cannot make an alert or a panel silently empty.
var contractMetrics = map[string]bool{
	// Sidecar, one series per PostgreSQL pod.
	"kcbackup_up":                                      true,
	"kcbackup_storage_up":                              true,
	"kcbackup_archived_lsn_bytes":                      true,
	"kcbackup_server_flush_lsn_bytes":                  true,
	"kcbackup_archive_lag_bytes":                       true,
	"kcbackup_archive_lag_seconds":                     true,
	"kcbackup_last_archived_segment_timestamp_seconds": true,
	"kcbackup_uploads_total":                           true,
	"kcbackup_upload_errors_total":                     true,
	"kcbackup_uploaded_bytes_total":                    true,
	"kcbackup_received_wal_bytes_total":                true,
	"kcbackup_slot_retained_bytes":                     true,
	"kcbackup_pgdata_volume_free_bytes":                true,
	"kcbackup_pgdata_volume_size_bytes":                true,
	"kcbackup_spool_bytes":                             true,
	"kcbackup_timeline":                                true,
	"kcbackup_server_role":                             true,
	"kcbackup_backup_running":                          true,
	"kcbackup_backups_total":                           true,
	"kcbackup_backup_last_success_timestamp_seconds":   true,
	"kcbackup_backup_last_failure_timestamp_seconds":   true,
	"kcbackup_backup_last_duration_seconds":            true,
	"kcbackup_backup_last_size_bytes":                  true,
	"kcbackup_recovery_window_start_timestamp_seconds": true,
	"kcbackup_recovery_window_end_timestamp_seconds":   true,
	"kcbackup_recovery_ranges":                         true,
	"kcbackup_archive_gaps_total":                      true,
	"kcbackup_archive_gap_last_timestamp_seconds":      true,
	// Operator, one series per KeycloakBackup resource.
	"kcbackup_operator_last_backup_success_timestamp_seconds": true,
	"kcbackup_operator_last_backup_failed":                    true,
	"kcbackup_operator_schedule_interval_seconds":             true,
	"kcbackup_operator_restore_failed":                        true,
	"kcbackup_operator_restore_failures_total":                true,
	// Operator, scheduled restore drills, one series per KeycloakBackup with a drill schedule.
	"kcbackup_operator_drill_last_success_timestamp_seconds": true,
	"kcbackup_operator_drill_last_failed":                    true,
	"kcbackup_operator_drill_interval_seconds":               true,
	"kcbackup_operator_drill_rto_seconds":                    true,
	"kcbackup_operator_drill_rpo_seconds":                    true,
	"kcbackup_operator_drills_total":                         true,
}

// metricName matches kcbackup metric names inside PromQL and templates.
var metricName = regexp.MustCompile(`\bkcbackup_[a-z0-9_]+`)

// targetlessAlerts come from absent(): the series they fire on has no pod or resource,
// so their description cannot name one.
var targetlessAlerts = map[string]bool{
	"KcbackupSidecarTargetsMissing": true,
}

type rules struct {
	Groups []ruleGroup `json:"groups"`
}

type ruleGroup struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []rule `json:"rules"`
}

type rule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type promtoolTests struct {
	RuleFiles          []string       `json:"rule_files"`
	EvaluationInterval string         `json:"evaluation_interval"`
	Tests              []promtoolTest `json:"tests"`
}

type promtoolTest struct {
	Name        string `json:"name"`
	Interval    string `json:"interval"`
	InputSeries []struct {
		Series string `json:"series"`
		Values string `json:"values"`
	} `json:"input_series"`
	AlertRuleTest []struct {
		EvalTime  string           `json:"eval_time"`
		Alertname string           `json:"alertname"`
		ExpAlerts []map[string]any `json:"exp_alerts"`
	} `json:"alert_rule_test"`
}

func readFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return b
}

func loadRules(t *testing.T) rules {
	t.Helper()
	var r rules
	if err := yaml.UnmarshalStrict(readFile(t, ruleFile), &r); err != nil {
		t.Fatalf("parse %s: %v", ruleFile, err)
	}
	if len(r.Groups) == 0 {
		t.Fatalf("%s has no rule groups", ruleFile)
	}
	return r
}

func alertRules(t *testing.T) []rule {
	t.Helper()
	var out []rule
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				out = append(out, r)
			}
		}
	}
	return out
}

// requirePromtool returns the path of promtool, or stops the test as harness.Require does.
func requirePromtool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	harness.Require(t, "promtool", err)
	return path
}

func runPromtool(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), requirePromtool(t), args...)
	cmd.Dir = "rules"
	out, err := cmd.CombinedOutput()
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	if err != nil {
		t.Fatalf("promtool %s: %v", strings.Join(args, " "), err)
	}
}

func TestPromtoolCheckRulesAcceptsRuleFile(t *testing.T) {
	runPromtool(t, "check", "rules", filepath.Base(ruleFile))
}

func TestPromtoolUnitTestsOfAlertsPass(t *testing.T) {
	runPromtool(t, "test", "rules", filepath.Base(ruleTestFile))
}

// renderPrometheusRule wraps the plain rule file's groups in a PrometheusRule. The text is
// indented, not re-marshalled, so the comments and the block style of the expressions
// survive.
func renderPrometheusRule(plain []byte) ([]byte, error) {
	lines := strings.SplitAfter(string(plain), "\n")
	start := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "groups:") })
	if start < 0 {
		return nil, fmt.Errorf("%s: no top-level groups: key", ruleFile)
	}
	var b bytes.Buffer
	b.WriteString(prometheusRuleHdr)
	for _, l := range lines[start:] {
		if strings.TrimSpace(l) != "" {
			b.WriteString("  ")
		}
		b.WriteString(l)
	}
	return b.Bytes(), nil
}

func TestPrometheusRuleMatchesRuleFile(t *testing.T) {
	plain := readFile(t, ruleFile)
	if *update {
		rendered, err := renderPrometheusRule(plain)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(prometheusRule, rendered, 0o644); err != nil {
			t.Fatalf("write %s: %v", prometheusRule, err)
		}
	}

	var want map[string]any
	if err := yaml.Unmarshal(plain, &want); err != nil {
		t.Fatalf("parse %s: %v", ruleFile, err)
	}
	var cr struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
		Spec map[string]any `json:"spec"`
	}
	if err := yaml.Unmarshal(readFile(t, prometheusRule), &cr); err != nil {
		t.Fatalf("parse %s: %v", prometheusRule, err)
	}
	if cr.APIVersion != "monitoring.coreos.com/v1" || cr.Kind != "PrometheusRule" || cr.Metadata.Name != "kcbackup" {
		t.Errorf("%s is %s %s named %q, want monitoring.coreos.com/v1 PrometheusRule named kcbackup",
			prometheusRule, cr.APIVersion, cr.Kind, cr.Metadata.Name)
	}
	if cr.Metadata.Namespace != "" {
		t.Errorf("%s sets namespace %q; it must stay namespace-agnostic", prometheusRule, cr.Metadata.Namespace)
	}
	if !reflect.DeepEqual(cr.Spec["groups"], want["groups"]) {
		t.Errorf("%s spec.groups differ from %s; regenerate with\n  go test ./deploy/monitoring -run TestPrometheusRuleMatchesRuleFile -update",
			prometheusRule, ruleFile)
	}
}

// githubAnchor is the fragment GitHub gives a Markdown heading.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteRune('-')
		}
	}
	return b.String()
}

func runbookAnchors(t *testing.T) map[string]bool {
	t.Helper()
	anchors := map[string]bool{}
	for _, line := range strings.Split(string(readFile(t, runbookFile)), "\n") {
		if strings.HasPrefix(line, "#") {
			anchors[githubAnchor(strings.TrimLeft(line, "#"))] = true
		}
	}
	return anchors
}

func TestEveryAlertHasSeveritySummaryDescriptionAndRunbook(t *testing.T) {
	anchors := runbookAnchors(t)
	for _, r := range alertRules(t) {
		t.Run(r.Alert+"/"+r.Labels["severity"], func(t *testing.T) {
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("severity label is %q, want warning or critical", s)
			}
			if r.Annotations["summary"] == "" {
				t.Error("no summary annotation")
			}
			desc := r.Annotations["description"]
			if !strings.Contains(desc, "$value") {
				t.Errorf("description does not show the value: %q", desc)
			}
			if !targetlessAlerts[r.Alert] {
				if !strings.Contains(desc, "$labels.namespace") ||
					!(strings.Contains(desc, "$labels.pod") || strings.Contains(desc, "$labels.name")) {
					t.Errorf("description names neither namespace/pod nor namespace/name: %q", desc)
				}
			}
			wantURL := runbookURLPrefix + strings.ToLower(r.Alert)
			if got := r.Annotations["runbook_url"]; got != wantURL {
				t.Errorf("runbook_url is %q, want %q", got, wantURL)
			}
			if !anchors[strings.ToLower(r.Alert)] {
				t.Errorf("%s has no section whose anchor is #%s", runbookFile, strings.ToLower(r.Alert))
			}
		})
	}
}

func TestEveryAlertHasFiringAndHealthyUnitTest(t *testing.T) {
	var suite promtoolTests
	if err := yaml.UnmarshalStrict(readFile(t, ruleTestFile), &suite); err != nil {
		t.Fatalf("parse %s: %v", ruleTestFile, err)
	}
	if !slices.Equal(suite.RuleFiles, []string{filepath.Base(ruleFile)}) {
		t.Errorf("%s tests rule files %v, want [%s]", ruleTestFile, suite.RuleFiles, filepath.Base(ruleFile))
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range suite.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	known := map[string]bool{}
	for _, r := range alertRules(t) {
		known[r.Alert] = true
		if !fires[r.Alert] {
			t.Errorf("%s: no unit test where it fires", r.Alert)
		}
		if !quiet[r.Alert] {
			t.Errorf("%s: no unit test of a healthy case where it stays silent", r.Alert)
		}
	}
	for name := range fires {
		if !known[name] {
			t.Errorf("%s tests unknown alert %s", ruleTestFile, name)
		}
	}
	for name := range quiet {
		if !known[name] {
			t.Errorf("%s tests unknown alert %s", ruleTestFile, name)
		}
	}
}

// unknownMetrics returns the kcbackup_ names in s that are not in the contract.
func unknownMetrics(s string) []string {
	var out []string
	for _, m := range metricName.FindAllString(s, -1) {
		if !contractMetrics[m] {
			out = append(out, m)
		}
	}
	return out
}

func TestRulesAndUnitTestsUseOnlyContractMetrics(t *testing.T) {
	for _, r := range alertRules(t) {
		texts := []string{r.Expr}
		for _, v := range r.Annotations {
			texts = append(texts, v)
		}
		for _, s := range texts {
			if bad := unknownMetrics(s); len(bad) > 0 {
				t.Errorf("%s references unknown metrics %v", r.Alert, bad)
			}
		}
		if !metricName.MatchString(r.Expr) && !strings.Contains(r.Expr, "up{") {
			t.Errorf("%s: expression %q references no kcbackup metric", r.Alert, r.Expr)
		}
	}

	var suite promtoolTests
	if err := yaml.Unmarshal(readFile(t, ruleTestFile), &suite); err != nil {
		t.Fatalf("parse %s: %v", ruleTestFile, err)
	}
	for _, tc := range suite.Tests {
		for _, in := range tc.InputSeries {
			if bad := unknownMetrics(in.Series); len(bad) > 0 {
				t.Errorf("test %q feeds unknown metrics %v", tc.Name, bad)
			}
		}
	}
}

// dashboardQueries returns every PromQL text in the dashboard: panel targets and
// template variable queries.
func dashboardQueries(v any) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if s, ok := v[k].(string); ok && (k == "expr" || k == "definition") {
				out = append(out, s)
				continue
			}
			out = append(out, dashboardQueries(v[k])...)
		}
	case []any:
		for _, e := range v {
			out = append(out, dashboardQueries(e)...)
		}
	}
	return out
}

func TestDashboardParsesAndUsesOnlyContractMetrics(t *testing.T) {
	var dash struct {
		UID    string `json:"uid"`
		Title  string `json:"title"`
		Panels []struct {
			ID    int    `json:"id"`
			Type  string `json:"type"`
			Title string `json:"title"`
		} `json:"panels"`
	}
	raw := readFile(t, dashboardFile)
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("parse %s: %v", dashboardFile, err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Errorf("dashboard uid %q, title %q: both must be set", dash.UID, dash.Title)
	}
	ids := map[int]string{}
	for _, p := range dash.Panels {
		if prev, dup := ids[p.ID]; dup {
			t.Errorf("panels %q and %q share id %d", prev, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
	}

	var generic any
	if err := json.Unmarshal(raw, &generic); err != nil {
		t.Fatalf("parse %s: %v", dashboardFile, err)
	}
	queries := dashboardQueries(generic)
	used := map[string]bool{}
	for _, q := range queries {
		for _, m := range metricName.FindAllString(q, -1) {
			used[m] = true
			if !contractMetrics[m] {
				t.Errorf("dashboard query references unknown metric %s: %s", m, q)
			}
		}
	}

	// The panels the issue asks for, by the metrics they cannot do without.
	for _, m := range []string{
		"kcbackup_archive_lag_seconds", "kcbackup_archive_lag_bytes", // archive lag
		"kcbackup_received_wal_bytes_total", "kcbackup_uploaded_bytes_total", // WAL throughput
		"kcbackup_recovery_window_start_timestamp_seconds", "kcbackup_recovery_window_end_timestamp_seconds",
		"kcbackup_backups_total", "kcbackup_operator_last_backup_success_timestamp_seconds", // backups over time, age
		"kcbackup_slot_retained_bytes", "kcbackup_pgdata_volume_free_bytes", // slot retention vs free
		"kcbackup_up", "kcbackup_storage_up", "kcbackup_upload_errors_total",
		"kcbackup_operator_drill_last_success_timestamp_seconds", "kcbackup_operator_drill_interval_seconds", // drill age
		"kcbackup_operator_drill_rto_seconds", "kcbackup_operator_drill_rpo_seconds", "kcbackup_operator_drills_total",
	} {
		if !used[m] {
			t.Errorf("no dashboard query uses %s", m)
		}
	}
}

func TestKustomizationShipsEveryManifestAndTheDashboard(t *testing.T) {
	var k struct {
		Resources          []string `json:"resources"`
		ConfigMapGenerator []struct {
			Name    string   `json:"name"`
			Files   []string `json:"files"`
			Options struct {
				Labels map[string]string `json:"labels"`
			} `json:"options"`
		} `json:"configMapGenerator"`
	}
	if err := yaml.Unmarshal(readFile(t, "kustomization.yaml"), &k); err != nil {
		t.Fatalf("parse kustomization.yaml: %v", err)
	}
	for _, want := range []string{"podmonitor.yaml", "servicemonitor.yaml", prometheusRule} {
		if !slices.Contains(k.Resources, want) {
			t.Errorf("kustomization.yaml does not list %s", want)
		}
	}
	for _, r := range k.Resources {
		if _, err := os.Stat(r); err != nil {
			t.Errorf("kustomization.yaml lists %s: %v", r, err)
		}
	}
	shipsDashboard := false
	for _, g := range k.ConfigMapGenerator {
		for _, f := range g.Files {
			src := f[strings.Index(f, "=")+1:]
			if _, err := os.Stat(src); err != nil {
				t.Errorf("configMapGenerator %s lists %s: %v", g.Name, src, err)
			}
			if src == dashboardFile && g.Options.Labels["grafana_dashboard"] == "1" {
				shipsDashboard = true
			}
		}
	}
	if !shipsDashboard {
		t.Errorf("no configMapGenerator ships %s with label grafana_dashboard: \"1\"", dashboardFile)
	}
}

// relabelledJob returns the job label a monitor's first endpoint pins by relabelling.
func relabelledJob(endpoints []map[string]any) string {
	if len(endpoints) == 0 {
		return ""
	}
	relabelings, _ := endpoints[0]["relabelings"].([]any)
	for _, r := range relabelings {
		if m, ok := r.(map[string]any); ok && m["targetLabel"] == "job" {
			s, _ := m["replacement"].(string)
			return s
		}
	}
	return ""
}

func TestMonitorsScrapeWhatTheRulesSelect(t *testing.T) {
	var pm struct {
		Kind string `json:"kind"`
		Spec struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			PodMetricsEndpoints []map[string]any `json:"podMetricsEndpoints"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(readFile(t, "podmonitor.yaml"), &pm); err != nil {
		t.Fatalf("parse podmonitor.yaml: %v", err)
	}
	if pm.Kind != "PodMonitor" {
		t.Errorf("podmonitor.yaml kind is %q", pm.Kind)
	}
	// Exactly the label the operator sets on the pods it gives the sidecar.
	wantLabels := map[string]string{v1alpha1.SidecarPodLabel: "true"}
	if !reflect.DeepEqual(pm.Spec.Selector.MatchLabels, wantLabels) {
		t.Errorf("PodMonitor selects %v, want %v", pm.Spec.Selector.MatchLabels, wantLabels)
	}
	if len(pm.Spec.PodMetricsEndpoints) != 1 || pm.Spec.PodMetricsEndpoints[0]["port"] != "metrics" ||
		pm.Spec.PodMetricsEndpoints[0]["path"] != "/metrics" {
		t.Errorf("PodMonitor endpoints %v, want one on port metrics, path /metrics", pm.Spec.PodMetricsEndpoints)
	}
	if got := relabelledJob(pm.Spec.PodMetricsEndpoints); got != sidecarJob {
		t.Errorf("PodMonitor sets job %q, the rules select job %q", got, sidecarJob)
	}

	var sm struct {
		Kind string `json:"kind"`
		Spec struct {
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			Endpoints []map[string]any `json:"endpoints"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(readFile(t, "servicemonitor.yaml"), &sm); err != nil {
		t.Fatalf("parse servicemonitor.yaml: %v", err)
	}
	if sm.Kind != "ServiceMonitor" {
		t.Errorf("servicemonitor.yaml kind is %q", sm.Kind)
	}
	if got := sm.Spec.Selector.MatchLabels["app.kubernetes.io/name"]; got != "kcbackup-operator" {
		t.Errorf("ServiceMonitor selects app.kubernetes.io/name=%q, want kcbackup-operator", got)
	}
	// The operator serves /metrics over HTTPS to authenticated, authorised callers only: the
	// scrape must present Prometheus' token.
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0]["port"] != "metrics" || sm.Spec.Endpoints[0]["scheme"] != "https" ||
		sm.Spec.Endpoints[0]["bearerTokenFile"] == nil {
		t.Fatalf("ServiceMonitor endpoints %v, want one on port metrics over https with a bearer token", sm.Spec.Endpoints)
	}
	// Without honorLabels the resource's namespace label becomes exported_namespace and
	// every operator alert loses the namespace it names.
	if sm.Spec.Endpoints[0]["honorLabels"] != true {
		t.Error("ServiceMonitor endpoint must set honorLabels: true to keep the KeycloakBackup's namespace label")
	}
	if got := relabelledJob(sm.Spec.Endpoints); got != operatorJob {
		t.Errorf("ServiceMonitor sets job %q, the rules select job %q", got, operatorJob)
	}

	rulesText := string(readFile(t, ruleFile))
	for _, job := range []string{sidecarJob, operatorJob} {
		if !strings.Contains(rulesText, `job="`+job+`"`) {
			t.Errorf("%s never selects job=%q; the monitors and the rules disagree", ruleFile, job)
		}
	}
}
