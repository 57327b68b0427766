package controller

// Restore into a new instance (spec.into): production keeps running untouched while a new
// StatefulSet of one pod, made from its pod template, gets its own claim, is restored into
// by the restore Job and recovers to the target through a read-only `kcbackup serve`
// container beside it. The instance never archives: the archive has one writer,
// production's sidecar, and `serve` cannot write. A drill (spec.into.drill, drill.go) is
// such a restore to a transaction it marks in production, checked and then removed.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

// A restore into a new instance creates and deletes its StatefulSet, Service and claim,
// and deletes its restore Job with it.
//
// +kubebuilder:rbac:groups=apps,resources=statefulsets,verbs=create;delete
// +kubebuilder:rbac:groups="",resources=services;persistentvolumeclaims,verbs=get;create;delete
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=delete

// InstanceLabel is on every object of a new instance, and its pods: the name of the
// KeycloakBackup that made it (`kubectl get all,pvc -l kcbackup.keycloak.org/instance-of=NAME`).
const InstanceLabel = "kcbackup.keycloak.org/instance-of"

// instanceUIDLabel holds the UID of the KeycloakBackup that made the object: an object of
// the instance's name without it is someone else's and is never touched.
const instanceUIDLabel = "kcbackup.keycloak.org/instance-uid"

// cloneSteps is a restore into a new instance, one step per row, in order:
//
//  1. CheckingTarget: the layout can be cloned, the names are free, the target can be
//     reached (the planner's dry run); a drill goes on to mark production first.
//  2. MarkingSource (drills, drill.go): one transaction in production locks and counts the
//     checked tables and takes a transaction ID: the target.
//  3. ArchivingWAL (drills): wait until the archive holds the marker, then plan to it.
//  4. CreatingInstance: the token Secret, the claim and the Service.
//  5. RestoringData: the restore Job restores into the new claim (never --move-aside,
//     never --handover: a copy).
//  6. StartingDatabase: the StatefulSet; wait until its PostgreSQL promoted and answers.
//  7. CheckingInstance (drills): promoted, marker committed, counts, amcheck.
//  8. RemovingInstance (drills): delete the instance; the result is recorded.
//
// Nothing of production is stopped or changed, so no step takes the restore lock. Each
// waiting step has spec.restore.timeout. A failed drill removes its instance; a failed
// restore into a new instance leaves it for inspection (deleted with the resource).
var cloneSteps = map[kcv1.RestoreStep]restoreStep{
	kcv1.RestoreCheckingTarget:   {run: (*Reconciler).cloneCheckTarget, timedOut: (*Reconciler).timedOutUntouched},
	kcv1.RestoreMarkingSource:    {run: (*Reconciler).drillMark, timedOut: (*Reconciler).cloneTimedOut},
	kcv1.RestoreArchivingWAL:     {run: (*Reconciler).drillWaitArchived, timedOut: (*Reconciler).cloneTimedOut},
	kcv1.RestoreCreatingInstance: {run: (*Reconciler).cloneCreate, timedOut: (*Reconciler).cloneTimedOut},
	kcv1.RestoreRestoringData:    {run: (*Reconciler).cloneRestoreData, extra: time.Minute, timedOut: (*Reconciler).cloneTimedOut},
	kcv1.RestoreStartingDatabase: {run: (*Reconciler).cloneStart, timedOut: (*Reconciler).cloneTimedOut},
	kcv1.RestoreCheckingInstance: {run: (*Reconciler).drillCheck, timedOut: (*Reconciler).cloneTimedOut},
	kcv1.RestoreRemovingInstance: {run: (*Reconciler).drillRemove, timedOut: (*Reconciler).drillRemoveTimedOut},
}

// instanceNames are the objects of a new instance.
type instanceNames struct{ ns, sts, svc, claim, secret, storage string }

func namesOf(kb *kcv1.KeycloakBackup) instanceNames {
	n := kb.Spec.Into.Name
	return instanceNames{ns: orDefault(kb.Spec.Into.Namespace, kb.Namespace), sts: n, svc: n, claim: n + "-data",
		secret: TokenSecretName(n), storage: n + "-kcbackup-storage"}
}

// instanceObject is one object of an instance: its kind, an empty object to read it into,
// its name.
type instanceObject struct {
	kind string
	obj  client.Object
	name string
}

// objects are the objects an instance may have, each freshly allocated: checked free before
// anything is made, deleted with the instance.
func (n instanceNames) objects() []instanceObject {
	return []instanceObject{{"StatefulSet", &appsv1.StatefulSet{}, n.sts}, {"Service", &corev1.Service{}, n.svc},
		{"PersistentVolumeClaim", &corev1.PersistentVolumeClaim{}, n.claim}, {"Secret", &corev1.Secret{}, n.secret},
		{"Secret", &corev1.Secret{}, n.storage}}
}

// elsewhere reports whether kb's instance is made in another namespace than kb's.
func elsewhere(kb *kcv1.KeycloakBackup) bool { return namesOf(kb).ns != kb.Namespace }

// instanceLabels are the labels of every object of kb's instance and of its pod.
func instanceLabels(kb *kcv1.KeycloakBackup) map[string]string {
	return map[string]string{
		InstanceLabel:                  kb.Name,
		instanceUIDLabel:               string(kb.UID),
		"app.kubernetes.io/name":       "kcbackup-instance",
		"app.kubernetes.io/instance":   kb.Spec.Into.Name,
		"app.kubernetes.io/managed-by": "kcbackup-operator",
	}
}

// cloneTimedOut ends a restore into a new instance whose step waited too long; a drill
// removes its instance first.
func (r *Reconciler) cloneTimedOut(ctx context.Context, run *restoreRun, what string) (ctrl.Result, error) {
	return r.cloneFailed(ctx, run, kcv1.ReasonRestoreTimedOut, what)
}

// cloneFailed ends a restore into a new instance. Production was never touched. A drill's
// instance is removed (RemovingInstance records the failure); another restore's stays for
// inspection, deleted with the resource unless into.keep.
func (r *Reconciler) cloneFailed(ctx context.Context, run *restoreRun, reason, msg string) (ctrl.Result, error) {
	kb := run.kb
	if kb.IsDrill() {
		d := drillOf(kb)
		d.Checks = append(d.Checks, kcv1.DrillCheckResult{Name: "restore", Result: kcv1.CheckFailed, Message: reason + ": " + msg})
		r.advance(kb, kcv1.RestoreRemovingInstance, "the drill failed ("+reason+"); removing its instance")
		return ctrl.Result{RequeueAfter: r.PollInterval}, nil
	}
	what := "; production was not touched"
	if st := kb.Status.Restore.Instance; st != nil {
		what += fmt.Sprintf(" and the new instance (StatefulSet %s, claim %s) is left for inspection: it is deleted with this resource", st.StatefulSet, st.Claim)
		if kb.Spec.Into.Keep {
			what = "; production was not touched and the new instance is kept (into.keep): delete it yourself"
		}
	}
	return r.restoreFailed(kb, reason, msg+what)
}

// cloneCheckTarget is step 1 of a restore into a new instance.
func (r *Reconciler) cloneCheckTarget(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	kb, db, loc, token := run.kb, run.db, run.loc, run.token
	if err := restorableData(loc, db); err != nil {
		return r.restoreFailed(kb, kcv1.ReasonDataVolumeNotFound, err.Error())
	}
	if _, err := r.cloneTemplate(kb, db, loc); err != nil {
		return r.restoreFailed(kb, ReasonInstanceUnsupported, err.Error()+"; nothing was created")
	}
	if elsewhere(kb) {
		if reason, msg, err := r.checkElsewhere(ctx, kb, db); err != nil || msg != "" {
			if err != nil {
				return ctrl.Result{}, err
			}
			return r.restoreFailed(kb, reason, msg+"; nothing was created")
		}
	}
	if msg, err := r.instanceNamesTaken(ctx, kb); err != nil || msg != "" {
		if err != nil {
			return ctrl.Result{}, err
		}
		return r.restoreFailed(kb, ReasonInstanceExists, msg+"; nothing was created (choose another spec.into.name)")
	}
	if msg, err := r.foreignRestoreJob(ctx, kb); err != nil || msg != "" {
		if err != nil {
			return ctrl.Result{}, err
		}
		return r.restoreFailed(kb, kcv1.ReasonRestoreJobNotOwned, msg+"; this restore is refused and nothing was created")
	}
	rs := kb.Status.Restore
	if kb.IsDrill() {
		r.cloneStart0(ctx, kb, db, loc)
		r.advance(kb, kcv1.RestoreMarkingSource, "marking production: one transaction that locks and counts the checked tables")
		return ctrl.Result{RequeueAfter: time.Millisecond}, nil
	}
	st, proceed, res, err := r.checkTargetAgainstArchive(ctx, kb, db, token)
	if !proceed {
		return res, err
	}
	if target, latest, _ := kcv1.ParseRestoreTarget(kb.Spec.RestoreTo); !latest {
		rs.TargetTime = ptrTime(target)
	}
	rs.PreviousTimeline = int64(st.Timeline)
	r.cloneStart0(ctx, kb, db, loc)
	r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, "RestoreStarted", "Restore",
		"restoring %s to %s into a new instance %s; production is not stopped", db, kb.Spec.RestoreTo, kb.Spec.Into.Name)
	r.advance(kb, kcv1.RestoreCreatingInstance, "the target can be reached; creating the new instance's claim, Secret and Service")
	return ctrl.Result{RequeueAfter: r.PollInterval}, nil
}

// cloneStart0 records when the restore started and as whom PostgreSQL runs.
func (r *Reconciler) cloneStart0(ctx context.Context, kb *kcv1.KeycloakBackup, db workload, loc dataLocation) {
	rs := kb.Status.Restore
	rs.StartTime = ptrTime(r.Clock.Now())
	rs.JobName = restoreJobName(kb)
	n := namesOf(kb)
	rs.Instance = &kcv1.InstanceStatus{Namespace: n.ns, StatefulSet: n.sts, Service: n.svc, Claim: n.claim,
		Host: n.svc + "." + n.ns + ".svc", Port: orDefaultInt(kb.Spec.Postgres.Port, 5432)}
	if pods, err := db.pods(ctx, r.Client); err == nil {
		if p := runningPod(pods); p != nil {
			rs.RunAsUser, rs.RunAsGroup = effectiveIDs(&p.Spec, loc.Container)
		}
	}
	kb.Status.Phase = kcv1.PhaseRestoring
}

// Reasons of restores into a new instance.
const (
	// ReasonInstanceExists: an object with the new instance's name exists and is not this
	// resource's.
	ReasonInstanceExists = "InstanceExists"
	// ReasonInstanceUnsupported: the workload's pod template cannot be cloned (a second
	// claim, a data volume that is not a claim).
	ReasonInstanceUnsupported = "InstanceUnsupported"
	// ReasonInstanceReady: the new instance promoted and answers.
	ReasonInstanceReady = "InstanceReady"
	// ReasonRecoveryNotRun: the new instance's PostgreSQL runs outside recovery on no new
	// timeline: it did not recover to the target.
	ReasonRecoveryNotRun = "RecoveryNotRun"
)

// instanceNamesTaken says which object of the new instance's names exists without being
// this resource's.
func (r *Reconciler) instanceNamesTaken(ctx context.Context, kb *kcv1.KeycloakBackup) (string, error) {
	n := namesOf(kb)
	for _, o := range n.objects() {
		err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: n.ns, Name: o.name}, o.obj)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("get %s %s: %w", o.kind, o.name, err)
		}
		if o.obj.GetLabels()[instanceUIDLabel] != string(kb.UID) {
			return fmt.Sprintf("%s %s exists in namespace %s and was not made by this KeycloakBackup", o.kind, o.name, n.ns), nil
		}
	}
	return "", nil
}

// cloneTemplate is the new instance's pod template: the workload's, without its sidecar
// and its labels, with the new claim as data volume and a `kcbackup serve` container (the
// read-only WAL server restore_command fetches through) in place of the sidecar. A
// template with another claim is refused: the copy would mount production's volume.
func (r *Reconciler) cloneTemplate(kb *kcv1.KeycloakBackup, db workload, loc dataLocation) (corev1.PodTemplateSpec, error) {
	t := db.Template().DeepCopy()
	uninject(t)
	for _, ct := range db.claimTemplates() {
		if ct.Name != loc.Mount.Name {
			return t0, fmt.Errorf("%s has a second volume claim template %q besides the data volume %q: a new instance gets one claim, so it cannot be made from it", db, ct.Name, loc.Mount.Name)
		}
	}
	for _, c := range t.Spec.Containers {
		for _, e := range c.Env {
			if replicationSetting(e) {
				return t0, fmt.Errorf("container %q of %s sets %s: a copy of a replicating or HA-managed server (repmgr, Patroni, a Bitnami "+
					"standby) would join production's cluster or clone from its primary, so it cannot be made from this pod template", c.Name, db, e.Name)
			}
		}
	}
	n := namesOf(kb)
	vols := t.Spec.Volumes[:0]
	for _, v := range t.Spec.Volumes {
		switch {
		case v.Name == loc.Mount.Name:
			continue
		case v.PersistentVolumeClaim != nil:
			return t0, fmt.Errorf("%s mounts claim %s (volume %q) besides its data volume: a new instance would share it with production, so it cannot be made from it", db, v.PersistentVolumeClaim.ClaimName, v.Name)
		}
		vols = append(vols, v)
	}
	t.Spec.Volumes = append(vols, corev1.Volume{Name: loc.Mount.Name, VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: n.claim}}})
	s, err := buildSidecar(r.SidecarImage, r.delivery(n.ns), instanceSpec(kb), kb.Spec.Into.Name, loc)
	if err != nil {
		return t0, err
	}
	serveOnly(&s)
	inject(t, s)
	for i := range t.Spec.Containers {
		// A Bitnami image deletes recovery.signal at start unless told a restore is under
		// way: the copy would start as a new primary at the backup's end.
		if c := &t.Spec.Containers[i]; c.Name == loc.Container && isBitnami(c) {
			c.Env = append(slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == PerformRestoreEnv }),
				corev1.EnvVar{Name: PerformRestoreEnv, Value: "yes"})
		}
	}
	delete(t.Annotations, SidecarHashAnnotation)
	t.Labels = instanceLabels(kb)
	if elsewhere(kb) {
		t.Spec.ServiceAccountName = "" // the workload's is in its own namespace
	}
	return *t, nil
}

var t0 corev1.PodTemplateSpec

// replicationSetting reports whether e makes a server take part in a replicating or
// HA-managed cluster by itself (repmgr, Patroni, a Bitnami standby).
func replicationSetting(e corev1.EnvVar) bool {
	return strings.HasPrefix(e.Name, "REPMGR_") || strings.HasPrefix(e.Name, "PATRONI_") ||
		e.Name == "POSTGRESQL_REPLICATION_MODE" && e.Value != "" && e.Value != "master" && e.Value != "primary"
}

// serveEnv are the sidecar variables `kcbackup serve` has no use for.
var serveEnv = map[string]bool{
	"KCBACKUP_TOKEN_FILE": true, "KCBACKUP_PGDATA": true, "KCBACKUP_SPOOL": true, "KCBACKUP_PARTIAL_INTERVAL": true,
	"PGHOST": true, "PGPORT": true, "PGUSER": true, "PGPASSWORD": true,
}

// serveOnly turns the sidecar into the new instance's read-only WAL server: `kcbackup
// serve`, which answers GET /v1/wal with the fetch-only token and never writes the archive.
func serveOnly(s *sidecarSpec) {
	c := &s.Container
	c.Args = []string{"serve"}
	c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return serveEnv[e.Name] })
	c.VolumeMounts = slices.DeleteFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
		return m.Name == spoolVolume || !ownedVolumes[m.Name] // the data volume: serve does not read it
	})
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].Name == archiveVolume {
			c.VolumeMounts[i].ReadOnly = true
		}
	}
	s.Volumes = slices.DeleteFunc(s.Volumes, func(v corev1.Volume) bool { return v.Name == spoolVolume })
}

// cloneCreate is step 4: the token Secret, the claim and the Service of the new instance.
func (r *Reconciler) cloneCreate(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	kb, db, loc := run.kb, run.db, run.loc
	n := namesOf(kb)
	admin, err := newToken()
	if err != nil {
		return ctrl.Result{}, err
	}
	fetch, err := newToken()
	if err != nil {
		return ctrl.Result{}, err
	}
	secret := &corev1.Secret{ObjectMeta: r.instanceMeta(kb, n.secret), Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{TokenKey: []byte(admin), FetchTokenKey: []byte(fetch)}}
	claim, err := r.instanceClaim(ctx, kb, db, loc)
	if err != nil {
		return r.cloneFailed(ctx, run, ReasonInstanceUnsupported, err.Error())
	}
	port := orDefaultInt(kb.Spec.Postgres.Port, 5432)
	svc := &corev1.Service{ObjectMeta: r.instanceMeta(kb, n.svc), Spec: corev1.ServiceSpec{
		Selector: map[string]string{instanceUIDLabel: string(kb.UID)},
		Ports:    []corev1.ServicePort{{Name: "postgres", Port: port, TargetPort: intstr.FromInt32(port), Protocol: corev1.ProtocolTCP}},
	}}
	objs := []client.Object{secret, claim, svc}
	if elsewhere(kb) {
		copied, err := r.storageCopy(ctx, kb)
		if err != nil {
			return r.cloneFailed(ctx, run, kcv1.ReasonSecretMissing, err.Error())
		}
		objs = append(objs, copied)
	}
	for _, o := range objs {
		if err := r.createInstanceObject(ctx, kb, o); err != nil {
			return ctrl.Result{}, err
		}
	}
	r.Recorder.Eventf(kb, nil, corev1.EventTypeNormal, "InstanceCreated", "Restore",
		"created claim %s (%s), Service %s and Secret %s of the new instance %s", n.claim, claim.Spec.Resources.Requests.Storage(), n.svc, n.secret, n.sts)
	r.advance(kb, kcv1.RestoreRestoringData, "restoring into claim "+n.claim)
	return ctrl.Result{RequeueAfter: time.Millisecond}, nil
}

// instanceMeta is the metadata of an object of kb's instance: its labels and, unless
// into.keep, kb as controller, so that it goes with kb.
func (r *Reconciler) instanceMeta(kb *kcv1.KeycloakBackup, name string) metav1.ObjectMeta {
	m := metav1.ObjectMeta{Name: name, Namespace: namesOf(kb).ns, Labels: instanceLabels(kb)}
	// An owner reference cannot cross namespaces: an instance elsewhere is deleted by the
	// resource's finalizer (clone_namespace.go).
	if (!kb.Spec.Into.Keep || kb.IsDrill()) && !elsewhere(kb) {
		m.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(kb, kcv1.GroupVersion.WithKind("KeycloakBackup"))}
	}
	return m
}

// createInstanceObject creates o, or accepts it when it exists and is this resource's.
func (r *Reconciler) createInstanceObject(ctx context.Context, kb *kcv1.KeycloakBackup, o client.Object) error {
	err := r.Client.Create(ctx, o)
	if err == nil || !apierrors.IsAlreadyExists(err) {
		if err != nil {
			return fmt.Errorf("create %T %s: %w", o, o.GetName(), err)
		}
		return nil
	}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(o), o); err != nil {
		return err
	}
	if o.GetLabels()[instanceUIDLabel] != string(kb.UID) {
		return fmt.Errorf("%s exists and was not made by KeycloakBackup %s", o.GetName(), kb.Name)
	}
	return nil
}

// instanceClaim is the new instance's claim: the storage class and size of into (or of a
// drill), else those of the workload's data claim.
func (r *Reconciler) instanceClaim(ctx context.Context, kb *kcv1.KeycloakBackup, db workload, loc dataLocation) (*corev1.PersistentVolumeClaim, error) {
	var src corev1.PersistentVolumeClaim
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: kb.Namespace, Name: loc.Volume.PersistentVolumeClaim.ClaimName}, &src); err != nil {
		return nil, fmt.Errorf("read the data claim %s of %s to size the new one: %w", loc.Volume.PersistentVolumeClaim.ClaimName, db, err)
	}
	in := kb.Spec.Into
	size := src.Spec.Resources.Requests.Storage()
	if in.Size != nil {
		size = in.Size
	}
	if size == nil || size.IsZero() {
		return nil, fmt.Errorf("the data claim %s requests no storage: set spec.into.size", src.Name)
	}
	class := src.Spec.StorageClassName
	if in.StorageClassName != nil {
		class = in.StorageClassName
	}
	modes := src.Spec.AccessModes
	if len(modes) == 0 {
		modes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	}
	return &corev1.PersistentVolumeClaim{ObjectMeta: r.instanceMeta(kb, namesOf(kb).claim), Spec: corev1.PersistentVolumeClaimSpec{
		AccessModes: modes, StorageClassName: class, VolumeMode: src.Spec.VolumeMode,
		Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(size.Value(), size.Format)}},
	}}, nil
}

// cloneLoc is loc with the new instance's claim in place of the workload's.
func cloneLoc(kb *kcv1.KeycloakBackup, loc dataLocation) dataLocation {
	loc.Volume = corev1.Volume{Name: loc.Volume.Name, VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: namesOf(kb).claim}}}
	return loc
}

// cloneRestoreData is step 5: the restore Job into the new claim.
func (r *Reconciler) cloneRestoreData(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	kb, db := run.kb, run.db
	loc := cloneLoc(kb, run.loc)
	job, problem, err := r.ensureRestoreJob(ctx, kb, db, loc)
	if err != nil {
		return ctrl.Result{}, err
	}
	if problem != nil {
		// The Job's name is taken by a Job that is not this resource's, or this resource's
		// Job vanished: its outcome cannot be known.
		return r.cloneFailed(ctx, run, problem.reason, fmt.Sprintf("the restore Job %s of the new instance cannot be trusted (%s): "+
			"it is not this resource's, or it disappeared before its outcome was seen", kb.Status.Restore.JobName, problem.reason))
	}
	switch jobOutcome(job) {
	case jobRefused, jobFailed:
		return r.cloneFailed(ctx, run, kcv1.ReasonRestoreJobFailed, fmt.Sprintf("restore Job %s failed: %s", job.Name, r.jobMessage(ctx, job)))
	case jobSucceeded:
		r.Recorder.Eventf(kb, job, corev1.EventTypeNormal, "RestoreJobSucceeded", "Restore", "restore Job %s succeeded", job.Name)
		r.advance(kb, kcv1.RestoreStartingDatabase, "data restored; starting the new instance to replay WAL and promote")
		return ctrl.Result{RequeueAfter: time.Millisecond}, nil
	}
	r.restoreProgress(kb, "restore Job "+job.Name+" is running")
	return ctrl.Result{RequeueAfter: r.PollInterval}, nil
}

// cloneStart is step 6: the StatefulSet of the new instance; its PostgreSQL replays WAL to
// the target through `kcbackup serve` and promotes.
func (r *Reconciler) cloneStart(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	kb, db, loc := run.kb, run.db, run.loc
	rs := kb.Status.Restore
	n := namesOf(kb)
	tmpl, err := r.cloneTemplate(kb, db, loc)
	if err != nil {
		return r.cloneFailed(ctx, run, ReasonInstanceUnsupported, err.Error())
	}
	sts := &appsv1.StatefulSet{ObjectMeta: r.instanceMeta(kb, n.sts), Spec: appsv1.StatefulSetSpec{
		Replicas:    ptr.To[int32](1),
		ServiceName: n.svc,
		Selector:    &metav1.LabelSelector{MatchLabels: map[string]string{instanceUIDLabel: string(kb.UID)}},
		Template:    tmpl,
	}}
	if err := r.createInstanceObject(ctx, kb, sts); err != nil {
		return ctrl.Result{}, err
	}
	var pod corev1.Pod
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: n.ns, Name: n.sts + "-0"}, &pod); err != nil {
		if apierrors.IsNotFound(err) {
			r.restoreProgress(kb, "waiting for pod "+n.sts+"-0")
			return ctrl.Result{RequeueAfter: r.PollInterval}, nil
		}
		return ctrl.Result{}, err
	}
	if pod.Labels[instanceUIDLabel] != string(kb.UID) {
		r.restoreProgress(kb, "waiting for pod "+pod.Name+": the pod of that name is not this instance's")
		return ctrl.Result{RequeueAfter: r.PollInterval}, nil
	}
	if runningPod([]corev1.Pod{pod}) == nil {
		r.restoreProgress(kb, fmt.Sprintf("waiting for pod %s to run (%s%s)", pod.Name, pod.Status.Phase, podWaitingReason(&pod)))
		return ctrl.Result{RequeueAfter: r.PollInterval}, nil
	}
	state, err := r.instanceState(ctx, kb, &pod)
	if err != nil || state.inRecovery {
		msg := "waiting for PostgreSQL in pod " + pod.Name + " to replay WAL to the target and promote"
		if err != nil {
			msg += " (" + err.Error() + ")"
		}
		r.restoreProgress(kb, msg)
		return ctrl.Result{RequeueAfter: r.PollInterval}, nil
	}
	if state.timeline <= rs.PreviousTimeline {
		// Fail closed: a server that did not recover (its image's start removed
		// recovery.signal) runs the backup's data on the backup's timeline, not the target's.
		return r.cloneFailed(ctx, run, ReasonRecoveryNotRun, fmt.Sprintf("PostgreSQL in pod %s runs outside recovery on timeline %d, "+
			"not on a new timeline after production's %d: it did not recover to the target (did its image's entrypoint remove recovery.signal?), "+
			"so its data is not the target's", pod.Name, state.timeline, rs.PreviousTimeline))
	}
	now := r.Clock.Now()
	st := rs.Instance
	st.Timeline, st.ReadyTime = state.timeline, ptrTime(now)
	st.Duration = &metav1.Duration{Duration: now.Sub(rs.StartTime.Time).Round(time.Second)}
	rs.Timeline = state.timeline
	if kb.IsDrill() {
		r.advance(kb, kcv1.RestoreCheckingInstance, fmt.Sprintf("the instance promoted to timeline %d; checking it", state.timeline))
		return ctrl.Result{RequeueAfter: time.Millisecond}, nil
	}
	rs.Step = kcv1.RestoreDone
	rs.CompletionTime = ptrTime(now)
	kb.Status.Phase = kcv1.PhaseRestored
	r.Metrics.restoreResult(kb.Namespace, kb.Name, false)
	msg := fmt.Sprintf("restored %s into the new instance %s in %s: PostgreSQL recovered and promoted to timeline %d and answers at %s:%d; production was not touched",
		kb.Spec.RestoreTo, n.sts, st.Duration.Duration, state.timeline, st.Host, st.Port)
	kb.SetCondition(kcv1.ConditionReady, metav1.ConditionTrue, ReasonInstanceReady, msg)
	r.Recorder.Eventf(kb, &pod, corev1.EventTypeNormal, ReasonInstanceReady, "Restore", "%s", msg)
	return ctrl.Result{}, nil
}

// podWaitingReason names why a pod's containers wait (", CrashLoopBackOff: ..."), if any.
func podWaitingReason(p *corev1.Pod) string {
	var out []string
	for _, cs := range append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...) {
		if w := cs.State.Waiting; w != nil && w.Reason != "" && w.Reason != "PodInitializing" && w.Reason != "ContainerCreating" {
			out = append(out, cs.Name+": "+w.Reason+" "+lastLine(w.Message, 200))
		}
	}
	if len(out) == 0 {
		return ""
	}
	return ", " + strings.Join(out, "; ")
}

// instanceState is what the new instance's PostgreSQL says of itself.
type instanceState struct {
	inRecovery bool
	timeline   int64
}

// timelineQuery is the timeline of the WAL a primary writes: the first 8 hex digits of its
// current segment's name.
const timelineQuery = "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"

// instanceState connects to PostgreSQL in pod as spec.postgres says.
func (r *Reconciler) instanceState(ctx context.Context, kb *kcv1.KeycloakBackup, pod *corev1.Pod) (instanceState, error) {
	conn, err := r.connectPostgres(ctx, kb, pod, "postgres")
	if err != nil {
		return instanceState{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var s instanceState
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&s.inRecovery); err != nil || s.inRecovery {
		return s, err
	}
	// The timeline of the WAL being written: the promoted one (pg_control_checkpoint's
	// lags until the first checkpoint after the promotion).
	err = conn.QueryRow(ctx, timelineQuery).Scan(&s.timeline)
	return s, err
}

// deleteInstance deletes the objects of kb's instance that are its own; gone says whether
// none is left.
func (r *Reconciler) deleteInstance(ctx context.Context, kb *kcv1.KeycloakBackup) (gone bool, err error) {
	n := namesOf(kb)
	gone = true
	bg := client.PropagationPolicy(metav1.DeletePropagationBackground)
	for _, o := range n.objects() {
		o, name := o.obj, o.name
		err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: n.ns, Name: name}, o)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return false, err
		}
		if o.GetLabels()[instanceUIDLabel] != string(kb.UID) {
			continue // not ours: never touched
		}
		gone = false
		if o.GetDeletionTimestamp() == nil {
			if err := r.Client.Delete(ctx, o, bg); err != nil && !apierrors.IsNotFound(err) {
				return false, fmt.Errorf("delete %s: %w", name, err)
			}
		}
	}
	if rs := kb.Status.Restore; rs != nil && rs.JobName != "" {
		job, err := r.ownedJob(ctx, kb)
		if err != nil {
			return false, err
		}
		if job != nil {
			gone = false
			if job.DeletionTimestamp == nil {
				if err := r.Client.Delete(ctx, job, bg); err != nil && !apierrors.IsNotFound(err) {
					return false, fmt.Errorf("delete Job %s: %w", job.Name, err)
				}
			}
		}
	}
	return gone, nil
}

// ownedJob returns kb's restore Job, or nil.
func (r *Reconciler) ownedJob(ctx context.Context, kb *kcv1.KeycloakBackup) (*batchv1.Job, error) {
	job := &batchv1.Job{}
	err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: namesOf(kb).ns, Name: kb.Status.Restore.JobName}, job)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !jobIsKBs(job, kb) {
		return nil, nil
	}
	return job, nil
}
