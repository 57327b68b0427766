package controller_test

import (
	"fmt"
	"slices"
	"strings"
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

var dbLabels = map[string]string{"app": "postgres"}
var dbPods = map[string]string{"pod": "postgres"}

func volumeBackup(name string) *kcv1.KeycloakBackup {
	return &kcv1.KeycloakBackup{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: kcv1.KeycloakBackupSpec{
			InstanceSelector: metav1.LabelSelector{MatchLabels: dbLabels},
			Storage:          kcv1.Storage{Volume: &kcv1.VolumeStorage{ClaimName: "archive"}},
		},
	}
}

func s3Backup(name string) *kcv1.KeycloakBackup {
	kb := volumeBackup(name)
	kb.Spec.Storage = kcv1.Storage{S3: &kcv1.S3Storage{
		Bucket: "kc-archive", Prefix: "prod", Region: "eu-west-1", Endpoint: "https://minio.storage:9000", ForcePathStyle: true,
		CredentialsSecret: &kcv1.S3CredentialsSecret{Name: "s3-creds"},
	}}
	return kb
}

// TestEnvtestOperator runs the operator against a real kube-apiserver and etcd, with the
// sidecar API served by a fake in this process and the test playing kubelet and Job
// controller.
func TestEnvtestOperator(t *testing.T) {
	cfg := harness.StartAPIServer(t, "../../../deploy/crd", "../../../test/cluster/keycloak-operator/crd")
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, cfg *rest.Config)
	}{
		{"ManualBackupInjectsSidecarAndCompletesOnce", testManualBackup},
		{"ManualBackupFailureIsTerminal", testManualBackupFails},
		{"SecondBackupWaitsForTheRunningOne", testBackupRunning},
		{"ScheduleBacksUpEachTickCatchesUpOnceAndSuspends", testSchedule},
		{"RestoreInPlaceStopsRestoresAndRestarts", testRestore},
		{"RestoreJobFailureLeavesDatabaseStopped", testRestoreJobFails},
		{"RestoreTargetOutsideWindowTouchesNothing", testRestoreOutsideWindow},
		{"AdmissionRejectsBadSpecs", testAdmission},
		{"InvalidScheduleAndRestoreTimeAreTerminalConditions", testInvalidSpecConditions},
		{"MissingSecretWaitsWithoutSideEffect", testMissingSecret},
		{"NoWorkloadOrTwoWorkloadsMatched", testWorkloadMatching},
		{"LaterResourceWithOtherStorageGetsConflict", testConflict},
		{"DeletingResourceKeptOnDeleteKeepsArchiveAndSidecar", testDeletion},
		{"IdleScheduleDoesNotLoop", testIdleScheduleDoesNotLoop},
		{"TwoRestoresOfOneWorkloadOneRunsSchedulePauses", testTwoRestores},
		{"StaleCacheNeverRestartsAFinishedStep", testStaleCache},
		{"RestoreJobRefusedScalesEverythingBack", testRestoreRefused},
		{"RecoveryThatNeverEndsHitsTheDeadline", testRestoreDeadline},
		{"StoppingThatNeverEndsHitsTheDeadlineAndScalesBack", testStopDeadline},
		{"KeycloakSchemaMismatchKeepsKeycloakDown", testKeycloakSchemaMismatch},
		{"LeftoverJobOfTheSameNameRefusedBeforeAnythingStops", testLeftoverJobRefusedBeforeAnythingStops},
		{"ForeignJobAtTheRestoreStepIsNeverTheResult", testForeignJobAtRestoreStepIsNeverTheResult},
		{"DeletedRestoreJobIsNotCreatedAgain", testDeletedRestoreJobIsNotRecreated},
		{"DatabaseStopsOnlyOnceItsWALIsArchived", testDatabaseStopsOnlyOnceItsWALIsArchived},
		{"ArchiveThatNeverCatchesUpGivesBack", testArchiveThatNeverCatchesUpGivesBack},
		{"TargetJustPastTheWindowIsWaitedFor", testTargetJustPastTheWindowIsWaitedFor},
		{"TargetPastTheWindowIsRefusedOnceTheLagHasPassed", testTargetPastTheWindowIsRefusedOnceTheLagHasPassed},
		{"PlannerRefusalStopsNothing", testPlannerRefusalStopsNothing},
		{"AlertGaugesComeFromStatusAfterARestart", testAlertGaugesComeFromStatusAfterARestart},
		{"RestoreScalesTheKeycloakResourceNotItsStatefulSet", testRestoreScalesTheKeycloakResource},
		{"KeycloakWithoutInstancesIsRefused", testKeycloakWithoutInstancesIsRefused},
		{"RestoreWithoutApplicationIsRefusedUnlessAllowed", testRestoreWithoutApplicationIsRefused},
		{"LayoutIsReportedOnTheFirstReconcile", testLayoutIsReportedOnTheFirstReconcile},
		{"RestoreOfReplicasIsRefusedBeforeAnythingStops", testRestoreOfReplicasIsRefusedBeforeAnythingStops},
		{"BitnamiRestoreKeepsRecoverySignal", testBitnamiRestoreKeepsRecoverySignal},
		{"ReplicationRefusedIsNamed", testReplicationRefusedIsNamed},
		{"VerifyModeChecksTheDeclaredSidecar", testVerifyModeChecksTheDeclaredSidecar},
		{"BackupGoesToTheStreamingSidecar", testBackupGoesToTheStreamingSidecar},
		{"HeldUpgradeKeepsTheRunningSidecar", testHeldUpgradeKeepsTheRunningSidecar},
		{"WorkloadWithoutOptInIsNotTouched", testWorkloadWithoutOptInIsNotTouched},
		{"RestoreOfApplicationWithoutOptInIsRefused", testRestoreOfApplicationWithoutOptInIsRefused},
		{"OptInNotRequiredWhenTurnedOff", testOptInNotRequiredWhenTurnedOff},
		{"DeletionRemovesSidecarSlotAndToken", testDeletionRemovesSidecarSlotAndToken},
		{"DeletionDropsTheSlotOnEveryServer", testDeletionDropsTheSlotOnEveryServer},
		{"SlotThatCannotBeDroppedHoldsTheDeletion", testSlotThatCannotBeDroppedHoldsTheDeletion},
		{"DeletionKeepsTheSidecarAnotherResourceUses", testDeletionKeepsTheSidecarAnotherResourceUses},
		{"NamespacedRBACAloneIsEnough", testNamespacedRBACAloneIsEnough},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, cfg)
		})
	}
}

func testManualBackup(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.create(volumeBackup("once"))

	// The sidecar is injected as a native sidecar with the storage configuration.
	e.eventually("sidecar injected", func() (bool, string) { return sidecarOf(e.deployment("postgres")) != nil, "" })
	d := e.deployment("postgres")
	sc := sidecarOf(d)
	if sc.RestartPolicy == nil || *sc.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("sidecar restartPolicy = %v, want Always (native sidecar)", sc.RestartPolicy)
	}
	env := map[string]string{}
	for _, v := range sc.Env {
		env[v.Name] = v.Value
	}
	for k, want := range map[string]string{
		"KCBACKUP_STORAGE": "file:///var/lib/kcbackup/archive", "KCBACKUP_LISTEN": ":8008",
		"KCBACKUP_TOKEN_FILE": "/var/run/kcbackup/token/token", "KCBACKUP_PGDATA": "/var/lib/postgresql/data/pgdata",
		"PGHOST": "localhost", "PGPORT": "5432", "PGUSER": "postgres",
	} {
		if env[k] != want {
			t.Errorf("sidecar env %s = %q, want %q", k, env[k], want)
		}
	}
	if d.Spec.Template.Labels[kccontroller.SidecarLabel] != "true" {
		t.Errorf("pod template labels = %v, want %s=true for the PodMonitor", d.Spec.Template.Labels, kccontroller.SidecarLabel)
	}
	if len(sc.Ports) != 1 || sc.Ports[0].Name != "metrics" || sc.Ports[0].ContainerPort != 8008 {
		t.Errorf("sidecar ports = %+v, want metrics:8008", sc.Ports)
	}
	if sc.SecurityContext == nil || sc.SecurityContext.ReadOnlyRootFilesystem == nil || !*sc.SecurityContext.ReadOnlyRootFilesystem {
		t.Errorf("sidecar has no read-only root filesystem")
	}
	// With a read-only root, the spool (KCBACKUP_SPOOL) must be on a writable emptyDir.
	spoolOK := false
	for _, m := range sc.VolumeMounts {
		if m.MountPath != env["KCBACKUP_SPOOL"] || m.ReadOnly {
			continue
		}
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Name == m.Name && v.EmptyDir != nil {
				spoolOK = true
			}
		}
	}
	if !spoolOK {
		t.Errorf("sidecar spool %q is not a writable emptyDir mount", env["KCBACKUP_SPOOL"])
	}
	var claims []string
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			claims = append(claims, v.PersistentVolumeClaim.ClaimName)
		}
	}
	if !slices.Contains(claims, "archive") {
		t.Errorf("pod volumes claims = %v, want the archive claim", claims)
	}
	// PostgreSQL itself runs restore_command (kcbackup wal-fetch --sidecar) during recovery:
	// its container sees the binary through an image volume and the fetch-only token, and
	// nothing of the storage (no archive volume, no credentials) nor the admin token
	// (TestEnvtestLeastPrivilege checks what each token file holds).
	pg := d.Spec.Template.Spec.Containers[0]
	pgMounts := map[string]string{}
	for _, m := range pg.VolumeMounts {
		pgMounts[m.Name] = m.MountPath
	}
	if pgMounts["kcbackup-image"] != "/var/run/kcbackup/image" || pgMounts["kcbackup-fetch-token"] != "/var/run/kcbackup/token" || pgMounts["data"] == "" {
		t.Errorf("postgres container mounts = %v, want its data plus the kcbackup image and the fetch-only token", pgMounts)
	}
	if _, ok := pgMounts["kcbackup-token"]; ok {
		t.Errorf("postgres container mounts the admin token volume: %v", pgMounts)
	}
	if _, ok := pgMounts["kcbackup-archive"]; ok {
		t.Errorf("postgres container mounts the archive: %v", pgMounts)
	}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Name == "kcbackup-image" && (v.Image == nil || v.Image.Reference != "registry.example/kcbackup:test") {
			t.Errorf("kcbackup-image volume = %+v, want the sidecar image", v.VolumeSource)
		}
	}
	var tok corev1.Secret
	if err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: "postgres-kcbackup-token"}, &tok); err != nil {
		t.Fatalf("token Secret: %v", err)
	}
	if len(tok.Data["token"]) < 32 || len(tok.OwnerReferences) != 1 || tok.OwnerReferences[0].Name != "postgres" {
		t.Errorf("token Secret = %d bytes, owners %+v; want a random token owned by the workload", len(tok.Data["token"]), tok.OwnerReferences)
	}

	// No pod yet: the resource waits; then the pod runs and the backup is taken.
	e.runPod("postgres-0", dbPods)
	kb := e.waitPhase("once", kcv1.PhaseCompleted)
	if len(kb.Status.Backups) != 1 || kb.Status.Backups[0].ID != "backup-1" || kb.Status.Backups[0].StopLSN != "0/4000100" {
		t.Errorf("status.backups = %+v, want backup-1", kb.Status.Backups)
	}
	if kb.Status.LastBackupTime == nil || kb.Status.RecoveryWindow == nil {
		t.Errorf("lastBackupTime %v, recoveryWindow %v; want both set", kb.Status.LastBackupTime, kb.Status.RecoveryWindow)
	}
	if c := kb.Condition(kcv1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue || c.Reason != kcv1.ReasonBackupCompleted {
		t.Errorf("Ready = %+v, want True/BackupCompleted", c)
	}
	if kb.Status.ObservedGeneration != kb.Generation {
		t.Errorf("observedGeneration %d, generation %d", kb.Status.ObservedGeneration, kb.Generation)
	}
	e.waitEvent("once", "SidecarInjected")
	e.waitEvent("once", "TokenCreated")
	e.waitEvent("once", "BackupStarted")
	e.waitEvent("once", "BackupCompleted")
	if v := e.gauge("kcbackup_operator_last_backup_success_timestamp_seconds", "once"); v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last_backup_success_timestamp_seconds = %v, want about now", v)
	}
	if v := e.gauge("kcbackup_operator_last_backup_failed", "once"); v != 0 {
		t.Errorf("last_backup_failed = %v, want 0", v)
	}
	e.sidecar.with(func(f *fakeSidecar) {
		if f.badTokens != 0 {
			t.Errorf("the operator called the sidecar with a wrong token %d times", f.badTokens)
		}
	})

	// One-to-one: reconciling again never takes a second backup.
	e.poke("once")
	e.consistently("a single backup", time.Second, func() (bool, string) {
		n := e.sidecar.startedCount()
		return n == 1, fmt.Sprint(n, " backups started")
	})
}

func testManualBackupFails(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	e.sidecar.with(func(f *fakeSidecar) { f.failNext = true })
	e.create(volumeBackup("fails"))
	kb := e.waitCondition("fails", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonBackupFailed)
	if kb.Status.Phase != kcv1.PhaseFailed || !strings.Contains(kb.Condition(kcv1.ConditionReady).Message, "permission denied") {
		t.Errorf("status = %s; want Failed naming the sidecar's error", describe(kb))
	}
	e.waitEvent("fails", kcv1.ReasonBackupFailed)
	if v := e.gauge("kcbackup_operator_last_backup_failed", "fails"); v != 1 {
		t.Errorf("last_backup_failed = %v, want 1", v)
	}
	e.poke("fails")
	e.consistently("no retry of a failed one-off backup", time.Second, func() (bool, string) {
		return e.sidecar.startedCount() == 1, fmt.Sprint(e.sidecar.startedCount())
	})
}

func testSchedule(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	kb := volumeBackup("hourly")
	kb.Spec.Schedule = "0 * * * *"
	kb.Spec.Retention = &kcv1.Retention{KeepBackups: 3, KeepWithin: "168h"}
	e.create(kb)

	// Nothing is due at creation: the next tick is in the future.
	got := e.waitPhase("hourly", kcv1.PhaseScheduled)
	if got.Status.NextScheduleTime == nil || !got.Status.NextScheduleTime.After(e.clock.Now()) {
		t.Fatalf("nextScheduleTime = %v, want after %v", got.Status.NextScheduleTime, e.clock.Now())
	}
	if v := e.gauge("kcbackup_operator_schedule_interval_seconds", "hourly"); v != 3600 {
		t.Errorf("schedule_interval_seconds = %v, want 3600", v)
	}
	if n := e.sidecar.startedCount(); n != 0 {
		t.Fatalf("%d backups started before the first tick", n)
	}

	// The tick passes: one backup, then retention.
	tick := got.Status.NextScheduleTime.Time
	e.clock.SetTime(tick.Add(time.Second))
	e.eventually("first scheduled backup and prune", func() (bool, string) {
		kb := e.kb("hourly")
		var prunes int
		e.sidecar.with(func(f *fakeSidecar) { prunes = len(f.prunes) })
		return len(kb.Status.Backups) == 1 && prunes == 1, describe(kb)
	})
	e.sidecar.with(func(f *fakeSidecar) {
		if p := f.prunes[0]; p.KeepBackups != 3 || p.KeepWithin != "168h" {
			t.Errorf("prune request = %+v, want keepBackups 3 keepWithin 168h", p)
		}
	})
	if got := e.kb("hourly"); got.Status.LastScheduleTime == nil || !got.Status.LastScheduleTime.Time.Equal(tick) {
		t.Errorf("lastScheduleTime = %v, want %v", got.Status.LastScheduleTime, tick)
	}
	e.waitEvent("hourly", "Pruned")

	// Five hours of downtime: exactly one catch-up backup.
	e.clock.SetTime(tick.Add(5*time.Hour + time.Minute))
	e.eventually("one catch-up backup", func() (bool, string) {
		kb := e.kb("hourly")
		return len(kb.Status.Backups) == 2 && kb.Status.CurrentBackupID == "", describe(kb)
	})
	e.consistently("no burst of backups after downtime", time.Second, func() (bool, string) {
		return e.sidecar.startedCount() == 2, fmt.Sprint(e.sidecar.startedCount(), " backups")
	})
	if got := e.kb("hourly"); !got.Status.LastScheduleTime.Time.Equal(tick.Add(5 * time.Hour)) {
		t.Errorf("lastScheduleTime = %v, want the newest missed tick %v", got.Status.LastScheduleTime, tick.Add(5*time.Hour))
	}

	// Suspended: ticks pass, nothing starts.
	cur := e.kb("hourly")
	patch := client.MergeFrom(cur.DeepCopy())
	cur.Spec.Suspend = true
	if err := e.c.Patch(e.ctx, cur, patch); err != nil {
		t.Fatal(err)
	}
	e.waitPhase("hourly", kcv1.PhaseSuspended)
	e.clock.SetTime(tick.Add(8 * time.Hour))
	e.poke("hourly")
	e.consistently("no backup while suspended", time.Second, func() (bool, string) {
		return e.sidecar.startedCount() == 2, fmt.Sprint(e.sidecar.startedCount(), " backups")
	})
}

// restoreFixture creates the database and a two-replica application, both running.
func restoreFixture(t *testing.T, cfg *rest.Config) *env {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.create(appDeployment("keycloak", 2))
	e.runPod("postgres-0", dbPods)
	e.runPod("keycloak-a", map[string]string{"pod": "keycloak"})
	e.runPod("keycloak-b", map[string]string{"pod": "keycloak"})
	return e
}

func restoreResource(name, to string) *kcv1.KeycloakBackup {
	kb := volumeBackup(name)
	kb.Spec.RestoreTo = to
	kb.Spec.ApplicationSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "keycloak"}}
	return kb
}

func testRestore(t *testing.T, cfg *rest.Config) {
	e := restoreFixture(t, cfg)
	target := time.Now().UTC().Add(-time.Hour).Truncate(time.Second).Format(time.RFC3339)
	e.create(restoreResource("pitr", target))

	// Step 2: the application goes to zero first, PostgreSQL keeps running.
	e.waitReplicas("keycloak", 0)
	if r := *e.deployment("postgres").Spec.Replicas; r != 1 {
		t.Fatalf("PostgreSQL scaled to %d before the application stopped", r)
	}
	e.deletePods(map[string]string{"pod": "keycloak"})
	// Step 3: PostgreSQL goes to zero.
	e.waitReplicas("postgres", 0)
	var jobs batchv1.JobList
	if err := e.c.List(e.ctx, &jobs, client.InNamespace(e.ns)); err != nil || len(jobs.Items) != 0 {
		t.Fatalf("restore Job created before PostgreSQL stopped: %d jobs, %v", len(jobs.Items), err)
	}
	e.deletePods(dbPods)
	// Step 4: the restore Job, into the data claim, moving the old data aside.
	e.setJobCondition("pitr-restore", true)
	job := &batchv1.Job{}
	if err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: "pitr-restore"}, job); err != nil {
		t.Fatal(err)
	}
	args := strings.Join(job.Spec.Template.Spec.Containers[0].Args, " ")
	wantArgs := "restore --storage file:///var/lib/kcbackup/archive --pgdata /var/lib/kcbackup/pgvolume/pgdata --to " + target +
		" --move-aside --handover --timeline latest --fetch-via http://127.0.0.1:8008 --fetch-token-file /var/run/kcbackup/token/token"
	if args != wantArgs {
		t.Errorf("restore Job args = %q, want %q", args, wantArgs)
	}
	claims := map[string]bool{}
	for _, v := range job.Spec.Template.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			claims[v.PersistentVolumeClaim.ClaimName] = true
		}
	}
	if !claims["postgres-data"] || !claims["archive"] {
		t.Errorf("restore Job claims = %v, want postgres-data and archive", claims)
	}
	if cmd := job.Spec.Template.Spec.Containers[0].Command; len(cmd) != 1 || cmd[0] != kccontroller.KcbackupPath {
		t.Errorf("restore Job command = %v, want %s (the path restore_command will name)", cmd, kccontroller.KcbackupPath)
	}
	if u := job.Spec.Template.Spec.Containers[0].SecurityContext.RunAsUser; u == nil || *u != 999 {
		t.Errorf("restore Job runs as %v, want the data directory's owner 999", u)
	}
	// Step 5: PostgreSQL starts again; step 6: it promotes to timeline 2 and archives.
	e.waitReplicas("postgres", 1)
	if r := *e.deployment("keycloak").Spec.Replicas; r != 0 {
		t.Fatalf("application scaled to %d before PostgreSQL archived on the new timeline", r)
	}
	e.runPod("postgres-1", dbPods)
	e.sidecar.with(func(f *fakeSidecar) { f.status.Timeline = 2; f.status.ArchivedLSN = "0/5000000" })
	// Step 7: the application comes back with its replicas.
	e.waitReplicas("keycloak", 2)
	kb := e.waitPhase("pitr", kcv1.PhaseRestored)
	if rs := kb.Status.Restore; rs == nil || rs.Step != kcv1.RestoreDone || rs.PreviousTimeline != 1 || rs.Timeline != 2 || rs.CompletionTime == nil {
		t.Errorf("status.restore = %+v, want Done from timeline 1 to 2", kb.Status.Restore)
	}
	for _, reason := range []string{"RestoreStarted", "Scaled", "RestoreJobCreated", "RestoreJobSucceeded", "KeycloakCleaned", kcv1.ReasonRestored} {
		e.waitEvent("pitr", reason)
	}
	// Step 7: before Keycloak started, the sidecar cleaned its database with the defaults.
	if kc := kb.Status.Restore.Keycloak; kc == nil || kc.Database != "keycloak" || kc.Sessions != kcv1.SessionsOnline ||
		kc.JGroupsPingRows != 2 || kc.UserSessionRows != 3 || kc.ClientSessionRows != 4 {
		t.Errorf("status.restore.keycloak = %+v, want the rows the sidecar removed from database keycloak with sessions online", kc)
	}
	e.sidecar.with(func(f *fakeSidecar) {
		if len(f.cleanups) != 1 || f.cleanups[0] != (apiclient.KeycloakCleanupRequest{Database: "keycloak", Sessions: "online"}) {
			t.Errorf("clean-up requests = %+v, want one for keycloak/online", f.cleanups)
		}
	})
	// The restore lock is given back.
	e.eventually("restore lock released", func() (bool, string) {
		v, held := e.deployment("postgres").Annotations[kccontroller.RestoreLockAnnotation]
		return !held, v
	})
	if d := job.Spec.ActiveDeadlineSeconds; d == nil || *d != 1800 {
		t.Errorf("restore Job activeDeadlineSeconds = %v, want 1800 (the default timeout)", d)
	}
	if p := job.Spec.PodFailurePolicy; p == nil || len(p.Rules) != 1 || p.Rules[0].OnExitCodes == nil || p.Rules[0].OnExitCodes.Values[0] != 4 {
		t.Errorf("restore Job podFailurePolicy = %+v, want FailJob on exit code 4", p)
	}
	if v := e.gauge("kcbackup_operator_restore_failed", "pitr"); v != 0 {
		t.Errorf("restore_failed = %v, want 0", v)
	}

	// It never runs twice: restoreTo is immutable, and reconciling again does nothing.
	kb = e.kb("pitr")
	patch := client.MergeFrom(kb.DeepCopy())
	kb.Spec.RestoreTo = kcv1.RestoreLatest
	if err := e.c.Patch(e.ctx, kb, patch); !apierrors.IsInvalid(err) {
		t.Errorf("changing restoreTo: err = %v, want Invalid", err)
	}
	e.poke("pitr")
	e.consistently("a finished restore stays finished", time.Second, func() (bool, string) {
		kb := e.kb("pitr")
		return kb.Status.Phase == kcv1.PhaseRestored && *e.deployment("postgres").Spec.Replicas == 1, describe(kb)
	})
}

func testRestoreJobFails(t *testing.T, cfg *rest.Config) {
	e := restoreFixture(t, cfg)
	e.create(restoreResource("pitr", kcv1.RestoreLatest))
	e.waitReplicas("keycloak", 0)
	e.deletePods(map[string]string{"pod": "keycloak"})
	e.waitReplicas("postgres", 0)
	e.deletePods(dbPods)
	e.setJobCondition("pitr-restore", false)
	kb := e.waitCondition("pitr", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonRestoreJobFailed)
	if kb.Status.Phase != kcv1.PhaseFailed || !strings.Contains(kb.Condition(kcv1.ConditionReady).Message, "moved aside") {
		t.Errorf("status = %s; want Failed saying the old data was moved aside", describe(kb))
	}
	if v := e.gauge("kcbackup_operator_restore_failed", "pitr"); v != 1 {
		t.Errorf("restore_failed = %v, want 1", v)
	}
	e.poke("pitr")
	e.consistently("database and application stay stopped after a failed restore", time.Second, func() (bool, string) {
		p, k := *e.deployment("postgres").Spec.Replicas, *e.deployment("keycloak").Spec.Replicas
		return p == 0 && k == 0, fmt.Sprintf("postgres %d keycloak %d", p, k)
	})
}

func testRestoreOutsideWindow(t *testing.T, cfg *rest.Config) {
	e := restoreFixture(t, cfg)
	e.create(restoreResource("future", time.Now().UTC().Add(48*time.Hour).Format(time.RFC3339)))
	kb := e.waitCondition("future", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonTargetOutsideWindow)
	if kb.Status.Phase != kcv1.PhaseFailed {
		t.Errorf("phase = %s, want Failed", kb.Status.Phase)
	}
	e.waitEvent("future", kcv1.ReasonTargetOutsideWindow)
	e.consistently("nothing scaled, no Job", time.Second, func() (bool, string) {
		var jobs batchv1.JobList
		_ = e.c.List(e.ctx, &jobs, client.InNamespace(e.ns))
		p, k := *e.deployment("postgres").Spec.Replicas, *e.deployment("keycloak").Spec.Replicas
		return p == 1 && k == 2 && len(jobs.Items) == 0, fmt.Sprintf("postgres %d keycloak %d jobs %d", p, k, len(jobs.Items))
	})
}

func testAdmission(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	for name, mutate := range map[string]func(kb *kcv1.KeycloakBackup){
		"both storages":     func(kb *kcv1.KeycloakBackup) { kb.Spec.Storage.S3 = &kcv1.S3Storage{Bucket: "bucket"} },
		"no storage":        func(kb *kcv1.KeycloakBackup) { kb.Spec.Storage = kcv1.Storage{} },
		"garbage restoreTo": func(kb *kcv1.KeycloakBackup) { kb.Spec.RestoreTo = "yesterday at noon" },
		"restoreTo without zone": func(kb *kcv1.KeycloakBackup) {
			kb.Spec.RestoreTo = "2026-03-01T12:00:00"
		},
		"schedule and restoreTo": func(kb *kcv1.KeycloakBackup) {
			kb.Spec.Schedule, kb.Spec.RestoreTo = "@daily", kcv1.RestoreLatest
		},
		"empty instanceSelector": func(kb *kcv1.KeycloakBackup) { kb.Spec.InstanceSelector = metav1.LabelSelector{} },
		"bad keepWithin": func(kb *kcv1.KeycloakBackup) {
			kb.Spec.Schedule, kb.Spec.Retention = "@daily", &kcv1.Retention{KeepWithin: "7d"}
		},
		"empty claimName":                   func(kb *kcv1.KeycloakBackup) { kb.Spec.Storage.Volume.ClaimName = "" },
		"restore options without restoreTo": func(kb *kcv1.KeycloakBackup) { kb.Spec.Restore = &kcv1.RestoreOptions{} },
		"restore timeout under a minute": func(kb *kcv1.KeycloakBackup) {
			kb.Spec.RestoreTo, kb.Spec.Restore = kcv1.RestoreLatest, &kcv1.RestoreOptions{Timeout: &metav1.Duration{Duration: time.Second}}
		},
		"unknown sessions mode": func(kb *kcv1.KeycloakBackup) {
			kb.Spec.RestoreTo, kb.Spec.Restore = kcv1.RestoreLatest, &kcv1.RestoreOptions{Sessions: "offline"}
		},
	} {
		kb := volumeBackup("bad-" + strings.ReplaceAll(name, " ", "-"))
		mutate(kb)
		kb.Namespace = e.ns
		err := e.c.Create(e.ctx, kb)
		if !apierrors.IsInvalid(err) {
			t.Errorf("%s: create err = %v, want Invalid", name, err)
		}
	}
	var list kcv1.KeycloakBackupList
	if err := e.c.List(e.ctx, &list, client.InNamespace(e.ns)); err != nil || len(list.Items) != 0 {
		t.Errorf("%d resources exist after rejected creates (%v)", len(list.Items), err)
	}
	e.assertUntouched("postgres")
}

func testInvalidSpecConditions(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	cronKB := volumeBackup("bad-cron")
	cronKB.Spec.Schedule = "61 * * * *"
	e.create(cronKB)
	timeKB := volumeBackup("bad-time")
	timeKB.Spec.RestoreTo = "2026-02-30T12:00:00Z" // the right shape, no such day
	e.create(timeKB)

	kb := e.waitCondition("bad-cron", kcv1.ConditionValid, metav1.ConditionFalse, kcv1.ReasonInvalidSchedule)
	if kb.Status.Phase != kcv1.PhaseFailed || !strings.Contains(kb.Condition(kcv1.ConditionValid).Message, "61 * * * *") {
		t.Errorf("status = %s; want Failed naming the cron expression", describe(kb))
	}
	kb = e.waitCondition("bad-time", kcv1.ConditionValid, metav1.ConditionFalse, kcv1.ReasonInvalidRestoreTarget)
	if !strings.Contains(kb.Condition(kcv1.ConditionValid).Message, "spec.restoreTo") {
		t.Errorf("Valid message %q does not name spec.restoreTo", kb.Condition(kcv1.ConditionValid).Message)
	}
	e.waitEvent("bad-cron", kcv1.ReasonInvalidSchedule)
	e.consistently("no side effect of invalid specs", 500*time.Millisecond, func() (bool, string) {
		return sidecarOf(e.deployment("postgres")) == nil && e.sidecar.startedCount() == 0, "sidecar injected or backup started"
	})
	e.assertUntouched("postgres")
}

func testMissingSecret(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.create(s3Backup("s3"))
	kb := e.waitCondition("s3", kcv1.ConditionValid, metav1.ConditionFalse, kcv1.ReasonSecretMissing)
	if msg := kb.Condition(kcv1.ConditionValid).Message; !strings.Contains(msg, `"s3-creds"`) || !strings.Contains(msg, "credentialsSecret") {
		t.Errorf("message %q does not name the Secret and the field", msg)
	}
	e.assertUntouched("postgres")

	// Once the Secret exists, the sidecar is injected with the credentials taken from it.
	e.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s3-creds"},
		Data: map[string][]byte{"AWS_ACCESS_KEY_ID": []byte("AKIAEXAMPLE"), "AWS_SECRET_ACCESS_KEY": []byte("very-secret")}})
	e.eventually("sidecar injected", func() (bool, string) { return sidecarOf(e.deployment("postgres")) != nil, "" })
	sc := sidecarOf(e.deployment("postgres"))
	for _, v := range sc.Env {
		switch v.Name {
		case "KCBACKUP_STORAGE":
			if v.Value != "s3://kc-archive/prod" {
				t.Errorf("KCBACKUP_STORAGE = %q, want s3://kc-archive/prod", v.Value)
			}
		case "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID":
			if v.Value != "" || v.ValueFrom == nil || v.ValueFrom.SecretKeyRef == nil || v.ValueFrom.SecretKeyRef.Name != "s3-creds" {
				t.Errorf("%s = %+v, want a reference to Secret s3-creds, never a value", v.Name, v)
			}
		}
	}
	var pgCreds int
	for _, v := range e.deployment("postgres").Spec.Template.Spec.Containers[0].Env {
		if strings.HasPrefix(v.Name, "AWS_") && v.ValueFrom != nil && v.ValueFrom.SecretKeyRef != nil && v.ValueFrom.SecretKeyRef.Name == "s3-creds" {
			pgCreds++
		}
	}
	if pgCreds != 0 {
		t.Errorf("postgres container has %d credential references, want none (restore_command fetches through the sidecar)", pgCreds)
	}
	kb = e.kb("s3")
	if strings.Contains(describe(kb), "very-secret") {
		t.Error("the status contains the secret access key")
	}
}

func testWorkloadMatching(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(volumeBackup("none"))
	kb := e.waitCondition("none", kcv1.ConditionInstanceResolved, metav1.ConditionFalse, kcv1.ReasonNoWorkloadMatched)
	if kb.Status.Phase == kcv1.PhaseFailed {
		t.Errorf("no workload yet is not final: phase %s", kb.Status.Phase)
	}
	e.waitEvent("none", kcv1.ReasonNoWorkloadMatched)

	e.create(postgresDeployment("postgres", dbLabels))
	e.create(postgresDeployment("postgres-copy", dbLabels))
	kb = e.waitCondition("none", kcv1.ConditionInstanceResolved, metav1.ConditionFalse, kcv1.ReasonMultipleWorkloadsMatched)
	if msg := kb.Condition(kcv1.ConditionInstanceResolved).Message; !strings.Contains(msg, "Deployment/postgres,") || !strings.Contains(msg, "Deployment/postgres-copy") {
		t.Errorf("message %q does not name both workloads", msg)
	}
	e.assertUntouched("postgres")
	e.assertUntouched("postgres-copy")
}

func testConflict(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s3-creds"},
		Data: map[string][]byte{"AWS_ACCESS_KEY_ID": []byte("a"), "AWS_SECRET_ACCESS_KEY": []byte("b")}})
	first := volumeBackup("first")
	first.Spec.Schedule = "@daily"
	e.create(first)
	e.eventually("sidecar injected by the first", func() (bool, string) { return sidecarOf(e.deployment("postgres")) != nil, "" })
	time.Sleep(1100 * time.Millisecond) // creation timestamps have a one-second resolution
	later := s3Backup("later")
	later.Spec.Schedule = "@daily"
	e.create(later)
	kb := e.waitCondition("later", kcv1.ConditionConflict, metav1.ConditionTrue, kcv1.ReasonStorageConflict)
	if !strings.Contains(kb.Condition(kcv1.ConditionConflict).Message, `"first"`) {
		t.Errorf("Conflict message %q does not name the other resource", kb.Condition(kcv1.ConditionConflict).Message)
	}
	e.waitEvent("later", kcv1.ReasonStorageConflict)
	e.consistently("the first resource's storage stays injected", time.Second, func() (bool, string) {
		for _, v := range sidecarOf(e.deployment("postgres")).Env {
			if v.Name == "KCBACKUP_STORAGE" {
				return v.Value == "file:///var/lib/kcbackup/archive", v.Value
			}
		}
		return false, "no KCBACKUP_STORAGE"
	})
	if c := e.kb("first").Condition(kcv1.ConditionConflict); c == nil || c.Status != metav1.ConditionFalse {
		t.Errorf("the first resource's Conflict = %+v, want False", c)
	}
}

func testDeletion(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	gone := volumeBackup("gone")
	gone.Annotations = map[string]string{kccontroller.KeepOnDeleteAnnotation: "true"}
	e.create(gone)
	e.waitPhase("gone", kcv1.PhaseCompleted)
	if err := e.c.Delete(e.ctx, e.kb("gone")); err != nil {
		t.Fatal(err)
	}
	e.eventually("resource deleted", func() (bool, string) {
		err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: "gone"}, &kcv1.KeycloakBackup{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
	e.consistently("archive, sidecar and token kept", time.Second, func() (bool, string) {
		var prunes int
		e.sidecar.with(func(f *fakeSidecar) { prunes = len(f.prunes) })
		var s corev1.Secret
		err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: kccontroller.TokenSecretName("postgres")}, &s)
		return prunes == 0 && err == nil && sidecarOf(e.deployment("postgres")) != nil, fmt.Sprintf("prunes %d, token err %v", prunes, err)
	})
	if v := e.gauge("kcbackup_operator_last_backup_failed", "gone"); v != -1 {
		t.Errorf("metrics of a deleted resource remain (last_backup_failed = %v)", v)
	}
}

func testBackupRunning(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.runPod("postgres-0", dbPods)
	e.sidecar.with(func(f *fakeSidecar) { f.holdNext = true })
	e.create(volumeBackup("first"))
	e.waitPhase("first", kcv1.PhaseBackingUp)
	e.create(volumeBackup("second"))
	kb := e.waitCondition("second", kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonWaiting)
	if msg := kb.Condition(kcv1.ConditionReady).Message; !strings.Contains(msg, "backup-1") {
		t.Errorf("message %q does not name the running backup", msg)
	}
	e.sidecar.with(func(f *fakeSidecar) { f.holdNext = false })
	first, second := e.waitPhase("first", kcv1.PhaseCompleted), e.waitPhase("second", kcv1.PhaseCompleted)
	if first.Status.Backups[0].ID != "backup-1" || second.Status.Backups[0].ID != "backup-2" {
		t.Errorf("backups = %s and %s; want one each, one-to-one", first.Status.Backups[0].ID, second.Status.Backups[0].ID)
	}
}
