package controller

// Removing kcbackup from a workload. A KeycloakBackup that protects a workload (a backup or
// a schedule: the resources whose sidecar archives it) carries RemovalFinalizer; deleting
// it takes out what the operator put there, so that nothing is left retaining WAL: the
// sidecar and its volumes leave the pod template, the replication slot the sidecar streamed
// from is dropped, and the token Secret is deleted. The archive itself stays where it is.
//
// A replication slot nobody reads retains WAL until the disk fills (PostgreSQL
// documentation, 26.2.6 "Replication Slots"), so a slot the operator cannot drop is never
// left silently: the resource stays, with condition Removal saying what to do, until the
// slot is gone or the user sets KeepOnDeleteAnnotation.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

// Adding and removing the finalizer patches the resource's metadata; deleting the token
// Secret is the last removal step.
// +kubebuilder:rbac:groups=keycloak.org,resources=keycloakbackups,verbs=patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=delete

const (
	// RemovalFinalizer is on every KeycloakBackup that protects a workload: its deletion
	// waits until the operator removed the sidecar, the slot and the token Secret.
	RemovalFinalizer = "kcbackup.keycloak.org/remove-sidecar"
	// KeepOnDeleteAnnotation on a KeycloakBackup, "true": deleting it leaves the sidecar,
	// the slot and the token Secret as they are (to hand the workload to another resource,
	// or after dropping the slot yourself).
	KeepOnDeleteAnnotation = "kcbackup.keycloak.org/keep-on-delete"
	// SlotName is the physical replication slot the sidecar streams from (kcbackup run
	// --slot, whose default the operator never changes).
	SlotName = "kcbackup"

	// ConditionRemoval is set on a KeycloakBackup being deleted while its removal runs.
	ConditionRemoval = "Removal"
	// ReasonRemoving: the removal is under way (sidecar leaving, pods rolling).
	ReasonRemoving = "Removing"
	// ReasonSlotLeft: the replication slot could not be dropped yet; the message says why
	// and how to drop it by hand.
	ReasonSlotLeft = "ReplicationSlotLeft"
	// ReasonSidecarDeclared: in verify mode the sidecar is the user's to take out of the
	// workload's manifests.
	ReasonSidecarDeclared = "SidecarDeclaredInManifests"
)

// ensureFinalizer puts RemovalFinalizer on a resource that protects a workload: not on a
// restore, which borrows the sidecar of the resource that protects it, nor on a resource
// with spec.from (a one-off backup, a record of a scheduled one): the archive's resource it
// names protects the workload, and only its deletion removes the protection. The patch
// updates kb, its resourceVersion included.
//
// A restore into a new instance in another namespace carries InstanceFinalizer instead
// (clone_namespace.go): owner references cannot reach its instance there.
func (r *Reconciler) ensureFinalizer(ctx context.Context, kb *kcv1.KeycloakBackup) error {
	name := RemovalFinalizer
	switch {
	case needsInstanceFinalizer(kb):
		name = InstanceFinalizer
	case kb.IsRestore() || kb.Spec.From != "":
		return nil
	}
	if controllerutil.ContainsFinalizer(kb, name) {
		return nil
	}
	before := kb.DeepCopy()
	controllerutil.AddFinalizer(kb, name)
	if err := r.Client.Patch(ctx, kb, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("add finalizer %s: %w", name, err)
	}
	return nil
}

// reconcileDeletion runs the removal of a resource being deleted and lets it go once done.
func (r *Reconciler) reconcileDeletion(ctx context.Context, kb *kcv1.KeycloakBackup) (ctrl.Result, error) {
	if controllerutil.ContainsFinalizer(kb, InstanceFinalizer) {
		gone, err := r.removeInstanceElsewhere(ctx, kb)
		if err != nil || !gone {
			return ctrl.Result{RequeueAfter: r.PollInterval}, err
		}
		patchBase := kb.DeepCopy()
		controllerutil.RemoveFinalizer(kb, InstanceFinalizer)
		if err := r.Client.Patch(ctx, kb, client.MergeFromWithOptions(patchBase, client.MergeFromWithOptimisticLock{})); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("remove finalizer %s: %w", InstanceFinalizer, err)
		}
		r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, "InstanceRemoved", "Remove", "deleted the new instance %s in namespace %s",
			kb.Spec.Into.Name, namesOf(kb).ns)
	}
	if !controllerutil.ContainsFinalizer(kb, RemovalFinalizer) {
		return ctrl.Result{}, nil
	}
	before := kb.DeepCopy()
	done, res, err := r.removeProtection(ctx, kb)
	if err != nil || !done {
		if !equality.Semantic.DeepEqual(before.Status, kb.Status) {
			if perr := r.Client.Status().Patch(ctx, kb, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); perr != nil && !apierrors.IsConflict(perr) {
				return ctrl.Result{}, errors.Join(err, fmt.Errorf("patch status: %w", perr))
			}
		}
		return res, err
	}
	patchBase := kb.DeepCopy()
	controllerutil.RemoveFinalizer(kb, RemovalFinalizer)
	if err := r.Client.Patch(ctx, kb, client.MergeFromWithOptions(patchBase, client.MergeFromWithOptimisticLock{})); err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, fmt.Errorf("remove finalizer %s: %w", RemovalFinalizer, err)
	}
	return ctrl.Result{}, nil
}

// removeProtection takes out what the operator put into the workload kb protects. done is
// true when nothing is left to do (or to be left, as the events say); otherwise res says
// when to look again.
func (r *Reconciler) removeProtection(ctx context.Context, kb *kcv1.KeycloakBackup) (bool, ctrl.Result, error) {
	wait := ctrl.Result{RequeueAfter: r.PollInterval}
	// Step 1: the user keeps everything.
	if kb.Annotations[KeepOnDeleteAnnotation] == "true" {
		r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, "KeptOnDelete", "Remove",
			"%s=true: the sidecar, its replication slot %q and its token Secret stay as they are", KeepOnDeleteAnnotation, SlotName)
		return true, ctrl.Result{}, nil
	}
	// Step 2: the workload this resource protected; none means nothing was injected.
	if kb.Status.Instance == nil {
		return true, ctrl.Result{}, nil
	}
	w, err := getWorkload(ctx, r.APIReader, kb.Namespace, kb.Status.Instance.Kind, kb.Status.Instance.Name)
	if apierrors.IsNotFound(err) {
		r.Recorder.Eventf(kb, nil, corev1.EventTypeWarning, "WorkloadGone", "Remove",
			"%s/%s no longer exists, so no replication slot could be dropped: if its data volume is used again, drop the slot %q "+
				"there (SELECT pg_drop_replication_slot('%s'))", kb.Status.Instance.Kind, kb.Status.Instance.Name, SlotName, SlotName)
		return true, ctrl.Result{}, nil
	}
	if err != nil {
		return false, ctrl.Result{}, err
	}
	// Step 3: another resource still protects the workload: its sidecar stays.
	if other, err := r.otherProtector(ctx, kb, w); err != nil || other != "" {
		if other != "" {
			r.Recorder.Eventf(kb, w.Obj, corev1.EventTypeNormal, "SidecarKept", "Remove",
				"KeycloakBackup %q still protects %s: its sidecar, slot and token Secret stay", other, w)
		}
		return err == nil, ctrl.Result{}, err
	}
	// Step 4: a workload the operator may not touch keeps its sidecar; say so.
	if !r.optedIn(w.Obj) {
		r.Recorder.Eventf(kb, w.Obj, corev1.EventTypeWarning, "SidecarLeft", "Remove", "%s", notOptedInMessage(kb, w.String(),
			"remove the sidecar from")+"; the sidecar, its replication slot and its token Secret stay")
		return true, ctrl.Result{}, nil
	}
	// Step 5: the sidecar leaves the pod template (in verify mode, the user takes it out).
	if hasSidecar(w.Template()) {
		if verifyOnly(w) {
			r.setRemoval(kb, ReasonSidecarDeclared, fmt.Sprintf("%s declares the sidecar itself (%s=%s): remove it from the "+
				"workload's manifests, and the operator drops the replication slot and the token Secret once no pod runs it "+
				"(or set %s=true on this KeycloakBackup to leave everything)", w, SidecarModeAnnotation, SidecarModeVerify, KeepOnDeleteAnnotation))
			return false, ctrl.Result{RequeueAfter: r.RetryInterval}, nil
		}
		before := w.Obj.DeepCopyObject().(client.Object)
		uninject(w.Template())
		if err := r.Client.Patch(ctx, w.Obj, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
			return false, ctrl.Result{}, fmt.Errorf("remove the sidecar from %s: %w", w, err)
		}
		log.FromContext(ctx).Info("removed sidecar", "workload", w.String())
		r.Recorder.Eventf(kb, w.Obj, corev1.EventTypeNormal, "SidecarRemoved", "Remove",
			"removed the kcbackup sidecar from the pod template of %s", w)
	}
	// Step 6: wait until no pod runs the sidecar: it holds the slot while it streams.
	pods, err := w.pods(ctx, r.APIReader)
	if err != nil {
		return false, ctrl.Result{}, err
	}
	for i := range pods {
		if hasSidecar(&corev1.PodTemplateSpec{Spec: pods[i].Spec}) {
			r.setRemoval(kb, ReasonRemoving, fmt.Sprintf("sidecar removed from %s; waiting for pod %s to roll", w, pods[i].Name))
			return false, wait, nil
		}
	}
	// Step 7: drop the slot, through PostgreSQL itself.
	if ok, err := r.dropSlot(ctx, kb, w, pods); err != nil || !ok {
		return false, ctrl.Result{RequeueAfter: r.RetryInterval}, err
	}
	// Step 8: the token Secret goes last: no pod mounts it any more.
	name := TokenSecretName(w.Name())
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: kb.Namespace, Name: name}}
	if err := r.Client.Delete(ctx, s); err != nil && !apierrors.IsNotFound(err) {
		return false, ctrl.Result{}, fmt.Errorf("delete token Secret %s: %w", name, err)
	}
	r.Recorder.Eventf(kb, w.Obj, corev1.EventTypeNormal, "Removed", "Remove",
		"removed kcbackup from %s: sidecar, replication slot %q and token Secret %s are gone; the archive stays", w, SlotName, name)
	return true, ctrl.Result{}, nil
}

// setRemoval records the removal's progress or problem in ConditionRemoval (and Ready),
// with an event when the reason changes.
func (r *Reconciler) setRemoval(kb *kcv1.KeycloakBackup, reason, msg string) {
	if reason == ReasonRemoving {
		kb.SetCondition(ConditionRemoval, metav1.ConditionFalse, reason, msg)
		kb.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, reason, msg)
		return
	}
	r.setProblem(kb, ConditionRemoval, reason, msg)
}

// otherProtector names another live resource (not a restore, not being deleted) that
// selects w, or "".
func (r *Reconciler) otherProtector(ctx context.Context, kb *kcv1.KeycloakBackup, w workload) (string, error) {
	var all kcv1.KeycloakBackupList
	if err := r.APIReader.List(ctx, &all, client.InNamespace(kb.Namespace)); err != nil {
		return "", fmt.Errorf("list KeycloakBackups: %w", err)
	}
	for i := range all.Items {
		o := &all.Items[i]
		if o.UID != kb.UID && o.DeletionTimestamp == nil && !o.IsRestore() && selects(&o.Spec.InstanceSelector, w) {
			return o.Name, nil
		}
	}
	return "", nil
}

// uninject takes out of the template everything inject put there, and leaves the rest.
func uninject(t *corev1.PodTemplateSpec) {
	t.Spec.InitContainers = slices.DeleteFunc(t.Spec.InitContainers, func(c corev1.Container) bool {
		return c.Name == SidecarContainerName || c.Name == BinaryInitContainerName
	})
	for i := range t.Spec.Containers {
		c := &t.Spec.Containers[i]
		c.VolumeMounts = slices.DeleteFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return ownedVolumes[m.Name] })
		c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return postgresEnvNames[e.Name] })
	}
	t.Spec.Volumes = slices.DeleteFunc(t.Spec.Volumes, func(v corev1.Volume) bool { return ownedVolumes[v.Name] })
	delete(t.Annotations, SidecarHashAnnotation)
	delete(t.Labels, SidecarLabel)
}

// dropSlot connects to PostgreSQL in every pod of w, as spec.postgres says, and drops
// SlotName where it exists. ok is false, with ConditionRemoval saying why and how to drop it by
// hand, when it could not.
func (r *Reconciler) dropSlot(ctx context.Context, kb *kcv1.KeycloakBackup, w workload, pods []corev1.Pod) (bool, error) {
	pg := kb.Spec.Postgres
	user := orDefault(pg.User, "postgres")
	byHand := fmt.Sprintf("drop it yourself (kubectl exec -n %s POD -c %s -- psql -U %s -c \"SELECT pg_drop_replication_slot('%s')\"), "+
		"then set %s=true on this KeycloakBackup", kb.Namespace, orDefault(pg.ContainerName, "postgres"), user, SlotName, KeepOnDeleteAnnotation)
	// Every server of the workload has the slot: the primary's streams to the sidecar, a
	// standby's is kept for a takeover (docs/replicas.md). Each must go.
	running := runningPods(pods)
	if len(running) == 0 || len(running) < len(pods) {
		r.setProblem(kb, ConditionRemoval, ReasonSlotLeft, fmt.Sprintf("%d of the %d pods of %s run, and each server keeps a replication "+
			"slot %q that retains WAL once it runs again: start them all, or %s", len(running), len(pods), w, SlotName, byHand))
		return false, nil
	}
	password, err := r.postgresPassword(ctx, kb)
	if err != nil {
		r.setProblem(kb, ConditionRemoval, ReasonSlotLeft, fmt.Sprintf("%v, to drop the replication slot %q; %s", err, SlotName, byHand))
		return false, nil
	}
	for _, pod := range running {
		addr := r.postgresAddress(pod, orDefaultInt(pg.Port, 5432))
		dropped, err := dropReplicationSlot(ctx, addr, user, password, SlotName)
		if err != nil {
			r.setProblem(kb, ConditionRemoval, ReasonSlotLeft, fmt.Sprintf("drop the replication slot %q on %s (pod %s, %s as %s): %v; the slot "+
				"retains WAL until it is dropped: %s", SlotName, w, pod.Name, addr, user, err, byHand))
			return false, nil
		}
		if dropped {
			r.Recorder.Eventf(kb, w.Obj, corev1.EventTypeNormal, "SlotDropped", "Remove", "dropped the replication slot %q of %s in pod %s", SlotName, w, pod.Name)
		}
	}
	return true, nil
}

// postgresAddress is host:port of PostgreSQL in pod.
func (r *Reconciler) postgresAddress(pod *corev1.Pod, port int32) string {
	if r.PostgresAddress != nil {
		return r.PostgresAddress(pod, port)
	}
	return net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(int(port)))
}

// errSlotActive: a walsender still streams from the slot.
var errSlotActive = errors.New("the slot is in use by a replication connection (is a sidecar still streaming from it?)")

// dropReplicationSlot drops the physical slot name on the server at addr if it exists and
// is not in use; dropped says whether there was one.
func dropReplicationSlot(ctx context.Context, addr, user, password, name string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgConnect(ctx, addr, user, password, "postgres")
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var active bool
	err = conn.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = $1", name).Scan(&active)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read pg_replication_slots: %w", err)
	}
	if active {
		return false, errSlotActive
	}
	if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", name); err != nil {
		return false, fmt.Errorf("pg_drop_replication_slot: %w", err)
	}
	return true, nil
}

// pgConnect opens a plain connection to database on the server at addr.
func pgConnect(ctx context.Context, addr, user, password, database string) (*pgx.Conn, error) {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password), Host: addr, Path: "/" + database,
		RawQuery: "sslmode=prefer&connect_timeout=10&application_name=kcbackup-operator"}
	if password == "" {
		u.User = url.User(user)
	}
	conn, err := pgx.Connect(ctx, u.String())
	if err != nil {
		return nil, fmt.Errorf("connect to %s as %s (database %s): %w", addr, user, database, err)
	}
	return conn, nil
}

// postgresPassword reads spec.postgres.passwordSecret ("" when none is named).
func (r *Reconciler) postgresPassword(ctx context.Context, kb *kcv1.KeycloakBackup) (string, error) {
	ps := kb.Spec.Postgres.PasswordSecret
	if ps == nil {
		return "", nil
	}
	var s corev1.Secret
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: kb.Namespace, Name: ps.Name}, &s); err != nil {
		return "", fmt.Errorf("read Secret %s (spec.postgres.passwordSecret): %w", ps.Name, err)
	}
	return string(s.Data[ps.Key]), nil
}

// connectPostgres connects to database on PostgreSQL in pod, as spec.postgres says.
func (r *Reconciler) connectPostgres(ctx context.Context, kb *kcv1.KeycloakBackup, pod *corev1.Pod, database string) (*pgx.Conn, error) {
	password, err := r.postgresPassword(ctx, kb)
	if err != nil {
		return nil, err
	}
	return pgConnect(ctx, r.postgresAddress(pod, orDefaultInt(kb.Spec.Postgres.Port, 5432)), orDefault(kb.Spec.Postgres.User, "postgres"), password, database)
}
