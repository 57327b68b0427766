package controller_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	kccontroller "github.com/kcbackup/kcbackup/operator/internal/controller"
	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/test/harness"
)

// TestEnvtestFromAndRecords covers spec.from (one place for an archive's settings) and the
// records of a schedule's backups against a real API server, with the CRD's CEL rules.
func TestEnvtestFromAndRecords(t *testing.T) {
	cfg := harness.StartAPIServer(t, "../../../deploy/crd")
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, cfg *rest.Config)
	}{
		{"AdmissionRefusesSettingsBesideFrom", testFromAdmission},
		{"FromTakesTheArchiveSettings", testFromTakesTheArchiveSettings},
		{"FromRefusalsAreConditions", testFromRefusals},
		{"LegacyResourceWithOtherStorageIsToldToUseFrom", testLegacyConflictNamesFrom},
		{"ScheduleRecordsEachBackupAndRetentionDeletesRecords", testScheduleRecords},
		{"RestoreWithFromRunsOnTheArchiveSettings", testRestoreWithFrom},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, cfg)
		})
	}
}

// fromBackup is a resource that takes its archive's settings from another.
func fromBackup(name, from string) *kcv1.KeycloakBackup {
	return &kcv1.KeycloakBackup{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: kcv1.KeycloakBackupSpec{From: from}}
}

func testFromAdmission(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	for name, tc := range map[string]struct {
		kb   *kcv1.KeycloakBackup
		want string
	}{
		"storage beside from": {func() *kcv1.KeycloakBackup {
			kb := fromBackup("a", "prod")
			kb.Spec.Storage = kcv1.Storage{Volume: &kcv1.VolumeStorage{ClaimName: "archive"}}
			return kb
		}(), "a resource with from takes instanceSelector, storage"},
		"instanceSelector beside from": {func() *kcv1.KeycloakBackup {
			kb := fromBackup("b", "prod")
			kb.Spec.InstanceSelector = metav1.LabelSelector{MatchLabels: dbLabels}
			return kb
		}(), "a resource with from takes"},
		"sidecar beside from": {func() *kcv1.KeycloakBackup {
			kb := fromBackup("c", "prod")
			kb.Spec.Sidecar = &kcv1.SidecarOptions{Synchronous: true}
			return kb
		}(), "a resource with from takes"},
		"schedule beside from": {func() *kcv1.KeycloakBackup {
			kb := fromBackup("d", "prod")
			kb.Spec.Schedule = "@daily"
			return kb
		}(), "schedule, retention and suspend belong to the archive's resource"},
		"neither from nor storage": {&kcv1.KeycloakBackup{ObjectMeta: metav1.ObjectMeta{Name: "e"},
			Spec: kcv1.KeycloakBackupSpec{InstanceSelector: metav1.LabelSelector{MatchLabels: dbLabels}}},
			"instanceSelector and storage are required unless from"},
		"backupID without from": {func() *kcv1.KeycloakBackup {
			kb := volumeBackup("f")
			kb.Spec.BackupID = "20260301T030000Z"
			return kb
		}(), "backupID (the record of one backup) needs from"},
		"empty encryption": {func() *kcv1.KeycloakBackup {
			kb := volumeBackup("g")
			kb.Spec.Encryption = &kcv1.Encryption{}
			return kb
		}(), "encryption needs recipientsSecret, identitySecret or both"},
		"unknown log format": {func() *kcv1.KeycloakBackup {
			kb := volumeBackup("h")
			kb.Spec.Sidecar = &kcv1.SidecarOptions{LogFormat: "xml"}
			return kb
		}(), "logFormat"},
	} {
		tc.kb.Namespace = e.ns
		err := e.c.Create(e.ctx, tc.kb)
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: create = %v, want Invalid saying %q", name, err, tc.want)
		}
	}

	// A restore that says only what it does is admitted; its from cannot change.
	kb := fromBackup("restore", "prod")
	kb.Spec.RestoreTo = kcv1.RestoreLatest
	e.create(kb)
	cur := e.kb("restore")
	patch := client.MergeFrom(cur.DeepCopy())
	cur.Spec.From = "staging"
	if err := e.c.Patch(e.ctx, cur, patch); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "from is immutable") {
		t.Errorf("changing from = %v, want Invalid saying from is immutable", err)
	}
}

func testFromTakesTheArchiveSettings(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	e.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "age"},
		Data: map[string][]byte{"recipients": []byte("age1example\n"), "identity": []byte("AGE-SECRET-KEY-1EXAMPLE\n")}})
	prod := volumeBackup("prod")
	prod.Spec.Schedule = "0 3 * * *"
	prod.Spec.Sidecar = &kcv1.SidecarOptions{Synchronous: true}
	prod.Spec.Encryption = &kcv1.Encryption{RecipientsSecret: &kcv1.SecretKey{Name: "age", Key: "recipients"},
		IdentitySecret: &kcv1.SecretKey{Name: "age", Key: "identity"}}
	e.create(prod)
	e.waitPhase("prod", kcv1.PhaseScheduled)

	// A one-off backup names the archive's resource and nothing else.
	e.create(fromBackup("adhoc", "prod"))
	got := e.waitPhase("adhoc", kcv1.PhaseCompleted)
	if got.Status.Instance == nil || got.Status.Instance.Name != "postgres" {
		t.Errorf("status.instance = %+v, want the workload prod selects", got.Status.Instance)
	}
	if c := got.Condition(kcv1.ConditionConflict); c == nil || c.Status != metav1.ConditionFalse {
		t.Errorf("Conflict = %+v, want False: it archives where prod does", c)
	}
	// Only the archive's resource carries the removal: deleting a one-off backup removes nothing.
	if !slices.Contains(e.kb("prod").Finalizers, kccontroller.RemovalFinalizer) || slices.Contains(got.Finalizers, kccontroller.RemovalFinalizer) {
		t.Errorf("finalizers: prod %v, adhoc %v; want the removal on prod only", e.kb("prod").Finalizers, got.Finalizers)
	}
	if b := got.Status.Backup; b == nil || b.ID == "" || b.Size != "4.0KiB" || b.StopLSN == "" {
		t.Errorf("status.backup = %+v, want the backup with its size for people", b)
	}
	if r := got.Status.OpensRange; r == nil || got.Status.Backup == nil || !r.Earliest.Equal(got.Status.Backup.StopTime) {
		t.Errorf("status.opensRange = %+v, want from the backup's stop time", r)
	}
	// What is stored is never rewritten with the archive's settings.
	if got.Spec.Storage.Volume != nil || got.Spec.Sidecar != nil || len(got.Spec.InstanceSelector.MatchLabels) != 0 {
		t.Errorf("stored spec = %+v, want only from", got.Spec)
	}
	// One sidecar, with the archive's options.
	sc := sidecarOf(e.deployment("postgres"))
	if sc == nil {
		t.Fatal("no sidecar injected")
	}
	env := map[string]string{}
	for _, v := range sc.Env {
		env[v.Name] = v.Value
	}
	for k, want := range map[string]string{
		"KCBACKUP_STORAGE": "file:///var/lib/kcbackup/archive", "KCBACKUP_LOG_FORMAT": "json", "KCBACKUP_PARTIAL_INTERVAL": "0s",
		"KCBACKUP_ENCRYPTION_KEY_FILE": "/var/run/kcbackup/encryption/identity",
	} {
		if env[k] != want {
			t.Errorf("sidecar %s = %q, want %q", k, env[k], want)
		}
	}
	if n := len(e.deployment("postgres").Spec.Template.Spec.InitContainers); n != 1 {
		t.Errorf("%d init containers, want the one sidecar", n)
	}
}

func testFromRefusals(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)

	// A missing archive's resource is waited for, with nothing touched.
	e.create(fromBackup("early", "prod"))
	got := e.waitCondition("early", kcv1.ConditionValid, metav1.ConditionFalse, kcv1.ReasonFromNotFound)
	if got.Status.Phase != kcv1.PhasePending || !strings.Contains(got.Condition(kcv1.ConditionValid).Message, `"prod"`) {
		t.Errorf("phase %s, Valid %+v: want Pending and a message naming prod", got.Status.Phase, got.Condition(kcv1.ConditionValid))
	}
	e.assertUntouched("postgres")
	// Once it exists, the resource goes on by itself.
	prod := volumeBackup("prod")
	prod.Spec.Schedule = "0 3 * * *"
	e.create(prod)
	e.waitPhase("early", kcv1.PhaseCompleted)

	// from must name the archive's resource itself, not another resource with from.
	e.create(fromBackup("chained", "early"))
	got = e.waitCondition("chained", kcv1.ConditionValid, metav1.ConditionFalse, kcv1.ReasonInvalidFrom)
	if got.Status.Phase != kcv1.PhaseFailed || !strings.Contains(got.Condition(kcv1.ConditionValid).Message, `name the archive's resource, "prod"`) {
		t.Errorf("phase %s, Valid %+v: want Failed and a message naming prod", got.Status.Phase, got.Condition(kcv1.ConditionValid))
	}

	// A restore of an encrypted archive without the identity is refused before anything stops.
	e.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "age"}, Data: map[string][]byte{"recipients": []byte("age1example\n")}})
	enc := volumeBackup("enc")
	enc.Spec.InstanceSelector = metav1.LabelSelector{MatchLabels: map[string]string{"app": "other"}}
	enc.Spec.Encryption = &kcv1.Encryption{RecipientsSecret: &kcv1.SecretKey{Name: "age", Key: "recipients"}}
	e.create(enc)
	rs := fromBackup("enc-restore", "enc")
	rs.Spec.RestoreTo = kcv1.RestoreLatest
	e.create(rs)
	got = e.waitCondition("enc-restore", kcv1.ConditionValid, metav1.ConditionFalse, kcv1.ReasonInvalidSpec)
	if !strings.Contains(got.Condition(kcv1.ConditionValid).Message, "identitySecret") {
		t.Errorf("Valid = %+v, want a message naming spec.encryption.identitySecret", got.Condition(kcv1.ConditionValid))
	}
}

func testRestoreWithFrom(t *testing.T, cfg *rest.Config) {
	e := restoreFixture(t, cfg)
	e.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "age"}, Data: map[string][]byte{"identity": []byte("AGE-SECRET-KEY-1EXAMPLE\n")}})
	prod := volumeBackup("prod")
	prod.Spec.Schedule = "0 3 * * *"
	prod.Spec.Encryption = &kcv1.Encryption{IdentitySecret: &kcv1.SecretKey{Name: "age", Key: "identity"}}
	e.create(prod)
	e.waitPhase("prod", kcv1.PhaseScheduled)

	// The restore says only what it does; its Job reads prod's archive with prod's identity.
	rs := fromBackup("undo", "prod")
	rs.Spec.RestoreTo = kcv1.RestoreLatest
	rs.Spec.ApplicationSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "keycloak"}}
	e.runToJob(rs)
	var job batchv1.Job
	if err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: "undo-restore"}, &job); err != nil {
		t.Fatal(err)
	}
	c := job.Spec.Template.Spec.Containers[0]
	if args := strings.Join(c.Args, " "); !strings.Contains(args, "--storage file:///var/lib/kcbackup/archive") {
		t.Errorf("restore Job args %q do not name prod's archive", args)
	}
	env := map[string]string{}
	for _, v := range c.Env {
		env[v.Name] = v.Value
	}
	if env["KCBACKUP_ENCRYPTION_KEY_FILE"] != "/var/run/kcbackup/encryption/identity" {
		t.Errorf("restore Job env = %v, want the identity file of prod's encryption", env)
	}
	if rs := e.kb("undo").Status.Restore; rs == nil || rs.Step != kcv1.RestoreRestoringData {
		t.Errorf("restore status = %+v, want step RestoringData", rs)
	}
}

func testLegacyConflictNamesFrom(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	prod := volumeBackup("prod")
	prod.Spec.Schedule = "0 3 * * *"
	e.create(prod)
	e.waitPhase("prod", kcv1.PhaseScheduled)
	// A v1alpha1 resource repeating the settings is told to use from when they differ
	// (created in the same second as prod, the later name loses the tie)...
	other := volumeBackup("zz-other")
	other.Spec.Storage.Volume.ClaimName = "elsewhere"
	e.create(other)
	got := e.waitCondition("zz-other", kcv1.ConditionConflict, metav1.ConditionTrue, kcv1.ReasonStorageConflict)
	if msg := got.Condition(kcv1.ConditionConflict).Message; !strings.Contains(msg, "spec.from: prod") {
		t.Errorf("Conflict message %q does not say to use spec.from: prod", msg)
	}
	// ...and one that agrees with the oldest works, whenever it is created: zz-other, in
	// conflict, does nothing and does not block it.
	e.create(volumeBackup("same"))
	e.waitPhase("same", kcv1.PhaseCompleted)
	if c := e.kb("zz-other").Condition(kcv1.ConditionConflict); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("zz-other Conflict = %+v; want still True", c)
	}
}

// pruneRemoving stands between the operator and the fake sidecar: it answers POST /v1/prune
// with removed as the backups retention removed, and passes everything else on.
type pruneRemoving struct {
	mu      sync.Mutex
	removed []string
	prunes  int
}

func (p *pruneRemoving) set(ids ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.removed = ids
}

func (p *pruneRemoving) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.prunes
}

func (p *pruneRemoving) serve(t *testing.T, backend func() string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, err := url.Parse(backend())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if r.Method == http.MethodPost && r.URL.Path == "/v1/prune" {
			// The fake checks the token and records the request; the answer is ours.
			rec := httptest.NewRecorder()
			httputil.NewSingleHostReverseProxy(u).ServeHTTP(rec, r)
			if rec.Code != http.StatusOK {
				w.WriteHeader(rec.Code)
				_, _ = io.Copy(w, bytes.NewReader(rec.Body.Bytes()))
				return
			}
			p.mu.Lock()
			p.prunes++
			res := apiclient.PruneResult{RemovedBackups: append([]string{}, p.removed...)}
			p.mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(res)
			return
		}
		httputil.NewSingleHostReverseProxy(u).ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func testScheduleRecords(t *testing.T, cfg *rest.Config) {
	var e *env
	prune := &pruneRemoving{}
	proxy := prune.serve(t, func() string { return e.sidecar.srv.URL })
	e = newEnv(t, cfg, func(r *kccontroller.Reconciler) {
		r.SidecarEndpoint = func(*corev1.Pod) string { return proxy.URL }
	})
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	kb := volumeBackup("hourly")
	kb.Spec.Schedule = "0 * * * *"
	kb.Spec.Retention = &kcv1.Retention{KeepBackups: 1}
	e.create(kb)
	got := e.waitPhase("hourly", kcv1.PhaseScheduled)
	parent := e.kb("hourly")

	// Each tick's backup becomes a record, named after the schedule and the backup.
	tick := got.Status.NextScheduleTime.Time
	e.clock.SetTime(tick.Add(time.Second))
	first := e.waitRecord("hourly", "backup-1", kcv1.PhaseCompleted)
	if first.Name != kccontroller.RecordName("hourly", "backup-1") || first.Spec.From != "hourly" || !metav1.IsControlledBy(first, parent) ||
		first.Labels[kccontroller.RecordOfLabel] != "hourly" {
		t.Errorf("record %s: from %q, owners %+v, labels %v: want hourly-backup-1, from hourly, controlled by hourly, labelled",
			first.Name, first.Spec.From, first.OwnerReferences, first.Labels)
	}
	if b := first.Status.Backup; b == nil || b.ID != "backup-1" || b.SizeBytes != 4096 || b.StartLSN == "" || b.StopLSN == "" ||
		b.StartTime == nil || b.StopTime == nil || first.Status.OpensRange == nil || first.Status.Instance == nil {
		t.Errorf("record status = %s, want the backup's size, LSNs, times, the range it opens and the workload", describe(first))
	}
	if slices.Contains(first.Finalizers, kccontroller.RemovalFinalizer) {
		t.Errorf("record finalizers %v: a record protects nothing, its deletion (retention) must remove nothing", first.Finalizers)
	}

	// A failed backup is recorded Failed.
	e.sidecar.with(func(f *fakeSidecar) { f.failNext = true })
	e.clock.SetTime(tick.Add(time.Hour + time.Second))
	failed := e.waitRecord("hourly", "backup-2", kcv1.PhaseFailed)
	if c := failed.Condition(kcv1.ConditionReady); c == nil || c.Reason != kcv1.ReasonBackupFailed {
		t.Errorf("failed record Ready = %+v, want reason BackupFailed", c)
	}
	e.sidecar.with(func(f *fakeSidecar) { f.failNext = false })
	// Records export no alert gauges: a failed record would keep an alert firing, an old one
	// would look like a stale schedule. The schedule's resource carries them.
	for _, rec := range []*kcv1.KeycloakBackup{first, failed} {
		if rec.Status.LastBackupTime != nil || rec.Status.LastFailedBackupTime != nil {
			t.Errorf("record %s has lastBackupTime/lastFailedBackupTime: %s", rec.Name, describe(rec))
		}
		for _, m := range []string{"kcbackup_operator_last_backup_failed", "kcbackup_operator_last_backup_success_timestamp_seconds"} {
			if v := e.gauge(m, rec.Name); v != -1 {
				t.Errorf("%s{name=%q} = %v, want no series", m, rec.Name, v)
			}
		}
	}
	if v := e.gauge("kcbackup_operator_last_backup_failed", "hourly"); v != 1 {
		t.Errorf("kcbackup_operator_last_backup_failed{name=hourly} = %v, want 1 after the failed backup", v)
	}

	// Retention removes backup-1 with the next backup: its record goes, and the failed
	// record older than the oldest kept backup goes too.
	prune.set("backup-1")
	e.clock.SetTime(tick.Add(2*time.Hour + time.Second))
	e.waitRecord("hourly", "backup-3", kcv1.PhaseCompleted)
	e.eventually("the records of removed and older failed backups deleted", func() (bool, string) {
		names := e.records("hourly")
		return fmt.Sprint(names) == fmt.Sprint([]string{kccontroller.RecordName("hourly", "backup-3")}), fmt.Sprint(names)
	})
	e.eventually("status.backups kept for compatibility, status.backup the newest", func() (bool, string) {
		got := e.kb("hourly")
		return len(got.Status.Backups) == 2 && got.Status.Backup != nil && got.Status.Backup.ID == "backup-3", describe(got)
	})

	// Deleting a record deletes no archived data: nothing is pruned for it.
	prunes := prune.count()
	third := e.kb(kccontroller.RecordName("hourly", "backup-3"))
	if err := e.c.Delete(e.ctx, third); err != nil {
		t.Fatal(err)
	}
	e.consistently("no prune for a deleted record", time.Second, func() (bool, string) {
		return prune.count() == prunes, fmt.Sprint(prune.count(), " prunes")
	})
}

// waitRecord waits for the record of backup id of archive to reach phase.
func (e *env) waitRecord(archive, id string, phase kcv1.Phase) *kcv1.KeycloakBackup {
	e.t.Helper()
	name := kccontroller.RecordName(archive, id)
	var kb kcv1.KeycloakBackup
	e.eventually(fmt.Sprintf("record %s %s", name, phase), func() (bool, string) {
		err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: name}, &kb)
		if err != nil {
			return false, err.Error() + "; records: " + fmt.Sprint(e.records(archive))
		}
		return kb.Status.Phase == phase && kb.Spec.BackupID == id, describe(&kb)
	})
	return &kb
}

// records returns the names of the records of archive.
func (e *env) records(archive string) []string {
	e.t.Helper()
	var list kcv1.KeycloakBackupList
	if err := e.c.List(e.ctx, &list, client.InNamespace(e.ns), client.MatchingLabels{kccontroller.RecordOfLabel: archive}); err != nil {
		e.t.Fatal(err)
	}
	var names []string
	for _, kb := range list.Items {
		if kb.DeletionTimestamp == nil {
			names = append(names, kb.Name)
		}
	}
	return names
}
