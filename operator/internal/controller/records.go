package controller

// Every backup an object: each base backup a schedule takes is written down as its own
// KeycloakBackup, a record (spec.backupID), owned by the schedule's resource, so backups can
// be listed, labelled and watched with kubectl. Retention deletes a record with its backup;
// deleting a record deletes no archived data (only retention removes backups).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

// The operator creates the records of a schedule's backups and deletes them with retention.
//
// +kubebuilder:rbac:groups=keycloak.org,resources=keycloakbackups,verbs=create;delete

// RecordOfLabel is the label on a record naming the resource whose schedule took its
// backup (the record's spec.from): `kubectl get kcb -l kcbackup.keycloak.org/record-of=NAME`.
const RecordOfLabel = "kcbackup.keycloak.org/record-of"

// backupIDTime matches the IDs the sidecar gives backups: their start time in UTC, with a
// counter when two started in the same second.
var backupIDTime = regexp.MustCompile(`^([0-9]{8})T([0-9]{6})Z(-[0-9]+)?$`)

// RecordName is the name of the record of backup id of the resource archive: the archive's
// name and the backup's start time, <archive>-<yyyymmddhhmmss> (with -N when the sidecar
// numbered two backups of one second). An ID of another form is lowercased, with what a
// name cannot hold replaced by dashes. A name longer than 253 characters keeps the end and
// shortens the archive's name, with a hash of it.
func RecordName(archive, id string) string {
	suffix := strings.ToLower(id)
	if m := backupIDTime.FindStringSubmatch(id); m != nil {
		suffix = m[1] + m[2] + m[3]
	} else {
		suffix = strings.Trim(strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
				return r
			}
			return '-'
		}, suffix), "-")
	}
	name := archive + "-" + suffix
	if len(name) <= 253 {
		return name
	}
	sum := sha256.Sum256([]byte(archive))
	keep := 253 - len(suffix) - 1 - 9
	return strings.TrimRight(archive[:max(keep, 1)], "-.") + "-" + hex.EncodeToString(sum[:])[:8] + "-" + suffix
}

// recordBackup writes down the backup id the schedule of kb just finished following: a
// record with its result (kb.Status.Backup when it succeeded, the Ready condition when it
// failed). It is idempotent, by name; a failure is reported in an Event, never stops the
// schedule: the backup is in the archive either way.
func (r *Reconciler) recordBackup(ctx context.Context, kb *kcv1.KeycloakBackup, id string, succeeded bool) {
	rec, err := r.ensureRecord(ctx, kb, id)
	if err == nil {
		err = r.writeRecordStatus(ctx, kb, rec, succeeded)
	}
	if err != nil {
		log.FromContext(ctx).Info("cannot record a backup as an object", "id", id, "error", err.Error())
		r.Recorder.Eventf(kb, nil, corev1.EventTypeWarning, "RecordFailed", "RecordBackup",
			"cannot write down backup %s as KeycloakBackup %s: %v", id, RecordName(kb.Name, id), err)
		return
	}
	r.Recorder.Eventf(kb, rec, corev1.EventTypeNormal, "BackupRecorded", "RecordBackup",
		"backup %s is KeycloakBackup %s (%s)", id, rec.Name, rec.Status.Phase)
}

// ensureRecord creates the record of backup id, or returns it when it exists and is kb's.
func (r *Reconciler) ensureRecord(ctx context.Context, kb *kcv1.KeycloakBackup, id string) (*kcv1.KeycloakBackup, error) {
	rec := &kcv1.KeycloakBackup{
		ObjectMeta: metav1.ObjectMeta{
			Name: RecordName(kb.Name, id), Namespace: kb.Namespace,
			Labels: map[string]string{RecordOfLabel: kb.Name, "app.kubernetes.io/managed-by": "kcbackup-operator"},
		},
		Spec: kcv1.KeycloakBackupSpec{From: kb.Name, BackupID: id},
	}
	if err := controllerutil.SetControllerReference(kb, rec, r.Client.Scheme()); err != nil {
		return nil, err
	}
	err := r.Client.Create(ctx, rec)
	if err == nil || !apierrors.IsAlreadyExists(err) {
		return rec, err
	}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(rec), rec); err != nil {
		return nil, err
	}
	if rec.Spec.BackupID != id || !metav1.IsControlledBy(rec, kb) {
		return nil, fmt.Errorf("KeycloakBackup %s exists and is not the record of backup %s of %s", rec.Name, id, kb.Name)
	}
	return rec, nil
}

// writeRecordStatus gives the record the result of its backup. It leaves lastBackupTime and
// lastFailedBackupTime unset: the alert gauges are seeded from them, and a record is not a
// resource that takes backups (its schedule's resource carries them).
func (r *Reconciler) writeRecordStatus(ctx context.Context, kb, rec *kcv1.KeycloakBackup, succeeded bool) error {
	before := rec.DeepCopy()
	st := &rec.Status
	st.Instance = kb.Status.Instance.DeepCopy()
	st.ObservedGeneration = rec.Generation
	ready := kb.Condition(kcv1.ConditionReady)
	switch {
	case succeeded && kb.Status.Backup != nil:
		st.Phase = kcv1.PhaseCompleted
		st.Backup = kb.Status.Backup.DeepCopy()
		st.OpensRange = kb.Status.OpensRange.DeepCopy()
		rec.SetCondition(kcv1.ConditionReady, metav1.ConditionTrue, kcv1.ReasonBackupCompleted,
			fmt.Sprintf("records base backup %s of %s, taken by the schedule of %s", rec.Spec.BackupID, describeInstance(kb), kb.Name))
	default:
		st.Phase = kcv1.PhaseFailed
		st.Backup = &kcv1.BackupRecord{ID: rec.Spec.BackupID}
		reason, msg := kcv1.ReasonBackupFailed, "base backup "+rec.Spec.BackupID+" failed"
		if ready != nil && ready.Status == metav1.ConditionFalse {
			reason, msg = ready.Reason, ready.Message
		}
		rec.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, reason, msg)
	}
	return r.Client.Status().Patch(ctx, rec, client.MergeFrom(before))
}

func describeInstance(kb *kcv1.KeycloakBackup) string {
	if i := kb.Status.Instance; i != nil {
		return i.Kind + " " + i.Name
	}
	return "the workload"
}

// deleteRecords deletes, after retention ran, the records of kb whose backups it removed,
// and the records of failed backups: retention runs after a backup completed, and one
// backup runs at a time, so every failed record there is older than a completed backup.
// A failure is reported in an Event; the next retention run tries again for failed ones.
func (r *Reconciler) deleteRecords(ctx context.Context, kb *kcv1.KeycloakBackup, removed []string) {
	var all kcv1.KeycloakBackupList
	if err := r.Client.List(ctx, &all, client.InNamespace(kb.Namespace), client.MatchingLabels{RecordOfLabel: kb.Name}); err != nil {
		r.Recorder.Eventf(kb, nil, corev1.EventTypeWarning, "RecordFailed", "DeleteRecords", "cannot list the records of %s: %v", kb.Name, err)
		return
	}
	gone := map[string]bool{}
	for _, id := range removed {
		gone[id] = true
	}
	for i := range all.Items {
		rec := &all.Items[i]
		if !rec.IsRecord() || !metav1.IsControlledBy(rec, kb) || rec.DeletionTimestamp != nil ||
			!gone[rec.Spec.BackupID] && rec.Status.Phase != kcv1.PhaseFailed {
			continue
		}
		uid := rec.UID
		err := r.Client.Delete(ctx, rec, client.Preconditions{UID: &uid})
		if err != nil && !apierrors.IsNotFound(err) {
			r.Recorder.Eventf(kb, nil, corev1.EventTypeWarning, "RecordFailed", "DeleteRecords", "cannot delete record %s: %v", rec.Name, err)
			continue
		}
		log.FromContext(ctx).Info("deleted the record of a backup", "record", rec.Name, "id", rec.Spec.BackupID, "phase", rec.Status.Phase)
	}
}
