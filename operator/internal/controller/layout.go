package controller

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

// What the operator can tell about a restore from the workload alone, on the first
// reconcile, instead of when a restore is asked for.

// bitnamiImagePattern matches the Bitnami PostgreSQL images (bitnami/, bitnamilegacy/,
// bitnamisecure/; postgresql and postgresql-repmgr) in any registry.
var bitnamiImagePattern = regexp.MustCompile(`(^|/)bitnami[a-z]*/postgresql(-repmgr)?([:@]|$)`)

// PerformRestoreEnv is the Bitnami image's switch that keeps recovery.signal at start.
const PerformRestoreEnv = "POSTGRESQL_PERFORM_RESTORE"

// isBitnami reports whether the container runs a Bitnami PostgreSQL image: by its image,
// or by the variables only the Bitnami chart sets.
func isBitnami(c *corev1.Container) bool {
	if bitnamiImagePattern.MatchString(c.Image) {
		return true
	}
	return slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "POSTGRESQL_VOLUME_DIR" || e.Name == "POSTGRESQL_PORT_NUMBER"
	})
}

// postgresContainer returns PostgreSQL's container in w's template.
func postgresContainer(w workload, loc dataLocation) *corev1.Container {
	spec := &w.Template().Spec
	for i := range spec.Containers {
		if spec.Containers[i].Name == loc.Container {
			return &spec.Containers[i]
		}
	}
	return nil
}

// judgeLayout decides the Restorable condition: the first problem a restore would refuse
// for, or what a restore will do differently.
func judgeLayout(w workload, loc dataLocation) (metav1.ConditionStatus, string, string) {
	if loc.Volume.PersistentVolumeClaim == nil {
		return metav1.ConditionFalse, kcv1.ReasonDataNotOnClaim, fmt.Sprintf(
			"the data directory %s of %s is on volume %q, which is not a PersistentVolumeClaim: backups work, a restore is refused",
			loc.DataDir, w, loc.Mount.Name)
	}
	if _, err := jobDataDir(loc); err != nil {
		return metav1.ConditionFalse, kcv1.ReasonDataDirAtVolumeRoot, err.Error() + "; backups work, a restore is refused"
	}
	if n := w.Replicas(); n > 1 {
		return metav1.ConditionFalse, kcv1.ReasonMultipleReplicas, replicasMessage(w, n)
	}
	if c := postgresContainer(w, loc); c != nil && isBitnami(c) {
		return metav1.ConditionTrue, kcv1.ReasonBitnamiImage, fmt.Sprintf(
			"container %q of %s runs a Bitnami PostgreSQL image, whose start deletes recovery.signal: a restore sets %s=yes for the "+
				"restored start and removes it once PostgreSQL promoted (which restarts PostgreSQL once, with the application still stopped)",
			c.Name, w, PerformRestoreEnv)
	}
	return metav1.ConditionTrue, kcv1.ReasonRestorable, "the data directory " + loc.DataDir + " is a subdirectory of claim " +
		loc.Volume.PersistentVolumeClaim.ClaimName + ": an in-place restore can run"
}

// replicasMessage says why a workload with replicas is not restored in place, and what to do.
func replicasMessage(w workload, n int32) string {
	return fmt.Sprintf("%s has %d replicas: an in-place restore writes one data volume and would leave the standbys on the old data "+
		"(and ordinal 0 may not be the primary), so it is refused before anything stops. Scale it to 1 replica (drop the standbys' "+
		"claims), restore, then scale back so the standbys are seeded anew from the restored primary; or restore into a new "+
		"PostgreSQL with kcbackup restore", w, n)
}

// setPerformRestore adds or removes POSTGRESQL_PERFORM_RESTORE=yes on PostgreSQL's container
// in the workload's template, and records it in status.restore.bitnamiPerformRestore.
func (r *Reconciler) setPerformRestore(ctx context.Context, run *restoreRun, on bool) error {
	w := run.db
	before := w.Obj.DeepCopyObject().(client.Object)
	c := postgresContainer(w, run.loc)
	if c == nil {
		return fmt.Errorf("%s has no container %q", w, run.loc.Container)
	}
	c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == PerformRestoreEnv })
	verb := "removed"
	if on {
		c.Env = append(c.Env, corev1.EnvVar{Name: PerformRestoreEnv, Value: "yes"})
		verb = "set"
	}
	if err := r.Client.Patch(ctx, w.Obj, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("%s %s=yes on %s: %w", strings.TrimSuffix(verb, "d"), PerformRestoreEnv, w, err)
	}
	run.kb.Status.Restore.BitnamiPerformRestore = on
	r.Recorder.Eventf(run.kb, w.Obj, corev1.EventTypeNormal, "BitnamiPerformRestore", "Restore",
		"%s %s=yes on container %q of %s (a Bitnami image keeps recovery.signal only with it)", verb, PerformRestoreEnv, c.Name, w)
	return nil
}
