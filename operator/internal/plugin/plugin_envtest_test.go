package plugin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	"github.com/kcbackup/kcbackup/operator/internal/plugin"
	"github.com/kcbackup/kcbackup/test/harness"
)

// run runs the plugin as kubectl would, with the kubeconfig file of the test's API server.
func run(t *testing.T, kubeconfig string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = plugin.Main(append([]string{"--kubeconfig", kubeconfig}, args...), &o, &e)
	return o.String(), e.String(), code
}

// TestPluginAgainstARealAPIServer: status and list read what the operator recorded,
// backup and restore create the resources the operator acts on (same workload and
// archive as the named one), --wait follows one to its end and fails with the reason,
// and every wrong input is named with what was expected (exit 2).
func TestPluginAgainstARealAPIServer(t *testing.T) {
	cfg := harness.StartAPIServer(t, "../../../deploy/crd")
	kubeconfig := harness.WriteKubeconfig(t, cfg)
	ctx := context.Background()
	c, err := client.New(cfg, client.Options{Scheme: plugin.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	const ns = "keycloak"
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	src := &kcv1.KeycloakBackup{
		ObjectMeta: metav1.ObjectMeta{Name: "keycloak-db", Namespace: ns},
		Spec: kcv1.KeycloakBackupSpec{
			InstanceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "postgres"}},
			Storage:          kcv1.Storage{S3: &kcv1.S3Storage{Bucket: "backups", Prefix: "keycloak", Endpoint: "http://minio:9000", CredentialsSecret: &kcv1.S3CredentialsSecret{Name: "s3"}}},
			Schedule:         "@daily",
		},
	}
	if err := c.Create(ctx, src); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 5, 8, 0, 0, 0, time.UTC)
	stop := metav1.NewTime(t0.Add(2 * time.Minute))
	src.Status = kcv1.KeycloakBackupStatus{
		Phase:          kcv1.PhaseScheduled,
		Instance:       &kcv1.WorkloadReference{Kind: "StatefulSet", Name: "postgres"},
		LastBackupTime: &stop,
		RecoveryWindow: &kcv1.RecoveryWindow{Earliest: stop, Latest: metav1.NewTime(t0.Add(3 * time.Hour))},
		RecoveryRanges: []kcv1.RecoveryRange{
			{Timeline: 1, Earliest: stop, Latest: metav1.NewTime(t0.Add(time.Hour)), Hole: true},
			{Timeline: 1, Earliest: metav1.NewTime(t0.Add(2 * time.Hour)), Latest: metav1.NewTime(t0.Add(3 * time.Hour))},
		},
		Backups: []kcv1.BackupRecord{{ID: "20261205T080000Z", StartTime: &metav1.Time{Time: t0}, StopTime: &stop, StopLSN: "0/3000100", Timeline: 1, SizeBytes: 5 << 20}},
	}
	src.SetCondition(kcv1.ConditionReady, metav1.ConditionTrue, "Scheduled", "next backup at midnight")
	if err := c.Status().Update(ctx, src); err != nil {
		t.Fatal(err)
	}

	// status: the table and -o json carry the window and the workload.
	out, _, code := run(t, kubeconfig, "status", "-n", ns)
	if code != 0 || !strings.Contains(out, "keycloak-db") || !strings.Contains(out, "StatefulSet/postgres") ||
		!strings.Contains(out, "2026-12-05T08:02:00Z .. 2026-12-05T11:00:00Z") || !strings.Contains(out, "schedule") {
		t.Errorf("status: exit %d\n%s", code, out)
	}
	out, _, code = run(t, kubeconfig, "status", "keycloak-db", "-n", ns, "-o", "json")
	var views []map[string]any
	if err := json.Unmarshal([]byte(out), &views); code != 0 || err != nil || len(views) != 1 || views[0]["workload"] != "StatefulSet/postgres" ||
		views[0]["windowLatest"] != "2026-12-05T11:00:00Z" || views[0]["ready"] != "True" {
		t.Errorf("status -o json: exit %d, %v\n%s", code, err, out)
	}
	// list: both ranges, the hole named, and the backup.
	out, _, code = run(t, kubeconfig, "list", "keycloak-db", "-n", ns)
	if code != 0 || !strings.Contains(out, "a hole in the WAL") || !strings.Contains(out, "the live end") ||
		!strings.Contains(out, "20261205T080000Z") || !strings.Contains(out, "5.0 MiB") {
		t.Errorf("list: exit %d\n%s", code, out)
	}
	out, _, code = run(t, kubeconfig, "list", "keycloak-db", "-n", ns, "-o", "json")
	var listed struct {
		Ranges  []kcv1.RecoveryRange `json:"ranges"`
		Backups []kcv1.BackupRecord  `json:"backups"`
	}
	if err := json.Unmarshal([]byte(out), &listed); code != 0 || err != nil || len(listed.Ranges) != 2 || !listed.Ranges[0].Hole || len(listed.Backups) != 1 {
		t.Errorf("list -o json: exit %d, %v\n%s", code, err, out)
	}

	// Wrong inputs: named, with what was expected, exit 2, nothing created.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "nope", "-n", ns}, `no KeycloakBackup "nope" in namespace keycloak`},
		{[]string{"restore", "keycloak-db", "-n", ns}, "--to is required"},
		{[]string{"restore", "keycloak-db", "-n", ns, "--to", "2026-12-05T10:30:00"}, "invalid --to"},
		{[]string{"restore", "keycloak-db", "-n", ns, "--to", "latest", "--timeline", "-1"}, "invalid --timeline -1"},
		{[]string{"status", "-n", ns, "-o", "yaml"}, "expected table or json"},
		{[]string{"restore", "keycloak-db", "-n", ns, "--to", "latest", "-l", "app in (("}, "invalid --application-selector"},
		{[]string{"logs", "keycloak-db", "-n", ns, "--since", "soon"}, "invalid --since"},
		{[]string{"restore", "keycloak-db", "-n", ns, "--bogus"}, "unknown flag: --bogus"},
		{[]string{"restore", "keycloak-db", "-n", ns, "--to", "latest", "--into", "Copy_1"}, "invalid --into"},
		{[]string{"restore", "keycloak-db", "-n", ns, "--to", "latest", "--into", "copy", "-l", "app=keycloak"}, "stops nothing"},
		{[]string{"restore", "keycloak-db", "-n", ns, "--to", "latest", "--keep"}, "they need --into"},
		{[]string{"restore", "keycloak-db", "-n", ns, "--to", "latest", "--into", "copy", "--size", "-1Gi"}, "invalid --size"},
		{[]string{"restore", "keycloak-db", "-n", ns, "--to", "latest", "--into", "copy", "--into-namespace", "Not_A_NS"}, "invalid --into-namespace"},
		{[]string{"drill", "nope", "-n", ns}, `no KeycloakBackup "nope"`},
	} {
		_, stderr, code := run(t, kubeconfig, tc.args...)
		if code != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, %q; want 2 and %q", tc.args, code, stderr, tc.want)
		}
	}
	var all kcv1.KeycloakBackupList
	if err := c.List(ctx, &all, client.InNamespace(ns)); err != nil || len(all.Items) != 1 {
		t.Fatalf("resources after refused inputs: %d, %v; want only keycloak-db", len(all.Items), err)
	}

	// backup: a one-off resource for the same workload and archive.
	out, _, code = run(t, kubeconfig, "backup", "keycloak-db", "-n", ns, "--name", "before-upgrade")
	var b kcv1.KeycloakBackup
	if code != 0 || strings.TrimSpace(out) != "before-upgrade" || c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "before-upgrade"}, &b) != nil {
		t.Fatalf("backup: exit %d %q", code, out)
	}
	if b.Spec.From != "keycloak-db" || b.Spec.Schedule != "" || b.Spec.RestoreTo != "" || b.Spec.Storage.S3 != nil {
		t.Errorf("the backup's spec %+v; want only from: keycloak-db", b.Spec)
	}
	// Named by one of its own derived resources, the archive's resource is still the one named.
	if out, _, code := run(t, kubeconfig, "backup", "before-upgrade", "-n", ns, "--name", "second"); code != 0 || strings.TrimSpace(out) != "second" {
		t.Fatalf("backup named by a one-off backup: exit %d %q", code, out)
	}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "second"}, &b); err != nil || b.Spec.From != "keycloak-db" {
		t.Errorf("backup named by a one-off backup: from %q, %v; want keycloak-db", b.Spec.From, err)
	}
	if _, stderr, code := run(t, kubeconfig, "backup", "keycloak-db", "-n", ns, "--name", "before-upgrade"); code != 2 || !strings.Contains(stderr, "already exists") {
		t.Errorf("a second backup of the same name: exit %d %q; want 2, already exists", code, stderr)
	}

	// restore --wait: followed until the operator (played here) ends it; a failure is exit 1
	// with the reason, a success exit 0.
	for _, tc := range []struct {
		name  string
		phase kcv1.Phase
		code  int
	}{{"restore-refused", kcv1.PhaseFailed, 1}, {"restore-ok", kcv1.PhaseRestored, 0}} {
		done := make(chan struct{})
		go func() {
			defer close(done)
			var r kcv1.KeycloakBackup
			key := client.ObjectKey{Namespace: ns, Name: tc.name}
			_ = wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
				return c.Get(ctx, key, &r) == nil, nil
			})
			r.Status.Phase = tc.phase
			r.Status.Restore = &kcv1.RestoreStatus{Step: kcv1.RestoreDone}
			reason := "Restored"
			if tc.phase == kcv1.PhaseFailed {
				reason = "RestorePlanRefused"
			}
			r.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, reason, "the planner refuses restoreTo latest: pass --timeline 1")
			if err := c.Status().Update(ctx, &r); err != nil {
				t.Errorf("play the operator: %v", err)
			}
		}()
		_, stderr, code := run(t, kubeconfig, "restore", "keycloak-db", "-n", ns, "--to", "latest", "--timeline", "2", "-l", "app=keycloak", "--name", tc.name, "--wait", "--timeout", "1m")
		<-done
		if code != tc.code {
			t.Errorf("%s: exit %d, want %d\n%s", tc.name, code, tc.code, stderr)
		}
		if tc.phase == kcv1.PhaseFailed && !strings.Contains(stderr, "RestorePlanRefused: the planner refuses") {
			t.Errorf("%s: %q; want the reason and message", tc.name, stderr)
		}
		var r kcv1.KeycloakBackup
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: tc.name}, &r); err != nil {
			t.Fatal(err)
		}
		if r.Spec.RestoreTo != "latest" || r.Spec.Restore == nil || r.Spec.Restore.Timeline == nil || *r.Spec.Restore.Timeline != 2 ||
			r.Spec.Restore.Timeout == nil || r.Spec.Restore.Timeout.Duration != time.Minute || r.Spec.From != "keycloak-db" ||
			r.Spec.ApplicationSelector == nil || r.Spec.ApplicationSelector.MatchLabels["app"] != "keycloak" {
			t.Errorf("%s: spec %+v; want restoreTo latest on timeline 2 within 1m, the source's archive and application", tc.name, r.Spec)
		}
	}
	// restore --into and drill: a clone and a drill of the archive, saying only what they do.
	if _, stderr, code := run(t, kubeconfig, "restore", "keycloak-db", "-n", ns, "--to", "latest", "--into", "copy", "--keep",
		"--size", "2Gi", "--name", "clone"); code != 0 {
		t.Fatalf("restore --into: exit %d %q", code, stderr)
	}
	var cl kcv1.KeycloakBackup
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: "clone"}, &cl); err != nil || !cl.IsClone() || cl.Spec.Into.Name != "copy" ||
		!cl.Spec.Into.Keep || cl.Spec.Into.Size.String() != "2Gi" || cl.Spec.ApplicationSelector != nil || cl.Spec.From != "keycloak-db" {
		t.Errorf("restore --into made %+v (%v); want from keycloak-db, into copy kept, 2Gi, no application", cl.Spec, err)
	}
	out, stderr, code := run(t, kubeconfig, "drill", "keycloak-db", "-n", ns)
	var dr kcv1.KeycloakBackup
	if code != 0 || c.Get(ctx, client.ObjectKey{Namespace: ns, Name: strings.TrimSpace(out)}, &dr) != nil || !dr.IsDrill() ||
		dr.Spec.From != "keycloak-db" || dr.Labels[kcv1.DrillOfLabel] != "keycloak-db" {
		t.Errorf("drill: exit %d %q %q, made %+v; want a drill of keycloak-db", code, out, stderr, dr.Spec)
	}
	// A restore names no archive of its own: backing up or restoring "from" it is refused.
	for _, args := range [][]string{{"backup", "restore-ok"}, {"restore", "restore-ok", "--to", "latest"}} {
		if _, stderr, code := run(t, kubeconfig, append(args, "-n", ns)...); code != 2 || !strings.Contains(stderr, "is a restore") {
			t.Errorf("%v: exit %d %q; want 2, it is a restore", args, code, stderr)
		}
	}
}
