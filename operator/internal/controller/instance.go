package controller

// The instance concern, shared by the backup and the restore controllers: which PostgreSQL
// workload a resource protects, whether another resource archives it elsewhere, the Secrets
// it names, the sidecar's token and the sidecar injected into the pod template. Every
// reconcile of either controller runs these steps first (prepareInstance), so the work
// that follows always sees the workload as it is now.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

// instance is the PostgreSQL workload a resource protects, as prepareInstance found it.
type instance struct {
	w     workload
	loc   dataLocation
	token string // the sidecar's admin token
}

// prepareInstance runs the instance steps. ok is false when the caller must return res and
// err: the spec is invalid (for good), or a prerequisite is missing (a condition says which).
func (r *Reconciler) prepareInstance(ctx context.Context, kb *kcv1.KeycloakBackup) (instance, ctrl.Result, bool, error) {
	retry := ctrl.Result{RequeueAfter: r.RetryInterval}
	// Step 1: refuse what admission could not check, for good.
	if err := kb.Spec.Validate(); err != nil {
		var se *kcv1.SpecError
		reason := kcv1.ReasonInvalidSpec
		if errors.As(err, &se) {
			reason = se.Reason
		}
		r.setProblem(kb, kcv1.ConditionValid, reason, err.Error())
		kb.Status.Phase = kcv1.PhaseFailed
		return instance{}, ctrl.Result{}, false, reconcile.TerminalError(err)
	}
	kb.SetCondition(kcv1.ConditionValid, metav1.ConditionTrue, kcv1.ReasonValid, "the spec is valid")
	if kb.Status.Phase == "" {
		kb.Status.Phase = kcv1.PhasePending
	}
	// Step 2: exactly one workload, holding its data on a volume.
	w, loc, ok, err := r.resolveInstance(ctx, kb)
	if err != nil || !ok {
		return instance{}, retry, false, err
	}
	// Step 3: an older resource archiving the same workload elsewhere wins.
	if ok, err := r.checkConflict(ctx, kb, w); err != nil || !ok {
		return instance{}, retry, false, err
	}
	// Step 4: every Secret the spec names exists, with its key.
	if ok, err := r.checkSecrets(ctx, kb); err != nil || !ok {
		return instance{}, retry, false, err
	}
	// Step 5: the token Secret the sidecar requires on its API.
	token, err := r.ensureToken(ctx, kb, w)
	if err != nil {
		return instance{}, ctrl.Result{}, false, err
	}
	// Step 6: the sidecar in the pod template, kept there (or, in verify mode, checked).
	if ok, err := r.ensureSidecar(ctx, kb, w, loc); err != nil || !ok {
		return instance{}, retry, false, err
	}
	return instance{w: w, loc: loc, token: token}, ctrl.Result{}, true, nil
}

// setProblem sets a condition to False and, when it just became so or changed reason,
// emits a Warning event; Ready follows with the same reason.
func (r *Reconciler) setProblem(kb *kcv1.KeycloakBackup, condType, reason, msg string) {
	status := metav1.ConditionFalse
	if condType == kcv1.ConditionConflict {
		status = metav1.ConditionTrue
	}
	if c := kb.Condition(condType); c == nil || c.Status != status || c.Reason != reason {
		r.Recorder.Eventf(kb, nil, corev1.EventTypeWarning, reason, "Validate", "%s", msg)
	}
	kb.SetCondition(condType, status, reason, msg)
	kb.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, reason, msg)
}

// resolveInstance finds the one workload the instance selector matches and where its data
// lies. ok is false, with a condition set, when there is not exactly one.
func (r *Reconciler) resolveInstance(ctx context.Context, kb *kcv1.KeycloakBackup) (workload, dataLocation, bool, error) {
	ws, err := listWorkloads(ctx, r.Client, kb.Namespace, &kb.Spec.InstanceSelector)
	if err != nil {
		return workload{}, dataLocation{}, false, err
	}
	switch len(ws) {
	case 0:
		r.setProblem(kb, kcv1.ConditionInstanceResolved, kcv1.ReasonNoWorkloadMatched,
			"spec.instanceSelector matches no Deployment or StatefulSet in namespace "+kb.Namespace)
		return workload{}, dataLocation{}, false, nil
	case 1:
	default:
		names := ""
		for i, w := range ws {
			if i > 0 {
				names += ", "
			}
			names += w.String()
		}
		r.setProblem(kb, kcv1.ConditionInstanceResolved, kcv1.ReasonMultipleWorkloadsMatched,
			"spec.instanceSelector matches "+strconv.Itoa(len(ws))+" workloads ("+names+"); it must match exactly one")
		return workload{}, dataLocation{}, false, nil
	}
	w := ws[0]
	if !r.optedIn(w.Obj) {
		r.setProblem(kb, kcv1.ConditionInstanceResolved, ReasonWorkloadNotOptedIn,
			notOptedInMessage(kb, w.String(), "inject the kcbackup sidecar into, patch, scale or mount"))
		return workload{}, dataLocation{}, false, nil
	}
	loc, err := locateData(w, kb.Spec.Postgres.ContainerName, kb.Spec.Postgres.DataDir)
	if err != nil {
		r.setProblem(kb, kcv1.ConditionInstanceResolved, kcv1.ReasonDataVolumeNotFound, err.Error())
		return workload{}, dataLocation{}, false, nil
	}
	kb.Status.Instance = &kcv1.WorkloadReference{Kind: w.Kind, Name: w.Name()}
	kb.SetCondition(kcv1.ConditionInstanceResolved, metav1.ConditionTrue, kcv1.ReasonWorkloadFound, "selected "+w.String())
	status, reason, msg := judgeLayout(w, loc)
	kb.SetCondition(kcv1.ConditionRestorable, status, reason, msg)
	return w, loc, true, nil
}

// checkConflict refuses to act when the oldest resource selecting the same workload has a
// different archive: two sidecars cannot archive one database to two places. Only the
// oldest counts: a later one that disagrees with it is itself in conflict and does nothing,
// so it neither blocks nor licenses the resources after it.
func (r *Reconciler) checkConflict(ctx context.Context, kb *kcv1.KeycloakBackup, w workload) (bool, error) {
	var all kcv1.KeycloakBackupList
	if err := r.Client.List(ctx, &all, client.InNamespace(kb.Namespace)); err != nil {
		return false, fmt.Errorf("list KeycloakBackups: %w", err)
	}
	var oldest *kcv1.KeycloakBackup
	for i := range all.Items {
		o := &all.Items[i]
		if o.UID == kb.UID || o.DeletionTimestamp != nil || !selects(&o.Spec.InstanceSelector, w) || !olderThan(o, kb) {
			continue
		}
		if oldest == nil || olderThan(o, oldest) {
			oldest = o
		}
	}
	if oldest != nil && !kb.Spec.SameArchive(&oldest.Spec) {
		o := oldest
		r.setProblem(kb, kcv1.ConditionConflict, kcv1.ReasonStorageConflict, fmt.Sprintf(
			"KeycloakBackup %q, created earlier, selects %s with a different storage or postgres connection; "+
				"this resource does nothing until they agree or %q is deleted. Write the archive's settings once: "+
				"replace this resource's instanceSelector, storage, postgres, encryption and sidecar with spec.from: %s", o.Name, w, o.Name, o.Name))
		return false, nil
	}
	kb.SetCondition(kcv1.ConditionConflict, metav1.ConditionFalse, kcv1.ReasonNoConflict, "no other resource archives "+w.String()+" elsewhere")
	return true, nil
}

func olderThan(a, b *kcv1.KeycloakBackup) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Name < b.Name
}

// checkSecrets verifies that each Secret the spec names exists and holds its key.
func (r *Reconciler) checkSecrets(ctx context.Context, kb *kcv1.KeycloakBackup) (bool, error) {
	type ref struct{ field, name, key string }
	var refs []ref
	if s3 := kb.Spec.Storage.S3; s3 != nil {
		if c := s3.CredentialsSecret; c != nil {
			refs = append(refs,
				ref{"spec.storage.s3.credentialsSecret", c.Name, orDefault(c.AccessKeyIDKey, "AWS_ACCESS_KEY_ID")},
				ref{"spec.storage.s3.credentialsSecret", c.Name, orDefault(c.SecretAccessKeyKey, "AWS_SECRET_ACCESS_KEY")})
		}
		if c := s3.CASecret; c != nil {
			refs = append(refs, ref{"spec.storage.s3.caSecret", c.Name, c.Key})
		}
	}
	if p := kb.Spec.Postgres.PasswordSecret; p != nil {
		refs = append(refs, ref{"spec.postgres.passwordSecret", p.Name, p.Key})
	}
	for _, rf := range refs {
		var s corev1.Secret
		err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: kb.Namespace, Name: rf.name}, &s)
		if apierrors.IsNotFound(err) {
			r.setProblem(kb, kcv1.ConditionValid, kcv1.ReasonSecretMissing,
				fmt.Sprintf("Secret %q named by %s does not exist in namespace %s", rf.name, rf.field, kb.Namespace))
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("get Secret %s: %w", rf.name, err)
		}
		if _, ok := s.Data[rf.key]; !ok {
			r.setProblem(kb, kcv1.ConditionValid, kcv1.ReasonSecretMissing,
				fmt.Sprintf("Secret %q named by %s has no key %q", rf.name, rf.field, rf.key))
			return false, nil
		}
	}
	kb.SetCondition(kcv1.ConditionValid, metav1.ConditionTrue, kcv1.ReasonValid, "the spec is valid and the Secrets it names exist")
	return true, nil
}

// ensureSidecar injects the sidecar into the workload's pod template, or replaces it when
// the storage or image changed. A template change rolls the pod, so it happens only then.
func (r *Reconciler) ensureSidecar(ctx context.Context, kb *kcv1.KeycloakBackup, w workload, loc dataLocation) (bool, error) {
	if err := r.decideDelivery(ctx, kb, w, loc); err != nil {
		return false, err
	}
	sc, err := buildSidecar(r.SidecarImage, r.delivery(w.Obj.GetNamespace()), &kb.Spec, w.Name(), loc)
	if err != nil {
		return false, err
	}
	if injected(w.Template(), sc) {
		kb.SetCondition(kcv1.ConditionSidecarUpToDate, metav1.ConditionTrue, kcv1.ReasonSidecarUpToDate,
			"the pod template of "+w.String()+" carries the sidecar this operator builds")
		return true, nil
	}
	if held, err := r.upgradeHeld(kb, w, loc); err != nil || held {
		return held, err
	}
	if verifyOnly(w) {
		r.sidecarNotDeclared(kb, w)
		return false, nil
	}
	before := w.Obj.DeepCopyObject().(client.Object)
	inject(w.Template(), sc)
	if err := r.Client.Patch(ctx, w.Obj, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		if sc.BinaryCopy == nil && apierrors.IsInvalid(err) && strings.Contains(err.Error(), imageVolume) {
			// An API server with the ImageVolume feature off drops the volume's source, and
			// the volume without one is invalid: say what to change instead of retrying blindly.
			r.setProblem(kb, kcv1.ConditionSidecarReady, kcv1.ReasonImageVolumesUnavailable, fmt.Sprintf(
				"the API server refused the sidecar's image volume %q in %s (%v): image volumes are off on this cluster; run the "+
					"operator with --binary-delivery=init-container (see docs/deployments.md)", imageVolume, w, err))
			return false, nil
		}
		return false, fmt.Errorf("inject sidecar into %s: %w", w, err)
	}
	log.FromContext(ctx).Info("injected sidecar", "workload", w.String(), "storage", describeStorage(&kb.Spec.Storage))
	r.Recorder.Eventf(kb, w.Obj, corev1.EventTypeNormal, "SidecarInjected", "InjectSidecar",
		"injected the kcbackup sidecar into %s, archiving to %s", w, describeStorage(&kb.Spec.Storage))
	kb.SetCondition(kcv1.ConditionSidecarReady, metav1.ConditionFalse, kcv1.ReasonSidecarStarting,
		"sidecar injected into "+w.String()+"; waiting for the pod to roll")
	kb.SetCondition(kcv1.ConditionSidecarUpToDate, metav1.ConditionTrue, kcv1.ReasonSidecarUpToDate,
		"the operator injected its sidecar into the pod template of "+w.String())
	return true, nil
}

// sidecarClient returns a client for the sidecar of a running pod of w. ok is false, with
// SidecarReady False, when no pod runs yet.
func (r *Reconciler) sidecarClient(ctx context.Context, kb *kcv1.KeycloakBackup, w workload, token string) (*apiclient.Client, bool, error) {
	return r.sidecarClientWith(ctx, kb, w, token, r.HTTPClient)
}

// sidecarClientWith is sidecarClient calling through hc (nil: apiclient's default).
func (r *Reconciler) sidecarClientWith(ctx context.Context, kb *kcv1.KeycloakBackup, w workload, token string, hc *http.Client) (*apiclient.Client, bool, error) {
	pods, err := w.pods(ctx, r.Client)
	if err != nil {
		return nil, false, err
	}
	running := runningPods(pods)
	if len(running) == 0 {
		kb.SetCondition(kcv1.ConditionSidecarReady, metav1.ConditionFalse, kcv1.ReasonSidecarStarting, "no running pod of "+w.String()+" yet")
		return nil, false, nil
	}
	if len(running) == 1 {
		return apiclient.New(r.SidecarEndpoint(running[0]), token, hc), true, nil
	}
	// Several servers (a primary and standbys): only the primary's sidecar archives and
	// takes base backups; a standby's stands by (docs/replicas.md). Ask each which one its
	// server is (pg_is_in_recovery(), in status.role); a sidecar too old to say is the
	// primary's when it streams WAL.
	for _, p := range running {
		sc := apiclient.New(r.SidecarEndpoint(p), token, hc)
		if st, err := sc.Status(ctx); err == nil && (st.Role == apiclient.RolePrimary || st.Role == "" && st.Streaming) {
			return sc, true, nil
		}
	}
	kb.SetCondition(kcv1.ConditionSidecarReady, metav1.ConditionFalse, kcv1.ReasonSidecarStarting, fmt.Sprintf(
		"%d pods of %s run and no sidecar among them streams WAL: waiting for the primary's sidecar", len(running), w))
	return nil, false, nil
}

// sidecarStatus calls GET /v1/status and records the outcome in SidecarReady.
func (r *Reconciler) sidecarStatus(ctx context.Context, kb *kcv1.KeycloakBackup, sc *apiclient.Client) (apiclient.Status, bool) {
	st, err := sc.Status(ctx)
	if err != nil {
		kb.SetCondition(kcv1.ConditionSidecarReady, metav1.ConditionFalse, kcv1.ReasonSidecarUnreachable, err.Error())
		return st, false
	}
	if !st.Streaming && replicationRefused(st.LastError) {
		// It answers, but archives nothing: say why, and how to fix it.
		kb.SetCondition(kcv1.ConditionSidecarReady, metav1.ConditionFalse, kcv1.ReasonReplicationRefused, fmt.Sprintf(
			"PostgreSQL refuses the sidecar's replication connection, so nothing is archived: %s. Add a line to pg_hba.conf "+
				"such as \"host replication %s 127.0.0.1/32 scram-sha-256\" (the sidecar connects over localhost; with the Bitnami "+
				"chart, set primary.pgHbaConfiguration or a replication user) and reload PostgreSQL",
			lastLine(st.LastError, 512), orDefault(kb.Spec.Postgres.User, "postgres")))
		return st, true
	}
	kb.SetCondition(kcv1.ConditionSidecarReady, metav1.ConditionTrue, kcv1.ReasonSidecarAnswering,
		fmt.Sprintf("sidecar answers: timeline %d, archived up to %s, streaming %t", st.Timeline, orDefault(st.ArchivedLSN, "nothing yet"), st.Streaming))
	return st, true
}

// replicationRefused reports whether the sidecar's last error is PostgreSQL refusing its
// replication connection for want of a pg_hba.conf line (SQLSTATE 28000, "no pg_hba.conf
// entry for replication connection from host ..."), see the PostgreSQL documentation,
// 20.1 "The pg_hba.conf File".
func replicationRefused(lastError string) bool {
	return strings.Contains(lastError, "pg_hba.conf") && strings.Contains(lastError, "replication")
}
