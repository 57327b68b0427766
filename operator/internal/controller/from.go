package controller

// spec.from: one place for an archive's settings. A resource that names the archive's
// resource takes its instanceSelector, storage, postgres, encryption and sidecar settings,
// in memory, for one reconcile: what is stored is never changed, and every other step
// (instance, sidecar, backup, restore) sees an ordinary spec. Resources that repeat the
// settings instead (v1alpha1 before from) keep working: the instance concern compares them
// with the older resources of the same workload, as before (StorageConflict).

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

// resolveFrom prepares the spec the reconcile works with. ok is false when the caller must
// return res and err: the resource is a record (it does nothing), its from is unusable (for
// good), or a prerequisite is missing (a condition says which). When ok, the caller defers
// restore, which puts the stored spec back before the status is written.
func (r *Reconciler) resolveFrom(ctx context.Context, kb *kcv1.KeycloakBackup) (restore func(), res ctrl.Result, ok bool, err error) {
	nothing := func() {}
	retry := ctrl.Result{RequeueAfter: r.RetryInterval}
	// Step 1: a record stands for one backup its schedule's resource took and wrote down.
	if kb.IsRecord() && kb.Spec.From != "" {
		return nothing, ctrl.Result{}, false, nil
	}
	// Step 2: a resource with from says only what it does.
	if err := kb.Spec.ValidateFrom(); err != nil {
		return nothing, ctrl.Result{}, false, r.invalidFrom(kb, err)
	}
	if kb.Spec.From != "" {
		// Step 3: the archive's resource exists, and is one.
		var archive kcv1.KeycloakBackup
		err := r.Client.Get(ctx, client.ObjectKey{Namespace: kb.Namespace, Name: kb.Spec.From}, &archive)
		if apierrors.IsNotFound(err) || err == nil && archive.DeletionTimestamp != nil {
			r.setProblem(kb, kcv1.ConditionValid, kcv1.ReasonFromNotFound, fmt.Sprintf(
				"spec.from names KeycloakBackup %q, which does not exist in namespace %s: create it, with the archive's "+
					"instanceSelector and storage, or name the one that has them", kb.Spec.From, kb.Namespace))
			if kb.Status.Phase == "" {
				kb.Status.Phase = kcv1.PhasePending
			}
			return nothing, retry, false, nil
		}
		if err != nil {
			return nothing, ctrl.Result{}, false, fmt.Errorf("get KeycloakBackup %s (spec.from): %w", kb.Spec.From, err)
		}
		if err := archive.CanBeArchiveOf(kb.Name); err != nil {
			return nothing, ctrl.Result{}, false, r.invalidFrom(kb, err)
		}
		// Step 4: its settings, for this reconcile only.
		stored := kb.Spec.DeepCopy()
		kb.Spec.TakeArchiveFrom(&archive.Spec)
		restore = func() { kb.Spec = *stored }
	} else {
		restore = nothing
	}
	// Step 5: the encryption keys exist (checked here: the instance concern checks the
	// storage and connection Secrets).
	if ok, err := r.checkEncryptionSecrets(ctx, kb); err != nil || !ok {
		restore()
		return nothing, retry, false, err
	}
	return restore, ctrl.Result{}, true, nil
}

// invalidFrom ends the resource Failed with Valid False, reason InvalidFrom: only an edit of
// the resource (or a new one) changes it.
func (r *Reconciler) invalidFrom(kb *kcv1.KeycloakBackup, err error) error {
	reason := kcv1.ReasonInvalidFrom
	var se *kcv1.SpecError
	if errors.As(err, &se) {
		reason = se.Reason
	}
	r.setProblem(kb, kcv1.ConditionValid, reason, err.Error())
	kb.Status.Phase = kcv1.PhaseFailed
	return reconcile.TerminalError(err)
}

// checkEncryptionSecrets verifies that each Secret spec.encryption names exists and holds
// its key; a restore of an encrypted archive needs the identity.
func (r *Reconciler) checkEncryptionSecrets(ctx context.Context, kb *kcv1.KeycloakBackup) (bool, error) {
	e := kb.Spec.Encryption
	if e == nil {
		return true, nil
	}
	for _, ref := range []struct {
		field string
		key   *kcv1.SecretKey
	}{{"spec.encryption.recipientsSecret", e.RecipientsSecret}, {"spec.encryption.identitySecret", e.IdentitySecret}} {
		if ref.key == nil {
			continue
		}
		var s corev1.Secret
		err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: kb.Namespace, Name: ref.key.Name}, &s)
		if apierrors.IsNotFound(err) {
			r.setProblem(kb, kcv1.ConditionValid, kcv1.ReasonSecretMissing,
				fmt.Sprintf("Secret %q named by %s does not exist in namespace %s", ref.key.Name, ref.field, kb.Namespace))
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("get Secret %s: %w", ref.key.Name, err)
		}
		if len(s.Data[ref.key.Key]) == 0 {
			r.setProblem(kb, kcv1.ConditionValid, kcv1.ReasonSecretMissing,
				fmt.Sprintf("Secret %q named by %s has no key %q (or it is empty)", ref.key.Name, ref.field, ref.key.Key))
			return false, nil
		}
	}
	return true, nil
}
