package main

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/kcbackup/kcbackup/test/harness"
)

// TestEnvtestOperatorMetricsNameItsBuild runs the operator binary, stamped v9.9.9, against a
// real API server: its /metrics carries kcbackup_build_info with that version, a revision and
// the Go release that built it.
func TestEnvtestOperatorMetricsNameItsBuild(t *testing.T) {
	bin := build(t, "v9.9.9")
	cfg := harness.StartAPIServer(t, "../deploy/crd")
	kubeconfig := harness.WriteKubeconfig(t, cfg)
	metricsAddr, healthAddr := freeAddr(t), freeAddr(t)

	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--leader-elect=false", "--metrics-bind-address="+metricsAddr,
		"--health-probe-bind-address="+healthAddr, "--sidecar-image=example.com/kcbackup:v9.9.9")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "KCBACKUP_SIDECAR_IMAGE=")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cancel(); <-exited })

	want := regexp.MustCompile(`(?m)^kcbackup_build_info\{goversion="` + regexp.QuoteMeta(runtime.Version()) + `",revision="[^"]+",version="v9\.9\.9"\} 1$`)
	// /metrics is served over HTTPS to callers the API server authenticates and authorises:
	// a ServiceAccount's token is refused until it is bound to kcbackup-metrics-reader.
	token := serviceAccountToken(t, cfg, "scraper")
	scrape := func(token string) (int, []byte, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+metricsAddr+"/metrics", nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // self-signed
		resp, err := hc.Do(req)
		if err != nil {
			return 0, nil, err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, body, nil
	}
	// The operator serves /metrics once its manager has started; it is polled until then,
	// or until the operator exits.
	waitStatus := func(what, token string, ok func(int, []byte) bool) (int, []byte) {
		t.Helper()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(time.Minute)
		for {
			select {
			case err := <-exited:
				exited <- err
				t.Fatalf("the operator exited before serving /metrics: %v", err)
			case <-deadline:
				code, body, err := scrape(token)
				t.Fatalf("%s: /metrics answered %d %v:\n%s", what, code, err, body)
			case <-tick.C:
			}
			if code, body, err := scrape(token); err == nil && ok(code, body) {
				return code, body
			}
		}
	}
	waitStatus("no token: 401", "", func(code int, _ []byte) bool { return code == http.StatusUnauthorized })
	waitStatus("a token without the role: 403", token, func(code int, _ []byte) bool { return code == http.StatusForbidden })
	bindMetricsReader(t, cfg, "scraper")
	_, body := waitStatus("a token bound to kcbackup-metrics-reader: 200", token, func(code int, _ []byte) bool { return code == http.StatusOK })
	if !want.Match(body) {
		t.Fatalf("/metrics lacks kcbackup_build_info for v9.9.9 and %s:\n%s", runtime.Version(), body)
	}
}

// serviceAccountToken creates ServiceAccount name in default and returns a token of it.
func serviceAccountToken(t *testing.T, cfg *rest.Config, name string) string {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	if _, err := cs.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := cs.CoreV1().ServiceAccounts("default").CreateToken(ctx, name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token of ServiceAccount %s: %v", name, err)
	}
	return tr.Status.Token
}

// bindMetricsReader creates deploy/rbac's kcbackup-metrics-reader ClusterRole and binds the
// ServiceAccount to it.
func bindMetricsReader(t *testing.T, cfg *rest.Config, sa string) {
	t.Helper()
	b, err := os.ReadFile("../deploy/rbac/metrics_auth.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.ClusterRole
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var cr rbacv1.ClusterRole
		if err := yaml.Unmarshal([]byte(doc), &cr); err == nil && cr.Kind == "ClusterRole" && cr.Name == "kcbackup-metrics-reader" {
			role = cr
		}
	}
	if role.Name == "" {
		t.Fatal("deploy/rbac/metrics_auth.yaml has no ClusterRole kcbackup-metrics-reader")
	}
	cs := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, &role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	crb := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "scrape-kcbackup"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa, Namespace: "default"}}}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
