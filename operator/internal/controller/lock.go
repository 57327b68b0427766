package controller

import (
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

// RestoreLockAnnotation, on a PostgreSQL workload, names the KeycloakBackup restoring it as
// "<name>/<uid>". It is set and removed with optimistic locking (the patch carries the
// workload's resourceVersion), so of two restores racing for one workload exactly one gets
// it. A lock whose holder no longer exists, or has finished, is free.
const RestoreLockAnnotation = "kcbackup.keycloak.org/restore-lock"

func lockValue(kb *kcv1.KeycloakBackup) string { return kb.Name + "/" + string(kb.UID) }

// lockHolder returns the live restore holding w's lock, or nil when the lock is free. The
// holder is read from the API server: the cache may not know it yet.
func (r *Reconciler) lockHolder(ctx context.Context, w workload) (*kcv1.KeycloakBackup, error) {
	v := w.Obj.GetAnnotations()[RestoreLockAnnotation]
	name, uid, ok := strings.Cut(v, "/")
	if !ok {
		return nil, nil
	}
	holder := &kcv1.KeycloakBackup{}
	err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: w.Obj.GetNamespace(), Name: name}, holder)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get the restore holding %s: %w", w, err)
	}
	if string(holder.UID) != uid || holder.IsTerminal() || holder.DeletionTimestamp != nil {
		return nil, nil
	}
	return holder, nil
}

// acquireRestoreLock takes w's restore lock for kb. It returns the other live restore that
// holds it instead, or a Conflict error when w changed meanwhile (the caller retries).
func (r *Reconciler) acquireRestoreLock(ctx context.Context, kb *kcv1.KeycloakBackup, w workload) (*kcv1.KeycloakBackup, error) {
	if w.Obj.GetAnnotations()[RestoreLockAnnotation] == lockValue(kb) {
		return nil, nil
	}
	holder, err := r.lockHolder(ctx, w)
	if err != nil || holder != nil {
		return holder, err
	}
	before := w.Obj.DeepCopyObject().(client.Object)
	ann := w.Obj.GetAnnotations()
	if ann == nil {
		ann = map[string]string{}
	}
	ann[RestoreLockAnnotation] = lockValue(kb)
	w.Obj.SetAnnotations(ann)
	if err := r.Client.Patch(ctx, w.Obj, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return nil, fmt.Errorf("take the restore lock of %s: %w", w, err)
	}
	log.FromContext(ctx).Info("took the restore lock", "workload", w.String())
	return nil, nil
}

// releaseRestoreLock removes kb's lock from the workload it restored, if kb still holds it.
func (r *Reconciler) releaseRestoreLock(ctx context.Context, kb *kcv1.KeycloakBackup) error {
	rs := kb.Status.Restore
	if rs == nil || rs.Database == nil {
		return nil
	}
	w, err := getWorkload(ctx, r.Client, kb.Namespace, rs.Database.Kind, rs.Database.Name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil || w.Obj.GetAnnotations()[RestoreLockAnnotation] != lockValue(kb) {
		return err
	}
	before := w.Obj.DeepCopyObject().(client.Object)
	ann := w.Obj.GetAnnotations()
	delete(ann, RestoreLockAnnotation)
	w.Obj.SetAnnotations(ann)
	if err := r.Client.Patch(ctx, w.Obj, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("release the restore lock of %s: %w", w, err)
	}
	log.FromContext(ctx).Info("released the restore lock", "workload", w.String())
	return nil
}

// pausedForRestore reports whether a restore holds w: backups, schedules and retention
// then wait, with Ready saying why.
func (r *Reconciler) pausedForRestore(ctx context.Context, kb *kcv1.KeycloakBackup, w workload) (bool, error) {
	holder, err := r.lockHolder(ctx, w)
	if err != nil || holder == nil {
		return false, err
	}
	msg := fmt.Sprintf("KeycloakBackup %q is restoring %s; backups and retention wait until it ends", holder.Name, w)
	if c := kb.Condition(kcv1.ConditionReady); c == nil || c.Reason != kcv1.ReasonPausedForRestore {
		r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, kcv1.ReasonPausedForRestore, "Schedule", "%s", msg)
	}
	kb.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, kcv1.ReasonPausedForRestore, msg)
	return true, nil
}

// keepRestoreLock makes sure a restore past step 1 still holds its workload's lock, taking
// it again if someone removed it. lost is true when the caller must stop here: the
// workload changed meanwhile (retry), or another restore took the lock (this one fails).
func (r *Reconciler) keepRestoreLock(ctx context.Context, kb *kcv1.KeycloakBackup, db workload) (res ctrl.Result, lost bool, err error) {
	step := kb.Status.Restore.Step
	if step == kcv1.RestoreCheckingTarget || step == kcv1.RestoreDone {
		return ctrl.Result{}, false, nil
	}
	holder, err := r.acquireRestoreLock(ctx, kb, db)
	if apierrors.IsConflict(err) {
		return ctrl.Result{RequeueAfter: time.Millisecond}, true, nil
	}
	if err != nil || holder == nil {
		return ctrl.Result{}, err != nil, err
	}
	res, err = r.restoreFailed(kb, kcv1.ReasonRestoreConflict, fmt.Sprintf(
		"the restore lock of %s was removed and KeycloakBackup %q took it during step %s; this restore stops here, "+
			"with PostgreSQL and the application as they are", db, holder.Name, step))
	return res, true, err
}
