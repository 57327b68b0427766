package controller

import (
	"context"
	"fmt"
	"path"
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

// jobVolumeDir is where the restore Job mounts the whole data claim (without the
// PostgreSQL container's subPath), so that the data directory is always a subdirectory of
// the mount: kcbackup restore stages beside it and moves the old one aside on the same volume.
const jobVolumeDir = "/var/lib/kcbackup/pgvolume"

// jobDataDir returns the data directory as the restore Job sees it. It refuses a data
// directory at the root of its volume: the previous data could not be kept beside it.
func jobDataDir(loc dataLocation) (string, error) {
	mp := strings.TrimRight(loc.Mount.MountPath, "/")
	rel := strings.TrimPrefix(strings.TrimPrefix(loc.DataDir, mp), "/")
	p := path.Join(jobVolumeDir, loc.Mount.SubPath, rel)
	if p == jobVolumeDir {
		return "", fmt.Errorf("the data directory %s is the root of volume %q; a restore keeps the replaced data beside it on the "+
			"same volume, so PGDATA must be a subdirectory (for example %s/pgdata)", loc.DataDir, loc.Mount.Name, mp)
	}
	return p, nil
}

// postgresUID is the user the restore Job runs as when neither the running PostgreSQL pod
// (as admitted, so with any UID the cluster assigned) nor its template names one: the
// postgres user of the official image, which starts as root and drops to it, and owns the
// data directory.
const postgresUID = 999

// effectiveIDs returns the user and group container runs as in spec: the container's
// security context over the pod's; nil where neither says.
func effectiveIDs(spec *corev1.PodSpec, container string) (uid, gid *int64) {
	if sc := spec.SecurityContext; sc != nil {
		uid, gid = sc.RunAsUser, sc.RunAsGroup
	}
	for _, c := range spec.Containers {
		if c.Name == container && c.SecurityContext != nil {
			if c.SecurityContext.RunAsUser != nil {
				uid = c.SecurityContext.RunAsUser
			}
			if c.SecurityContext.RunAsGroup != nil {
				gid = c.SecurityContext.RunAsGroup
			}
		}
	}
	return ptrOrNil(uid), ptrOrNil(gid)
}

func ptrOrNil(p *int64) *int64 {
	if p == nil {
		return nil
	}
	return ptr.To(*p)
}

// restoreJobIDs is the user and group of the restore Job: those PostgreSQL ran as when the
// restore started (recorded from the running pod, where a cluster such as OpenShift has
// put the namespace's UID), else those of its pod template, else the official image's
// postgres user and group. A group nobody named stays unset: the cluster or the image
// decides, as for PostgreSQL (OpenShift runs it with group 0).
func restoreJobIDs(rs *kcv1.RestoreStatus, tmpl *corev1.PodSpec, container string) (uid, gid *int64) {
	if rs != nil && rs.RunAsUser != nil {
		return ptr.To(*rs.RunAsUser), ptrOrNil(rs.RunAsGroup)
	}
	if u, g := effectiveIDs(tmpl, container); u != nil {
		return u, g
	}
	return ptr.To[int64](postgresUID), ptr.To[int64](postgresUID)
}

// restoreData is step 5: it follows the restore Job this resource owns, created once.
func (r *Reconciler) restoreData(ctx context.Context, run *restoreRun) (ctrl.Result, error) {
	kb, db, loc := run.kb, run.db, run.loc
	job, problem, err := r.ensureRestoreJob(ctx, kb, db, loc)
	if err != nil {
		return ctrl.Result{}, err
	}
	if problem != nil {
		// Fail closed: a Job that is not ours, or ours that vanished, may have touched (or
		// may still touch) the data directory, so PostgreSQL stays stopped.
		return r.restoreFailed(kb, problem.reason, problem.msg)
	}
	switch jobOutcome(job) {
	case jobRefused:
		return r.restoreGiveBack(ctx, run, kcv1.ReasonRestoreRefused, fmt.Sprintf(
			"restore Job %s refused before touching the data directory: %s; PostgreSQL and the application were scaled back up",
			job.Name, r.jobMessage(ctx, job)))
	case jobSucceeded:
		r.Recorder.Eventf(kb, job, corev1.EventTypeNormal, "RestoreJobSucceeded", "Restore", "restore Job %s succeeded", job.Name)
		r.advance(kb, kcv1.RestoreStartingDatabase, "data restored; starting PostgreSQL to replay WAL and promote")
		return ctrl.Result{RequeueAfter: r.PollInterval}, nil
	case jobFailed:
		msg := fmt.Sprintf("restore Job %s failed (%s); PostgreSQL and the application stay scaled to zero for inspection "+
			"(the previous data directory was moved aside next to %s, not deleted)", job.Name, r.jobMessage(ctx, job), loc.DataDir)
		return r.restoreFailed(kb, kcv1.ReasonRestoreJobFailed, msg)
	}
	r.restoreProgress(kb, "restore Job "+job.Name+" is running")
	return ctrl.Result{RequeueAfter: r.PollInterval}, nil
}

// jobMessage is what the restore Job's container said last (its termination message, the
// tail of its log), or its failure condition when no pod is left.
func (r *Reconciler) jobMessage(ctx context.Context, job *batchv1.Job) string {
	var pods corev1.PodList
	if err := r.Client.List(ctx, &pods, client.InNamespace(job.Namespace), client.MatchingLabels{batchv1.JobNameLabel: job.Name}); err == nil {
		for _, p := range pods.Items {
			for _, cs := range p.Status.ContainerStatuses {
				if t := cs.State.Terminated; cs.Name == "restore" && t != nil && strings.TrimSpace(t.Message) != "" {
					return lastLine(t.Message, 1024)
				}
			}
		}
	}
	for _, c := range job.Status.Conditions {
		if c.Type == batchv1.JobFailed && c.Status == corev1.ConditionTrue {
			return orDefault(c.Message, c.Reason)
		}
	}
	return "no message; see the Job's pod log"
}

// lastLine returns the last non-empty line of s, cut to at most n bytes.
func lastLine(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	l := strings.TrimSpace(lines[len(lines)-1])
	if len(l) > n {
		l = l[:n]
	}
	return l
}

func restoreJobName(kb *kcv1.KeycloakBackup) string {
	name := kb.Name
	if len(name) > 50 {
		name = name[:50]
	}
	return name + "-restore"
}

// jobProblem is why the restore Job cannot be trusted: its Ready reason and message.
type jobProblem struct{ reason, msg string }

// ensureRestoreJob returns the restore Job this resource owns, creating it once and
// recording its UID in status.restore.jobUID. It is read from the API server, not the
// cache, since a Job missing from a lagging cache must not look lost. A problem is
// returned, and nothing created, when a Job of that name is not this resource's (a
// leftover of a deleted resource of the same name is never taken as this restore's
// result), or when the recorded Job disappeared: creating it again would restore twice
// over a data directory the first one may already have moved aside.
func (r *Reconciler) ensureRestoreJob(ctx context.Context, kb *kcv1.KeycloakBackup, db workload, loc dataLocation) (*batchv1.Job, *jobProblem, error) {
	rs := kb.Status.Restore
	job := &batchv1.Job{}
	key := client.ObjectKey{Namespace: jobNamespace(kb), Name: rs.JobName}
	err := r.APIReader.Get(ctx, key, job)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, nil, fmt.Errorf("get restore Job %s: %w", key.Name, err)
	}
	found := err == nil
	switch {
	case rs.JobUID != "" && (!found || job.UID != rs.JobUID):
		return nil, &jobProblem{kcv1.ReasonRestoreJobLost, fmt.Sprintf(
			"restore Job %s (uid %s) disappeared before its outcome was seen; it is not created again, because it may already have "+
				"moved the data directory aside. PostgreSQL and the application stay scaled to zero: on claim %s, check whether %s "+
				"was restored or moved aside (kept next to it, never deleted) and the Job's events; then scale PostgreSQL and the "+
				"application back yourself, or create a new KeycloakBackup to restore again",
			key.Name, rs.JobUID, loc.Volume.PersistentVolumeClaim.ClaimName, loc.DataDir)}, nil
	case found && !jobIsKBs(job, kb):
		return nil, &jobProblem{kcv1.ReasonRestoreJobNotOwned, notOwnedMessage(job, kb) +
			"; it was not taken as this restore's result and no restore Job was created. PostgreSQL and the application stay " +
			"scaled to zero, since that Job may act on the data volume: check what it did (its pod log, the data directory " +
			loc.DataDir + "), delete it, then scale PostgreSQL and the application back, or create a new KeycloakBackup"}, nil
	case found:
		rs.JobUID = job.UID // created by this resource in a reconcile whose status patch was lost
		return job, nil, nil
	}
	job, err = r.buildRestoreJob(kb, db, loc)
	if err != nil {
		return nil, nil, err
	}
	if err := r.Client.Create(ctx, job); err != nil {
		return nil, nil, fmt.Errorf("create restore Job %s: %w", key.Name, err)
	}
	rs.JobUID = job.UID
	r.Recorder.Eventf(kb, job, corev1.EventTypeNormal, "RestoreJobCreated", "Restore",
		"created Job %s (uid %s) restoring %s into claim %s", job.Name, job.UID, kb.Spec.RestoreTo, loc.Volume.PersistentVolumeClaim.ClaimName)
	return job, nil, nil
}

// foreignRestoreJob returns a message when a Job with the name of kb's restore Job exists
// and kb does not control it; it is checked before anything is stopped.
func (r *Reconciler) foreignRestoreJob(ctx context.Context, kb *kcv1.KeycloakBackup) (string, error) {
	job := &batchv1.Job{}
	err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: jobNamespace(kb), Name: restoreJobName(kb)}, job)
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("get Job %s: %w", restoreJobName(kb), err)
	}
	if jobIsKBs(job, kb) {
		return "", nil
	}
	return notOwnedMessage(job, kb) + " (delete it once you have checked it restores nothing, then create the restore again)", nil
}

// notOwnedMessage says which Job is in the way and who controls it.
func notOwnedMessage(job *batchv1.Job, kb *kcv1.KeycloakBackup) string {
	owner := "no controller"
	if ref := metav1.GetControllerOf(job); ref != nil {
		owner = fmt.Sprintf("controller %s %q uid %s", ref.Kind, ref.Name, ref.UID)
	}
	return fmt.Sprintf("Job %s, which would be this restore's Job, exists and is not owned by KeycloakBackup %q uid %s (it has %s: "+
		"a leftover of a deleted resource of the same name, or someone else's)", job.Name, kb.Name, kb.UID, owner)
}

// buildRestoreJob returns the Job that runs `kcbackup restore` against the data volume, as
// the user owning the data directory.
func (r *Reconciler) buildRestoreJob(kb *kcv1.KeycloakBackup, db workload, loc dataLocation) (*batchv1.Job, error) {
	spec := instanceSpec(kb) // a clone elsewhere reads the copies of the archive's Secrets
	env, err := storageEnv(&spec.Storage)
	if err != nil {
		return nil, err
	}
	storageURL := env[0].Value
	vols, mounts := storageVolumes(&spec.Storage)
	if v, m, e := restoreEncryption(spec.Encryption); v != nil { // sidecar_options.go
		vols, mounts, env = append(vols, *v), append(mounts, *m), append(env, e...)
	}
	binVol, binMount, binInit := binarySource(r.SidecarImage, r.delivery(jobNamespace(kb)))
	vols, mounts = append(vols, binVol), append(mounts, binMount)
	vols = append(vols, corev1.Volume{Name: "pgdata", VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: loc.Volume.PersistentVolumeClaim.ClaimName}}})
	mounts = append(mounts, corev1.VolumeMount{Name: "pgdata", MountPath: jobVolumeDir})
	dataDir, err := jobDataDir(loc)
	if err != nil {
		return nil, err
	}

	tmpl := db.Template()
	podSC := tmpl.Spec.SecurityContext.DeepCopy()
	if podSC == nil {
		podSC = &corev1.PodSecurityContext{}
	}
	csc := restrictedSecurityContext()
	csc.RunAsUser, csc.RunAsGroup = restoreJobIDs(kb.Status.Restore, &tmpl.Spec, loc.Container)

	labels := map[string]string{
		"app.kubernetes.io/name":       "kcbackup-restore",
		"app.kubernetes.io/managed-by": "kcbackup-operator",
		"keycloak.org/keycloakbackup":  kb.Name,
	}
	if kb.IsClone() {
		labels[instanceUIDLabel] = string(kb.UID)
	}
	sa := tmpl.Spec.ServiceAccountName
	if kb.IsClone() && elsewhere(kb) {
		sa = "" // the workload's is in its own namespace
	}
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: kb.Status.Restore.JobName, Namespace: jobNamespace(kb), Labels: labels},
		Spec: batchv1.JobSpec{
			// A restore that failed halfway is for a human to inspect, not to retry blindly.
			BackoffLimit:          ptr.To[int32](0),
			ActiveDeadlineSeconds: ptr.To(int64(kb.Spec.RestoreTimeout().Seconds())),
			// Exit 4 means the data directory was not touched: the Job fails through this
			// rule, so its Failed condition says so (reason PodFailurePolicy) even after the
			// pod is gone, and the operator gives the database back.
			PodFailurePolicy: &batchv1.PodFailurePolicy{Rules: []batchv1.PodFailurePolicyRule{{
				Action: batchv1.PodFailurePolicyActionFailJob,
				OnExitCodes: &batchv1.PodFailurePolicyOnExitCodesRequirement{
					ContainerName: ptr.To("restore"), Operator: batchv1.PodFailurePolicyOnExitCodesOpIn,
					Values: []int32{apiclient.ExitRestoreUntouched},
				},
			}}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					RestartPolicy:      corev1.RestartPolicyNever,
					SecurityContext:    podSC,
					ServiceAccountName: sa,
					ImagePullSecrets:   tmpl.Spec.ImagePullSecrets,
					NodeSelector:       tmpl.Spec.NodeSelector,
					Tolerations:        tmpl.Spec.Tolerations,
					Volumes:            vols,
					InitContainers:     initContainers(binInit),
					Containers: []corev1.Container{{
						Name:  "restore",
						Image: r.SidecarImage,
						// Run through the image volume: restore_command names this path.
						Command: []string{KcbackupPath},
						// restore_command fetches through the sidecar beside PostgreSQL, with the
						// token mounted in both; PostgreSQL never sees storage credentials.
						Args:         restoreArgs(kb, storageURL, dataDir),
						Env:          env,
						VolumeMounts: mounts,
						Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
							corev1.ResourceCPU:    resource.MustParse("100m"),
							corev1.ResourceMemory: resource.MustParse("128Mi"),
						}},
						SecurityContext: csc,
						// The error kcbackup prints last becomes the termination message.
						TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
					}},
				},
			},
		},
	}
	if kb.IsClone() && elsewhere(kb) {
		return job, nil // no owner across namespaces: InstanceFinalizer deletes it
	}
	if err := controllerutil.SetControllerReference(kb, job, r.Client.Scheme()); err != nil {
		return nil, err
	}
	return job, nil
}

// restoreArgs are the restore Job's arguments. In place, the old data directory moves
// aside and the archive is handed over to the restored server; a new instance is a copy:
// an empty claim, and no handover (it never archives). The WAL is fetched through the
// container beside PostgreSQL: the sidecar in place, `kcbackup serve` in a new instance.
func restoreArgs(kb *kcv1.KeycloakBackup, storageURL, dataDir string) []string {
	to := restoreJobTarget(kb)
	fetch := []string{"--fetch-via", fmt.Sprintf("http://127.0.0.1:%d", apiclient.DefaultPort), "--fetch-token-file", tokenFile}
	if kb.IsClone() {
		return append([]string{"restore", "--storage", storageURL, "--pgdata", dataDir, "--to", to, "--timeline", restoreTimeline(kb.Spec.Restore)}, fetch...)
	}
	return append([]string{"restore", "--storage", storageURL, "--pgdata", dataDir,
		"--to", to, "--move-aside", "--handover", "--timeline", restoreTimeline(kb.Spec.Restore)}, fetch...)
}

// jobNamespace is where kb's restore Job runs: beside the data it restores into.
func jobNamespace(kb *kcv1.KeycloakBackup) string {
	if kb.IsClone() {
		return namesOf(kb).ns
	}
	return kb.Namespace
}

// jobIsKBs reports whether job is kb's restore Job: controlled by it, or, in another
// namespace, labelled with its UID.
func jobIsKBs(job *batchv1.Job, kb *kcv1.KeycloakBackup) bool {
	// The label alone is trusted only where no owner reference can be (another namespace).
	return metav1.IsControlledBy(job, kb) || kb.IsClone() && elsewhere(kb) && kb.UID != "" && job.Labels[instanceUIDLabel] == string(kb.UID)
}

type outcome int

const (
	jobRunning outcome = iota
	jobSucceeded
	jobFailed
	// jobRefused: it failed with ExitRestoreUntouched; the data directory is as it was.
	jobRefused
)

// jobOutcome reads the Job's terminal conditions (and their early *Target forms).
func jobOutcome(job *batchv1.Job) outcome {
	for _, c := range job.Status.Conditions {
		if c.Status != corev1.ConditionTrue {
			continue
		}
		switch c.Type {
		case batchv1.JobComplete, batchv1.JobSuccessCriteriaMet:
			return jobSucceeded
		case batchv1.JobFailed, batchv1.JobFailureTarget:
			// Only the pod failure policy's rule for exit 4 makes a refusal; anything else
			// (a deadline, another exit status, an evicted pod) may have touched the data.
			if c.Reason == batchv1.JobReasonPodFailurePolicy &&
				strings.Contains(c.Message, fmt.Sprintf("exit code %d ", apiclient.ExitRestoreUntouched)) {
				return jobRefused
			}
			return jobFailed
		}
	}
	return jobRunning
}

// initContainers is the restore Job's init containers: the binary's copy, when delivered so.
func initContainers(binInit *corev1.Container) []corev1.Container {
	if binInit == nil {
		return nil
	}
	return []corev1.Container{*binInit}
}
