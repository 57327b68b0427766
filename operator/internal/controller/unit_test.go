package controller

import (
	"path"
	"strconv"
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
	a, err := buildSidecar("img", DeliverByImageVolume, &spec, "pg", loc)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := buildSidecar("img", DeliverByImageVolume, &spec, "pg", loc)
	spec.Storage.Volume.ClaimName = "b"
	b, _ := buildSidecar("img", DeliverByImageVolume, &spec, "pg", loc)
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
	now := t0.Add(10 * time.Hour)
	for _, tc := range []struct {
		target time.Time
		opts   *kcv1.RestoreOptions
		want   targetVerdict
	}{
		{t0.Add(30 * time.Minute), nil, targetInside},                                              // before the hole
		{t0.Add(90 * time.Minute), &kcv1.RestoreOptions{Timeline: ptrTo(int64(1))}, targetOutside}, // in timeline 1's hole
		{t0.Add(90 * time.Minute), &kcv1.RestoreOptions{Timeline: &two}, targetInside},
		{t0.Add(5 * time.Hour), nil, targetOutside},
	} {
		if got, _ := judgeTarget(cat, tc.target, now, 0, tc.opts); got != tc.want {
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

// TestTargetJustPastTheWindowIsWaitedForWithinTheLag: a target the archive has not reached
// yet, by no more than the lag plus a margin, is waited for (a bounded time); anything else
// outside the ranges is refused for good.
func TestTargetJustPastTheWindowIsWaitedForWithinTheLag(t *testing.T) {
	end := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	start := end.Add(-24 * time.Hour)
	open := apiclient.Catalog{Window: &apiclient.RecoveryWindow{Earliest: start, Latest: end}}
	holed := apiclient.Catalog{Windows: []apiclient.RecoveryWindow{{Timeline: 1, Earliest: start, Latest: end, Hole: true}}}
	for _, tc := range []struct {
		name        string
		cat         apiclient.Catalog
		target, now time.Time
		lag         time.Duration
		want        targetVerdict
	}{
		{"at the end", open, end, end, 0, targetInside},
		{"20s past the end, lag 30s, just now", open, end.Add(20 * time.Second), end.Add(25 * time.Second), 30 * time.Second, targetNotYet},
		{"a little in the future, within lag and margin", open, end.Add(50 * time.Second), end.Add(30 * time.Second), 0, targetNotYet},
		{"20s past the end, but lag and margin have passed since", open, end.Add(20 * time.Second), end.Add(2 * time.Minute), 30 * time.Second, targetOutside},
		{"further past the end than lag and margin", open, end.Add(5 * time.Minute), end.Add(5 * time.Minute), 30 * time.Second, targetOutside},
		{"store down for two hours: the lag grows", open, end.Add(time.Hour), end.Add(90 * time.Minute), 2 * time.Hour, targetNotYet},
		{"before the window's start", open, start.Add(-time.Second), end, time.Hour, targetOutside},
		{"past a range that ends at a hole", holed, end.Add(10 * time.Second), end.Add(20 * time.Second), 30 * time.Second, targetOutside},
		{"48 hours in the future", open, end.Add(48 * time.Hour), end, 30 * time.Second, targetOutside},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, gotEnd := judgeTarget(tc.cat, tc.target, tc.now, tc.lag, nil)
			if got != tc.want {
				t.Fatalf("judgeTarget(target %s, now %s, lag %s) = %v; want %v", tc.target, tc.now, tc.lag, got, tc.want)
			}
			if got != targetInside && !gotEnd.Equal(end) {
				t.Errorf("window end %s; want %s", gotEnd, end)
			}
		})
	}
}

func TestParseLSN(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want lsn
		ok   bool
	}{
		{"0/3000000", 0x3000000, true},
		{"1/0", 1 << 32, true},
		{"FFFFFFFF/FFFFFFFF", 1<<64 - 1, true},
		{"", 0, false},
		{"3000000", 0, false},
		{"0/", 0, false},
		{"G/0", 0, false},
		{"123456789/0", 0, false},
	} {
		got, err := parseLSN(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseLSN(%q) = %v, %v; want %v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func ptrTo[T any](v T) *T { return &v }

func TestInitContainerDeliveryCopiesTheBinaryBeforeTheSidecarAtTheSamePath(t *testing.T) {
	loc := dataLocation{Container: "postgres", DataDir: "/d/pgdata", Mount: corev1.VolumeMount{Name: "data", MountPath: "/d"}}
	spec := kcv1.KeycloakBackupSpec{Storage: kcv1.Storage{Volume: &kcv1.VolumeStorage{ClaimName: "a"}}}
	byInit, err := buildSidecar("img", DeliverByInitContainer, &spec, "pg", loc)
	if err != nil {
		t.Fatal(err)
	}
	byImage, _ := buildSidecar("img", DeliverByImageVolume, &spec, "pg", loc)
	tmpl := &corev1.PodTemplateSpec{Spec: corev1.PodSpec{
		InitContainers: []corev1.Container{{Name: "init-perms"}},
		Containers:     []corev1.Container{{Name: "postgres", VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/d"}}}},
	}}
	inject(tmpl, byInit)
	var names []string
	for _, c := range tmpl.Spec.InitContainers {
		names = append(names, c.Name)
	}
	if len(names) != 3 || names[1] != BinaryInitContainerName || names[2] != SidecarContainerName {
		t.Fatalf("init containers %v, want the user's, then %s, then %s", names, BinaryInitContainerName, SidecarContainerName)
	}
	cp := tmpl.Spec.InitContainers[1]
	if len(cp.Command) != 3 || cp.Command[1] != "copy-binary" || cp.Command[2] != KcbackupPath || cp.Image != "img" {
		t.Errorf("copy container = %+v, want img copying itself to %s", cp, KcbackupPath)
	}
	// copy-binary wants DEST's directory to exist: the emptyDir is mounted there.
	if len(cp.VolumeMounts) != 1 || cp.VolumeMounts[0].MountPath != path.Dir(KcbackupPath) {
		t.Errorf("copy container mounts %+v, want the emptyDir at %s", cp.VolumeMounts, path.Dir(KcbackupPath))
	}
	for _, v := range tmpl.Spec.Volumes {
		if v.Name == imageVolume && (v.EmptyDir == nil || v.Image != nil) {
			t.Errorf("volume %s = %+v, want an emptyDir (no image volume)", v.Name, v.VolumeSource)
		}
	}
	for _, m := range tmpl.Spec.Containers[0].VolumeMounts {
		if m.Name == imageVolume && (!m.ReadOnly || m.MountPath != path.Dir(KcbackupPath)) {
			t.Errorf("PostgreSQL mounts the binary as %+v, want read-only at %s, the directory of %s", m, path.Dir(KcbackupPath), KcbackupPath)
		}
	}
	if byInit.Hash() == byImage.Hash() {
		t.Error("the delivery does not change the sidecar's hash: switching would not roll the pod")
	}
	inject(tmpl, byImage)
	if n := len(tmpl.Spec.InitContainers); n != 2 {
		t.Errorf("after switching to an image volume: %d init containers, want the user's and the sidecar", n)
	}
}

func TestRestoreJobRunsAsTheUserPostgreSQLRanAs(t *testing.T) {
	i := func(n int64) *int64 { return &n }
	str := func(p *int64) string {
		if p == nil {
			return "unset"
		}
		return strconv.FormatInt(*p, 10)
	}
	for _, tc := range []struct {
		name     string
		rs       *kcv1.RestoreStatus
		tmpl     corev1.PodSpec
		uid, gid *int64
	}{
		{"recorded from the admitted pod (OpenShift's UID, no group)", &kcv1.RestoreStatus{RunAsUser: i(1000650000)},
			corev1.PodSpec{}, i(1000650000), nil},
		{"recorded wins over the template", &kcv1.RestoreStatus{RunAsUser: i(26), RunAsGroup: i(26)},
			corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{RunAsUser: i(999)}}, i(26), i(26)},
		{"the container over the pod", nil, corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{RunAsUser: i(999), RunAsGroup: i(999)},
			Containers: []corev1.Container{{Name: "postgres", SecurityContext: &corev1.SecurityContext{RunAsUser: i(1001)}}}}, i(1001), i(999)},
		{"nothing names one: the official image's postgres", nil, corev1.PodSpec{}, i(postgresUID), i(postgresUID)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uid, gid := restoreJobIDs(tc.rs, &tc.tmpl, "postgres")
			if str(uid) != str(tc.uid) || str(gid) != str(tc.gid) {
				t.Errorf("uid %s gid %s, want %s %s", str(uid), str(gid), str(tc.uid), str(tc.gid))
			}
		})
	}
}
