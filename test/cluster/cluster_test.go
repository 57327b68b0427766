//go:build cluster

// The KeycloakBackup story on a real single-node Kubernetes: `make test-cluster` (needs root
// and test/cluster/build.sh). Every pod runs in a namespace that enforces Pod Security
// "restricted", from images built locally and never pulled.
package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/jackc/pgx/v5"

	"github.com/kcbackup/kcbackup/test/harness"
)

const (
	ns          = "kc-test"
	pgName      = "keycloak-postgres"
	pgPassword  = "kc-test-password" // a test-only password, of a database that lives minutes
	sidecarPort = 8008
)

var (
	node      *Node
	dbProxy   *Proxy
	pgVolume  string // host directory of the data claim
	imageHash string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	ctx := context.Background()
	paths := DefaultPaths()
	h, err := os.ReadFile(filepath.Join(paths.Images, "kcbackup-images.hash"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "no kcbackup images: run test/cluster/build.sh kcbackup-images (%v)\n", err)
		return 1
	}
	imageHash = strings.TrimSpace(string(h))
	start := time.Now()
	n, err := Start(ctx, paths, func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) })
	if err != nil {
		fmt.Fprintf(os.Stderr, "start the node: %v\n", err)
		return 1
	}
	node = n
	fmt.Fprintf(os.Stderr, "cluster: node up in %.1fs\n", time.Since(start).Seconds())
	// Interrupted (Ctrl-C, or SIGTERM from a CI runner), or about to be killed by go test's
	// -timeout (which exits without running deferred calls): dump and clean up before going,
	// so that nothing is left running or mounted.
	abort := func(why string) {
		fmt.Fprintf(os.Stderr, "cluster: %s: stopping the node\n", why)
		dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		dumpNamespace(dctx)
		cancel()
		if err := n.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stop the node: %v\n", err)
		}
		killChildren() // MinIO of TestScheduledBackupsOnMinIO: its t.Cleanup will not run
		os.Exit(2)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() { abort((<-sigs).String()) }()
	if d := testTimeout(); d > 2*time.Minute {
		time.AfterFunc(d-time.Minute, func() { abort("go test -timeout " + d.String() + " is a minute away") })
	}
	code := 1
	func() {
		defer func() {
			if r := recover(); r != nil {
				fmt.Fprintf(os.Stderr, "panic: %v\n", r)
			}
		}()
		if err := setUp(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "set up: %v\n", err)
			dumpNamespace(ctx)
			n.DumpLogs(30)
			return
		}
		code = m.Run() // each test dumps the namespace when it fails (dumpOnFailure)
	}()
	if dbProxy != nil {
		_ = dbProxy.Close()
	}
	stopStart := time.Now()
	if err := n.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "stop the node: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "cluster: stopped and cleaned up in %.1fs\n", time.Since(stopStart).Seconds())
	if left := n.Leftovers(); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "the node left behind: %s\n", strings.Join(left, ", "))
		return 1
	}
	return code
}

// killChildren SIGKILLs this process's remaining child processes (by pid, from /proc).
func killChildren() {
	me := strconv.Itoa(os.Getpid())
	eachProc("stat", func(pid int, b []byte) {
		// pid (comm) state ppid ...: comm may hold spaces, so split after its last ')'.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[1] == me {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

// testTimeout is go test's -timeout (0: none).
func testTimeout() time.Duration {
	if !flag.Parsed() {
		flag.Parse()
	}
	f := flag.Lookup("test.timeout")
	if f == nil {
		return 0
	}
	d, _ := time.ParseDuration(f.Value.String())
	return d
}

// setUp installs the operator from the release manifest `make release` writes, and the
// database and its application.
func setUp(ctx context.Context) error {
	t0 := time.Now()
	overlay, err := writeOverlay(ctx)
	if err != nil {
		return err
	}
	if out, err := node.Kubectl(ctx, "apply", "--server-side", "-k", overlay); err != nil {
		return fmt.Errorf("install the operator from the release manifest: %w\n%s", err, out)
	}
	if _, err := node.Kubectl(ctx, "-n", "kcbackup-system", "rollout", "status", "deployment/kcbackup-operator", "--timeout=180s"); err != nil {
		return fmt.Errorf("operator rollout: %w", err)
	}
	fmt.Fprintf(os.Stderr, "cluster: operator available %.1fs after writing and applying the release manifest\n", time.Since(t0).Seconds())

	pgVolume = node.path("volumes", "pgdata")
	archive := node.path("volumes", "archive")
	for _, d := range []struct {
		dir      string
		uid, gid int
		mode     os.FileMode
	}{{pgVolume, 999, 999, 0o700}, {archive, 65532, 999, 0o2775}} {
		if err := os.MkdirAll(d.dir, 0o755); err != nil {
			return err
		}
		if err := os.Chown(d.dir, d.uid, d.gid); err != nil {
			return err
		}
		if err := os.Chmod(d.dir, d.mode); err != nil {
			return err
		}
	}
	if _, err := node.KubectlStdin(ctx, baseManifests(pgVolume, archive), "apply", "-f", "-"); err != nil {
		return err
	}
	// The application reaches PostgreSQL through a proxy on the node IP (there is no
	// kube-proxy), to whichever pod of the StatefulSet is running.
	dbProxy, err = Listen(node.Net.NodeIP.String(), func(ctx context.Context) (string, error) {
		ip, err := podIP(ctx, pgName+"-0")
		if err != nil {
			return "", err
		}
		return ip + ":5432", nil
	})
	if err != nil {
		return err
	}
	if _, err := node.KubectlStdin(ctx, keycloakManifest(dbProxy), "apply", "-f", "-"); err != nil {
		return err
	}
	if _, err := node.Kubectl(ctx, "-n", ns, "rollout", "status", "statefulset/"+pgName, "--timeout=180s"); err != nil {
		return fmt.Errorf("PostgreSQL rollout: %w", err)
	}
	if _, err := node.Kubectl(ctx, "-n", ns, "rollout", "status", "deployment/keycloak", "--timeout=180s"); err != nil {
		return fmt.Errorf("keycloak stand-in rollout: %w", err)
	}
	fmt.Fprintf(os.Stderr, "cluster: PostgreSQL and the Keycloak stand-in ready %.1fs after the operator\n", time.Since(t0).Seconds())
	return nil
}

// releaseVersion is the version test releases are made as: the chart's (release.sh refuses
// any other), read from deploy/helm/kcbackup/Chart.yaml.
func releaseVersion() (string, error) {
	b, err := os.ReadFile("../../deploy/helm/kcbackup/Chart.yaml")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "version: "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", errors.New("deploy/helm/kcbackup/Chart.yaml has no version")
}

// writeRelease runs deploy/release/release.sh as `make release` does, without building the
// images (IMAGES=0: the node runs the ones test/cluster/build.sh built and imported), into
// dir, and returns the install manifest's path.
func writeRelease(ctx context.Context, dir string) (string, error) {
	version, err := releaseVersion()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "../../deploy/release/release.sh", version)
	cmd.Env = append(os.Environ(), "IMAGES=0", "DIST="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("deploy/release/release.sh %s: %w\n%s", version, err, out)
	}
	return filepath.Join(dir, "kcbackup-v"+version+".yaml"), nil
}

// writeOverlay writes the release manifest and an overlay on top of it with this run's
// images (built and imported under localhost/, never pulled) and API server address (the
// node has no kube-proxy, so the in-cluster Service address leads nowhere).
func writeOverlay(ctx context.Context) (string, error) {
	manifest, err := writeRelease(ctx, node.path("release"))
	if err != nil {
		return "", err
	}
	dir := node.path("overlay")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	b, err := os.ReadFile(manifest)
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "release.yaml"), b, 0o644); err != nil {
		return "", err
	}
	k := fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - release.yaml
images:
  - name: ghcr.io/kcbackup/kcbackup-operator
    newName: localhost/kcbackup-operator
    newTag: %q
patches:
  - patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: kcbackup-operator
        namespace: kcbackup-system
      spec:
        template:
          spec:
            containers:
              - name: operator
                imagePullPolicy: Never
                args: ["--leader-elect=true", "--metrics-bind-address=:8443", "--health-probe-bind-address=:8081", "--poll-interval=2s"]
                env:
                  - name: KCBACKUP_SIDECAR_IMAGE
                    value: localhost/kcbackup:%s
                  - name: KUBERNETES_SERVICE_HOST
                    value: %q
                  - name: KUBERNETES_SERVICE_PORT
                    value: %q
`, imageHash, imageHash, node.Net.NodeIP.String(), node.APIProxy.Port())
	return dir, os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644)
}

func restrictedContainer() string {
	return `securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            runAsNonRoot: true
            capabilities: {drop: ["ALL"]}
            seccompProfile: {type: RuntimeDefault}`
}

// baseManifests: the namespace (restricted), the volumes, the secrets and PostgreSQL.
func baseManifests(pgVolume, archive string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
    pod-security.kubernetes.io/warn: restricted

%[3]s
%[4]s
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: kcbackup-archive, namespace: %[1]s}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: kcbackup-local
  resources: {requests: {storage: 4Gi}}
---
apiVersion: v1
kind: Secret
metadata: {name: keycloak-postgres, namespace: %[1]s}
stringData: {password: %[5]q}
%[6]s
`, ns, pgName, hostPathPV("kc-test-pgdata", "data-"+pgName+"-0", pgVolume), hostPathPV("kc-test-archive", "kcbackup-archive", archive),
		pgPassword, postgresManifest(pgName))
}

// postgresUserSC is the pod securityContext of the PostgreSQL image's own user (uid 999).
const postgresUserSC = `securityContext:
        runAsNonRoot: true
        runAsUser: 999
        runAsGroup: 999
        fsGroup: 999
        seccompProfile: {type: RuntimeDefault}`

// postgresManifest: a PostgreSQL StatefulSet labelled app.kubernetes.io/name=name (and
// opted in), with its data directory below the root of its claim, as the README asks.
func postgresManifest(name string) string { return postgresManifestIn(ns, name) }

// postgresManifestIn is postgresManifest in namespace namespace (its Secret
// keycloak-postgres must exist there).
func postgresManifestIn(namespace, name string) string {
	return fmt.Sprintf(`---
apiVersion: v1
kind: Service
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  clusterIP: None
  selector: {app.kubernetes.io/name: %[2]s}
  ports: [{name: postgres, port: 5432}]
`, namespace, name) + place{ns: namespace, sts: name}.statefulSet(pgSet{
		replicas: 1,
		image:    "localhost/kcbackup-test/postgres:15",
		podSC:    postgresUserSC,
		run:      `          args: ["postgres", "-c", "wal_level=replica", "-c", "max_wal_senders=10", "-c", "max_replication_slots=10"]`,
	})
}

// keycloakManifest: the Keycloak stand-in, connected to the database through p.
func keycloakManifest(p *Proxy) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: keycloak
  namespace: %[1]s
  labels: {app.kubernetes.io/name: keycloak, kcbackup.keycloak.org/opt-in: "true"}
spec:
  replicas: 1
  selector:
    matchLabels: {app.kubernetes.io/name: keycloak}
  template:
    metadata:
      labels: {app.kubernetes.io/name: keycloak}
    spec:
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: keycloak
          image: localhost/kcbackup-test/keycloak-standin:1
          imagePullPolicy: Never
          env:
            - name: KEYCLOAK_DB_URL
              value: "postgres://postgres:%[2]s@%[3]s/keycloak?sslmode=disable"
          readinessProbe:
            httpGet: {path: /ready, port: 8080}
            periodSeconds: 2
          %[4]s
`, ns, pgPassword, p.Addr, restrictedContainer())
}

// hostPathPV is a PersistentVolume on a directory of the node, bound in advance to the claim.
func hostPathPV(name, claim, dir string) string {
	return strings.TrimSuffix(hostPathPVIn(name, ns, claim, dir), "\n")
}

// kcb returns a KeycloakBackup on the archive claim; extra is appended to its spec.
func kcb(name, extra string) string {
	return place{ns: ns, sts: pgName}.kcb(name, "kcbackup-archive", extra)
}

// kcbStatus is the part of a KeycloakBackup's status the test reads.
type kcbStatus struct {
	Phase      string `json:"phase"`
	Conditions []struct {
		Type, Status, Reason, Message string
	} `json:"conditions"`
	Backups []struct {
		ID string `json:"id"`
	} `json:"backups"`
	RecoveryWindow *struct {
		Earliest, Latest time.Time
	} `json:"recoveryWindow"`
	Restore *struct {
		Step             string `json:"step"`
		StartTime        string `json:"startTime"`
		PreviousTimeline int64  `json:"previousTimeline"`
		Timeline         int64  `json:"timeline"`
	} `json:"restore"`
}

func getKCB(ctx context.Context, name string) (kcbStatus, error) {
	return place{ns: ns}.status(ctx, name)
}

func (s kcbStatus) ready() string {
	for _, c := range s.Conditions {
		if c.Type == "Ready" {
			return c.Status + " " + c.Reason + ": " + c.Message
		}
	}
	return "no Ready condition"
}

// waitPhase waits until the KeycloakBackup reaches want; a phase in stop ends the wait at
// once, with the Ready condition saying why.
func waitPhase(t *testing.T, ctx context.Context, name, want string, timeout time.Duration, stop ...string) kcbStatus {
	t.Helper()
	return place{ns: ns}.waitPhase(t, ctx, name, want, timeout, stop...)
}

// endedIn returns an error that ends a waitFor when the KeycloakBackup is in one of the
// phases of stop (it will not leave it): the phase, the step and the Ready condition.
func (s kcbStatus) endedIn(name string, stop ...string) error {
	for _, p := range stop {
		if s.Phase == p {
			step := ""
			if s.Restore != nil {
				step = " at restore step " + s.Restore.Step
			}
			return stopErr(fmt.Errorf("KeycloakBackup %s ended %s%s: %s", name, s.Phase, step, s.ready()))
		}
	}
	return nil
}

func podIP(ctx context.Context, pod string) (string, error) {
	return place{ns: ns}.podIP(ctx, pod)
}

func jsonpath(ctx context.Context, kind, name, path string) (string, error) {
	return place{ns: ns}.get(ctx, kind, name, path)
}

// db connects to the story's PostgreSQL.
func db(t *testing.T, ctx context.Context) *pgx.Conn {
	t.Helper()
	return dbPod(t, ctx, pgName+"-0")
}

// dbPod connects to PostgreSQL in pod, directly on its pod IP.
func dbPod(t *testing.T, ctx context.Context, pod string) *pgx.Conn {
	t.Helper()
	return place{ns: ns}.conn(t, ctx, pod)
}

// metric reads one sample of the sidecar's /metrics in the story's PostgreSQL pod.
func metric(ctx context.Context, name string) (float64, error) {
	return metricOf(ctx, pgName+"-0", name)
}

// metricOf reads one sample of the /metrics of the sidecar in pod.
func metricOf(ctx context.Context, pod, name string) (float64, error) {
	return place{ns: ns}.metric(ctx, pod, name)
}

// waitLagNearZero waits until the sidecar in pod reports under 64 KiB and 5 s of WAL not yet archived.
func waitLagNearZero(t *testing.T, ctx context.Context, pod string) {
	t.Helper()
	var last string
	if err := waitFor(ctx, "archive lag near zero in "+pod, 2*time.Minute, nil, func() error {
		b, err := metricOf(ctx, pod, "kcbackup_archive_lag_bytes")
		if err != nil {
			return err
		}
		s, err := metricOf(ctx, pod, "kcbackup_archive_lag_seconds")
		if err != nil {
			return err
		}
		last = fmt.Sprintf("%.0f bytes, %.1f s", b, s)
		if b > 64*1024 || s > 5 {
			return fmt.Errorf("lag %s", last)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("archive lag in %s: %s", pod, last)
}

// pastTarget returns a restore target: the next whole second after everything committed on
// conn so far, once the server's clock has passed it (so what comes next is after it).
func pastTarget(t *testing.T, ctx context.Context, conn *pgx.Conn) time.Time {
	t.Helper()
	var now time.Time
	if err := conn.QueryRow(ctx, "SELECT now()").Scan(&now); err != nil {
		t.Fatal(err)
	}
	target := now.UTC().Truncate(time.Second).Add(time.Second)
	if err := waitFor(ctx, "the server clock past the target", 10*time.Second, nil, func() error {
		var t2 time.Time
		if err := conn.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&t2); err != nil {
			return err
		}
		if !t2.After(target.Add(500 * time.Millisecond)) {
			return fmt.Errorf("server time %s", t2)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return target
}

// loadKeycloakSchema creates Keycloak 26's session and discovery tables (the fixture), which
// the restore's Keycloak clean-up (spec.restore.sessions, default online) needs: without
// them it fails closed and keeps the application at zero.
func loadKeycloakSchema(t *testing.T, ctx context.Context, conn *pgx.Conn) {
	t.Helper()
	schema, err := os.ReadFile("../../sidecar/internal/keycloak/testdata/keycloak26.sql")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, string(schema)); err != nil {
		t.Fatalf("Keycloak 26 schema fixture: %v", err)
	}
}

// waitArchived waits until the sidecar in pod has archived all the WAL PostgreSQL has
// flushed now (conn is a connection to that PostgreSQL).
func waitArchived(t *testing.T, ctx context.Context, conn *pgx.Conn, pod string) {
	t.Helper()
	place{ns: ns}.waitArchived(t, ctx, conn, pod)
}

// waitWindowCovers waits until the archive, as the sidecar in pod of StatefulSet sts lists
// it (the catalog the operator checks a restore target against), has a range holding
// target. A target it never covers fails here with the ranges, not later as a refused restore.
func waitWindowCovers(t *testing.T, ctx context.Context, sts, pod string, target time.Time) {
	t.Helper()
	place{ns: ns, sts: sts}.waitWindowCovers(t, ctx, pod, target)
}

// operatorLogs holds what saveOperatorLogs kept of operator pods since deleted.
var operatorLogs strings.Builder

// saveOperatorLogs keeps the operator's log so far, for dumpNamespace: a deleted pod's log
// is gone with it.
func saveOperatorLogs(ctx context.Context, why string) {
	out, err := node.Kubectl(ctx, "-n", "kcbackup-system", "logs", "-l", "app.kubernetes.io/name=kcbackup-operator", "--tail=-1", "--prefix")
	fmt.Fprintf(&operatorLogs, "---- operator log %s\n%s%s\n", why, out, errOrEmpty(err))
}

// dumpOnFailure dumps the namespace, the KeycloakBackups and the operator's log when t
// failed, right away, while the state that made it fail is still there.
func dumpOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if t.Failed() {
			dumpNamespace(context.Background())
		}
	})
}

func dumpNamespace(ctx context.Context) {
	for _, args := range [][]string{
		{"get", "pods,statefulsets,deployments,jobs,pvc,keycloakbackups", "-A", "-o", "wide"},
		{"-n", ns, "get", "keycloakbackups", "-o", "yaml"},
		{"-n", ns, "get", "events", "--sort-by=.lastTimestamp"},
		{"-n", "kcbackup-system", "logs", "-l", "app.kubernetes.io/name=kcbackup-operator", "--tail=300", "--prefix"},
		{"-n", ns, "logs", pgName + "-0", "--all-containers", "--tail=40"},
	} {
		out, err := node.Kubectl(ctx, args...)
		fmt.Fprintf(os.Stderr, "---- kubectl %s\n%s%v\n", strings.Join(args, " "), out, errOrEmpty(err))
	}
	if operatorLogs.Len() > 0 {
		fmt.Fprint(os.Stderr, operatorLogs.String())
	}
}

func errOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestKeycloakBackupStory runs the steps in order: each needs the one before.
func TestKeycloakBackupStory(t *testing.T) {
	ctx := context.Background()
	dumpOnFailure(t)

	t.Log("manual backup to the archive claim")
	t0 := time.Now()
	if _, err := node.KubectlStdin(ctx, kcb("manual", ""), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	st := waitPhase(t, ctx, "manual", "Completed", 6*time.Minute, "Failed")
	t.Logf("manual backup Completed in %.1fs (sidecar injected, pod rolled, base backup taken); backups: %d", time.Since(t0).Seconds(), len(st.Backups))
	if len(st.Backups) == 0 {
		t.Fatalf("phase Completed but no backup in status: %+v", st)
	}
	assertSidecarInjected(t, ctx)
	if k, err := node.CheckPodRoutes(); err != nil {
		t.Error(err)
	} else {
		t.Logf("%d pod network namespaces route only inside %s", k, node.Net.PodCIDR)
	}

	conn := db(t, ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE ledger (id int PRIMARY KEY, note text NOT NULL);
		INSERT INTO ledger SELECT g, 'row ' || g FROM generate_series(1, 5000) g`); err != nil {
		t.Fatal(err)
	}
	loadKeycloakSchema(t, ctx, conn)

	t.Log("the sidecar's lag comes back near zero")
	waitLagNearZero(t, ctx, pgName+"-0")

	t.Run("SidecarKilledNoGap", func(t *testing.T) { killSidecar(t, ctx, conn) })
	t.Run("RestoreOutsideWindowRefused", func(t *testing.T) { restoreOutsideWindow(t, ctx) })
	if t.Failed() {
		return
	}
	t.Run("RestoreBeforeDropOperatorDeleted", func(t *testing.T) { restoreBeforeDrop(t, ctx, conn) })
	if t.Failed() {
		return
	}
	t.Run("KeycloakOperatorStoppedThroughItsResource", func(t *testing.T) { restoreWithKeycloakOperator(t, ctx) })
}

// killSidecar SIGKILLs the sidecar's process while rows are being committed; kubelet
// restarts it. The rows committed meanwhile are restored later (RestoreBeforeDrop), which
// needs every WAL segment between the base backup and the target: no gap.
func killSidecar(t *testing.T, ctx context.Context, conn *pgx.Conn) {
	pod := pgName + "-0"
	restarts := func() (int, string, error) {
		out, err := jsonpath(ctx, "pod", pod, `{.status.initContainerStatuses[?(@.name=="kcbackup")].restartCount} {.status.initContainerStatuses[?(@.name=="kcbackup")].containerID}`)
		if err != nil {
			return 0, "", err
		}
		f := strings.Fields(out)
		if len(f) != 2 {
			return 0, "", fmt.Errorf("no kcbackup init container status in %q", out)
		}
		n, err := strconv.Atoi(f[0])
		return n, strings.TrimPrefix(f[1], "containerd://"), err
	}
	before, id, err := restarts()
	if err != nil {
		t.Fatal(err)
	}
	next := 5001
	insert := func() {
		if _, err := conn.Exec(ctx, "INSERT INTO ledger VALUES ($1::int, 'row ' || $1::int)", next); err != nil {
			t.Fatalf("insert row %d: %v", next, err)
		}
		next++
	}
	for i := 0; i < 20; i++ {
		insert()
	}
	if _, err := node.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", id); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, "kubelet restarts the sidecar", 2*time.Minute, nil, func() error {
		insert()
		n, newID, err := restarts()
		if err != nil {
			return err
		}
		if n <= before || newID == id {
			return fmt.Errorf("restartCount %d (was %d)", n, before)
		}
		_, err = metric(ctx, "kcbackup_archive_lag_bytes")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		insert()
	}
	waitLagNearZero(t, ctx, pgName+"-0")
	t.Logf("sidecar killed and restarted by kubelet; %d rows committed across it", next-5001)
}

// assertSidecarInjected checks the PostgreSQL pod as the operator changed it: the native
// sidecar runs, every container is non-root with a read-only root filesystem, and the
// PostgreSQL container holds no storage settings.
func assertSidecarInjected(t *testing.T, ctx context.Context) {
	t.Helper()
	out, err := node.Kubectl(ctx, "-n", ns, "get", "pod", pgName+"-0", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var pod struct {
		Spec struct {
			InitContainers, Containers []struct {
				Name            string
				RestartPolicy   string
				Env             []struct{ Name string }
				SecurityContext struct {
					RunAsNonRoot           *bool
					ReadOnlyRootFilesystem *bool
				}
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &pod); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range append(pod.Spec.InitContainers, pod.Spec.Containers...) {
		if c.Name == "kcbackup" && c.RestartPolicy == "Always" {
			found = true
		}
		if c.SecurityContext.RunAsNonRoot == nil || !*c.SecurityContext.RunAsNonRoot ||
			c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
			t.Errorf("container %s is not non-root with a read-only root filesystem", c.Name)
		}
		if c.Name == "postgres" {
			for _, e := range c.Env {
				if strings.HasPrefix(e.Name, "AWS_") || e.Name == "KCBACKUP_STORAGE" {
					t.Errorf("the PostgreSQL container holds storage setting %s", e.Name)
				}
			}
		}
	}
	if !found {
		t.Fatalf("no native sidecar kcbackup (restartPolicy Always) in pod %s-0", pgName)
	}
}

func restoreOutsideWindow(t *testing.T, ctx context.Context) {
	uid, err := jsonpath(ctx, "pod", pgName+"-0", "{.metadata.uid}")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.KubectlStdin(ctx, kcb("restore-too-early", `  applicationSelector:
    matchLabels: {app.kubernetes.io/name: keycloak}
  restoreTo: "2020-01-01T00:00:00Z"
`), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	st := waitPhase(t, ctx, "restore-too-early", "Failed", 3*time.Minute, "Restored")
	if !strings.Contains(st.ready(), "TargetOutsideWindow") {
		t.Errorf("failed for another reason than TargetOutsideWindow: %s", st.ready())
	}
	if got, _ := jsonpath(ctx, "pod", pgName+"-0", "{.metadata.uid}"); got != uid {
		t.Errorf("the PostgreSQL pod was replaced (uid %s, was %s): the refused restore stopped it", got, uid)
	}
	if r, _ := jsonpath(ctx, "deployment", "keycloak", "{.spec.replicas}"); r != "1" {
		t.Errorf("keycloak replicas %s after a refused restore, want 1", r)
	}
	if r, _ := jsonpath(ctx, "statefulset", pgName, "{.spec.replicas}"); r != "1" {
		t.Errorf("PostgreSQL replicas %s after a refused restore, want 1", r)
	}
	if _, err := node.Kubectl(ctx, "-n", ns, "get", "job", "restore-too-early-restore"); err == nil {
		t.Errorf("a restore Job was created for a refused restore")
	}
}

func restoreBeforeDrop(t *testing.T, ctx context.Context, conn *pgx.Conn) {
	var before int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM ledger").Scan(&before); err != nil {
		t.Fatal(err)
	}
	target := pastTarget(t, ctx, conn)
	if _, err := conn.Exec(ctx, "DROP TABLE ledger"); err != nil {
		t.Fatal(err)
	}
	var tl int64
	if err := conn.QueryRow(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&tl); err != nil {
		t.Fatal(err)
	}
	// The drop must be archived before the window covers the target: until then the
	// archive ends before the target and the operator refuses it (TargetOutsideWindow).
	// The lag gauge cannot tell: it is refreshed once a second and read 0 just after the
	// drop, before the sidecar had it (a fresh-clone run failed so).
	waitArchived(t, ctx, conn, pgName+"-0")
	waitWindowCovers(t, ctx, pgName, pgName+"-0", target)
	_ = conn.Close(ctx)

	t0 := time.Now()
	if _, err := node.KubectlStdin(ctx, kcb("restore", fmt.Sprintf(`  applicationSelector:
    matchLabels: {app.kubernetes.io/name: keycloak}
  restoreTo: %q
`, target.Format(time.RFC3339))), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	// The operator scales the application to zero before it stops PostgreSQL.
	if err := waitFor(ctx, "keycloak scaled to zero", 3*time.Minute, nil, func() error {
		if r, _ := jsonpath(ctx, "deployment", "keycloak", "{.spec.replicas}"); r != "0" {
			st, err := getKCB(ctx, "restore")
			if err != nil {
				return err
			}
			if err := st.endedIn("restore", "Failed", "Restored"); err != nil {
				return err
			}
			return fmt.Errorf("replicas %s", r)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Delete the operator's pod in the middle: the new one resumes the same step.
	var step, startTime, jobUID string
	if err := waitFor(ctx, "the restore past creating its Job", 5*time.Minute, nil, func() error {
		st, err := getKCB(ctx, "restore")
		if err != nil {
			return err
		}
		if err := st.endedIn("restore", "Failed", "Restored"); err != nil {
			return err
		}
		if st.Restore == nil {
			return fmt.Errorf("no status.restore yet (phase %q)", st.Phase)
		}
		switch st.Restore.Step {
		case "RestoringData", "StartingDatabase", "WaitingForArchive":
			step, startTime = st.Restore.Step, st.Restore.StartTime
			if jobUID, err = jsonpath(ctx, "job", "restore-restore", "{.metadata.uid}"); err != nil || jobUID == "" {
				return fmt.Errorf("no restore Job yet (%v)", err)
			}
			return nil
		}
		return fmt.Errorf("step %s (%s)", st.Restore.Step, st.ready())
	}); err != nil {
		t.Fatal(err)
	}
	saveOperatorLogs(ctx, "before its pod was deleted mid-restore")
	if _, err := node.Kubectl(ctx, "-n", "kcbackup-system", "delete", "pod", "-l", "app.kubernetes.io/name=kcbackup-operator", "--wait=false"); err != nil {
		t.Fatal(err)
	}
	t.Logf("operator pod deleted at step %s", step)
	st := waitPhase(t, ctx, "restore", "Restored", 10*time.Minute, "Failed")
	if got, _ := jsonpath(ctx, "keycloakbackup", "restore", "{.status.restore.startTime}"); got != startTime {
		t.Errorf("restore startTime %s, was %s before the operator restarted: the procedure started over", got, startTime)
	}
	if got, _ := jsonpath(ctx, "job", "restore-restore", "{.metadata.uid}"); got != jobUID {
		t.Errorf("restore Job uid %s, was %s: the Job was created twice", got, jobUID)
	}
	events, _ := node.Kubectl(ctx, "-n", ns, "get", "events", "--field-selector", "involvedObject.name=restore,reason=RestoreStarted", "-o", "name")
	if n := len(strings.Fields(events)); n != 1 {
		t.Errorf("%d RestoreStarted events, want 1", n)
	}
	t.Logf("restore to %s: Restored in %.1fs, timeline %d -> %d", target.Format(time.RFC3339), time.Since(t0).Seconds(), st.Restore.PreviousTimeline, st.Restore.Timeline)
	if st.Restore.Timeline <= tl {
		t.Errorf("timeline %d after the restore, want above %d", st.Restore.Timeline, tl)
	}

	conn2 := db(t, ctx)
	var after int
	if err := conn2.QueryRow(ctx, "SELECT count(*) FROM ledger").Scan(&after); err != nil {
		t.Fatalf("the dropped table is not back: %v", err)
	}
	if after != before {
		t.Errorf("ledger has %d rows after the restore, want %d", after, before)
	}
	var notes int
	if err := conn2.QueryRow(ctx, "SELECT count(*) FROM ledger WHERE note = 'row ' || id").Scan(&notes); err != nil || notes != before {
		t.Errorf("ledger rows intact: %d of %d (%v)", notes, before, err)
	}
	// The old data directory lies beside the new one on the volume.
	es, err := os.ReadDir(pgVolume)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	if len(names) != 2 {
		t.Errorf("the data volume holds %v: want the restored pgdata and the old one beside it", names)
	} else {
		t.Logf("data volume after the restore: %v", names)
	}
	if err := waitFor(ctx, "keycloak back and ready", 3*time.Minute, nil, func() error {
		r, _ := jsonpath(ctx, "deployment", "keycloak", "{.status.readyReplicas}")
		if r != "1" {
			return fmt.Errorf("ready replicas %q", r)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// noApplication is the spec of a restore of a database no application uses: without it
// the operator refuses a restore with nothing to stop (NoApplicationToStop).
const noApplication = "  restore: {allowWithoutApplication: true}\n"

// TestScheduledBackupsOnMinIO: a second PostgreSQL archives to MinIO on a schedule of every
// minute. Deleting its pod during a scheduled backup fails that backup clearly; the next
// one succeeds. MinIO listens on loopback; pods reach it through a proxy on the node IP.
func TestScheduledBackupsOnMinIO(t *testing.T) {
	ctx := context.Background()
	dumpOnFailure(t)
	m := harness.StartMinIO(t)
	bucket := m.NewBucket(t)
	backend := strings.TrimPrefix(m.Endpoint(), "http://")
	p, err := Listen(node.Net.NodeIP.String(), func(context.Context) (string, error) { return backend, nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })

	name := "keycloak-postgres-s3"
	pod := name + "-0"
	dir := node.path("volumes", "pgdata-s3")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, 999, 999); err != nil {
		t.Fatal(err)
	}
	objs := hostPathPV("kc-test-pgdata-s3", "data-"+name+"-0", dir) + fmt.Sprintf(`
---
apiVersion: v1
kind: Secret
metadata: {name: kcbackup-s3, namespace: %s}
stringData: {AWS_ACCESS_KEY_ID: %q, AWS_SECRET_ACCESS_KEY: %q}
`, ns, m.AccessKey(), m.SecretKey()) + postgresManifest(name)
	if _, err := node.KubectlStdin(ctx, objs, "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Kubectl(ctx, "-n", ns, "rollout", "status", "statefulset/"+name, "--timeout=180s"); err != nil {
		t.Fatal(err)
	}
	// Enough data that a base backup takes a few seconds.
	conn := dbPod(t, ctx, pod)
	if _, err := conn.Exec(ctx, `CREATE TABLE filler AS
		SELECT g AS id, (SELECT string_agg(md5(random()::text || k::text || g::text), '') FROM generate_series(1, 16) k) AS pad
		FROM generate_series(1, 120000) g`); err != nil {
		t.Fatal(err)
	}
	loadKeycloakSchema(t, ctx, conn)
	_ = conn.Close(ctx)

	// s3KB is a KeycloakBackup on the bucket; extra is appended to its spec.
	s3KB := func(kbName, extra string) string {
		return fmt.Sprintf(`apiVersion: keycloak.org/v1alpha1
kind: KeycloakBackup
metadata: {name: %s, namespace: %s}
spec:
  instanceSelector:
    matchLabels: {app.kubernetes.io/name: %s}
  storage:
    s3:
      bucket: %s
      prefix: cluster-test
      region: us-east-1
      endpoint: http://%s
      forcePathStyle: true
      credentialsSecret: {name: kcbackup-s3}
  postgres:
    user: postgres
    passwordSecret: {name: keycloak-postgres, key: password}
%s`, kbName, ns, name, bucket, p.Addr, extra)
	}

	t.Log("manual backup to MinIO")
	t0 := time.Now()
	if _, err := node.KubectlStdin(ctx, s3KB("s3-manual", ""), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if st := waitPhase(t, ctx, "s3-manual", "Completed", 6*time.Minute, "Failed"); len(st.Backups) == 0 {
		t.Fatalf("phase Completed but no backup in status: %+v", st)
	}
	t.Logf("manual backup to MinIO Completed in %.1fs", time.Since(t0).Seconds())
	waitLagNearZero(t, ctx, pod)
	out, err := m.Client().ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
	if err != nil || len(out.Contents) == 0 {
		t.Fatalf("nothing archived in bucket %s (%v)", bucket, err)
	}
	t.Logf("%d objects in the bucket", len(out.Contents))

	if _, err := node.KubectlStdin(ctx, s3KB("s3-every-minute", "  schedule: \"* * * * *\"\n  retention: {keepBackups: 3}\n"), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	backups := func() (int, kcbStatus, error) {
		st, err := getKCB(ctx, "s3-every-minute")
		return len(st.Backups), st, err
	}
	if err := waitFor(ctx, "the first scheduled backup", 4*time.Minute, nil, func() error {
		n, st, err := backups()
		if err != nil {
			return err
		}
		if n < 1 {
			return fmt.Errorf("phase %q, %d backups (%s)", st.Phase, n, st.ready())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	waitLagNearZero(t, ctx, pod)
	t.Log("first scheduled backup done")

	t.Log("delete the PostgreSQL pod during the next scheduled backup")
	n0, _, _ := backups()
	if err := waitFor(ctx, "the next scheduled backup running", 3*time.Minute, nil, func() error {
		_, st, err := backups()
		if err != nil {
			return err
		}
		if st.Phase != "BackingUp" {
			return fmt.Errorf("phase %q", st.Phase)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Kubectl(ctx, "-n", ns, "delete", "pod", pod, "--wait=false"); err != nil {
		t.Fatal(err)
	}
	var failure string
	if err := waitFor(ctx, "the interrupted backup reported failed", 3*time.Minute, nil, func() error {
		_, st, err := backups()
		if err != nil {
			return err
		}
		for _, c := range st.Conditions {
			if c.Type == "Ready" && (c.Reason == "BackupFailed" || c.Reason == "BackupLost") {
				failure = c.Reason + ": " + c.Message
				return nil
			}
		}
		return fmt.Errorf("phase %q (%s)", st.Phase, st.ready())
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("interrupted backup: %s", failure)
	if err := waitFor(ctx, "a later scheduled backup succeeds", 4*time.Minute, nil, func() error {
		n, st, err := backups()
		if err != nil {
			return err
		}
		if n <= n0 {
			return fmt.Errorf("%d backups, had %d (%s)", n, n0, st.ready())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	t.Log("restores from MinIO, with the schedule suspended")
	if _, err := node.Kubectl(ctx, "-n", ns, "patch", "keycloakbackup", "s3-every-minute", "--type=merge", "-p", `{"spec":{"suspend":true}}`); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ctx, "s3-every-minute", "Suspended", 3*time.Minute)

	// Outside the window: refused before anything is stopped.
	uid, err := jsonpath(ctx, "pod", pod, "{.metadata.uid}")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.KubectlStdin(ctx, s3KB("s3-restore-too-early", "  restoreTo: \"2020-01-01T00:00:00Z\"\n"+noApplication), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	if st := waitPhase(t, ctx, "s3-restore-too-early", "Failed", 3*time.Minute, "Restored"); !strings.Contains(st.ready(), "TargetOutsideWindow") {
		t.Errorf("failed for another reason than TargetOutsideWindow: %s", st.ready())
	}
	if got, _ := jsonpath(ctx, "pod", pod, "{.metadata.uid}"); got != uid {
		t.Errorf("the PostgreSQL pod was replaced (uid %s, was %s): the refused restore stopped it", got, uid)
	}
	if _, err := node.Kubectl(ctx, "-n", ns, "get", "job", "s3-restore-too-early-restore"); err == nil {
		t.Errorf("a restore Job was created for a refused restore")
	}

	// A table dropped, restoreTo just before: the table is back.
	conn = dbPod(t, ctx, pod)
	if _, err := conn.Exec(ctx, "CREATE TABLE marker AS SELECT 42 AS answer"); err != nil {
		t.Fatal(err)
	}
	target := pastTarget(t, ctx, conn)
	if _, err := conn.Exec(ctx, "DROP TABLE marker"); err != nil {
		t.Fatal(err)
	}
	waitArchived(t, ctx, conn, pod)
	waitWindowCovers(t, ctx, name, pod, target)
	_ = conn.Close(ctx)
	t0 = time.Now()
	if _, err := node.KubectlStdin(ctx, s3KB("s3-restore-before-drop", fmt.Sprintf("  restoreTo: %q\n", target.Format(time.RFC3339))+noApplication), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	st := waitPhase(t, ctx, "s3-restore-before-drop", "Restored", 10*time.Minute, "Failed")
	t.Logf("restore to %s from MinIO: Restored in %.1fs, timeline %d -> %d", target.Format(time.RFC3339), time.Since(t0).Seconds(), st.Restore.PreviousTimeline, st.Restore.Timeline)
	conn = dbPod(t, ctx, pod)
	var answer, rows int
	if err := conn.QueryRow(ctx, "SELECT answer, (SELECT count(*) FROM filler) FROM marker").Scan(&answer, &rows); err != nil || answer != 42 || rows != 120000 {
		t.Errorf("after the restore: marker %d, filler rows %d (%v); want 42 and 120000", answer, rows, err)
	}

	// Restore to latest: a row written just before is there.
	if _, err := conn.Exec(ctx, "INSERT INTO marker VALUES (43)"); err != nil {
		t.Fatal(err)
	}
	waitArchived(t, ctx, conn, pod)
	_ = conn.Close(ctx)
	t0 = time.Now()
	if _, err := node.KubectlStdin(ctx, s3KB("s3-restore-latest", "  restoreTo: latest\n"+noApplication), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	prev := st.Restore.Timeline
	st = waitPhase(t, ctx, "s3-restore-latest", "Restored", 10*time.Minute, "Failed")
	t.Logf("restore to latest from MinIO: Restored in %.1fs, timeline %d -> %d", time.Since(t0).Seconds(), st.Restore.PreviousTimeline, st.Restore.Timeline)
	if st.Restore.PreviousTimeline != prev || st.Restore.Timeline <= prev {
		t.Errorf("restore to latest: timeline %d -> %d, want from %d to a newer one", st.Restore.PreviousTimeline, st.Restore.Timeline, prev)
	}
	conn = dbPod(t, ctx, pod)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM marker WHERE answer IN (42, 43)").Scan(&n); err != nil || n != 2 {
		t.Errorf("after the restore to latest: %d of the 2 marker rows (%v)", n, err)
	}
}
