package controller

import (
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

func TestLatestTickBetweenCatchesUpOnce(t *testing.T) {
	sched, err := kcv1.ParseSchedule("0 * * * *")
	if err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 1, 1, 0, 30, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		now  time.Time
		want time.Time
		ok   bool
	}{
		{"before the first tick", base.Add(10 * time.Minute), time.Time{}, false},
		{"exactly at the tick", base.Add(30 * time.Minute), base.Add(30 * time.Minute), true},
		{"five ticks missed: only the newest", base.Add(5*time.Hour + 40*time.Minute), base.Add(5*time.Hour + 30*time.Minute), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := latestTickBetween(sched, base, tc.now)
			if ok != tc.ok || !got.Equal(tc.want) {
				t.Fatalf("latestTickBetween = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func statefulSet() workload {
	return workload{Kind: KindStatefulSet, Obj: &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "pg"},
		Spec: appsv1.StatefulSetSpec{
			Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{
				{Name: "exporter", Image: "exporter"},
				{Name: "postgres", Image: "postgres", VolumeMounts: []corev1.VolumeMount{
					{Name: "run", MountPath: "/var/run/postgresql"},
					{Name: "data", MountPath: "/var/lib/postgresql"},
					{Name: "pgdata", MountPath: "/var/lib/postgresql/data"},
				}},
			}, Volumes: []corev1.Volume{{Name: "run", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}}},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{
				{ObjectMeta: metav1.ObjectMeta{Name: "data"}}, {ObjectMeta: metav1.ObjectMeta{Name: "pgdata"}},
			},
		},
	}}
}

func TestLocateDataPicksTheDeepestMountAndTheClaimOfPodZero(t *testing.T) {
	loc, err := locateData(statefulSet(), "postgres", "")
	if err != nil {
		t.Fatal(err)
	}
	if loc.DataDir != defaultDataDir || loc.Mount.Name != "pgdata" {
		t.Fatalf("location = %+v, want the pgdata mount for %s", loc, defaultDataDir)
	}
	if c := loc.Volume.PersistentVolumeClaim; c == nil || c.ClaimName != "pgdata-pg-0" {
		t.Fatalf("claim = %+v, want pgdata-pg-0", loc.Volume.PersistentVolumeClaim)
	}
}

func TestLocateDataRefusesWhatItCannotFind(t *testing.T) {
	if _, err := locateData(statefulSet(), "postgresql", ""); err == nil {
		t.Error("an unknown container was accepted")
	}
	if _, err := locateData(statefulSet(), "exporter", ""); err == nil {
		t.Error("a container without a data mount was accepted")
	}
}

func TestSidecarHashChangesWithStorageOnly(t *testing.T) {
	loc := dataLocation{Container: "postgres", DataDir: "/d/pgdata", Mount: corev1.VolumeMount{Name: "data", MountPath: "/d"}}
	spec := kcv1.KeycloakBackupSpec{Storage: kcv1.Storage{Volume: &kcv1.VolumeStorage{ClaimName: "a"}}}
	a, err := buildSidecar("img", &spec, "pg", loc)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := buildSidecar("img", &spec, "pg", loc)
	spec.Storage.Volume.ClaimName = "b"
	b, _ := buildSidecar("img", &spec, "pg", loc)
	if a.Hash() != again.Hash() || a.Hash() == b.Hash() {
		t.Fatalf("hashes %s %s %s: want stable for the same spec, different for another claim", a.Hash(), again.Hash(), b.Hash())
	}
	tmpl := &corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		InitContainers: []corev1.Container{{Name: "init-perms"}},
		Containers: []corev1.Container{{Name: "postgres", Env: []corev1.EnvVar{{Name: "POSTGRES_DB", Value: "keycloak"}},
			VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/d"}}}},
	}}
	inject(tmpl, a)
	inject(tmpl, b)
	if n := len(tmpl.Spec.InitContainers); n != 2 || tmpl.Spec.InitContainers[0].Name != "init-perms" {
		t.Fatalf("init containers = %+v, want the user's and one sidecar", tmpl.Spec.InitContainers)
	}
	pg := tmpl.Spec.Containers[0]
	// PostgreSQL gets no storage settings (restore_command goes through the sidecar).
	if len(pg.Env) != 1 || pg.Env[0].Name != "POSTGRES_DB" {
		t.Fatalf("postgres env = %+v, want only the user's variable", pg.Env)
	}
	if len(pg.VolumeMounts) != 3 {
		t.Fatalf("postgres mounts = %+v, want data, image and token once each", pg.VolumeMounts)
	}
	if !injected(tmpl, b) || injected(tmpl, a) {
		t.Fatal("injected() does not follow the last injection")
	}
}

func TestJobDataDirIsAlwaysBelowTheVolumeRoot(t *testing.T) {
	for _, tc := range []struct {
		name             string
		mount, sub, data string
		want             string
	}{
		{"subdirectory", "/var/lib/postgresql/data", "", "/var/lib/postgresql/data/pgdata", jobVolumeDir + "/pgdata"},
		{"subPath mount", "/var/lib/postgresql/data", "pg17", "/var/lib/postgresql/data", jobVolumeDir + "/pg17"},
		{"volume root", "/var/lib/postgresql/data/", "", "/var/lib/postgresql/data", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := jobDataDir(dataLocation{DataDir: tc.data, Mount: corev1.VolumeMount{Name: "data", MountPath: tc.mount, SubPath: tc.sub}})
			if tc.want == "" {
				if err == nil {
					t.Fatalf("jobDataDir = %q, want a refusal", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("jobDataDir = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestRestoreTargetsAreCheckedAgainstEveryRange(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	cat := apiclient.Catalog{Windows: []apiclient.RecoveryWindow{
		{Timeline: 1, Earliest: t0, Latest: t0.Add(time.Hour), Hole: true},
		{Timeline: 1, Earliest: t0.Add(2 * time.Hour), Latest: t0.Add(3 * time.Hour)},
		{Timeline: 2, Earliest: t0, Latest: t0.Add(4 * time.Hour)},
	}}
	two := int64(2)
	for _, tc := range []struct {
		target time.Time
		opts   *kcv1.RestoreOptions
		want   bool
	}{
		{t0.Add(30 * time.Minute), nil, true},                                              // before the hole
		{t0.Add(90 * time.Minute), &kcv1.RestoreOptions{Timeline: ptrTo(int64(1))}, false}, // in timeline 1's hole
		{t0.Add(90 * time.Minute), &kcv1.RestoreOptions{Timeline: &two}, true},
		{t0.Add(5 * time.Hour), nil, false},
	} {
		if got := inSomeRange(cat, tc.target, tc.opts); got != tc.want {
			t.Errorf("target %s, options %+v: %v; want %v", tc.target, tc.opts, got, tc.want)
		}
	}
	if got := restoreTimeline(&kcv1.RestoreOptions{Timeline: &two}); got != "2" {
		t.Errorf("--timeline %q; want 2", got)
	}
	if got := restoreTimeline(nil); got != "latest" {
		t.Errorf("--timeline %q; want latest", got)
	}
}

func ptrTo[T any](v T) *T { return &v }
