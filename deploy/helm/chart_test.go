package helm

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "copy the CRD and the monitoring files from deploy/ into the chart")

const (
	chartDir  = "kcbackup"
	release   = "kcb"
	namespace = "kcbackup-system"
)

// copies are the chart's files that must be byte for byte the ones in deploy/.
var copies = map[string]string{
	"kcbackup/crds/keycloak.org_keycloakbackups.yaml": "../crd/keycloak.org_keycloakbackups.yaml",
	"kcbackup/files/prometheusrule.yaml":              "../monitoring/prometheusrule.yaml",
	"kcbackup/files/grafana-dashboard.json":           "../monitoring/grafana-dashboard.json",
}

// nonDefault is what a platform team sets: one watched namespace, monitoring on for
// kube-prometheus-stack, the dashboard in Grafana's namespace, pinned images and resources.
const nonDefault = `
watchNamespaces: [keycloak]
image:
  operator: {repository: registry.example.com/kcbackup-operator, tag: v0.3.0-custom}
  sidecar: {repository: registry.example.com/kcbackup, tag: v0.3.0-custom}
imagePullSecrets: [{name: regcred}]
resources: {requests: {cpu: 100m, memory: 128Mi}, limits: {memory: 512Mi}}
pollInterval: 10s
debug: true
monitoring:
  enabled: true
  labels: {release: kube-prometheus-stack}
  sidecarNamespaces: [keycloak]
  dashboard:
    namespace: monitoring
    annotations: {grafana_folder: Keycloak}
`

func TestChartFilesAreDeploysFiles(t *testing.T) {
	for chartFile, deployFile := range copies {
		want, err := os.ReadFile(deployFile)
		if err != nil {
			t.Fatal(err)
		}
		if *update {
			if err := os.WriteFile(chartFile, want, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(chartFile)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from %s: run make generate", chartFile, deployFile)
		}
	}
}

// TestChartLints runs helm's own linter (the checks of helm lint --strict) with the
// default and the non-default values.
func TestChartLints(t *testing.T) {
	for name, vals := range map[string]string{"default": "", "non-default": nonDefault} {
		t.Run(name, func(t *testing.T) {
			l := lint.RunAll(chartDir, parseValues(t, vals), namespace)
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("lint: %s", m)
				} else {
					t.Logf("lint: %s", m)
				}
			}
		})
	}
}

func TestDefaultRenderIsDeploysInstall(t *testing.T) {
	objs := render(t, "")
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.GetKind()]++
	}
	// The operator's ClusterRole, the metrics reviews' and reader, the editor and viewer.
	want := map[string]int{"ServiceAccount": 1, "ClusterRole": 5, "ClusterRoleBinding": 2, "Role": 1, "RoleBinding": 1, "Deployment": 1, "Service": 1}
	if !reflect.DeepEqual(kinds, want) {
		t.Errorf("rendered kinds %v, want %v (no monitoring by default)", kinds, want)
	}
	d := deployment(t, objs)
	c := d.Spec.Template.Spec.Containers[0]
	if c.Image != "ghcr.io/kcbackup/kcbackup-operator:"+appVersion(t) {
		t.Errorf("operator image %q, want the chart's appVersion %s", c.Image, appVersion(t))
	}
	if got := env(c, "KCBACKUP_SIDECAR_IMAGE"); got != "ghcr.io/kcbackup/kcbackup:"+appVersion(t) {
		t.Errorf("KCBACKUP_SIDECAR_IMAGE %q, want the chart's appVersion", got)
	}
	if got := env(c, "KCBACKUP_WATCH_NAMESPACE"); got != "" {
		t.Errorf("KCBACKUP_WATCH_NAMESPACE %q, want every namespace", got)
	}
	if sc := d.Spec.Template.Spec.SecurityContext; sc.RunAsUser != nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Errorf("pod securityContext %+v: want runAsNonRoot and no fixed user", sc)
	}
	if c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
		t.Errorf("container securityContext %+v: want a read-only root filesystem", c.SecurityContext)
	}
}

func TestNonDefaultRender(t *testing.T) {
	objs := render(t, nonDefault)
	d := deployment(t, objs)
	c := d.Spec.Template.Spec.Containers[0]
	if c.Image != "registry.example.com/kcbackup-operator:v0.3.0-custom" || env(c, "KCBACKUP_SIDECAR_IMAGE") != "registry.example.com/kcbackup:v0.3.0-custom" {
		t.Errorf("images %q and %q, want the values' repository and tag", c.Image, env(c, "KCBACKUP_SIDECAR_IMAGE"))
	}
	if env(c, "KCBACKUP_WATCH_NAMESPACE") != "keycloak" || !slices.Contains(c.Args, "--poll-interval=10s") || !slices.Contains(c.Args, "--debug") {
		t.Errorf("env %v args %v: want KCBACKUP_WATCH_NAMESPACE=keycloak, --poll-interval=10s, --debug", c.Env, c.Args)
	}
	if c.Resources.Limits.Memory().String() != "512Mi" || d.Spec.Template.Spec.ImagePullSecrets[0].Name != "regcred" {
		t.Errorf("resources %v, pull secrets %v", c.Resources, d.Spec.Template.Spec.ImagePullSecrets)
	}
	// One watched namespace: the operator's rules are bound there only.
	for _, o := range objs {
		if o.GetKind() == "ClusterRoleBinding" && !strings.HasSuffix(o.GetName(), "-metrics-auth") {
			t.Errorf("a ClusterRoleBinding %s with one watched namespace", o.GetName())
		}
	}
	if rb := find(objs, "RoleBinding", release+"-kcbackup-operator@keycloak"); rb == nil || rb.GetNamespace() != "keycloak" {
		t.Errorf("want the RoleBinding %s-kcbackup-operator in keycloak, got %v", release, rb)
	}
	// Monitoring: kube-prometheus-stack's release label on what it selects.
	for _, kind := range []string{"PodMonitor", "ServiceMonitor", "PrometheusRule"} {
		o := firstOfKind(objs, kind)
		if o == nil || o.GetLabels()["release"] != "kube-prometheus-stack" || o.GetNamespace() != namespace {
			t.Errorf("%s: %v; want it in %s with release: kube-prometheus-stack", kind, o, namespace)
		}
	}
	var rule, deployRule map[string]any
	mustUnmarshalFile(t, "../monitoring/prometheusrule.yaml", &deployRule)
	rule = firstOfKind(objs, "PrometheusRule").Object
	if !reflect.DeepEqual(rule["spec"], deployRule["spec"]) {
		t.Error("the PrometheusRule's spec differs from deploy/monitoring/prometheusrule.yaml")
	}
	cm := find(objs, "ConfigMap", "kcbackup-grafana-dashboard")
	if cm == nil || cm.GetNamespace() != "monitoring" || cm.GetLabels()["grafana_dashboard"] != "1" || cm.GetAnnotations()["grafana_folder"] != "Keycloak" {
		t.Fatalf("dashboard ConfigMap %v: want it in monitoring with grafana_dashboard: \"1\" and the folder annotation", cm)
	}
	dash, err := os.ReadFile("../monitoring/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	got, _, _ := unstructured.NestedString(cm.Object, "data", "kcbackup.json")
	if got != strings.TrimRight(string(dash), "\n") {
		t.Error("the dashboard ConfigMap's kcbackup.json differs from deploy/monitoring/grafana-dashboard.json")
	}
}

// TestNamespacedRenderHasNoClusterWideWorkloadRights: with watched namespaces, the
// operator's rules are a Role in each (deploy/rbac/namespaced), and no ClusterRole grants
// anything on workloads or Secrets.
func TestNamespacedRenderHasNoClusterWideWorkloadRights(t *testing.T) {
	objs := render(t, "watchNamespaces: [a, b, a]")
	c := deployment(t, objs).Spec.Template.Spec.Containers[0]
	if got := env(c, "KCBACKUP_WATCH_NAMESPACE"); got != "a,b" {
		t.Errorf("KCBACKUP_WATCH_NAMESPACE %q, want a,b", got)
	}
	var deploy struct{ Rules []rbacv1.PolicyRule }
	mustUnmarshalFile(t, "../rbac/namespaced/role.yaml", &deploy)
	for _, ns := range []string{"a", "b"} {
		role, rb := find(objs, "Role", release+"-kcbackup-operator"+"@"+ns), find(objs, "RoleBinding", release+"-kcbackup-operator"+"@"+ns)
		if role == nil || rb == nil {
			t.Fatalf("no Role and RoleBinding %s-kcbackup-operator in %s", release, ns)
		}
		var chart struct{ Rules []rbacv1.PolicyRule }
		toTyped(t, role, &chart)
		if got, want := permissions(chart.Rules), permissions(deploy.Rules); !reflect.DeepEqual(got, want) {
			t.Errorf("Role in %s grants %v, deploy/rbac/namespaced/role.yaml %v", ns, got, want)
		}
	}
	for _, o := range objs {
		if o.GetKind() != "ClusterRole" {
			continue
		}
		var cr struct{ Rules []rbacv1.PolicyRule }
		toTyped(t, o, &cr)
		for _, r := range cr.Rules {
			for _, res := range r.Resources {
				if slices.Contains([]string{"secrets", "deployments", "statefulsets", "pods", "jobs"}, res) && !slices.Contains(r.APIGroups, "keycloak.org") {
					t.Errorf("ClusterRole %s grants %v on %s in a namespaced install", o.GetName(), r.Verbs, res)
				}
			}
		}
	}
	if _, err := renderErr(t, "watchNamespaces: [Not_A_Name]"); err == nil || !strings.Contains(err.Error(), "not a namespace name") {
		t.Errorf("render with a bad namespace: %v; want an error naming it", err)
	}
}

// TestChartRBACIsDeploysRBAC: the chart grants exactly what deploy/rbac grants (generated
// from the operator's markers), no more and no less, so the two cannot drift.
func TestChartRBACIsDeploysRBAC(t *testing.T) {
	objs := render(t, "")
	for _, tc := range []struct{ kind, name, file string }{
		{"ClusterRole", release + "-kcbackup-operator", "../rbac/role.yaml"},
		{"Role", "kcbackup-operator-leader-election", "../rbac/leader_election_role.yaml"},
	} {
		o := find(objs, tc.kind, tc.name)
		if o == nil {
			t.Fatalf("no %s %s rendered", tc.kind, tc.name)
		}
		var chart, deploy struct{ Rules []rbacv1.PolicyRule }
		toTyped(t, o, &chart)
		mustUnmarshalFile(t, tc.file, &deploy)
		got, want := permissions(chart.Rules), permissions(deploy.Rules)
		if missing := minus(want, got); len(missing) > 0 {
			t.Errorf("%s %s lacks what %s grants: %v", tc.kind, tc.name, tc.file, missing)
		}
		if extra := minus(got, want); len(extra) > 0 {
			t.Errorf("%s %s grants more than %s: %v", tc.kind, tc.name, tc.file, extra)
		}
	}
}

// TestRenderedCRDIsDeploysCRD: what Helm installs from crds/ is deploy/crd's CRD.
func TestRenderedCRDIsDeploysCRD(t *testing.T) {
	ch, err := loader.LoadDir(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("../crd/keycloak.org_keycloakbackups.yaml")
	if err != nil {
		t.Fatal(err)
	}
	crds := ch.CRDObjects()
	if len(crds) != 1 || !bytes.Equal(crds[0].File.Data, want) {
		t.Errorf("the chart installs %d CRDs; want exactly deploy/crd/keycloak.org_keycloakbackups.yaml", len(crds))
	}
}

func parseValues(t *testing.T, s string) map[string]any {
	t.Helper()
	vals := map[string]any{}
	if err := yaml.Unmarshal([]byte(s), &vals); err != nil {
		t.Fatalf("values: %v", err)
	}
	return vals
}

func renderErr(t *testing.T, values string) ([]*unstructured.Unstructured, error) {
	t.Helper()
	ch, err := loader.LoadDir(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	caps := common.DefaultCapabilities.Copy()
	caps.KubeVersion = common.KubeVersion{Version: "v1.37.2", Major: "1", Minor: "37"}
	top, err := util.ToRenderValues(ch, parseValues(t, values), common.ReleaseOptions{Name: release, Namespace: namespace, IsInstall: true}, caps)
	if err != nil {
		return nil, err
	}
	files, err := engine.Render(ch, top)
	if err != nil {
		return nil, err
	}
	var objs []*unstructured.Unstructured
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if !strings.HasSuffix(name, ".yaml") {
			continue
		}
		docs, err := splitYAML(files[name])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		for _, doc := range docs {
			var m map[string]any
			if err := yaml.Unmarshal(doc, &m); err != nil {
				return nil, fmt.Errorf("%s does not parse: %w\n%s", name, err, doc)
			}
			if len(m) == 0 {
				continue
			}
			o := &unstructured.Unstructured{Object: m}
			if o.GetAPIVersion() == "" || o.GetKind() == "" || o.GetName() == "" {
				return nil, fmt.Errorf("%s: an object without apiVersion, kind or name:\n%s", name, doc)
			}
			if err := parseTyped(o, doc); err != nil {
				return nil, fmt.Errorf("%s: %s %s: %w", name, o.GetKind(), o.GetName(), err)
			}
			objs = append(objs, o)
		}
	}
	return objs, nil
}

// render renders the chart with the values (YAML) and returns every object, each checked
// to parse strictly as its Kubernetes type where the type is a built-in one.
func render(t *testing.T, values string) []*unstructured.Unstructured {
	t.Helper()
	objs, err := renderErr(t, values)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		y, _ := yaml.Marshal(o.Object)
		if strings.Contains(string(y), ":latest") {
			t.Errorf("%s %s names a :latest image", o.GetKind(), o.GetName())
		}
	}
	return objs
}

// parseTyped decodes a built-in object strictly (an unknown or misspelt field is an error).
func parseTyped(o *unstructured.Unstructured, doc []byte) error {
	var typed any
	switch o.GetKind() {
	case "Deployment":
		typed = &appsv1.Deployment{}
	case "Service":
		typed = &corev1.Service{}
	case "ServiceAccount":
		typed = &corev1.ServiceAccount{}
	case "ConfigMap":
		typed = &corev1.ConfigMap{}
	case "ClusterRole", "Role":
		typed = &rbacv1.ClusterRole{}
	case "ClusterRoleBinding", "RoleBinding":
		typed = &rbacv1.RoleBinding{}
	default:
		return nil
	}
	return yaml.UnmarshalStrict(doc, typed)
}

func splitYAML(s string) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(s)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if err == io.EOF {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		docs = append(docs, doc)
	}
}

func appVersion(t *testing.T) string {
	t.Helper()
	var c struct{ AppVersion string }
	mustUnmarshalFile(t, filepath.Join(chartDir, "Chart.yaml"), &c)
	return c.AppVersion
}

func mustUnmarshalFile(t *testing.T, file string, v any) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

func toTyped(t *testing.T, o *unstructured.Unstructured, v any) {
	t.Helper()
	b, err := yaml.Marshal(o.Object)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

func deployment(t *testing.T, objs []*unstructured.Unstructured) *appsv1.Deployment {
	t.Helper()
	o := find(objs, "Deployment", "kcbackup-operator")
	if o == nil {
		t.Fatal("no Deployment kcbackup-operator rendered")
	}
	d := &appsv1.Deployment{}
	toTyped(t, o, d)
	return d
}

func env(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// find returns the object of that kind and name; "name@namespace" also matches the namespace.
func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	name, ns, _ := strings.Cut(name, "@")
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name && (ns == "" || o.GetNamespace() == ns) {
			return o
		}
	}
	return nil
}

func firstOfKind(objs []*unstructured.Unstructured, kind string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind {
			return o
		}
	}
	return nil
}

// permissions flattens rules into "group/resource verb" entries (names and non-resource
// URLs included), the unit two sets of rules are compared in.
func permissions(rules []rbacv1.PolicyRule) map[string]bool {
	set := map[string]bool{}
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					key := g + "/" + res + " " + v
					if len(r.ResourceNames) > 0 {
						key += " names=" + strings.Join(r.ResourceNames, ",")
					}
					set[key] = true
				}
			}
		}
		for _, u := range r.NonResourceURLs {
			for _, v := range r.Verbs {
				set["url "+u+" "+v] = true
			}
		}
	}
	return set
}

func minus(a, b map[string]bool) []string {
	var out []string
	for k := range a {
		if !b[k] {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}
