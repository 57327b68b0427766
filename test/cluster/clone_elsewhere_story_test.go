//go:build cluster

package cluster

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/jackc/pgx/v5"

	"github.com/kcbackup/kcbackup/test/harness"
)

// sandboxNS is the namespace the clone-elsewhere story restores into.
const sandboxNS = "kc-sandbox"

// TestCloneElsewhereStory: production archives to MinIO; a restore into a new instance in
// another namespace (kubectl kcbackup restore --into --into-namespace) is refused, with
// nothing made there, until that namespace accepts restores from production's; then the
// instance there holds exactly the rows committed by the target, reads the archive with
// the copy of its credentials the operator made there, never writes the archive, and is
// deleted with its KeycloakBackup by the finalizer.
func TestCloneElsewhereStory(t *testing.T) {
	ctx := context.Background()
	p := place{ns: ns, sts: "kc-elsewhere"}
	dumpPlaceOnFailure(t, p)
	dumpPlaceOnFailure(t, place{ns: sandboxNS, sts: "copy"})
	kubectlKcbackup := plugin(t, ctx, ns)

	m := harness.StartMinIO(t)
	bucket := m.NewBucket(t)
	backend := strings.TrimPrefix(m.Endpoint(), "http://")
	proxy, err := Listen(node.Net.NodeIP.String(), func(context.Context) (string, error) { return backend, nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Close() })

	data := hostDir(t, "elsewhere-prod", 999, 999, 0o700)
	copyDir := hostDir(t, "elsewhere-copy", 999, 999, 0o700)
	// kc-sandbox as a user makes it for a clone: restricted like production's, without the
	// annotation yet, with the Secret production's pod template names (POSTGRES_PASSWORD of
	// the image's entrypoint): the operator copies only the archive's credentials.
	objs := hostPathPVIn("kc-elsewhere-data", ns, "data-kc-elsewhere-0", data) +
		hostPathPVIn("kc-sandbox-copy", sandboxNS, "copy-data", copyDir) +
		fmt.Sprintf(`---
apiVersion: v1
kind: Secret
metadata: {name: kc-elsewhere-s3, namespace: %[1]s}
stringData: {AWS_ACCESS_KEY_ID: %[3]q, AWS_SECRET_ACCESS_KEY: %[4]q}
---
apiVersion: v1
kind: Namespace
metadata:
  name: %[2]s
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
---
apiVersion: v1
kind: Secret
metadata: {name: keycloak-postgres, namespace: %[2]s}
stringData: {password: %[5]q}
`, ns, sandboxNS, m.AccessKey(), m.SecretKey(), pgPassword) +
		p.statefulSet(onePG)
	if out, err := node.KubectlStdin(ctx, objs, "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	p.rollout(t, ctx)

	t.Log("production: its resource on the MinIO archive (nightly schedule) and a base backup now")
	src := fmt.Sprintf(`apiVersion: keycloak.org/v1alpha1
kind: KeycloakBackup
metadata: {name: elsewhere-src, namespace: %s}
spec:
  instanceSelector:
    matchLabels: {app.kubernetes.io/name: %s}
  schedule: "0 3 * * *"
  storage:
    s3:
      bucket: %s
      prefix: elsewhere
      region: us-east-1
      endpoint: http://%s
      forcePathStyle: true
      credentialsSecret: {name: kc-elsewhere-s3}
  postgres:
    user: postgres
    passwordSecret: {name: keycloak-postgres, key: password}
`, ns, p.sts, bucket, proxy.Addr)
	if out, err := node.KubectlStdin(ctx, src, "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	conn, target := p.ordersAroundTarget(t, ctx, kubectlKcbackup, "elsewhere-src", "elsewhere-base")

	before := p.podState(t, ctx)
	// sandbox lists what is in kc-sandbox besides what the user made there.
	sandbox := func() []string {
		t.Helper()
		out, err := node.Kubectl(ctx, "-n", sandboxNS, "get", "statefulsets,services,pvc,jobs,pods,secrets,configmaps", "-o", "name")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		var left []string
		for _, o := range strings.Fields(out) {
			if o != "secret/keycloak-postgres" && o != "configmap/kube-root-ca.crt" {
				left = append(left, o)
			}
		}
		return left
	}

	// 1. kc-sandbox does not accept restores from production's namespace.
	t.Log("refused: kubectl kcbackup restore elsewhere-src --into copy --into-namespace kc-sandbox --wait, kc-sandbox not annotated")
	to := target.Format(time.RFC3339)
	out, err := kubectlKcbackup("restore", "elsewhere-src", "--to", to, "--into", "copy", "--into-namespace", sandboxNS, "--name", "elsewhere-refused", "--wait")
	t.Logf("kubectl-kcbackup restore --into-namespace (not accepted):\n%s", out)
	if err == nil {
		t.Fatalf("kubectl-kcbackup restore into a namespace that does not accept restores exited 0")
	}
	st, err := p.cloneStatus(ctx, "elsewhere-refused")
	if err != nil {
		t.Fatal(err)
	}
	refusal, refusalMsg := st.ready()
	if st.Phase != "Failed" || refusal != "InstanceNamespaceNotAccepted" {
		t.Fatalf("elsewhere-refused: phase %q, %s; want Failed, InstanceNamespaceNotAccepted", st.Phase, refusalMsg)
	}
	if left := sandbox(); len(left) > 0 {
		t.Errorf("a refused restore made %v in %s", left, sandboxNS)
	}
	if out, err := node.Kubectl(ctx, "-n", ns, "delete", "keycloakbackup", "elsewhere-refused", "--timeout=60s"); err != nil {
		t.Fatalf("delete the refused restore: %v\n%s", err, out)
	}

	// 2. Accepted: the instance in kc-sandbox.
	if out, err := node.Kubectl(ctx, "annotate", "namespace", sandboxNS, "kcbackup.keycloak.org/accept-restores-from="+ns); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Log("accepted: kubectl kcbackup restore elsewhere-src --into copy --into-namespace kc-sandbox --wait")
	out, err = kubectlKcbackup("restore", "elsewhere-src", "--to", to, "--into", "copy", "--into-namespace", sandboxNS, "--name", "elsewhere-copy", "--wait")
	t.Logf("kubectl-kcbackup restore --into-namespace:\n%s", out)
	if err != nil {
		t.Fatalf("kubectl-kcbackup restore --into-namespace: %v", err)
	}
	if st, err = p.cloneStatus(ctx, "elsewhere-copy"); err != nil {
		t.Fatal(err)
	}
	if st.Phase != "Restored" || st.Restore == nil || st.Restore.Instance == nil {
		_, msg := st.ready()
		t.Fatalf("elsewhere-copy: phase %q, %s", st.Phase, msg)
	}
	inst := st.Restore.Instance
	if inst.StatefulSet != "copy" || inst.Service != "copy" || inst.Claim != "copy-data" || !strings.Contains(inst.Host, sandboxNS) || inst.Timeline < 2 {
		t.Errorf("status.restore.instance %+v: want StatefulSet, Service copy and claim copy-data in %s, a promoted timeline", *inst, sandboxNS)
	}
	finalizers, err := p.get(ctx, "keycloakbackup", "elsewhere-copy", "{.metadata.finalizers}")
	if err != nil || !strings.Contains(finalizers, "kcbackup.keycloak.org/remove-instance") {
		t.Errorf("elsewhere-copy's finalizers %q (%v), want kcbackup.keycloak.org/remove-instance", finalizers, err)
	}
	sb := place{ns: sandboxNS, sts: "copy"}
	cc := sb.conn(t, ctx, sb.pod(0))
	var nBefore, nAfter int
	var cloneTL int64
	if err := cc.QueryRow(ctx, `SELECT count(*) FILTER (WHERE phase = 'before'), count(*) FILTER (WHERE phase = 'after') FROM orders`).Scan(&nBefore, &nAfter); err != nil {
		t.Fatal(err)
	}
	if err := cc.QueryRow(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&cloneTL); err != nil {
		t.Fatal(err)
	}
	_ = cc.Close(ctx)
	if nBefore != 1000 || nAfter != 0 {
		t.Errorf("the clone in %s holds %d/%d rows before/after, want exactly the 1000 committed by the target", sandboxNS, nBefore, nAfter)
	}

	// The credentials: the copy in kc-sandbox, named by the instance's pod and the Job's.
	secretsOf := func(kind, name string) string {
		t.Helper()
		s, err := sb.get(ctx, kind, name, `{..secretKeyRef.name} {..secretName} {..secretRef.name}`)
		if err != nil {
			t.Fatalf("%s %s/%s: %v", kind, sandboxNS, name, err)
		}
		return strings.Join(strings.Fields(s), ",")
	}
	copied, err := sb.get(ctx, "secret", "copy-kcbackup-storage", "{.data}")
	if err != nil || !strings.Contains(copied, "AWS_ACCESS_KEY_ID") || !strings.Contains(copied, "AWS_SECRET_ACCESS_KEY") {
		t.Errorf("Secret %s/copy-kcbackup-storage: %v, keys %q; want the archive's S3 credentials", sandboxNS, err, copied)
	}
	jobs, err := node.Kubectl(ctx, "-n", sandboxNS, "get", "jobs", "-o", "name")
	if err != nil || len(strings.Fields(jobs)) != 1 {
		t.Fatalf("jobs in %s: %q (%v), want the restore Job", sandboxNS, jobs, err)
	}
	job := strings.TrimPrefix(strings.TrimSpace(jobs), "job.batch/")
	refs := map[string]string{"job " + job: secretsOf("job", job), "statefulset copy": secretsOf("statefulset", "copy"), "pod copy-0": secretsOf("pod", "copy-0")}
	for what, names := range refs {
		if strings.Contains(","+names+",", ",kc-elsewhere-s3,") {
			t.Errorf("%s in %s names production's Secret kc-elsewhere-s3 (%s)", what, sandboxNS, names)
		}
		if what != "statefulset copy" && !strings.Contains(names, "copy-kcbackup-storage") {
			t.Errorf("%s in %s names Secrets %s, not the copy copy-kcbackup-storage", what, sandboxNS, names)
		}
	}
	owners, _ := node.Kubectl(ctx, "-n", sandboxNS, "get", "statefulsets,services,pvc,jobs,secrets", "-o", "jsonpath={..ownerReferences[*].kind}")
	if strings.Contains(owners, "KeycloakBackup") {
		t.Errorf("objects in %s are owned by a KeycloakBackup (owner kinds %q): owner references cannot cross namespaces", sandboxNS, owners)
	}
	made := sandbox()

	// Production: untouched, still the archive's only writer.
	prodTL := p.untouched(t, ctx, conn, before)
	var histories []string
	objects := 0
	pager := s3.NewListObjectsV2Paginator(m.Client(), &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
	for pager.HasMorePages() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatalf("list bucket %s: %v", bucket, err)
		}
		for _, o := range page.Contents {
			objects++
			if strings.Contains(aws.ToString(o.Key), ".history") {
				histories = append(histories, aws.ToString(o.Key))
			}
		}
	}
	if len(histories) > 0 || cloneTL == prodTL {
		t.Errorf("the bucket holds history files %v (production on timeline %d, the clone promoted to %d): the clone wrote the archive", histories, prodTL, cloneTL)
	}

	// 3. Deleting the resource deletes the instance in kc-sandbox (the finalizer).
	t.Log("kubectl delete keycloakbackup elsewhere-copy: the finalizer deletes the instance in kc-sandbox")
	t0 := time.Now()
	if out, err := node.Kubectl(ctx, "-n", ns, "delete", "keycloakbackup", "elsewhere-copy", "--wait=false"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := waitFor(ctx, "elsewhere-copy and its instance in "+sandboxNS+" gone", 3*time.Minute, nil, func() error {
		if left := sandbox(); len(left) > 0 {
			return fmt.Errorf("left in %s: %s", sandboxNS, strings.Join(left, " "))
		}
		out, err := node.Kubectl(ctx, "-n", ns, "get", "keycloakbackup", "elsewhere-copy", "--ignore-not-found", "-o", "name")
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "" {
			return fmt.Errorf("%s still there", strings.TrimSpace(out))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	gone := time.Since(t0)
	if after := p.podState(t, ctx); after != before {
		t.Errorf("production's pod changed: %q, then %q", before, after)
	}
	fmt.Printf("RESULT clone-elsewhere: into %s without %s: refused (%s), nothing made there; annotated: kubectl kcbackup restore --to %s --into copy --into-namespace %s Restored in %s, "+
		"the clone holds %d rows (exactly those committed by the target, none of the 500 after), promoted to timeline %d while production stayed on %d (pod not restarted, 1000/500 rows); "+
		"the restore Job %s (Secrets %s) and pod copy-0 (%s) there read the archive with the copy copy-kcbackup-storage, never production's kc-elsewhere-s3; the bucket (%d objects) holds %d history files; "+
		"%d objects made there (%s), all deleted with the KeycloakBackup by the finalizer in %.1fs\n",
		sandboxNS, "kcbackup.keycloak.org/accept-restores-from", refusal, to, sandboxNS, inst.Duration, nBefore, cloneTL, prodTL,
		job, refs["job "+job], refs["pod copy-0"], objects, len(histories), len(made), strings.Join(made, " "), gone.Seconds())
}

// podState is the identity and restart counts of the place's first pod: a restart, or a
// new pod, changes it.
func (p place) podState(t *testing.T, ctx context.Context) string {
	t.Helper()
	s, err := p.get(ctx, "pod", p.pod(0), `{.metadata.uid} {.status.containerStatuses[*].restartCount} {.status.initContainerStatuses[*].restartCount}`)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// untouched checks that production (the place, conn on its first pod) went through a
// restore into a new instance untouched: the same pod, not restarted (before is its
// podState), its 1000 orders before the target and 500 after; then it commits a row and
// waits until its sidecar archived it, so that the archive is read after production wrote
// it last. It returns production's timeline.
func (p place) untouched(t *testing.T, ctx context.Context, conn *pgx.Conn, before string) int64 {
	t.Helper()
	if after := p.podState(t, ctx); after != before {
		t.Errorf("production's pod changed during the clone: %q, then %q", before, after)
	}
	var pBefore, pAfter int
	var prodTL int64
	if err := conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE phase = 'before'), count(*) FILTER (WHERE phase = 'after') FROM orders`).Scan(&pBefore, &pAfter); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT timeline_id FROM pg_control_checkpoint()").Scan(&prodTL); err != nil {
		t.Fatal(err)
	}
	if pBefore != 1000 || pAfter != 500 {
		t.Errorf("production holds %d/%d rows before/after, want 1000/500", pBefore, pAfter)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO orders VALUES (2000, 'after clone')"); err != nil {
		t.Fatal(err)
	}
	p.waitArchived(t, ctx, conn, p.pod(0))
	return prodTL
}

// ordersAroundTarget takes a base backup of the place's archive (kubectl kcbackup backup src
// --name base), then commits 1000 orders 'before' a target and 500 'after'
// it, and waits until the archive holds them and its catalog covers the target. It
// returns a connection to production and the target.
func (p place) ordersAroundTarget(t *testing.T, ctx context.Context, kubectlKcbackup func(...string) (string, error), src, base string) (*pgx.Conn, time.Time) {
	t.Helper()
	if out, err := kubectlKcbackup("backup", src, "--name", base, "--wait"); err != nil {
		t.Fatalf("kubectl-kcbackup backup: %v\n%s", err, out)
	}
	p.waitPhase(t, ctx, base, "Completed", time.Minute, "Failed")
	p.rollout(t, ctx)

	conn := p.conn(t, ctx, p.pod(0))
	if _, err := conn.Exec(ctx, `CREATE TABLE orders (id bigint PRIMARY KEY, phase text NOT NULL);
		INSERT INTO orders SELECT g, 'before' FROM generate_series(1, 1000) g`); err != nil {
		t.Fatal(err)
	}
	target := pastTarget(t, ctx, conn)
	if _, err := conn.Exec(ctx, `INSERT INTO orders SELECT g, 'after' FROM generate_series(1001, 1500) g`); err != nil {
		t.Fatal(err)
	}
	p.waitArchived(t, ctx, conn, p.pod(0))
	window := p.waitWindowCovers(t, ctx, p.pod(0), target)
	t.Logf("target %s in %s", target.Format(time.RFC3339), window)
	return conn, target
}

// onePG is the single PostgreSQL (the image's user, WAL for replication) of the clone stories.
var onePG = pgSet{
	replicas: 1,
	image:    "localhost/kcbackup-test/postgres:15",
	podSC:    postgresUserSC,
	run:      `          args: ["postgres", "-c", "wal_level=replica", "-c", "max_wal_senders=10", "-c", "max_replication_slots=10"]`,
}
