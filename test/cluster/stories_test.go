//go:build cluster

package cluster

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

// The helpers of the replicas and OpenShift stories: the same as those of the main story,
// but for a namespace and a StatefulSet of the caller's choosing.

// optIn is the label every workload the stories create carries: the operator protects only
// workloads that opt in.
const optIn = `kcbackup.keycloak.org/opt-in: "true"`

// place is a namespace and a PostgreSQL StatefulSet in it.
type place struct{ ns, sts string }

func (p place) pod(i int) string { return fmt.Sprintf("%s-%d", p.sts, i) }

func (p place) get(ctx context.Context, kind, name, path string) (string, error) {
	out, err := node.Kubectl(ctx, "-n", p.ns, "get", kind, name, "-o", "jsonpath="+path)
	return strings.TrimSpace(out), err
}

func (p place) podIP(ctx context.Context, pod string) (string, error) {
	ip, err := p.get(ctx, "pod", pod, "{.status.podIP}")
	if err != nil {
		return "", err
	}
	if ip == "" {
		return "", fmt.Errorf("pod %s/%s has no IP yet", p.ns, pod)
	}
	return ip, nil
}

// conn connects to PostgreSQL in pod, on its pod IP.
func (p place) conn(t *testing.T, ctx context.Context, pod string) *pgx.Conn {
	t.Helper()
	var conn *pgx.Conn
	if err := waitFor(ctx, "connect to PostgreSQL in "+p.ns+"/"+pod, 2*time.Minute, nil, func() error {
		ip, err := p.podIP(ctx, pod)
		if err != nil {
			return err
		}
		conn, err = pgx.Connect(ctx, fmt.Sprintf("postgres://postgres:%s@%s:5432/keycloak?sslmode=disable&connect_timeout=5", pgPassword, ip))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

// metric reads one sample (name with its labels, as /metrics prints it) of the sidecar in pod.
func (p place) metric(ctx context.Context, pod, name string) (float64, error) {
	ip, err := p.podIP(ctx, pod)
	if err != nil {
		return 0, err
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s:%d/metrics", ip, sidecarPort), nil)
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == name {
			return strconv.ParseFloat(f[1], 64)
		}
	}
	return 0, fmt.Errorf("no metric %s in the /metrics of the sidecar in %s", name, pod)
}

// role is what the sidecar in pod says its server is: primary, standby or unknown.
func (p place) role(ctx context.Context, pod string) (string, error) {
	for _, r := range []string{"primary", "standby"} {
		v, err := p.metric(ctx, pod, `kcbackup_server_role{role="`+r+`"}`)
		if err != nil {
			return "", err
		}
		if v == 1 {
			return r, nil
		}
	}
	return "unknown", nil
}

// waitArchived waits until the sidecar in pod has archived all the WAL the server behind
// conn has flushed now.
func (p place) waitArchived(t *testing.T, ctx context.Context, conn *pgx.Conn, pod string) {
	t.Helper()
	var lsn string
	var flushed int64
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_flush_lsn()::text, (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint").Scan(&lsn, &flushed); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, "WAL up to "+lsn+" archived from "+pod, 2*time.Minute, nil, func() error {
		a, err := p.metric(ctx, pod, "kcbackup_archived_lsn_bytes")
		if err != nil {
			return err
		}
		if int64(a) < flushed {
			return fmt.Errorf("archived up to %.0f, want %d", a, flushed)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// waitWindowCovers waits until the archive's catalog, as the sidecar in pod lists it (the
// catalog the operator checks a restore target against), has a range holding target, and
// returns that range's description ("timeline N FROM to TO hole BOOL"). A target it never
// covers fails here with the ranges, not later as a refused restore.
func (p place) waitWindowCovers(t *testing.T, ctx context.Context, pod string, target time.Time) string {
	t.Helper()
	token, err := p.get(ctx, "secret", p.sts+"-kcbackup-token", "{.data.token}")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(token)
	if err != nil {
		t.Fatalf("token Secret of %s: %v", p.sts, err)
	}
	var found string
	if err := waitFor(ctx, "the archive's ranges hold "+target.Format(time.RFC3339), time.Minute, nil, func() error {
		ip, err := p.podIP(ctx, pod)
		if err != nil {
			return err
		}
		cat, err := apiclient.New(fmt.Sprintf("http://%s:%d", ip, sidecarPort), string(raw), nil).Catalog(ctx)
		if err != nil {
			return err
		}
		var rs []string
		for _, w := range cat.Windows {
			d := fmt.Sprintf("timeline %d %s to %s hole %t", w.Timeline, w.Earliest.Format(time.RFC3339), w.Latest.Format(time.RFC3339), w.Hole)
			if w.Contains(target) {
				found = d
				return nil
			}
			rs = append(rs, d)
		}
		return fmt.Errorf("ranges: %s", strings.Join(rs, "; "))
	}); err != nil {
		t.Fatal(err)
	}
	return found
}

// kcb is a KeycloakBackup of the place's StatefulSet on the file archive of claim; extra
// is appended to its spec.
func (p place) kcb(name, claim, extra string) string {
	return fmt.Sprintf(`apiVersion: keycloak.org/v1alpha1
kind: KeycloakBackup
metadata: {name: %s, namespace: %s}
spec:
  instanceSelector:
    matchLabels: {app.kubernetes.io/name: %s}
  storage:
    volume: {claimName: %s}
  postgres:
    user: postgres
    passwordSecret: {name: keycloak-postgres, key: password}
%s`, name, p.ns, p.sts, claim, extra)
}

func (p place) status(ctx context.Context, name string) (kcbStatus, error) {
	out, err := p.get(ctx, "keycloakbackup", name, "{.status}")
	var st kcbStatus
	if err != nil || out == "" {
		return st, err
	}
	return st, json.Unmarshal([]byte(out), &st)
}

// waitPhase waits until KeycloakBackup name reaches phase want; one of stop ends the wait.
func (p place) waitPhase(t *testing.T, ctx context.Context, name, want string, timeout time.Duration, stop ...string) kcbStatus {
	t.Helper()
	var st kcbStatus
	if err := waitFor(ctx, "KeycloakBackup "+p.ns+"/"+name+" phase "+want, timeout, nil, func() error {
		var err error
		if st, err = p.status(ctx, name); err != nil {
			return err
		}
		if err := st.endedIn(name, stop...); err != nil {
			return err
		}
		if st.Phase != want {
			return fmt.Errorf("phase %q (%s)", st.Phase, st.ready())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return st
}

// rollout waits until the StatefulSet has n ready pods of its current revision.
func (p place) rollout(t *testing.T, ctx context.Context) {
	t.Helper()
	if out, err := node.Kubectl(ctx, "-n", p.ns, "rollout", "status", "statefulset/"+p.sts, "--timeout=300s"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// hostDir makes a directory on the node for a hostPath PersistentVolume, owned by uid:gid.
func hostDir(t *testing.T, name string, uid, gid int, mode os.FileMode) string {
	t.Helper()
	dir := node.path("volumes", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
	return dir
}

// hostPathPVIn is a PersistentVolume on dir, bound in advance to claim in namespace (with
// claim empty, unbound: the controller-manager binds it to any claim of its class).
func hostPathPVIn(name, namespace, claim, dir string) string {
	ref := ""
	if claim != "" {
		ref = fmt.Sprintf("\n  claimRef: {namespace: %s, name: %s}", namespace, claim)
	}
	return fmt.Sprintf(`---
apiVersion: v1
kind: PersistentVolume
metadata: {name: %s}
spec:
  capacity: {storage: 4Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: kcbackup-local%s
  hostPath: {path: %q, type: Directory}
`, name, ref, dir)
}

// claim is a PersistentVolumeClaim of the local storage class.
func claim(namespace, name string) string {
	return fmt.Sprintf(`---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: %s, namespace: %s}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: kcbackup-local
  resources: {requests: {storage: 4Gi}}
`, name, namespace)
}

// dumpPlaceOnFailure dumps the place's namespace when t failed (dumpNamespace knows only
// the main story's).
func dumpPlaceOnFailure(t *testing.T, p place) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		ctx := context.Background()
		for _, args := range [][]string{
			{"-n", p.ns, "get", "pods,statefulsets,deployments,jobs,pvc,keycloakbackups", "-o", "wide"},
			{"-n", p.ns, "get", "keycloakbackups", "-o", "yaml"},
			{"-n", p.ns, "get", "events", "--sort-by=.lastTimestamp"},
			{"-n", "kcbackup-system", "logs", "-l", "app.kubernetes.io/name=kcbackup-operator", "--tail=200", "--prefix"},
			{"-n", p.ns, "logs", p.pod(0), "--all-containers", "--tail=60", "--prefix"},
			{"-n", p.ns, "logs", p.pod(1), "--all-containers", "--tail=60", "--prefix"},
		} {
			out, err := node.Kubectl(ctx, args...)
			fmt.Fprintf(os.Stderr, "---- kubectl %s\n%s%v\n", strings.Join(args, " "), out, errOrEmpty(err))
		}
	})
}

// pgSet is a PostgreSQL StatefulSet of a story, its data below the root of its claim,
// labelled to opt in.
type pgSet struct {
	replicas int
	image    string
	podSC    string // the pod's securityContext block, indented for the pod spec
	run      string // the container's command or args, indented for the container
	pgUser   string // the user pg_isready names ("" for none)
}

func (p place) statefulSet(s pgSet) string {
	probe := `["pg_isready", "-h", "/var/run/postgresql", "-d", "keycloak"]`
	if s.pgUser != "" {
		probe = fmt.Sprintf(`["pg_isready", "-h", "/var/run/postgresql", "-U", %q, "-d", "keycloak"]`, s.pgUser)
	}
	return fmt.Sprintf(`---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: %[2]s
  namespace: %[1]s
  labels: {app.kubernetes.io/name: %[2]s, %[3]s}
spec:
  serviceName: %[2]s
  replicas: %[4]d
  selector:
    matchLabels: {app.kubernetes.io/name: %[2]s}
  template:
    metadata:
      labels: {app.kubernetes.io/name: %[2]s, %[3]s}
    spec:
      terminationGracePeriodSeconds: 30
      %[5]s
      containers:
        - name: postgres
          image: %[6]s
          imagePullPolicy: Never
%[7]s
          env:
            - {name: PGDATA, value: /var/lib/postgresql/data/pgdata}
            - {name: POSTGRES_DB, value: keycloak}
            - name: POSTGRES_PASSWORD
              valueFrom: {secretKeyRef: {name: keycloak-postgres, key: password}}
          ports: [{name: postgres, containerPort: 5432}]
          readinessProbe:
            exec: {command: %[8]s}
            periodSeconds: 2
          volumeMounts:
            - {name: data, mountPath: /var/lib/postgresql/data}
            - {name: run, mountPath: /var/run/postgresql}
            - {name: tmp, mountPath: /tmp}
          %[9]s
      volumes:
        - {name: run, emptyDir: {}}
        - {name: tmp, emptyDir: {}}
  volumeClaimTemplates:
    - metadata: {name: data}
      spec:
        accessModes: [ReadWriteOnce]
        storageClassName: kcbackup-local
        resources: {requests: {storage: 2Gi}}
`, p.ns, p.sts, optIn, s.replicas, s.podSC, s.image, s.run, probe, restrictedContainer())
}
