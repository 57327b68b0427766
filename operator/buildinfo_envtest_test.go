package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"testing"
	"time"

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
	// The operator serves /metrics once its manager has started; it is polled until then,
	// or until the operator exits.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("the operator exited before serving /metrics: %v", err)
		case <-tick.C:
		}
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err != nil {
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want.Match(body) {
			return
		}
		t.Fatalf("/metrics lacks kcbackup_build_info for v9.9.9 and %s:\n%s", runtime.Version(), body)
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
