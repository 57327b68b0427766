package controller_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	kccontroller "github.com/kcbackup/kcbackup/operator/internal/controller"
	"github.com/kcbackup/kcbackup/test/harness"
)

// TestEnvtestClonesAndDrills covers restores into a new instance (spec.into) and drills
// (spec.drill) against a real API server, with the CRD's CEL rules; the cluster story
// (test/cluster) runs them on a real node.
func TestEnvtestClonesAndDrills(t *testing.T) {
	cfg := harness.StartAPIServer(t, "../../../deploy/crd")
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, cfg *rest.Config)
	}{
		{"AdmissionRules", testCloneAdmission},
		{"CloneLeavesProductionAndMakesItsOwnObjects", testCloneObjects},
		{"CloneRefusesANameTaken", testCloneNameTaken},
		{"DrillScheduleCreatesOwnedDrills", testDrillSchedule},
		{"CloneIntoAnotherNamespaceOnlyWhenAccepted", testCloneElsewhere},
		{"AManualDrillThatEndsReachesTheArchiveStatus", testDrillSummary},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.run(t, cfg)
		})
	}
}

func cloneOf(name, from, to, into string) *kcv1.KeycloakBackup {
	kb := fromBackup(name, from)
	kb.Spec.RestoreTo = to
	kb.Spec.Into = &kcv1.RestoreInto{Name: into}
	return kb
}

func testCloneAdmission(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	for name, tc := range map[string]struct {
		kb   *kcv1.KeycloakBackup
		want string
	}{
		"into without restoreTo": {func() *kcv1.KeycloakBackup {
			kb := fromBackup("a", "prod")
			kb.Spec.Into = &kcv1.RestoreInto{Name: "copy"}
			return kb
		}(), "into is used only with restoreTo"},
		"into with an application to stop": {func() *kcv1.KeycloakBackup {
			kb := cloneOf("b", "prod", "latest", "copy")
			kb.Spec.ApplicationSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "keycloak"}}
			return kb
		}(), "a restore into a new instance stops nothing"},
		"drill to a time": {func() *kcv1.KeycloakBackup {
			kb := cloneOf("c", "prod", "2026-12-01T10:00:00Z", "copy")
			kb.Spec.Into.Drill = true
			return kb
		}(), "set restoreTo to latest"},
		"instance name not a DNS label": {cloneOf("d", "prod", "latest", "Copy_1"), "spec.into.name"},
		"drill schedule on a resource with from": {func() *kcv1.KeycloakBackup {
			kb := fromBackup("e", "prod")
			kb.Spec.Drill = &kcv1.DrillSpec{Schedule: "@weekly"}
			return kb
		}(), "drill belongs to the archive's resource"},
		"drill schedule without a backup schedule": {func() *kcv1.KeycloakBackup {
			kb := volumeBackup("f")
			kb.Spec.Drill = &kcv1.DrillSpec{Schedule: "@weekly"}
			return kb
		}(), "beside its schedule"},
		"drill table with SQL in it": {func() *kcv1.KeycloakBackup {
			kb := volumeBackup("g")
			kb.Spec.Schedule = "@daily"
			kb.Spec.Drill = &kcv1.DrillSpec{Schedule: "@weekly", Check: &kcv1.DrillCheck{Tables: []string{"realm; DROP TABLE realm"}}}
			return kb
		}(), "spec.drill.check.tables"},
		"drill timeout under a minute": {func() *kcv1.KeycloakBackup {
			kb := volumeBackup("h")
			kb.Spec.Schedule = "@daily"
			kb.Spec.Drill = &kcv1.DrillSpec{Schedule: "@weekly", Timeout: &metav1.Duration{Duration: 10 * time.Second}}
			return kb
		}(), "drill.timeout must be at least 1m"},
	} {
		tc.kb.Namespace = e.ns
		err := e.c.Create(e.ctx, tc.kb)
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: create = %v, want Invalid saying %q", name, err, tc.want)
		}
	}
	// A clone to a time is admitted (into.drill unset must not trip the drill's rule);
	// its instance cannot change.
	e.create(cloneOf("at-time", "prod", "2026-12-01T10:00:00Z", "copy-at-time"))
	e.create(cloneOf("copy", "prod", "latest", "copy-db"))
	cur := e.kb("copy")
	patch := client.MergeFrom(cur.DeepCopy())
	cur.Spec.Into.Name = "other"
	if err := e.c.Patch(e.ctx, cur, patch); !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "into is immutable") {
		t.Errorf("changing into.name = %v, want Invalid saying into is immutable", err)
	}
}

// cloneFixture is production (a Deployment on claim postgres-data, running) and its
// archive's resource, scheduled.
func cloneFixture(t *testing.T, cfg *rest.Config, tune ...func(r *kccontroller.Reconciler)) *env {
	e := newEnv(t, cfg, tune...)
	e.create(postgresDeployment("postgres", dbLabels))
	e.create(&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "postgres-data"}, Spec: corev1.PersistentVolumeClaimSpec{
		AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, StorageClassName: ptr.To("fast"),
		Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("3Gi")}},
	}})
	e.runPod("postgres-0", dbPods)
	prod := volumeBackup("prod")
	prod.Spec.Schedule = "0 3 * * *"
	e.create(prod)
	e.waitPhase("prod", kcv1.PhaseScheduled)
	return e
}

func testCloneObjects(t *testing.T, cfg *rest.Config) {
	e := cloneFixture(t, cfg)
	before := e.deployment("postgres")
	kb := cloneOf("copy", "prod", "latest", "copy-db")
	kb.Spec.Into.Size = ptr.To(resource.MustParse("5Gi"))
	e.create(kb)
	job := &batchv1.Job{}
	e.eventually("the clone's restore Job", func() (bool, string) {
		err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: "copy-restore"}, job)
		return err == nil, describe(e.kb("copy"))
	})
	owned := func(o client.Object) {
		t.Helper()
		if !metav1.IsControlledBy(o, e.kb("copy")) || o.GetLabels()[kccontroller.InstanceLabel] != "copy" {
			t.Errorf("%T %s: owner %v, labels %v; want controlled by the clone's resource, labelled with it", o, o.GetName(), o.GetOwnerReferences(), o.GetLabels())
		}
	}
	var claim corev1.PersistentVolumeClaim
	if err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: "copy-db-data"}, &claim); err != nil {
		t.Fatal(err)
	}
	owned(&claim)
	if got := claim.Spec.Resources.Requests.Storage().String(); got != "5Gi" || ptr.Deref(claim.Spec.StorageClassName, "") != "fast" {
		t.Errorf("claim: %s of class %v, want 5Gi (into.size) of class fast (the data claim's)", got, claim.Spec.StorageClassName)
	}
	var svc corev1.Service
	if err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: "copy-db"}, &svc); err != nil {
		t.Fatal(err)
	}
	owned(&svc)
	if _, ok := svc.Spec.Selector["pod"]; ok || len(svc.Spec.Selector) == 0 {
		t.Errorf("the clone's Service selects %v: it must select only the clone's pod", svc.Spec.Selector)
	}
	// The Job restores into the new claim, as a copy: nothing moved aside, no handover.
	args := job.Spec.Template.Spec.Containers[0].Args
	if slices.Contains(args, "--move-aside") || slices.Contains(args, "--handover") {
		t.Errorf("clone restore Job args %v: a copy never moves data aside nor takes the archive over", args)
	}
	var claims []string
	for _, v := range job.Spec.Template.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			claims = append(claims, v.PersistentVolumeClaim.ClaimName)
		}
	}
	if !slices.Contains(claims, "copy-db-data") || slices.Contains(claims, "postgres-data") {
		t.Errorf("clone restore Job mounts claims %v: want copy-db-data and never production's postgres-data", claims)
	}
	// Production was not stopped or changed.
	after := e.deployment("postgres")
	if *after.Spec.Replicas != 1 || after.Generation != before.Generation {
		t.Errorf("production Deployment: replicas %d, generation %d -> %d; want untouched", *after.Spec.Replicas, before.Generation, after.Generation)
	}

	// Once the data is restored, the StatefulSet: production's template, its own claim,
	// its own labels, and kcbackup serve instead of the archiving sidecar.
	e.setJobCondition("copy-restore", true)
	sts := &appsv1.StatefulSet{}
	e.eventually("the clone's StatefulSet", func() (bool, string) {
		err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: "copy-db"}, sts)
		return err == nil, describe(e.kb("copy"))
	})
	owned(sts)
	tmpl := sts.Spec.Template
	if tmpl.Labels["pod"] != "" || tmpl.Labels[kccontroller.SidecarLabel] != "" {
		t.Errorf("clone pod labels %v: production's selector or the sidecar's PodMonitor label would pick the copy", tmpl.Labels)
	}
	var serve *corev1.Container
	for i, c := range tmpl.Spec.InitContainers {
		if c.Name == kccontroller.SidecarContainerName {
			serve = &tmpl.Spec.InitContainers[i]
		}
	}
	if serve == nil || !slices.Equal(serve.Args, []string{"serve"}) {
		t.Fatalf("clone's kcbackup container %+v: want `kcbackup serve`, which never writes the archive", serve)
	}
	for _, env := range serve.Env {
		if strings.HasPrefix(env.Name, "PG") || env.Name == "KCBACKUP_TOKEN_FILE" {
			t.Errorf("serve container has %s: it needs no connection to PostgreSQL and no admin token", env.Name)
		}
	}
	for _, v := range tmpl.Spec.Volumes {
		if v.Name == "data" && (v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != "copy-db-data") {
			t.Errorf("clone's data volume %+v: want claim copy-db-data", v)
		}
	}
	if st := e.kb("copy").Status.Restore; st == nil || st.Instance == nil || st.Instance.Host != "copy-db."+e.ns+".svc" || st.Step != kcv1.RestoreStartingDatabase {
		t.Errorf("status.restore: %+v; want step StartingDatabase and the instance's Service as host", st)
	}
}

func testCloneNameTaken(t *testing.T, cfg *rest.Config) {
	e := cloneFixture(t, cfg)
	e.create(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "taken"}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Port: 80}}}})
	e.create(cloneOf("copy", "prod", "latest", "taken"))
	got := e.waitPhase("copy", kcv1.PhaseFailed)
	if c := got.Condition(kcv1.ConditionReady); c == nil || c.Reason != kccontroller.ReasonInstanceExists || !strings.Contains(c.Message, "Service taken") {
		t.Errorf("clone into a taken name: %s; want Failed, reason %s naming Service taken", describe(got), kccontroller.ReasonInstanceExists)
	}
	var claims corev1.PersistentVolumeClaimList
	if err := e.c.List(e.ctx, &claims, client.InNamespace(e.ns)); err != nil || len(claims.Items) != 1 {
		t.Errorf("claims after the refusal: %d (%v); want only production's", len(claims.Items), err)
	}

	// A server that joins a replication manager by itself is not copied: the copy would
	// join production's cluster.
	d := e.deployment("postgres")
	patch := client.MergeFrom(d.DeepCopy())
	d.Spec.Template.Spec.Containers[0].Env = append(d.Spec.Template.Spec.Containers[0].Env, corev1.EnvVar{Name: "REPMGR_PARTNER_NODES", Value: "pg-0,pg-1"})
	if err := e.c.Patch(e.ctx, d, patch); err != nil {
		t.Fatal(err)
	}
	e.create(cloneOf("ha", "prod", "latest", "ha-copy"))
	got = e.waitPhase("ha", kcv1.PhaseFailed)
	if c := got.Condition(kcv1.ConditionReady); c == nil || c.Reason != kccontroller.ReasonInstanceUnsupported || !strings.Contains(c.Message, "REPMGR_PARTNER_NODES") {
		t.Errorf("clone of a repmgr template: %s; want Failed, reason %s naming REPMGR_PARTNER_NODES", describe(got), kccontroller.ReasonInstanceUnsupported)
	}
}

func testDrillSchedule(t *testing.T, cfg *rest.Config) {
	e := cloneFixture(t, cfg)
	cur := e.kb("prod")
	patch := client.MergeFrom(cur.DeepCopy())
	cur.Spec.Drill = &kcv1.DrillSpec{Schedule: "0 4 * * 0", History: 2, Check: &kcv1.DrillCheck{Tables: []string{"items"}}}
	if err := e.c.Patch(e.ctx, cur, patch); err != nil {
		t.Fatal(err)
	}
	e.eventually("status.drill.nextScheduleTime", func() (bool, string) {
		d := e.kb("prod").Status.Drill
		return d != nil && d.NextScheduleTime != nil, describe(e.kb("prod"))
	})
	// The drill schedule exports its interval, and 0 as the last success: the alert counts
	// from the schedule's start.
	if got := e.gauge("kcbackup_operator_drill_interval_seconds", "prod"); got != 7*24*3600 {
		t.Errorf("drill interval gauge = %v, want a week", got)
	}
	// The tick passes: one drill, owned by prod, with from, latest and into.drill.
	e.clock.SetTime(e.kb("prod").Status.Drill.NextScheduleTime.Add(time.Second))
	e.poke("prod")
	var drills kcv1.KeycloakBackupList
	e.eventually("a drill resource", func() (bool, string) {
		_ = e.c.List(e.ctx, &drills, client.InNamespace(e.ns), client.MatchingLabels{kcv1.DrillOfLabel: "prod"})
		return len(drills.Items) == 1, fmt.Sprintf("%d drills", len(drills.Items))
	})
	d := drills.Items[0]
	if !metav1.IsControlledBy(&d, e.kb("prod")) || d.Spec.From != "prod" || d.Spec.RestoreTo != kcv1.RestoreLatest || !d.IsDrill() ||
		d.Spec.Into.Check == nil || !slices.Equal(d.Spec.Into.Check.Tables, []string{"items"}) || len(d.Spec.Into.Name) > 52 {
		t.Errorf("drill %s: %+v; want owned by prod, from prod, latest, into.drill with the schedule's check", d.Name, d.Spec)
	}
	e.eventually("status.drill.lastDrill", func() (bool, string) {
		got := e.kb("prod").Status.Drill.LastDrill
		return got == d.Name, fmt.Sprintf("%q, want %q", got, d.Name)
	})
}

func testCloneElsewhere(t *testing.T, cfg *rest.Config) {
	e := newEnv(t, cfg)
	e.create(postgresDeployment("postgres", dbLabels))
	e.create(&corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "postgres-data"}, Spec: corev1.PersistentVolumeClaimSpec{
		AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
	}})
	e.create(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s3-creds"},
		Data: map[string][]byte{"AWS_ACCESS_KEY_ID": []byte("AKIDPROD"), "AWS_SECRET_ACCESS_KEY": []byte("prod-secret")}})
	e.runPod("postgres-0", dbPods)
	prod := s3Backup("prod")
	prod.Spec.Schedule = "0 3 * * *"
	e.create(prod)
	e.waitPhase("prod", kcv1.PhaseScheduled)
	other := e.ns + "-sandbox"
	if err := e.c.Create(e.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: other}}); err != nil {
		t.Fatal(err)
	}

	// Not accepted by the namespace: refused, nothing made there.
	kb := cloneOf("refused", "prod", "latest", "copy")
	kb.Spec.Into.Namespace = other
	e.create(kb)
	got := e.waitPhase("refused", kcv1.PhaseFailed)
	if c := got.Condition(kcv1.ConditionReady); c == nil || c.Reason != kccontroller.ReasonInstanceNamespaceNotAccepted ||
		!strings.Contains(c.Message, kccontroller.AcceptRestoresAnnotation+"="+e.ns) {
		t.Errorf("clone into a namespace that does not accept it: %s; want Failed, reason %s, naming the annotation", describe(got), kccontroller.ReasonInstanceNamespaceNotAccepted)
	}
	var secrets corev1.SecretList
	if err := e.c.List(e.ctx, &secrets, client.InNamespace(other)); err != nil || len(secrets.Items) != 0 {
		t.Errorf("Secrets in %s after the refusal: %d (%v), want none", other, len(secrets.Items), err)
	}

	// Accepted: the instance's objects are there, with the archive's credentials copied,
	// no owner reference (none can cross namespaces) and the resource's finalizer.
	var ns corev1.Namespace
	if err := e.c.Get(e.ctx, client.ObjectKey{Name: other}, &ns); err != nil {
		t.Fatal(err)
	}
	ns.Annotations = map[string]string{kccontroller.AcceptRestoresAnnotation: "elsewhere, " + e.ns}
	if err := e.c.Update(e.ctx, &ns); err != nil {
		t.Fatal(err)
	}
	kb = cloneOf("sandbox", "prod", "latest", "copy")
	kb.Spec.Into.Namespace = other
	e.create(kb)
	job := &batchv1.Job{}
	e.eventually("the restore Job in "+other, func() (bool, string) {
		err := e.c.Get(e.ctx, client.ObjectKey{Namespace: other, Name: "sandbox-restore"}, job)
		return err == nil, describe(e.kb("sandbox"))
	})
	var copied corev1.Secret
	if err := e.c.Get(e.ctx, client.ObjectKey{Namespace: other, Name: "copy-kcbackup-storage"}, &copied); err != nil {
		t.Fatal(err)
	}
	if string(copied.Data["AWS_ACCESS_KEY_ID"]) != "AKIDPROD" || string(copied.Data["AWS_SECRET_ACCESS_KEY"]) != "prod-secret" {
		t.Errorf("copied credentials: %v", copied.Data)
	}
	refs := map[string]bool{}
	for _, env := range job.Spec.Template.Spec.Containers[0].Env {
		if env.ValueFrom != nil && env.ValueFrom.SecretKeyRef != nil {
			refs[env.ValueFrom.SecretKeyRef.Name] = true
		}
	}
	if !refs["copy-kcbackup-storage"] || refs["s3-creds"] {
		t.Errorf("the Job's Secrets %v: want the copy in %s, never the original of %s", refs, other, e.ns)
	}
	if len(job.OwnerReferences) != 0 || !slices.Contains(e.kb("sandbox").Finalizers, kccontroller.InstanceFinalizer) {
		t.Errorf("Job owners %v, resource finalizers %v: want none across namespaces, and %s on the resource",
			job.OwnerReferences, e.kb("sandbox").Finalizers, kccontroller.InstanceFinalizer)
	}
	if st := e.kb("sandbox").Status.Restore.Instance; st == nil || st.Namespace != other || st.Host != "copy."+other+".svc" {
		t.Errorf("status.restore.instance %+v: want namespace %s and host copy.%s.svc", st, other, other)
	}

	// Deleting the resource deletes its instance there (envtest runs no garbage collector:
	// only the finalizer can).
	if err := e.c.Delete(e.ctx, e.kb("sandbox")); err != nil {
		t.Fatal(err)
	}
	e.eventually("the instance in "+other+" deleted and the resource gone", func() (bool, string) {
		var claims corev1.PersistentVolumeClaimList
		var secrets corev1.SecretList
		_ = e.c.List(e.ctx, &claims, client.InNamespace(other))
		for i := range claims.Items { // play the pvc-protection controller: no pod uses it
			if c := &claims.Items[i]; c.DeletionTimestamp != nil && len(c.Finalizers) > 0 {
				c.Finalizers = nil
				_ = e.c.Update(e.ctx, c)
			}
		}
		_ = e.c.List(e.ctx, &secrets, client.InNamespace(other))
		err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: "sandbox"}, &kcv1.KeycloakBackup{})
		return apierrors.IsNotFound(err) && len(claims.Items) == 0 && len(secrets.Items) == 0,
			fmt.Sprintf("%d claims, %d secrets left, resource: %v", len(claims.Items), len(secrets.Items), err)
	})
}

func testDrillSummary(t *testing.T, cfg *rest.Config) {
	// prod looks again only in an hour: only the drill's end can wake it in time.
	e := cloneFixture(t, cfg, func(r *kccontroller.Reconciler) { r.MaxScheduleWait, r.WindowRefreshInterval = time.Hour, time.Hour })
	cur := e.kb("prod")
	patch := client.MergeFrom(cur.DeepCopy())
	cur.Spec.Drill = &kcv1.DrillSpec{Schedule: "0 4 * * 0", Suspend: true}
	if err := e.c.Patch(e.ctx, cur, patch); err != nil {
		t.Fatal(err)
	}
	e.eventually("status.drill", func() (bool, string) { return e.kb("prod").Status.Drill != nil, describe(e.kb("prod")) })
	// A drill as kubectl kcbackup drill makes it: not owned by prod, labelled with it.
	d := kcv1.NewDrill(e.kb("prod"), time.Now())
	d.Namespace = e.ns
	e.create(d)
	// Its run is played here (envtest has no PostgreSQL to mark): it passed.
	e.eventually("the drill passed", func() (bool, string) {
		cur := e.kb(d.Name)
		before := cur.DeepCopy()
		now := metav1.Now()
		cur.Status.Phase = kcv1.PhaseRestored
		cur.Status.Restore = &kcv1.RestoreStatus{Step: kcv1.RestoreDone, CompletionTime: &now,
			Drill: &kcv1.DrillResult{RTO: &metav1.Duration{Duration: 42 * time.Second}, RPO: &metav1.Duration{Duration: 300 * time.Millisecond}}}
		err := e.c.Status().Patch(e.ctx, cur, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
		return err == nil, fmt.Sprint(err)
	})
	// Nothing ticks (suspended): only the drill's own end wakes prod.
	e.eventually("prod's status.drill sums the manual drill up", func() (bool, string) {
		st := e.kb("prod").Status.Drill
		return st != nil && st.LastDrill == d.Name && st.LastResult == kcv1.PhaseRestored && st.LastRTO != nil && st.LastRTO.Duration == 42*time.Second,
			fmt.Sprintf("%+v", st)
	})
	if got := e.gauge("kcbackup_operator_drill_rto_seconds", "prod"); got != 42 {
		t.Errorf("drill RTO gauge = %v, want 42", got)
	}
	if got := e.gauge("kcbackup_operator_drill_last_success_timestamp_seconds", "prod"); got == 0 {
		t.Errorf("drill last success gauge = 0 after a passed drill")
	}
}
