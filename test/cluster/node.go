// Package cluster starts and stops a real single-node Kubernetes for the end-to-end test of
// the operator: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd with
// runc, and kubelet, from binaries and images that test/cluster/build.sh caches outside the clone.
//
// Everything listens on 127.0.0.1 except kubelet (on the node IP: kubelet refuses a loopback
// one) and the pods, which live on a bridge the harness creates with no gateway, no
// masquerading and a blackhole route for the service range: no traffic leaves the machine.
// Stop removes every process, mount, interface, route, network namespace and cgroup it made.
//
// Versions (pinned, see build.sh): Kubernetes v1.37.2, etcd v3.6.6, containerd v2.2.9 (image
// volumes need containerd 2.1 or later), Debian's runc 1.1.5 and CNI plugins 1.1.1. The node
// runs on cgroup v1 with the cgroupfs driver and no systemd.
package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// KubeVersion is the Kubernetes version of every component.
const KubeVersion = "v1.37.2"

// NodeName is the name of the single node.
const NodeName = "kcbackup-node"

// Paths are the cached binaries and image archives the node runs.
type Paths struct {
	Cache      string // $KCBACKUP_CACHE
	Etcd       string
	APIServer  string
	Kubectl    string
	KubeBin    string // kubelet, kube-controller-manager, kube-scheduler
	Containerd string // containerd, containerd-shim-runc-v2, ctr
	Images     string // *.tar image archives
}

// DefaultPaths returns where build.sh and test/tools/install.sh put everything.
func DefaultPaths() Paths {
	c := os.Getenv("KCBACKUP_CACHE")
	if c == "" {
		c = filepath.Join(os.Getenv("HOME"), ".cache", "kcbackup")
	}
	return Paths{
		Cache:      c,
		Etcd:       filepath.Join(c, "etcd-v3.6.6"),
		APIServer:  filepath.Join(c, "kube-apiserver-"+KubeVersion),
		Kubectl:    filepath.Join(c, "kubectl-"+KubeVersion),
		KubeBin:    filepath.Join(c, "cluster-bin-"+KubeVersion),
		Containerd: filepath.Join(c, "cluster-containerd-v2.2.9"),
		Images:     filepath.Join(c, "cluster-images"),
	}
}

// Missing lists the binaries and tools the node needs that are not there, each with how to get it.
func (p Paths) Missing() []string {
	var out []string
	for _, f := range []string{p.Etcd, p.APIServer, p.Kubectl,
		filepath.Join(p.KubeBin, "kubelet"), filepath.Join(p.KubeBin, "kube-controller-manager"), filepath.Join(p.KubeBin, "kube-scheduler"),
		filepath.Join(p.Containerd, "containerd"), filepath.Join(p.Containerd, "containerd-shim-runc-v2"), filepath.Join(p.Containerd, "ctr")} {
		if st, err := os.Stat(f); err != nil || st.Mode()&0o111 == 0 {
			out = append(out, f+" (run test/cluster/build.sh)")
		}
	}
	for _, f := range []string{"/usr/sbin/runc", "/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback"} {
		if _, err := os.Stat(f); err != nil {
			out = append(out, f+" (run test/cluster/build.sh debs)")
		}
	}
	for _, t := range []string{"ip", "unshare", "mount", "umount"} {
		if _, err := exec.LookPath(t); err != nil {
			out = append(out, t+" (run test/cluster/build.sh debs)")
		}
	}
	return out
}

// Node is one running single-node cluster.
type Node struct {
	Paths Paths
	Dir   string // everything the node writes, removed by Stop
	Net   network

	APIServerURL string
	Kubeconfig   string // admin (system:masters)
	APIPort      int
	// APIProxy serves the API server on the node IP, so that pods (the operator) reach it
	// with KUBERNETES_SERVICE_HOST/PORT set to it.
	APIProxy *Proxy

	pki       *pki
	mu        sync.Mutex
	procs     []*proc // in start order
	netnsPre  map[string]bool
	logLinks  bool     // /var/log/containers did not exist before
	runShimOK bool     // /run/containerd did not exist before
	lock      *os.File // the machine's cluster lock (lock.go), released by Stop
	stopped   bool
	env       []string // environment of the next run; nil: this process's
	logf      func(format string, args ...any)
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	log  string
}

// Start brings the node up and returns when it is Ready. On error it has cleaned up.
func Start(ctx context.Context, paths Paths, logf func(string, ...any)) (n *Node, err error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the cluster harness needs root (it creates a bridge and runs kubelet and containerd)")
	}
	if m := paths.Missing(); len(m) > 0 {
		return nil, fmt.Errorf("missing for the single-node cluster: %s", strings.Join(m, ", "))
	}
	lock, err := lockMachine(ctx, logf)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kcbackup-cluster-")
	if err != nil {
		lock.Close()
		return nil, err
	}
	n = &Node{Paths: paths, Dir: dir, logf: logf, lock: lock}
	defer func() {
		if err != nil {
			n.DumpLogs(40)
			if serr := n.Stop(); serr != nil {
				err = fmt.Errorf("%w (and stopping: %v)", err, serr)
			}
		}
	}()
	n.netnsPre = netnsNames()
	_, statErr := os.Stat("/var/log/containers")
	n.logLinks = os.IsNotExist(statErr)
	_, statErr = os.Stat("/run/containerd")
	n.runShimOK = os.IsNotExist(statErr)

	if n.Net, err = chooseNetwork(); err != nil {
		return n, err
	}
	if err = n.Net.up(); err != nil {
		return n, err
	}
	logf("cluster: bridge %s node IP %s pods %s services %s (blackholed), state in %s", n.Net.Bridge, n.Net.NodeIP, n.Net.PodCIDR, n.Net.Services, dir)
	if err = n.makePKI(); err != nil {
		return n, err
	}
	if err = n.startContainerd(ctx); err != nil {
		return n, err
	}
	if err = n.importImages(ctx); err != nil {
		return n, err
	}
	if err = n.startControlPlane(ctx); err != nil {
		return n, err
	}
	if err = n.startKubelet(ctx); err != nil {
		return n, err
	}
	return n, nil
}

func (n *Node) path(elem ...string) string { return filepath.Join(append([]string{n.Dir}, elem...)...) }

func (n *Node) makePKI() error {
	p, err := newPKI(n.path("pki"))
	if err != nil {
		return err
	}
	n.pki = p
	if err := p.serviceAccountKey(); err != nil {
		return err
	}
	svcIP := n.Net.Services.Addr().Next()
	loop := net.ParseIP("127.0.0.1")
	for _, c := range []struct {
		name, cn string
		orgs     []string
		ips      []net.IP
		dns      []string
	}{
		{"apiserver", "kube-apiserver", nil, []net.IP{loop, net.IP(svcIP.AsSlice()), net.IP(n.Net.NodeIP.AsSlice())},
			[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil},
		{"admin", "kcbackup-admin", []string{"system:masters"}, nil, nil},
		{"kcm", "system:kube-controller-manager", nil, nil, nil},
		{"scheduler", "system:kube-scheduler", nil, nil, nil},
		{"kubelet", "system:node:" + NodeName, []string{"system:nodes"}, nil, nil},
	} {
		if err := p.issue(c.name, c.cn, c.orgs, c.ips, c.dns); err != nil {
			return err
		}
	}
	return nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func freePorts(k int) ([]int, error) {
	seen := map[int]bool{}
	var out []int
	for len(out) < k {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}

// run starts a component with its output in logs/<name>.log.
func (n *Node) run(name string, args ...string) (*proc, error) {
	if err := os.MkdirAll(n.path("logs"), 0o755); err != nil {
		return nil, err
	}
	logPath := n.path("logs", name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = n.env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() { p.err = cmd.Wait(); f.Close(); close(p.done) }()
	n.mu.Lock()
	n.procs = append(n.procs, p)
	n.mu.Unlock()
	return p, nil
}

// waitFor polls cond until it holds, the process p exits or the timeout passes.
func waitFor(ctx context.Context, what string, timeout time.Duration, p *proc, cond func() error) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		if last = cond(); last == nil {
			return nil
		}
		var s *stopWaiting
		if errors.As(last, &s) {
			return fmt.Errorf("%s: %w", what, s.err)
		}
		if p != nil {
			select {
			case <-p.done:
				return fmt.Errorf("%s: %s exited (%v) while waiting; see %s", what, p.name, p.err, p.log)
			default:
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not ready after %s: %v", what, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// stopWaiting, returned by a waitFor condition, ends the wait at once: the condition can no
// longer come true (a KeycloakBackup ended in another phase), so waiting out the timeout
// would only hide why.
type stopWaiting struct{ err error }

func (s *stopWaiting) Error() string { return s.err.Error() }

// stopErr wraps err so that waitFor returns it at once.
func stopErr(err error) error { return &stopWaiting{err: err} }

// containerdSock is containerd's gRPC socket.
func (n *Node) containerdSock() string { return n.path("containerd", "containerd.sock") }

// Ctr runs ctr against the node's containerd in the k8s.io namespace.
func (n *Node) Ctr(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"-a", n.containerdSock(), "-n", "k8s.io"}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(n.Paths.Containerd, "ctr"), full...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// PauseImage is the sandbox image (test/cluster/pause).
const PauseImage = "localhost/kcbackup-test/pause:1"

func (n *Node) startContainerd(ctx context.Context) error {
	for _, d := range []string{"containerd/root", "containerd/state", "cni/net.d", "cni/ipam", "containerd/opt"} {
		if err := os.MkdirAll(n.path(d), 0o755); err != nil {
			return err
		}
	}
	// Settings this machine needs (see ../shared/REAL_CLUSTER.md): restrict_oom_score_adj (the VM
	// refuses lowering oom_score_adj), cgroupfs not systemd, no AppArmor, the local pause image.
	conf := fmt.Sprintf(`version = 3
imports = []
root = %[1]q
state = %[2]q
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  level = "info"
[metrics]
  address = ""
[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = %[5]q
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.image-verifier.v1.bindir']
    bin_dir = %[5]q
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_tls_streaming = false
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    discard_unpacked_layers = false
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = %[6]q
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = ""
  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    disable_apparmor = true
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          SystemdCgroup = false
          BinaryName = "/usr/sbin/runc"
          Root = %[8]q
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = %[7]q
      max_conf_num = 1
`, n.path("containerd/root"), n.path("containerd/state"), n.containerdSock(), n.containerdSock()+".ttrpc",
		n.path("containerd/opt"), PauseImage, n.path("cni/net.d"), n.path("containerd/runc"))
	if err := os.WriteFile(n.path("containerd.toml"), []byte(conf), 0o644); err != nil {
		return err
	}
	cni := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "kcbackup",
  "plugins": [
    {"type": "bridge", "bridge": %q, "isGateway": false, "isDefaultGateway": false, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": %q, "rangeStart": %q}]], "dataDir": %q}},
    {"type": "loopback"}
  ]
}
`, n.Net.Bridge, n.Net.PodCIDR.String(), n.Net.PodCIDR.Addr().Next().Next().Next().Next().Next().Next().Next().Next().Next().Next().String(), n.path("cni/ipam"))
	if err := os.WriteFile(n.path("cni/net.d/10-kcbackup.conflist"), []byte(cni), 0o644); err != nil {
		return err
	}
	// Its own shim first on PATH, not Debian's containerd 1.6 one.
	n.env = append(os.Environ(), "PATH="+n.Paths.Containerd+":"+os.Getenv("PATH"))
	p, err := n.run("containerd", filepath.Join(n.Paths.Containerd, "containerd"), "--config", n.path("containerd.toml"))
	n.env = nil
	if err != nil {
		return err
	}
	return waitFor(ctx, "containerd", 60*time.Second, p, func() error { _, err := n.Ctr(ctx, "version"); return err })
}

// importImages imports every image archive in the cache into containerd's k8s.io namespace.
func (n *Node) importImages(ctx context.Context) error {
	tars, err := filepath.Glob(filepath.Join(n.Paths.Images, "*.tar"))
	if err != nil {
		return err
	}
	sort.Strings(tars)
	imported := 0
	for _, t := range tars {
		base := filepath.Base(t)
		if strings.HasSuffix(base, "-rootfs.tar") || strings.HasPrefix(base, "bookworm-") {
			continue
		}
		if _, err := n.Ctr(ctx, "images", "import", "--all-platforms", t); err != nil {
			return fmt.Errorf("import %s: %w", t, err)
		}
		imported++
	}
	out, err := n.Ctr(ctx, "images", "ls", "-q")
	if err != nil {
		return err
	}
	if !strings.Contains(out, PauseImage) {
		return fmt.Errorf("the sandbox image %s is not in %s (run test/cluster/build.sh images); have:\n%s", PauseImage, n.Paths.Images, out)
	}
	n.logf("cluster: imported %d images", imported)
	return nil
}

func (n *Node) startControlPlane(ctx context.Context) error {
	ports, err := freePorts(5)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, apiPort, kcmPort, schedPort := ports[0], ports[1], ports[2], ports[3], ports[4]
	n.APIPort = apiPort
	n.APIServerURL = fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	P := n.pki.path
	for _, name := range []string{"admin", "kcm", "scheduler", "kubelet"} {
		if _, err := n.pki.kubeconfig(name, n.APIServerURL); err != nil {
			return err
		}
	}
	n.Kubeconfig = P("admin.kubeconfig")

	ec := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	ep := fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)
	etcd, err := n.run("etcd", n.Paths.Etcd, "--data-dir", n.path("etcd"), "--name", "kcbackup",
		"--listen-client-urls", ec, "--advertise-client-urls", ec,
		"--listen-peer-urls", ep, "--initial-advertise-peer-urls", ep, "--initial-cluster", "kcbackup="+ep,
		"--log-level", "warn", "--unsafe-no-fsync")
	if err != nil {
		return err
	}
	if err := waitFor(ctx, "etcd", 60*time.Second, etcd, func() error { return httpOK(ec+"/health", nil) }); err != nil {
		return err
	}
	api, err := n.run("kube-apiserver", n.Paths.APIServer, "--etcd-servers="+ec,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(apiPort), "--advertise-address="+n.Net.NodeIP.String(),
		"--tls-cert-file="+P("apiserver.crt"), "--tls-private-key-file="+P("apiserver.key"), "--client-ca-file="+P("ca.crt"),
		"--service-account-key-file="+P("sa.pub"), "--service-account-signing-key-file="+P("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range="+n.Net.Services.String(), "--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction", "--allow-privileged=false", "--profiling=false",
		"--kubelet-client-certificate="+P("apiserver-kubelet-client.crt"), "--kubelet-client-key="+P("apiserver-kubelet-client.key"),
		"--kubelet-preferred-address-types=InternalIP")
	if err != nil {
		return err
	}
	admin, err := n.adminHTTP()
	if err != nil {
		return err
	}
	if err := waitFor(ctx, "kube-apiserver", 180*time.Second, api, func() error { return httpOK(n.APIServerURL+"/readyz", admin) }); err != nil {
		return err
	}
	apiAddr := fmt.Sprintf("127.0.0.1:%d", apiPort)
	if n.APIProxy, err = Listen(n.Net.NodeIP.String(), func(context.Context) (string, error) { return apiAddr, nil }); err != nil {
		return err
	}
	kcm, err := n.run("kube-controller-manager", filepath.Join(n.Paths.KubeBin, "kube-controller-manager"),
		"--kubeconfig="+P("kcm.kubeconfig"), "--authentication-kubeconfig="+P("kcm.kubeconfig"), "--authorization-kubeconfig="+P("kcm.kubeconfig"),
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(kcmPort), "--leader-elect=false",
		"--service-account-private-key-file="+P("sa.key"), "--root-ca-file="+P("ca.crt"), "--use-service-account-credentials=true",
		"--cluster-signing-cert-file="+P("ca.crt"), "--cluster-signing-key-file="+P("ca.key"), "--controllers=*",
		"--flex-volume-plugin-dir="+n.path("kcm-flexvolume"),
		"--profiling=false")
	if err != nil {
		return err
	}
	sched, err := n.run("kube-scheduler", filepath.Join(n.Paths.KubeBin, "kube-scheduler"),
		"--kubeconfig="+P("scheduler.kubeconfig"), "--authentication-kubeconfig="+P("scheduler.kubeconfig"), "--authorization-kubeconfig="+P("scheduler.kubeconfig"),
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(schedPort), "--leader-elect=false", "--profiling=false")
	if err != nil {
		return err
	}
	noVerify := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: insecureTLS()}}
	if err := waitFor(ctx, "kube-controller-manager", 120*time.Second, kcm, func() error {
		return httpOK(fmt.Sprintf("https://127.0.0.1:%d/healthz", kcmPort), noVerify)
	}); err != nil {
		return err
	}
	return waitFor(ctx, "kube-scheduler", 120*time.Second, sched, func() error {
		return httpOK(fmt.Sprintf("https://127.0.0.1:%d/healthz", schedPort), noVerify)
	})
}

// kernel tunables kubelet insists on with protectKernelDefaults. The machine's are never
// changed: kubelet runs in its own mount namespace with read-only stand-ins bound over them.
var kubeletSysctls = []struct{ key, val string }{
	{"vm/overcommit_memory", "1"}, {"vm/panic_on_oom", "0"}, {"kernel/panic", "10"}, {"kernel/panic_on_oops", "1"},
	{"kernel/keys/root_maxkeys", "1000000"}, {"kernel/keys/root_maxbytes", "25000000"},
}

func (n *Node) startKubelet(ctx context.Context) error {
	root := n.path("kubelet")
	for _, d := range []string{root, n.path("pod-logs"), n.path("kubelet-plugins"), n.path("sysctl")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// kubelet's root as a shared mount: volume mounts kubelet makes in its namespace reach containerd.
	if out, err := exec.Command("mount", "--bind", root, root).CombinedOutput(); err != nil {
		return fmt.Errorf("bind %s: %v: %s", root, err, out)
	}
	if out, err := exec.Command("mount", "--make-rshared", root).CombinedOutput(); err != nil {
		return fmt.Errorf("make %s shared: %v: %s", root, err, out)
	}
	if err := os.WriteFile(n.path("resolv.conf"), []byte("# no DNS: pods reach nothing outside their network\n"), 0o644); err != nil {
		return err
	}
	conf := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://%[1]s
address: %[2]s
port: 10250
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %[3]s}
authorization: {mode: AlwaysAllow}
protectKernelDefaults: true
failSwapOn: false
cgroupsPerQOS: true
enforceNodeAllocatable: ["pods"]
podLogsDir: %[4]s
resolvConf: %[5]s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
serializeImagePulls: false
registerNode: true
maxPods: 50
volumePluginDir: %[6]s
clusterDomain: cluster.local
rotateCertificates: false
serverTLSBootstrap: false
syncFrequency: 5s
fileCheckFrequency: 5s
nodeStatusUpdateFrequency: 5s
`, n.containerdSock(), n.Net.NodeIP, n.pki.path("ca.crt"), n.path("pod-logs"), n.path("resolv.conf"), n.path("kubelet-plugins"))
	if err := os.WriteFile(n.path("kubelet.yaml"), []byte(conf), 0o644); err != nil {
		return err
	}
	var sb strings.Builder
	sb.WriteString("#!/bin/sh\n# kubelet's own mount namespace: stand-ins for the kernel tunables it insists on.\nset -eu\nmount --make-rprivate /proc\n")
	for _, s := range kubeletSysctls {
		f := n.path("sysctl", strings.ReplaceAll(s.key, "/", "_"))
		fmt.Fprintf(&sb, "if [ \"$(cat /proc/sys/%[1]s)\" != %[2]q ]; then echo %[2]q > %[3]q; mount --bind -o ro %[3]q /proc/sys/%[1]s; fi\n", s.key, s.val, f)
	}
	fmt.Fprintf(&sb, "exec %q --config=%q --kubeconfig=%q --root-dir=%q --cert-dir=%q --node-ip=%s --hostname-override=%s --v=1\n",
		filepath.Join(n.Paths.KubeBin, "kubelet"), n.path("kubelet.yaml"), n.pki.path("kubelet.kubeconfig"), root,
		filepath.Join(root, "pki"), n.Net.NodeIP, NodeName)
	if err := os.WriteFile(n.path("kubelet.sh"), []byte(sb.String()), 0o755); err != nil {
		return err
	}
	p, err := n.run("kubelet", "unshare", "-m", "--propagation", "unchanged", "--", "/bin/sh", n.path("kubelet.sh"))
	if err != nil {
		return err
	}
	start := time.Now()
	err = waitFor(ctx, "node "+NodeName+" Ready", 180*time.Second, p, func() error {
		out, err := n.Kubectl(ctx, "get", "node", NodeName, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "True" {
			return fmt.Errorf("Ready=%q", out)
		}
		return nil
	})
	if err == nil {
		n.logf("cluster: node Ready %.1fs after kubelet started", time.Since(start).Seconds())
	}
	return err
}

// Kubectl runs kubectl as the admin.
func (n *Node) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, n.Paths.Kubectl, append([]string{"--kubeconfig", n.Kubeconfig}, args...)...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// KubectlStdin runs kubectl with stdin.
func (n *Node) KubectlStdin(ctx context.Context, stdin string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, n.Paths.Kubectl, append([]string{"--kubeconfig", n.Kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	b, err := cmd.CombinedOutput()
	if err != nil {
		return string(b), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(b)))
	}
	return string(b), nil
}

// DumpLogs logs the last lines of every component's log.
func (n *Node) DumpLogs(lines int) {
	n.mu.Lock()
	procs := append([]*proc(nil), n.procs...)
	n.mu.Unlock()
	for _, p := range procs {
		b, err := os.ReadFile(p.log)
		if err != nil {
			continue
		}
		ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(ls) > lines {
			ls = ls[len(ls)-lines:]
		}
		n.logf("---- last %d lines of %s:\n%s", len(ls), p.name, strings.Join(ls, "\n"))
	}
}

// Stop removes everything Start made: pods (through kubelet while it runs), processes,
// containers, mounts, network namespaces, the bridge and route, cgroups and log links.
func (n *Node) Stop() error {
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return nil
	}
	n.stopped = true
	procs := append([]*proc(nil), n.procs...)
	n.mu.Unlock()
	var errs []string
	byName := map[string]*proc{}
	for _, p := range procs {
		byName[p.name] = p
	}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	stop := func(name string) {
		if p := byName[name]; p != nil {
			s := time.Now()
			if err := stopProc(p, 20*time.Second); err != nil {
				errs = append(errs, err.Error())
			}
			n.logf("cluster: stopped %s in %.1fs", name, time.Since(s).Seconds())
		}
	}
	// The controllers first, so nothing recreates the pods; then the pods, while kubelet and
	// containerd run: kubelet tears the sandboxes down through CNI.
	stop("kube-controller-manager")
	stop("kube-scheduler")
	if byName["kubelet"] != nil && byName["kube-apiserver"] != nil {
		_, _ = n.Kubectl(ctx, "delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=false")
		_ = waitFor(ctx, "pods gone", 60*time.Second, nil, func() error {
			out, err := n.Kubectl(ctx, "get", "pods", "-A", "-o", "name")
			if err != nil {
				return err
			}
			if strings.TrimSpace(out) != "" {
				return fmt.Errorf("pods left: %s", out)
			}
			return nil
		})
	}
	stop("kubelet")
	if byName["containerd"] != nil {
		s := time.Now()
		n.removeContainers(ctx)
		n.logf("cluster: containers removed in %.1fs", time.Since(s).Seconds())
	}
	if n.APIProxy != nil {
		_ = n.APIProxy.Close()
	}
	stop("kube-apiserver")
	stop("etcd")
	stop("containerd")
	// Shims outlive containerd by design; these are the ones started for this node's socket.
	for _, pid := range shimsOf(n.containerdSock()) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if err := n.unmountAll(); err != nil {
		errs = append(errs, err.Error())
	}
	for name := range netnsNames() {
		if !n.netnsPre[name] && strings.HasPrefix(name, "cni-") {
			if err := ipCmd("netns", "delete", name); err != nil {
				errs = append(errs, err.Error())
			}
		}
	}
	if n.Net.Bridge != "" {
		if err := n.Net.down(); err != nil {
			errs = append(errs, err.Error())
		}
	}
	n.removeLogLinks()
	removeCgroups()
	if n.runShimOK {
		_ = os.RemoveAll("/run/containerd")
	}
	n.logf("cluster: processes, mounts and network removed in %.1fs", time.Since(t0).Seconds())
	if n.lock != nil {
		n.lock.Close() // releases the flock: the next node on this machine may start
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(n.Dir); err != nil {
			errs = append(errs, err.Error())
		}
	} else {
		n.logf("cluster: leaving %s for inspection", n.Dir)
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

func stopProc(p *proc, grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// removeContainers kills every task and deletes every container left in containerd, so no
// shim or container process outlives the node.
func (n *Node) removeContainers(ctx context.Context) {
	out, _ := n.Ctr(ctx, "tasks", "ls", "-q")
	for _, id := range strings.Fields(out) {
		_, _ = n.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", id)
	}
	for _, id := range strings.Fields(out) {
		_ = waitFor(ctx, "task "+id, 10*time.Second, nil, func() error { _, err := n.Ctr(ctx, "tasks", "delete", "-f", id); return err })
	}
	out, _ = n.Ctr(ctx, "containers", "ls", "-q")
	for _, id := range strings.Fields(out) {
		_, _ = n.Ctr(ctx, "containers", "delete", id)
	}
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 {
			mp := unescapeMount(f[4])
			if mp == dir || strings.HasPrefix(mp, dir+"/") {
				out = append(out, mp)
			}
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(out)))
	return out
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

func (n *Node) unmountAll() error {
	for i := 0; i < 5; i++ {
		ms := mountsUnder(n.Dir)
		if len(ms) == 0 {
			return nil
		}
		for _, m := range ms {
			_ = syscall.Unmount(m, 0)
		}
		for _, m := range mountsUnder(n.Dir) {
			_ = syscall.Unmount(m, syscall.MNT_DETACH)
		}
	}
	if ms := mountsUnder(n.Dir); len(ms) > 0 {
		return fmt.Errorf("still mounted: %s", strings.Join(ms, ", "))
	}
	return nil
}

// Leftovers lists what Stop should have removed and did not: it is empty after a clean stop.
func (n *Node) Leftovers() []string {
	var out []string
	n.mu.Lock()
	procs := append([]*proc(nil), n.procs...)
	n.mu.Unlock()
	for _, p := range procs {
		select {
		case <-p.done:
		default:
			out = append(out, fmt.Sprintf("process %s (pid %d)", p.name, p.cmd.Process.Pid))
		}
	}
	for _, pid := range shimsOf(n.containerdSock()) {
		out = append(out, fmt.Sprintf("containerd shim pid %d", pid))
	}
	for _, m := range mountsUnder(n.Dir) {
		out = append(out, "mount "+m)
	}
	if n.Net.Bridge != "" && exec.Command("ip", "link", "show", n.Net.Bridge).Run() == nil {
		out = append(out, "bridge "+n.Net.Bridge)
	}
	if b, _ := exec.Command("ip", "-4", "route", "show", "table", "all").Output(); n.Net.Bridge != "" &&
		(strings.Contains(string(b), n.Net.Services.String()) || strings.Contains(string(b), n.Net.PodCIDR.String())) {
		out = append(out, "a route for "+n.Net.Services.String()+" or "+n.Net.PodCIDR.String())
	}
	for name := range netnsNames() {
		if !n.netnsPre[name] {
			out = append(out, "network namespace "+name)
		}
	}
	if _, err := os.Stat(n.Dir); err == nil {
		out = append(out, "directory "+n.Dir)
	}
	if _, err := os.Stat("/var/log/containers"); err == nil && n.logLinks {
		out = append(out, "/var/log/containers")
	}
	return out
}

// CheckPodRoutes checks every pod network namespace of this node: its routes lead only to
// the pod network (no default route, no gateway), so a pod can reach nothing else.
func (n *Node) CheckPodRoutes() (int, error) {
	checked := 0
	for name := range netnsNames() {
		if n.netnsPre[name] {
			continue
		}
		b, err := exec.Command("ip", "-n", name, "-4", "route", "show", "table", "all").CombinedOutput()
		if err != nil {
			return checked, fmt.Errorf("routes of %s: %v: %s", name, err, b)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || f[0] == "local" || f[0] == "broadcast" {
				continue
			}
			dst, err := netip.ParsePrefix(f[0])
			if f[0] == "default" || err != nil || !n.Net.PodCIDR.Contains(dst.Addr()) || dst.Bits() < n.Net.PodCIDR.Bits() {
				return checked, fmt.Errorf("pod network namespace %s has a route outside %s: %q", name, n.Net.PodCIDR, line)
			}
		}
		checked++
	}
	return checked, nil
}

// shimsOf returns the pids of the containerd shims serving the containerd at sock.
func shimsOf(sock string) []int {
	var out []int
	eachProc("cmdline", func(pid int, b []byte) {
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || filepath.Base(args[0]) != "containerd-shim-runc-v2" {
			return
		}
		for i := range args[:len(args)-1] {
			if args[i] == "-address" && args[i+1] == sock {
				out = append(out, pid)
			}
		}
	})
	return out
}

// eachProc calls fn with every process's pid and its /proc/<pid>/file.
func eachProc(file string, fn func(pid int, b []byte)) {
	ds, _ := os.ReadDir("/proc")
	for _, d := range ds {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", d.Name(), file)); err == nil {
			fn(pid, b)
		}
	}
}

func netnsNames() map[string]bool {
	out := map[string]bool{}
	es, _ := os.ReadDir("/var/run/netns")
	for _, e := range es {
		out[e.Name()] = true
	}
	return out
}

// removeLogLinks removes the links kubelet makes in /var/log/containers (a fixed path) to
// this node's logs, and the directory when kubelet created it.
func (n *Node) removeLogLinks() {
	es, _ := os.ReadDir("/var/log/containers")
	for _, e := range es {
		p := filepath.Join("/var/log/containers", e.Name())
		if t, err := os.Readlink(p); err == nil && strings.HasPrefix(t, n.Dir+"/") {
			_ = os.Remove(p)
		}
	}
	if n.logLinks {
		_ = os.Remove("/var/log/containers")
	}
}

// removeCgroups removes the (by now empty) cgroups kubelet and containerd made.
func removeCgroups() {
	hs, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range hs {
		for _, top := range []string{"kubepods", "kubepods.slice", "k8s.io"} {
			root := filepath.Join(h, top)
			if _, err := os.Stat(root); err != nil {
				continue
			}
			var dirs []string
			_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			for i := len(dirs) - 1; i >= 0; i-- {
				_ = os.Remove(dirs[i])
			}
		}
	}
}

// adminHTTP returns an HTTP client with the admin's client certificate.
func (n *Node) adminHTTP() (*http.Client, error) {
	cfg, err := n.adminTLS()
	if err != nil {
		return nil, err
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}, nil
}

func (n *Node) adminTLS() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(n.pki.path("admin.crt"), n.pki.path("admin.key"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(n.pki.caCert)
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// insecureTLS is for the health endpoints of controller-manager and scheduler on loopback,
// which serve self-signed certificates.
func insecureTLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} //nolint:gosec // loopback health check
}

func httpOK(url string, c *http.Client) error {
	if c == nil {
		c = &http.Client{Timeout: 5 * time.Second}
	}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}
