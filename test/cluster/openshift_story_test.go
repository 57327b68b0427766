//go:build cluster

package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// The OpenShift-like namespace: no image volumes, and only UIDs of the namespace's range,
// as OpenShift 4's restricted-v2 admits them.
const (
	osNS       = "kc-openshift"
	osUID      = 1000650000 // the first UID of the range OpenShift would annotate on the namespace
	osUIDRange = "1000650000/10000"
)

// openshiftPolicies: the namespace (Pod Security restricted, the UID range annotated as
// OpenShift does) and two ValidatingAdmissionPolicies bound to it: one refuses any pod with
// an image volume (a cluster without them: OpenShift 4 runs Kubernetes 1.35 or earlier),
// the other admits only pods that run as a UID of the range, as restricted-v2 does: the pod
// must name one (OpenShift's admission would assign it) and no container, init container
// included, may name another.
func openshiftPolicies() string {
	inRange := func(v string) string {
		return fmt.Sprintf("(%[1]s >= %[2]d && %[1]s <= %[3]d)", v, osUID, osUID+9999)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata:
  name: %[1]s
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
  annotations:
    openshift.io/sa.scc.uid-range: %[2]s
    openshift.io/sa.scc.supplemental-groups: %[2]s
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: kc-openshift-no-image-volumes}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - {apiGroups: [""], apiVersions: ["v1"], operations: ["CREATE"], resources: ["pods"]}
  validations:
    - expression: "!has(object.spec.volumes) || object.spec.volumes.all(v, !has(v.image))"
      message: "image volumes are not available on this cluster (the ImageVolume feature is off)"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: kc-openshift-no-image-volumes}
spec:
  policyName: kc-openshift-no-image-volumes
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {kubernetes.io/metadata.name: %[1]s}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: kc-openshift-uid-range}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - {apiGroups: [""], apiVersions: ["v1"], operations: ["CREATE"], resources: ["pods"]}
  validations:
    - expression: "has(object.spec.securityContext) && has(object.spec.securityContext.runAsUser) && %[3]s"
      message: "restricted-v2: the pod must run as a UID of the namespace's range %[2]s (spec.securityContext.runAsUser)"
    - expression: "!has(object.spec.securityContext) || !has(object.spec.securityContext.fsGroup) || %[4]s"
      message: "restricted-v2: fsGroup must be in the namespace's range %[2]s"
    - expression: "(object.spec.containers + (has(object.spec.initContainers) ? object.spec.initContainers : [])).all(c, !has(c.securityContext) || !has(c.securityContext.runAsUser) || %[5]s)"
      message: "restricted-v2: every container must run as a UID of the namespace's range %[2]s, or name none"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: kc-openshift-uid-range}
spec:
  policyName: kc-openshift-uid-range
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {kubernetes.io/metadata.name: %[1]s}
`, osNS, osUIDRange, inRange("object.spec.securityContext.runAsUser"), inRange("object.spec.securityContext.fsGroup"),
		inRange("c.securityContext.runAsUser"))
}

// openshiftWorkloads: PostgreSQL (the image that copes with a UID without a passwd entry)
// and the Keycloak stand-in, both with the UID and fsGroup restricted-v2 would assign and no
// group (OpenShift runs them with group 0), labelled to opt in.
func openshiftWorkloads(p place, dbAddr string) string {
	podSC := fmt.Sprintf(`securityContext:
        runAsNonRoot: true
        runAsUser: %d
        fsGroup: %d
        seccompProfile: {type: RuntimeDefault}`, osUID, osUID)
	return fmt.Sprintf(`---
apiVersion: v1
kind: Secret
metadata: {name: keycloak-postgres, namespace: %[1]s}
stringData: {password: %[3]q}
%[8]s---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: keycloak
  namespace: %[1]s
  labels: {app.kubernetes.io/name: keycloak, %[6]s}
spec:
  replicas: 1
  selector:
    matchLabels: {app.kubernetes.io/name: keycloak}
  template:
    metadata:
      labels: {app.kubernetes.io/name: keycloak, %[6]s}
    spec:
      %[5]s
      containers:
        - name: keycloak
          image: localhost/kcbackup-test/keycloak-standin:1
          imagePullPolicy: Never
          env:
            - name: KEYCLOAK_DB_URL
              value: "postgres://postgres:%[3]s@%[7]s/keycloak?sslmode=disable"
          readinessProbe:
            httpGet: {path: /ready, port: 8080}
            periodSeconds: 2
          %[4]s
`, p.ns, p.sts, pgPassword, restrictedContainer(), podSC, optIn, dbAddr, p.statefulSet(pgSet{
		replicas: 1,
		image:    "localhost/kcbackup-test/postgres:15-anyuid",
		podSC:    podSC,
		run:      `          args: ["postgres", "-c", "wal_level=replica", "-c", "max_wal_senders=10", "-c", "max_replication_slots=10"]`,
		pgUser:   "postgres",
	}))
}

// podUIDs is what the test reads of a pod: its containers and init containers, the UIDs
// they name, the pod's, and its volumes' kinds.
type podUIDs struct {
	Spec struct {
		SecurityContext struct {
			RunAsUser *int64 `json:"runAsUser"`
		} `json:"securityContext"`
		InitContainers []uidContainer               `json:"initContainers"`
		Containers     []uidContainer               `json:"containers"`
		Volumes        []map[string]json.RawMessage `json:"volumes"`
	} `json:"spec"`
}

type uidContainer struct {
	Name            string `json:"name"`
	SecurityContext *struct {
		RunAsUser *int64 `json:"runAsUser"`
	} `json:"securityContext"`
}

// TestOpenShiftStory: a namespace that admits no image volume and only UIDs of one high
// range. The operator finds that out (a dry-run pod) and delivers the binary by an init
// container; a backup and an in-place restore run under the assigned UID.
func TestOpenShiftStory(t *testing.T) {
	ctx := context.Background()
	p := place{ns: osNS, sts: "kc-os-postgres"}
	dumpPlaceOnFailure(t, p)

	if out, err := node.KubectlStdin(ctx, openshiftPolicies(), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// The policies bite (they are enforced a moment after they are created).
	refused := func(what, pod string) {
		t.Helper()
		if err := waitFor(ctx, "the policy refusing "+what, time.Minute, nil, func() error {
			out, err := node.KubectlStdin(ctx, pod, "create", "--dry-run=server", "-f", "-")
			if err == nil {
				return fmt.Errorf("admitted: %s", strings.TrimSpace(out))
			}
			if !strings.Contains(err.Error(), "ValidatingAdmissionPolicy") {
				return fmt.Errorf("refused, but not by the policy: %v", err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	probe := func(uid int, volume string) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {generateName: policy-check-, namespace: %s}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: %d, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: c
      image: localhost/kcbackup-test/pause:1
      securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: ["ALL"]}}
  volumes: [%s]
`, osNS, uid, volume)
	}
	refused("an image volume", probe(osUID, "{name: v, image: {reference: localhost/kcbackup-test/pause:1}}"))
	refused("uid 999", probe(999, ""))

	data := hostDir(t, "openshift-data", osUID, osUID, 0o700)
	archive := hostDir(t, "openshift-archive", osUID, osUID, 0o2775)
	dbProxy, err := Listen(node.Net.NodeIP.String(), func(ctx context.Context) (string, error) {
		ip, err := p.podIP(ctx, p.pod(0))
		if err != nil {
			return "", err
		}
		return ip + ":5432", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dbProxy.Close() })
	objs := hostPathPVIn("kc-openshift-data", osNS, "data-"+p.pod(0), data) + hostPathPVIn("kc-openshift-archive", osNS, "kcbackup-archive", archive) +
		claim(osNS, "kcbackup-archive") + openshiftWorkloads(p, dbProxy.Addr)
	if out, err := node.KubectlStdin(ctx, objs, "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	p.rollout(t, ctx)
	if out, err := node.Kubectl(ctx, "-n", osNS, "rollout", "status", "deployment/keycloak", "--timeout=180s"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}

	t.Log("a manual backup: the operator must inject without an image volume, under the assigned UID")
	t0 := time.Now()
	if _, err := node.KubectlStdin(ctx, p.kcb("openshift", "kcbackup-archive", ""), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	st := p.waitPhase(t, ctx, "openshift", "Completed", 8*time.Minute, "Failed")
	backupSecs := time.Since(t0).Seconds()
	p.rollout(t, ctx)
	delivery := checkPod(t, ctx, p, p.pod(0))
	events, _ := node.Kubectl(ctx, "-n", osNS, "get", "events", "--field-selector", "reason=BinaryDeliveryChosen", "-o", "jsonpath={.items[*].message}")
	t.Logf("backup Completed in %.1fs (%d backups); binary delivery %s; operator: %s", backupSecs, len(st.Backups), delivery, strings.TrimSpace(events))
	seen := uidIn(t, ctx, p.pod(0), "postgres")

	conn := p.conn(t, ctx, p.pod(0))
	loadKeycloakSchema(t, ctx, conn)
	if _, err := conn.Exec(ctx, `CREATE TABLE ledger (id int PRIMARY KEY, note text NOT NULL);
		INSERT INTO ledger SELECT g, 'row ' || g FROM generate_series(1, 3000) g`); err != nil {
		t.Fatal(err)
	}
	target := pastTarget(t, ctx, conn)
	if _, err := conn.Exec(ctx, "DROP TABLE ledger"); err != nil {
		t.Fatal(err)
	}
	p.waitArchived(t, ctx, conn, p.pod(0))
	p.waitWindowCovers(t, ctx, p.pod(0), target)
	_ = conn.Close(ctx)

	t.Log("an in-place restore to before the drop, Keycloak stopped and started around it")
	t0 = time.Now()
	if _, err := node.KubectlStdin(ctx, p.kcb("openshift-restore", "kcbackup-archive", fmt.Sprintf(`  applicationSelector:
    matchLabels: {app.kubernetes.io/name: keycloak}
  restoreTo: %q
`, target.Format(time.RFC3339))), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	st = p.waitPhase(t, ctx, "openshift-restore", "Restored", 10*time.Minute, "Failed")
	restoreSecs := time.Since(t0).Seconds()
	t.Logf("restore to %s: Restored in %.1fs, timeline %d -> %d", target.Format(time.RFC3339), restoreSecs, st.Restore.PreviousTimeline, st.Restore.Timeline)
	conn = p.conn(t, ctx, p.pod(0))
	var rows int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM ledger WHERE note = 'row ' || id").Scan(&rows); err != nil || rows != 3000 {
		t.Errorf("after the restore: %d of 3000 ledger rows (%v)", rows, err)
	}
	// The restore Job ran under the assigned UID too, its binary from the init container.
	jobOut, err := node.Kubectl(ctx, "-n", osNS, "get", "job", "openshift-restore-restore", "-o", "jsonpath={.spec.template}")
	if err != nil {
		t.Fatal(err)
	}
	var job podUIDs
	if err := json.Unmarshal([]byte(jobOut), &job); err != nil {
		t.Fatal(err)
	}
	jobDelivery := deliveryOf(t, "the restore Job", job)
	jobUID := "unset"
	for _, c := range job.Spec.Containers {
		if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
			jobUID = fmt.Sprint(*c.SecurityContext.RunAsUser)
		}
	}
	if jobUID != fmt.Sprint(osUID) {
		t.Errorf("the restore Job's container runs as %s, want %d (the UID the PostgreSQL pod was admitted with)", jobUID, osUID)
	}
	checkPod(t, ctx, p, p.pod(0))
	if err := waitFor(ctx, "keycloak back and ready", 3*time.Minute, nil, func() error {
		if r, _ := p.get(ctx, "deployment", "keycloak", "{.status.readyReplicas}"); r != "1" {
			return fmt.Errorf("ready replicas %q", r)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("RESULT openshift: no image volumes and UIDs %s only (two ValidatingAdmissionPolicies); binary delivery chosen %s (PostgreSQL), %s (restore Job); "+
		"backup %.1fs; in-place restore %.1fs (%d rows back, timeline %d -> %d); UID in the PostgreSQL container %s, restore Job %s\n",
		osUIDRange, delivery, jobDelivery, backupSecs, restoreSecs, rows, st.Restore.PreviousTimeline, st.Restore.Timeline, seen, jobUID)
}

// checkPod checks pod as admitted: the binary delivered by an init container and no image
// volume, and no container naming a UID outside the range. It returns the delivery.
func checkPod(t *testing.T, ctx context.Context, p place, pod string) string {
	t.Helper()
	out, err := node.Kubectl(ctx, "-n", p.ns, "get", "pod", pod, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var spec podUIDs
	if err := json.Unmarshal([]byte(out), &spec); err != nil {
		t.Fatal(err)
	}
	if u := spec.Spec.SecurityContext.RunAsUser; u == nil || *u != osUID {
		t.Errorf("pod %s runs as %v, want %d", pod, u, osUID)
	}
	for _, c := range append(spec.Spec.InitContainers, spec.Spec.Containers...) {
		if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil && *c.SecurityContext.RunAsUser != osUID {
			t.Errorf("container %s of %s names UID %d", c.Name, pod, *c.SecurityContext.RunAsUser)
		}
	}
	return deliveryOf(t, "pod "+pod, spec)
}

// deliveryOf says how the kcbackup binary reaches a pod: "init-container" when an init
// container kcbackup-binary fills it and no volume is an image volume.
func deliveryOf(t *testing.T, what string, spec podUIDs) string {
	t.Helper()
	for _, v := range spec.Spec.Volumes {
		if _, ok := v["image"]; ok {
			t.Errorf("%s has an image volume %s", what, v["name"])
			return "image-volume"
		}
	}
	for _, c := range spec.Spec.InitContainers {
		if c.Name == "kcbackup-binary" {
			return "init-container"
		}
	}
	t.Errorf("%s has neither an image volume nor the init container kcbackup-binary", what)
	return "none"
}

// uidIn is the UID container runs as in pod, as `id -u` there says.
func uidIn(t *testing.T, ctx context.Context, pod, container string) string {
	t.Helper()
	out, err := node.Kubectl(ctx, "-n", osNS, "exec", pod, "-c", container, "--", "id", "-u")
	if err != nil {
		t.Fatal(err)
	}
	uid := strings.TrimSpace(out)
	if uid != fmt.Sprint(osUID) {
		t.Errorf("%s in %s runs as uid %s, want %d", container, pod, uid, osUID)
	}
	return uid
}
