package network

import (
	"context"
	"os"
	"os/exec"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/test/harness"
)

// dbNamespace is where the policy is applied in these tests: the database's namespace.
const dbNamespace = "keycloak"

// peer is a pod that may open a connection: its namespace's labels and its own.
type peer struct {
	name      string
	ns        string
	nsLabels  map[string]string
	podLabels map[string]string
}

func readStrict(t *testing.T, file string, into any) {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(raw, into); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

func selector(t *testing.T, ls *metav1.LabelSelector) labels.Selector {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		t.Fatalf("selector %+v: %v", ls, err)
	}
	return s
}

// admits evaluates NetworkPolicy ingress semantics (as kube documents them) for a
// connection from p to port/proto of a pod the policy selects, in policy namespace ns.
func admits(t *testing.T, np *networkingv1.NetworkPolicy, ns string, p peer, port int32, proto corev1.Protocol) bool {
	t.Helper()
	for _, rule := range np.Spec.Ingress {
		if !portMatches(rule.Ports, port, proto) {
			continue
		}
		if len(rule.From) == 0 {
			return true
		}
		for _, f := range rule.From {
			if f.IPBlock != nil {
				t.Fatalf("policy %s uses an ipBlock: pods cannot be matched against it", np.Name)
			}
			nsOK := p.ns == ns // a peer without namespaceSelector means the policy's namespace
			if f.NamespaceSelector != nil {
				nsOK = selector(t, f.NamespaceSelector).Matches(labels.Set(p.nsLabels))
			}
			podOK := f.PodSelector == nil || selector(t, f.PodSelector).Matches(labels.Set(p.podLabels))
			if nsOK && podOK {
				return true
			}
		}
	}
	return false
}

func portMatches(ports []networkingv1.NetworkPolicyPort, port int32, proto corev1.Protocol) bool {
	if len(ports) == 0 {
		return true
	}
	for _, pp := range ports {
		pr := corev1.ProtocolTCP
		if pp.Protocol != nil {
			pr = *pp.Protocol
		}
		if pr != proto {
			continue
		}
		if pp.Port == nil {
			return true
		}
		lo, hi := pp.Port.IntVal, pp.Port.IntVal
		if pp.EndPort != nil {
			hi = *pp.EndPort
		}
		if port >= lo && port <= hi {
			return true
		}
	}
	return false
}

// operatorPeer is the operator's pod as deploy/ installs it: the template labels of
// manager/deployment.yaml, in the namespace of deploy/kustomization.yaml.
func operatorPeer(t *testing.T) peer {
	t.Helper()
	var d appsv1.Deployment
	readStrict(t, "../manager/deployment.yaml", &d)
	var k struct {
		Namespace string `json:"namespace"`
	}
	raw, err := os.ReadFile("../kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &k); err != nil || k.Namespace == "" {
		t.Fatalf("deploy/kustomization.yaml: namespace %q, %v; want the operator's namespace", k.Namespace, err)
	}
	return peer{name: "the operator", ns: k.Namespace, nsLabels: map[string]string{"kubernetes.io/metadata.name": k.Namespace},
		podLabels: d.Spec.Template.Labels}
}

// TestSidecarAPIPolicyAdmitsOnlyTheOperator: the policy selects exactly the pods the
// operator gives a sidecar; on the sidecar's port it admits the operator's pods and no other
// pod (PostgreSQL's own pod, Keycloak, a look-alike in another namespace, Prometheus); every
// other port, PostgreSQL's included, stays open to all.
func TestSidecarAPIPolicyAdmitsOnlyTheOperator(t *testing.T) {
	var np networkingv1.NetworkPolicy
	readStrict(t, "sidecar-api.yaml", &np)
	if np.Kind != "NetworkPolicy" || np.APIVersion != "networking.k8s.io/v1" || np.Namespace != "" {
		t.Fatalf("sidecar-api.yaml is %s %s in namespace %q; want a networking.k8s.io/v1 NetworkPolicy without a namespace (applied per database namespace)",
			np.APIVersion, np.Kind, np.Namespace)
	}
	if len(np.Spec.PolicyTypes) != 1 || np.Spec.PolicyTypes[0] != networkingv1.PolicyTypeIngress {
		t.Errorf("policyTypes = %v; want only Ingress (egress of the database pod untouched)", np.Spec.PolicyTypes)
	}

	// Step 1: it selects the database pods the operator labels, and nothing else.
	sel := selector(t, &np.Spec.PodSelector)
	op := operatorPeer(t)
	for _, c := range []struct {
		what string
		pod  map[string]string
		want bool
	}{
		{"a database pod with the sidecar", map[string]string{kcv1.SidecarPodLabel: "true", "app": "postgres"}, true},
		{"a database pod without the sidecar", map[string]string{"app": "postgres"}, false},
		{"a Keycloak pod", map[string]string{"app": "keycloak"}, false},
		{"the operator's pod", op.podLabels, false},
	} {
		if got := sel.Matches(labels.Set(c.pod)); got != c.want {
			t.Errorf("podSelector %s matches %s (%v): %v, want %v", sel, c.what, c.pod, got, c.want)
		}
	}

	// Step 2: the sidecar's port admits the operator alone.
	dbNS := map[string]string{"kubernetes.io/metadata.name": dbNamespace}
	port := int32(apiclient.DefaultPort)
	if !admits(t, &np, dbNamespace, op, port, corev1.ProtocolTCP) {
		t.Errorf("the operator (%v in %s) is not admitted to port %d", op.podLabels, op.ns, port)
	}
	for _, p := range []peer{
		{"Keycloak", dbNamespace, dbNS, map[string]string{"app": "keycloak"}},
		{"another database pod with the sidecar", dbNamespace, dbNS, map[string]string{kcv1.SidecarPodLabel: "true"}},
		{"a pod with the operator's labels in the database's namespace", dbNamespace, dbNS, op.podLabels},
		{"a pod with the operator's labels in another namespace", "evil", map[string]string{"kubernetes.io/metadata.name": "evil"}, op.podLabels},
		{"another pod in the operator's namespace", op.ns, op.nsLabels, map[string]string{"app.kubernetes.io/name": "something-else"}},
		{"Prometheus", "monitoring", map[string]string{"kubernetes.io/metadata.name": "monitoring"}, map[string]string{"app.kubernetes.io/name": "prometheus"}},
	} {
		if admits(t, &np, dbNamespace, p, port, corev1.ProtocolTCP) {
			t.Errorf("%s (%v in %s) is admitted to the sidecar's port %d", p.name, p.podLabels, p.ns, port)
		}
	}

	// Step 3: every other port stays as it was: open to anyone.
	anyone := peer{"Keycloak", dbNamespace, dbNS, map[string]string{"app": "keycloak"}}
	for _, c := range []struct {
		port  int32
		proto corev1.Protocol
	}{{5432, corev1.ProtocolTCP}, {1, corev1.ProtocolTCP}, {port - 1, corev1.ProtocolTCP}, {port + 1, corev1.ProtocolTCP},
		{9187, corev1.ProtocolTCP}, {65535, corev1.ProtocolTCP}, {port, corev1.ProtocolUDP}, {53, corev1.ProtocolUDP}} {
		if !admits(t, &np, dbNamespace, anyone, c.port, c.proto) {
			t.Errorf("port %d/%s is closed to %s: the policy must narrow only the sidecar's port", c.port, c.proto, anyone.name)
		}
	}
}

// TestPrometheusScrapePolicyOpensOnlyTheSidecarPortToPrometheus: the optional policy admits
// Prometheus pods to the sidecar's port and nothing else to anything.
func TestPrometheusScrapePolicyOpensOnlyTheSidecarPortToPrometheus(t *testing.T) {
	var np networkingv1.NetworkPolicy
	readStrict(t, "prometheus-scrape.yaml", &np)
	if !selector(t, &np.Spec.PodSelector).Matches(labels.Set{kcv1.SidecarPodLabel: "true"}) {
		t.Errorf("podSelector %v does not select the sidecar's pods", np.Spec.PodSelector)
	}
	prom := peer{"Prometheus", "monitoring", map[string]string{"kubernetes.io/metadata.name": "monitoring"}, map[string]string{"app.kubernetes.io/name": "prometheus"}}
	if !admits(t, &np, dbNamespace, prom, apiclient.DefaultPort, corev1.ProtocolTCP) {
		t.Error("Prometheus is not admitted to the sidecar's port")
	}
	if admits(t, &np, dbNamespace, prom, 5432, corev1.ProtocolTCP) {
		t.Error("Prometheus is admitted to PostgreSQL's port by the scrape policy")
	}
	other := peer{"Keycloak", dbNamespace, map[string]string{"kubernetes.io/metadata.name": dbNamespace}, map[string]string{"app": "keycloak"}}
	if admits(t, &np, dbNamespace, other, apiclient.DefaultPort, corev1.ProtocolTCP) {
		t.Error("a pod that is not Prometheus is admitted to the sidecar's port")
	}
}

// TestEnvtestNetworkPoliciesApply: the kustomization renders the sidecar-api policy alone,
// and a real API server accepts both policies (its validation covers endPort and selectors).
func TestEnvtestNetworkPoliciesApply(t *testing.T) {
	kubectl := harness.Kubectl(t)
	out, err := exec.Command(kubectl, "kustomize", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize deploy/network: %v\n%s", err, out)
	}
	var rendered networkingv1.NetworkPolicy
	if err := yaml.UnmarshalStrict(out, &rendered); err != nil || rendered.Name != "kcbackup-sidecar-api" {
		t.Fatalf("kubectl kustomize deploy/network rendered %q (%v); want the NetworkPolicy kcbackup-sidecar-api alone", out, err)
	}

	cfg := harness.StartAPIServer(t)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: dbNamespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, np := range []*networkingv1.NetworkPolicy{&rendered, func() *networkingv1.NetworkPolicy {
		var p networkingv1.NetworkPolicy
		readStrict(t, "prometheus-scrape.yaml", &p)
		return &p
	}()} {
		if _, err := cs.NetworkingV1().NetworkPolicies(dbNamespace).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Errorf("create NetworkPolicy %s: %v", np.Name, err)
		}
	}
}
