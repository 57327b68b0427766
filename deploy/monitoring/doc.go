// Package monitoring holds no code: it is the directory of kcbackup's monitoring manifests
// and the tests that keep them honest.
//
// The directory holds
//   - rules/kcbackup-rules.yaml, the alerting rules in plain Prometheus format (the single
//     source of truth), and rules/kcbackup-rules_test.yaml, their promtool unit tests;
//   - prometheusrule.yaml, the same groups as a Prometheus Operator PrometheusRule,
//     generated from the plain file;
//   - podmonitor.yaml (the sidecar) and servicemonitor.yaml (the operator);
//   - grafana-dashboard.json, shipped as a ConfigMap by kustomization.yaml;
//   - RUNBOOK.md, one section per alert.
//
// The tests run `promtool check rules` and `promtool test rules`, fail when
// prometheusrule.yaml drifts from the plain rules (regenerate it with
// `go test ./deploy/monitoring -run TestPrometheusRuleMatchesRuleFile -update`), and fail
// when a rule, a unit test or the dashboard names a metric the sidecar and operator do not
// export.
package monitoring
